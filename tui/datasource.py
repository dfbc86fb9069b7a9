"""Rows for the dataset browser, from whatever ``data.path`` names.

Light (engine.data.readers / paged / formats: stdlib only). Every method that reads is
blocking and meant for a worker thread; the screen keeps what they return.

* one JSONL / JSON / text file (also ``sample:NAME`` and dataset_info entries that point at
  one): :class:`PagedSource` over ``engine.data.paged.PagedFile`` (lazy, any size);
* CSV, parquet, folders: :class:`ListSource`, read with ``engine.data.readers`` up to
  :data:`MAX_LIST_ROWS` rows;
* Hugging Face ids: the rows come from the render worker (it may import ``datasets``; this
  process may not), also as a :class:`ListSource`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetui.engine.data import formats, readers
from finetui.engine.data.paged import PagedFile
from finetui.engine.units import format_bytes

MAX_LIST_ROWS = 100_000
PAGED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".txt")


@dataclass(frozen=True)
class Row:
    index: int  # 0-based row in the source
    place: str  # file:line (or file#row)
    raw: str  # the text as read (or JSON of the data)
    data: Any  # parsed record; None when ``error``
    error: str | None = None


def resolve(spec: str, split: str = "train", subset: str | None = None) -> readers.Source:
    """What a path names (DataError with the reason when it names nothing). Cheap: stats
    files, reads a dataset_info.json, never opens a hub dataset."""
    return readers.resolve_source(spec, split=split, subset=subset)


def is_paged(source: readers.Source) -> bool:
    return (not source.hub_id and len(source.paths) == 1
            and source.paths[0].suffix.lower() in PAGED_SUFFIXES)


class RowSource:
    """The interface the table uses."""

    description = ""
    limited = False  # only the first MAX rows are shown

    @property
    def total(self) -> int | None:  # None while still counting
        raise NotImplementedError

    @property
    def estimated_total(self) -> int:
        return self.total or 0

    @property
    def progress(self) -> float:
        return 1.0

    def fetch(self, start: int, count: int) -> list[Row]:
        raise NotImplementedError

    def search(self, query: str, progress: Callable[[float, int], None] | None = None,
               stop: threading.Event | None = None) -> Iterator[int]:
        raise NotImplementedError

    def sample(self, n: int = formats.DETECT_SAMPLE) -> list[Any]:
        return [row.data for row in self.fetch(0, n) if row.error is None]

    def close(self) -> None:
        pass


class PagedSource(RowSource):
    def __init__(self, path: Path):
        self.paged = PagedFile(path)
        self.description = f"{self.paged.kind} {format_bytes(self.paged.size, si=True)}"

    @property
    def total(self) -> int | None:
        return self.paged.total

    @property
    def estimated_total(self) -> int:
        return self.paged.estimated_total

    @property
    def progress(self) -> float:
        return self.paged.progress

    @property
    def error(self) -> str | None:
        return self.paged.error

    def fetch(self, start: int, count: int) -> list[Row]:
        rows = []
        # PagedFile pages are aligned; read the pages that cover [start, start+count).
        size = max(count, 1)
        first, last = start // size, (start + count - 1) // size
        for n in range(first, last + 1):
            for r in self.paged.page(n, size, timeout=30):
                if start <= r.index < start + count:
                    rows.append(Row(r.index, f"{r.source}:{r.line}", r.raw, r.data, r.error))
        return rows

    def search(self, query, progress=None, stop=None):
        def on_progress(done: int, total: int, matches: int) -> None:
            if progress:
                progress(done / total if total else 1.0, matches)

        return self.paged.search(query, ignore_case=True, progress=on_progress, stop=stop)

    def close(self) -> None:
        self.paged.close()


class ListSource(RowSource):
    def __init__(self, rows: list[Row], description: str, limited: bool = False, issues: list[str] | None = None):
        self.rows = rows
        self.description = description
        self.limited = limited
        self.issues = issues or []

    @classmethod
    def read(cls, source: readers.Source, stop: threading.Event | None = None) -> "ListSource":
        """Read a local CSV/parquet/folder source (not hub ids: the worker reads those)."""
        collector = readers.IssueCollector("skip")
        rows: list[Row] = []
        limited = False
        for record in readers.iter_records(source, report=collector):
            if stop is not None and stop.is_set():
                break
            if len(rows) >= MAX_LIST_ROWS:
                limited = True
                break
            rows.append(Row(len(rows), record.place, _raw(record.data), record.data))
        names = ", ".join(p.name for p in source.paths[:3]) + (" …" if len(source.paths) > 3 else "")
        return cls(rows, f"{source.kind} {names}", limited, [str(i) for i in collector.issues[:50]])

    @classmethod
    def from_worker(cls, records: list[dict[str, Any]], description: str, limited: bool,
                    issues: list[str]) -> "ListSource":
        rows = [Row(i, r["place"], _raw(r["data"]), r["data"]) for i, r in enumerate(records)]
        return cls(rows, description, limited, issues)

    @property
    def total(self) -> int:
        return len(self.rows)

    def fetch(self, start: int, count: int) -> list[Row]:
        return self.rows[start:start + count]

    def search(self, query, progress=None, stop=None):
        needle = query.lower()
        matches = 0
        n = len(self.rows) or 1
        for i, row in enumerate(self.rows):
            if stop is not None and stop.is_set():
                return
            if needle in row.raw.lower():
                matches += 1
                yield i
            if progress and i % 2000 == 0:
                progress(i / n, matches)
        if progress:
            progress(1.0, matches)


def open_rows(source: readers.Source) -> RowSource:
    """Blocking: a RowSource for a resolved local source."""
    if is_paged(source):
        return PagedSource(source.paths[0])
    return ListSource.read(source)


def detect_format(rows: RowSource, source: readers.Source, configured: str = "auto",
                  columns: dict[str, str] | None = None,
                  roles: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(format, how it was decided) or (None, the reason detection failed). Text of
    ``Name: text`` lines is a transcript when ``roles`` (data.roles) are given, as the
    readers decide."""
    if configured and configured != "auto":
        return configured, "data.format"
    if source.format:
        return source.format, "dataset_info.json"
    columns = {**source.columns, **(columns or {})}
    sample = rows.sample()
    try:
        found = formats.detect(sample, columns, source.tags or None)
    except formats.DataError as exc:
        return None, str(exc)
    if found == "text" and roles:
        from finetui.engine.data import transcripts

        if transcripts.text_transcript(sample, columns):
            return "transcript", "detected"
    return found, "detected"


