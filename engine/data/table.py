"""Tokenised examples as an Arrow table: the training and held-out sets the trainer reads.

Light module: pyarrow only (imported inside), no ``datasets`` and no torch.

``datasets.Dataset`` would do this job too, but importing ``datasets`` (and the pandas it
pulls in) costs the trainer ~0.3 s of a ~3 s start (launch -> first step), and the Trainer
imports it whenever it is installed. :class:`TokenTable` is the part of its interface the
engine uses, over a ``pyarrow.Table``:

- a map-style dataset for torch's DataLoader: ``len``, ``table[i]`` (a dict of Python
  values), ``table[[i, j]]`` / ``__getitems__`` (a batch of rows in one Arrow call);
- ``table["column"]`` (a list), ``column_names``, ``select`` (row indices, no copy),
  ``remove_columns``;
- ``train_test_split``, which draws the very rows ``datasets`` would for the same seed;
- ``write`` / ``read``: an Arrow IPC file, memory-mapped when read back, so a cached
  tokenisation costs no copy of the tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


def schema():
    """Columns of a tokenised table (engine.data.dataset writes and reads these)."""
    import pyarrow as pa

    return pa.schema([
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("n_trained", pa.int32()),
        ("place", pa.string()),
        ("error", pa.string()),
        ("notes", pa.string()),
        ("truncated", pa.bool_()),
        ("full_length", pa.int32()),
        ("trains_end", pa.bool_()),
        ("record", pa.int32()),  # the record a row comes from (a long text's windows share it)
        ("record_tokens", pa.int32()),  # the record's tokens before truncation or chunking (first row)
        ("kept_tokens", pa.int32()),  # of those, the tokens its rows keep (first row)
    ])


class TokenTable:
    """Rows of a ``pyarrow.Table`` (see the module docstring), optionally through a list
    of row indices (what ``select`` and ``train_test_split`` make: nothing is copied).
    ``fingerprint`` names the content (the tokenisation's cache key, plus the selections
    made since), so copies in dataloader workers can be recognised.

    Rows are read with ``Table.slice`` (zero-copy) and ``to_pylist``: ``Table.take`` would
    import pyarrow.compute and, through it, pandas (~0.2 s)."""

    def __init__(self, table, fingerprint: str = "", indices: Sequence[int] | None = None):
        self.data = table  # the underlying table; rows in order of ``indices`` when set
        self._fingerprint = fingerprint
        self._indices = list(indices) if indices is not None else None

    # -- building
    @classmethod
    def from_columns(cls, columns: dict[str, list], fingerprint: str = "") -> "TokenTable":
        """A table of :func:`schema`'s columns from Python lists (one per column)."""
        import pyarrow as pa

        target = schema()
        arrays = [_arrow_column(columns[field.name], field.type) for field in target]
        return cls(pa.Table.from_arrays(arrays, schema=target), fingerprint)

    def write(self, path: str | Path) -> None:
        """Write an Arrow IPC file atomically (a half-written cache file is never read)."""
        import pyarrow as pa

        if self._indices is not None:
            raise ValueError("write the table a selection was made from, not the selection")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, self.data.schema) as writer:
                writer.write_table(self.data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def read(cls, path: str | Path, fingerprint: str = "") -> "TokenTable":
        import pyarrow as pa

        return cls(pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all(), fingerprint)

    # -- the dataset interface
    def __len__(self) -> int:
        return self.data.num_rows if self._indices is None else len(self._indices)

    @property
    def column_names(self) -> list[str]:
        return list(self.data.column_names)

    def _row(self, position: int) -> dict[str, Any]:
        index = position if self._indices is None else self._indices[position]
        return self.data.slice(index, 1).to_pylist()[0]

    def __getitem__(self, key):
        if isinstance(key, str):
            values = self.data.column(key).to_pylist()
            return values if self._indices is None else [values[i] for i in self._indices]
        if isinstance(key, (list, tuple, range)):
            return self.__getitems__(list(key))
        if isinstance(key, slice):
            return self.__getitems__(range(len(self))[key])
        n = len(self)
        position = int(key)
        if not -n <= position < n:
            raise IndexError(f"row {key} of a table of {n}")
        return self._row(position % n)

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """Rows by position (torch's DataLoader fetches a batch this way)."""
        return [self[p] for p in positions]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._indices is not None:
            yield from (self._row(p) for p in range(len(self)))
            return
        for batch in self.data.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()

    def select(self, positions: Iterable[int]) -> "TokenTable":
        positions = [int(p) for p in positions]
        n = len(self)
        if any(not 0 <= p < n for p in positions):
            raise IndexError(f"select: a position outside 0..{n - 1}")
        rows = positions if self._indices is None else [self._indices[p] for p in positions]
        return TokenTable(self.data, _derived(self._fingerprint, "select", positions), rows)

    def remove_columns(self, names: Iterable[str]) -> "TokenTable":
        names = list(names)
        return TokenTable(self.data.drop_columns(names), _derived(self._fingerprint, "drop", names), self._indices)

    def train_test_split(self, test_size: int, seed: int, shuffle: bool = True) -> dict[str, "TokenTable"]:
        """``test_size`` rows for the test part, the rest for training: the rows
        ``datasets.Dataset.train_test_split(test_size=n, seed=seed, shuffle=...)`` picks
        (shuffled: a numpy ``default_rng(seed)`` permutation, test rows first; else the last
        rows are the test part), so a run's split does not depend on which of the two built it."""
        import numpy as np

        n = len(self)
        if not 0 < test_size < n:
            raise ValueError(f"test_size {test_size} must be between 1 and {n - 1} for {n} rows")
        if shuffle:
            order = np.random.default_rng(seed).permutation(n)
            test, train = order[:test_size], order[test_size:]
        else:
            train, test = np.arange(n - test_size), np.arange(n - test_size, n)
        return {"train": self.select(train.tolist()), "test": self.select(test.tolist())}

    def __repr__(self) -> str:
        return f"TokenTable({len(self)} rows: {', '.join(self.column_names)})"


def _derived(fingerprint: str, what: str, items: list) -> str:
    import hashlib

    h = hashlib.sha256(f"{fingerprint}\0{what}\0".encode())
    h.update(repr(items).encode())
    return h.hexdigest()[:32]


def _arrow_column(values: list, kind):
    """One column of :func:`schema` from a Python list, built from numpy buffers.
    ``pa.array`` would do (``tests/test_token_table.py`` checks the result against it), but
    every form of it imports pandas to check whether its input is a pandas object: 0.19 s
    and 48 MB more peak RSS for the rest of a trainer that tokenised its data itself."""
    import numpy as np
    import pyarrow as pa

    n = len(values)

    def offsets(lengths) -> "pa.Buffer":
        out = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(lengths, dtype=np.int64, count=n), out=out[1:])
        if out[-1] >= 2**31:
            raise ValueError(f"a column of {out[-1]:,} items is over Arrow's 32-bit offsets")
        return pa.py_buffer(out.astype(np.int32))

    if kind == pa.int32():
        return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(np.asarray(values, dtype=np.int32))])
    if kind == pa.bool_():
        bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(bits)])
    if kind == pa.string():
        encoded = [v.encode() for v in values]
        return pa.Array.from_buffers(kind, n, [None, offsets(map(len, encoded)), pa.py_buffer(b"".join(encoded))])
    if kind == pa.list_(pa.int32()):
        flat = np.fromiter((x for v in values for x in v), dtype=np.int32, count=sum(map(len, values)))
        items = pa.Array.from_buffers(pa.int32(), len(flat), [None, pa.py_buffer(flat)])
        return pa.Array.from_buffers(kind, n, [None, offsets(map(len, values))], children=[items])
    raise TypeError(f"no Arrow column for {kind}")