@dataclass
class ColumnCheck:
    """What a format and column mapping make of a sample of records (the browser's view of
    :class:`engine.data.columns.ColumnUse`): how many convert, the first problem, and the
    columns whose values no field reads."""

    records: int
    ok: int
    problem: str | None  # the first record that does not convert, as file:line: field: message
    unused: list[tuple[str, int]]  # (column, records it holds a value unused in), most first
    missing: list[tuple[str, str]]  # (field, column) mapped to a column no sampled record has

    def line(self) -> str:
        """One line: ``30 of 50 sampled dropped · not trained: plan (in 20 of 50 sampled)``,
        or '' when nothing is lost."""
        parts = []
        if self.ok < self.records:
            parts.append(f"{self.records - self.ok} of {self.records} sampled dropped")
        if self.unused:
            shown = ", ".join(f"{name} (in {n} of {self.records} sampled)" for name, n in self.unused[:3])
            more = f" +{len(self.unused) - 3}" if len(self.unused) > 3 else ""
            parts.append(f"not trained: {shown}{more}")
        return " · ".join(parts)


def file_columns(sample: list[Any]) -> list[str]:
    """The columns of sampled records, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in sample:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
    return list(seen)


def check_columns(sample: list[Any], fmt: str | None, columns: dict[str, str] | None = None,
                  tags: dict[str, str] | None = None, places: list[str] | None = None,
                  roles: dict[str, str] | None = None) -> ColumnCheck:
    """Normalise a sample with ``fmt`` and ``columns`` (formats only: cheap, UI-safe); the
    rows of a transcript are converted a conversation at a time, with ``roles`` (data.roles)."""
    from finetui.engine.data import transcripts
    from finetui.engine.data.columns import ColumnUse

    use = ColumnUse(columns)
    ok, problem = 0, None
    converted: dict[int, set[str] | None] = {}  # transcript rows: sample index -> keys read
    if fmt == "transcript":
        from types import SimpleNamespace

        groups = transcripts.Groups(columns)
        for i, record in enumerate(sample):
            if transcripts.is_row(record, columns):
                groups.add(SimpleNamespace(data=record, line=None, row=i))
        for rows in groups.take():
            reads: list[set[str]] = []
            try:
                transcripts.from_rows(rows, columns or None, roles or None, reads)
            except formats.RecordError as exc:
                if problem is None:
                    i = rows[0].row
                    problem = f"{places[i] if places and i < len(places) else f'record {i + 1}'}: {exc}"
                reads = []
            for row, read in zip(rows, reads):
                converted[row.row] = read
            for row in rows[len(reads):]:
                converted[row.row] = None
    for i, record in enumerate(sample):
        used: set[str] = set()
        if i in converted:
            if converted[i] is not None:
                ok += 1
                use.add(record, converted[i])
            continue
        try:
            if not fmt:
                raise formats.RecordError(None, "format unknown")
            formats.to_conversation(record, fmt, columns or None, tags or None, used=used, roles=roles or None)
        except formats.RecordError as exc:
            if problem is None:
                where = places[i] if places and i < len(places) else f"record {i + 1}"
                problem = f"{where}: {exc}"
            continue
        ok += 1
        use.add(record, used)
    return ColumnCheck(len(sample), ok, problem, use.unused.most_common(), use.missing_mapped())


def preview(row: Row, width: int = 200) -> str:
    """One line for the table: the record's fields, compactly."""
    if row.error:
        return row.error
    data = row.data
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            parts.append(f"{key}: {_short(value)}")
            if sum(len(p) for p in parts) > width:
                break
        text = " · ".join(parts)
    else:
        text = _short(data)
    return text.replace("\n", "⏎ ")[:width]


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        first = value[0]
        content = first.get("value", first.get("content", ""))
        return f"[{len(value)} turns] {content if isinstance(content, str) else _raw(content)}"
    return _raw(value)


def _raw(data: Any) -> str:
    try:
        return json.dumps(data, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(data)


# ---------------------------------------------------------------------------- browser and Settings


def merged_columns(source: readers.Source | None, columns: dict[str, str]) -> dict[str, str]:
    """What the readers use: a dataset_info entry's columns, then the user's mapping."""
    return {**(source.columns if source is not None else {}), **columns}


def own_columns(source: readers.Source | None, columns: dict[str, str]) -> dict[str, str]:
    """The user's part of a mapping: what a dataset_info entry already maps stays the entry's."""
    registry = source.columns if source is not None else {}
    return {k: v for k, v in columns.items() if registry.get(k) != v}


def reads_otherwise(data: Any, spec: str | None, fmt: str | None, how: str, columns: dict[str, str]) -> bool:
    """Whether the Settings (``data``: the config's data section) would read the open
    dataset otherwise than the browser does (another format or column mapping)."""
    if spec != data.path or fmt is None:
        return False  # another dataset: "u" is in the hint line anyway
    same_format = data.format == fmt or (data.format == "auto" and how in ("detected", "dataset_info.json"))
    return not same_format or dict(data.columns) != columns


def use_values(data: Any, spec: str, fmt: str | None, how: str, source: readers.Source | None,
               columns: dict[str, str], template: str) -> dict[str, Any]:
    """The data settings that read the open dataset as the browser shows it (``template``:
    the one the browser renders with)."""
    fmt = fmt or "auto"
    if how == "detected" and source is not None and len(source.paths) > 1:
        fmt = "auto"  # a folder: the readers detect per file, as they did here on its first file
    values = {"path": spec, "format": fmt, "columns": dict(columns), "template": template}
    if data.test_path and spec != data.path:
        values["test_path"] = None  # the held-out file of the old dataset; data.test_size holds out of this one
    return values
