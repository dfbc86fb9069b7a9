"""Page N of a huge JSONL or text file without loading it.

Light module (stdlib only). :class:`PagedFile` builds an index of line offsets in a
background thread (``array('Q')``: 8 bytes a line, the only memory that grows with the
file) from chunked reads, and serves pages from it; early pages are served straight from
the start of the file while the index is still being built, so the first screen shows at
once. Parsed rows sit in a bounded LRU cache. :meth:`PagedFile.search` streams through the
file on its own handle (it does not wait for the index) to find or count matching rows.

``.json`` files (a JSON array, or an object holding one) cannot be paged without parsing
them whole, so they are read in full at open: fine for the small files JSON is used for,
refused above ``JSON_MAX_BYTES`` with a hint to convert to JSONL. JSONL and text files are
always lazy. Text files page by physical line (the reader's blank-line blocks are a
training-time notion).

Rows are numbered from 0 (``page(n, size)`` holds rows ``n*size .. n*size+size-1``); for
JSONL and text, row ``i`` is line ``i + 1``; for a JSON array, ``row.line`` is the line where
the element starts.
"""

from __future__ import annotations

import json
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from finetui.engine.data.formats import DataError
from finetui.engine.data.readers import (
    DEFAULT_MAX_LINE_BYTES,
    MB,
    Issue,
    RawRecord,
    _read_json,
    json_line,
    nul_problem,
    too_long_message,
)
from finetui.engine.units import format_bytes

INDEX_CHUNK_BYTES = 4 << 20
SEARCH_CHUNK_BYTES = 4 << 20
CACHE_ROWS = 4096
# Pages this close to the start are read directly while the index is still building.
DIRECT_SCAN_ROWS = 20_000
JSON_MAX_BYTES = 256 * MB

ProgressCallback = Callable[[int, int, int], None]  # (bytes_done, bytes_total, matches)


@dataclass(frozen=True)
class PagedRow:
    """One row as the browser shows it: raw text, parsed data or the reason it has none."""

    index: int  # 0-based row number
    line: int  # 1-based line in the file
    raw: str
    data: Any  # parsed JSON (jsonl/json), {"text": line} (text), None when error is set
    error: str | None
    source: str

    def to_record(self) -> RawRecord:
        return RawRecord(self.index, self.source, self.line, self.data)


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".txt":
        return "text"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "text"


def _values_at(data: Any, path: list[str]) -> Iterator[Any]:
    """Values at a dotted path; lists on the way are walked element by element."""
    if isinstance(data, list):
        for item in data:
            yield from _values_at(item, path)
        return
    if not path:
        yield data
        return
    if isinstance(data, dict) and path[0] in data:
        yield from _values_at(data[path[0]], path[1:])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class PagedFile:
    """A JSONL / text (/ small JSON) file served page by page.

    ``page(n, size)`` works at once; ``indexed_lines`` / ``progress`` report the index
    build; ``total`` is None until ``done``. Use as a context manager or call ``close()``
    to stop the index thread early.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        cache_rows: int = CACHE_ROWS,
        chunk_bytes: int = INDEX_CHUNK_BYTES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        start_index: bool = True,
    ):
        self.path = Path(path)
        self.source = str(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.size = self.path.stat().st_size
        self.kind = _kind_of(self.path)
        self.max_line_bytes = max_line_bytes
        self._chunk_bytes = chunk_bytes
        self._cache: OrderedDict[int, PagedRow] = OrderedDict()
        self._cache_rows = cache_rows
        self._read_lock = threading.RLock()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._offsets = array("Q")
        self._indexed_bytes = 0
        self._done = False
        self._error: str | None = None
        self._json_rows: list[tuple[int, Any]] | None = None
        self._fh = None
        self._thread: threading.Thread | None = None
        if self.kind == "json":
            self._load_json()
        else:
            self._fh = open(self.path, "rb")
            if start_index:
                self.start_index()

    # ------------------------------------------------------------------ lifecycle

    def start_index(self) -> None:
        """Start building the offset index (done by the constructor unless
        ``start_index=False``, for a caller that wants the first page before any I/O)."""
        if self._thread is None and self._json_rows is None:
            self._thread = threading.Thread(target=self._build_index, name=f"index {self.path.name}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._read_lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "PagedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------- index

    def _load_json(self) -> None:
        if self.size > JSON_MAX_BYTES:
            raise DataError(
                f"{self.path}: a {format_bytes(self.size, si=True)} JSON file cannot be browsed lazily "
                f"(limit {format_bytes(JSON_MAX_BYTES, si=True)}); convert it to JSONL (one record a line)"
            )
        problems: list[Issue] = []
        rows = [(line or 0, data) for line, _, data in _read_json(self.path, self.source, problems.append, self.max_line_bytes, "replace", "train")]
        if problems and not rows:
            raise DataError(str(problems[0]))
        self._json_rows = rows
        self._error = str(problems[0]) if problems else None
        self._indexed_bytes = self.size
        self._done = True

    def _build_index(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                pos = 0
                if self.size:
                    with self._cond:
                        self._offsets.append(0)
                while not self._stop.is_set():
                    chunk = fh.read(self._chunk_bytes)
                    if not chunk:
                        break
                    starts = array("Q")
                    find = chunk.find
                    i = find(b"\n")
                    while i != -1:
                        starts.append(pos + i + 1)
                        i = find(b"\n", i + 1)
                    pos += len(chunk)
                    with self._cond:
                        self._offsets.extend(starts)
                        self._indexed_bytes = pos
                        self._cond.notify_all()
                with self._cond:
                    if self._offsets and self._offsets[-1] >= pos:
                        self._offsets.pop()  # the file ends with a newline: no line starts there
                    self._offsets.append(pos)  # sentinel: the end of the last line
                    self._done = not self._stop.is_set()
                    self._cond.notify_all()
        except OSError as exc:
            with self._cond:
                self._error = f"cannot index: {exc}"
                self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def total(self) -> int | None:
        """Number of rows, once the index is complete."""
        if self._json_rows is not None:
            return len(self._json_rows)
        return len(self._offsets) - 1 if self._done else None

    @property
    def indexed_lines(self) -> int:
        """Rows whose place is known so far (the index build's progress)."""
        if self._json_rows is not None:
            return len(self._json_rows)
        with self._cond:
            return max(len(self._offsets) - 1, 0)

    @property
    def progress(self) -> float:
        return 1.0 if not self.size else min(self._indexed_bytes / self.size, 1.0)

    @property
    def estimated_total(self) -> int:
        """Row count extrapolated from the indexed part (for a scrollbar before ``done``)."""
        total = self.total
        if total is not None:
            return total
        fraction = self.progress
        return int(self.indexed_lines / fraction) if fraction > 0 else 0

    @property
    def cached_rows(self) -> int:
        return len(self._cache)

    @property
    def error(self) -> str | None:
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the index is complete; return ``done``."""
        if self._thread is None:
            return self._done
        with self._cond:
            self._cond.wait_for(lambda: self._done or self._error is not None or self._stop.is_set(), timeout)
        return self._done

    # ---------------------------------------------------------------------- pages

    def _make_row(self, index: int, raw_bytes: bytes | None, too_long: int | None = None) -> PagedRow:
        line = index + 1
        if too_long is not None:
            return PagedRow(index, line, "", None, too_long_message(too_long, self.max_line_bytes), self.source)
        raw_bytes = raw_bytes.rstrip(b"\r\n")
        if index == 0 and raw_bytes.startswith(b"\xef\xbb\xbf"):
            raw_bytes = raw_bytes[3:]
        nul = nul_problem(raw_bytes)  # shown, and skipped as the reader skips it
        error = nul
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw = raw_bytes.decode("utf-8", errors="replace")
            error = error or f"invalid UTF-8 (byte 0x{raw_bytes[exc.start]:02x} at column {exc.start + 1})"
        if self.kind == "text":
            return PagedRow(index, line, raw, None if nul else {"text": raw}, error, self.source)
        if error:
            return PagedRow(index, line, raw, None, error, self.source)
        if not raw.strip():
            return PagedRow(index, line, raw, None, "blank line", self.source)
        data, error = json_line(raw)  # invalid, or nested too deeply: the row says so
        return PagedRow(index, line, raw, data, error, self.source)

    def _read_line(self, fh) -> tuple[bytes | None, int | None]:
        raw = fh.readline(self.max_line_bytes + 1)
        if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # skip the rest in bounded chunks
                chunk = fh.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    return None, size
        return raw, None

    def _covered(self, end: int) -> bool:
        """Whether rows [.., end) have known start and end offsets."""
        return self._done or len(self._offsets) > end

    def _rows_from_index(self, start: int, stop: int) -> list[PagedRow]:
        with self._cond:
            stop = min(stop, len(self._offsets) - 1)
            first = self._offsets[start] if start < stop else 0
        rows = []
        with self._read_lock:
            if self._fh is None:
                raise DataError(f"{self.path}: closed")
            self._fh.seek(first)
            for index in range(start, stop):
                raw, too_long = self._read_line(self._fh)
                rows.append(self._make_row(index, raw, too_long))
        return rows

    def _rows_by_scan(self, start: int, stop: int) -> list[PagedRow]:
        rows = []
        with open(self.path, "rb") as fh:
            for index in range(stop):
                raw, too_long = self._read_line(fh)
                if raw == b"" and too_long is None:
                    break
                if index >= start:
                    rows.append(self._make_row(index, raw, too_long))
        return rows

    def page(self, n: int, size: int = 50, *, timeout: float | None = None) -> list[PagedRow]:
        """Rows ``n*size`` .. ``n*size+size-1`` (fewer at the end of the file).

        Early pages are read straight from the file while the index builds; a later page
        waits for the index to reach it (up to ``timeout`` seconds, then returns what can
        be read by scanning).
        """
        if n < 0 or size <= 0:
            raise ValueError("page number must be >= 0 and size > 0")
        start, stop = n * size, n * size + size
        if self._json_rows is not None:
            return [
                PagedRow(i, line, json.dumps(data, ensure_ascii=False), data, None, self.source)
                for i, (line, data) in enumerate(self._json_rows[start:stop], start)
            ]
        with self._read_lock:
            cached = [self._cache.get(i) for i in range(start, stop)]
            if cached and all(row is not None for row in cached):
                for i in range(start, stop):
                    self._cache.move_to_end(i)
                return cached  # type: ignore[return-value]
        if self._covered(stop):
            rows = self._rows_from_index(start, stop)
        elif stop <= DIRECT_SCAN_ROWS or self._thread is None:
            rows = self._rows_by_scan(start, stop)
        else:
            with self._cond:
                self._cond.wait_for(lambda: self._covered(stop) or self._error is not None or self._stop.is_set(), timeout)
            rows = self._rows_from_index(start, stop) if self._covered(stop) else self._rows_by_scan(start, stop)
        with self._read_lock:
            for row in rows:
                self._cache[row.index] = row
                self._cache.move_to_end(row.index)
            while len(self._cache) > self._cache_rows:
                self._cache.popitem(last=False)
        return rows

    def row(self, index: int) -> PagedRow | None:
        rows = self.page(index, 1)
        return rows[0] if rows else None

    # --------------------------------------------------------------------- search

    def search(
        self,
        query: str | Callable[[Any], bool],
        field: str | None = None,
        *,
        exact: bool = False,
        ignore_case: bool = False,
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[int]:
        """Row numbers whose data matches, streamed from the start of the file.

        ``query`` is text (found in the string values of the record, or of ``field``: a
        dotted path such as ``output`` or ``conversations.value``; ``exact`` asks for
        equality after stripping) or a predicate on the parsed data. ``progress`` gets
        ``(bytes_done, bytes_total, matches)`` once per chunk; ``stop`` ends the search.
        Rows that do not parse never match.
        """
        path = field.split(".") if field else None
        if callable(query):
            predicate = query
        else:
            needle = query.strip() if exact else query
            if ignore_case:
                needle = needle.lower()

            def predicate(data: Any) -> bool:
                values = _values_at(data, path) if path else [data]
                for value in values:
                    for text in _strings(value):
                        text = text.lower() if ignore_case else text
                        if (text.strip() == needle) if exact else (needle in text):
                            return True
                return False

        needles = None if callable(query) else self._needles(query.strip() if exact else query, ignore_case)
        if self._json_rows is not None:
            matches = 0
            for i, (_, data) in enumerate(self._json_rows):
                if stop is not None and stop.is_set():
                    return
                if predicate(data):
                    matches += 1
                    yield i
            if progress:
                progress(self.size, self.size, matches)
            return
        yield from self._scan(predicate, needles, ignore_case, progress, stop)

    def count(self, query: str | Callable[[Any], bool], field: str | None = None, **options: Any) -> int:
        return sum(1 for _ in self.search(query, field, **options))

    def _needles(self, query: str, ignore_case: bool) -> list[bytes] | None:
        """Byte strings at least one of which every matching line contains (None: every
        line must be parsed). A JSON writer may escape the query (non-ASCII as \\uXXXX,
        '/' as \\/, HTML-safe writers '<>&' as \\u003c...), so lines with such escapes
        are candidates too when the query has those characters."""
        if not query or (ignore_case and not query.isascii()):
            return None
        forms = {query, json.dumps(query, ensure_ascii=False)[1:-1], json.dumps(query)[1:-1]}
        needles = {f.lower().encode() if ignore_case else f.encode() for f in forms}
        if not query.isascii() or any(c in query for c in "<>&'"):
            needles.add(b"\\u")
        if "/" in query:
            needles.add(b"\\/")
        return sorted(needles)

    @staticmethod
    def _candidate_lines(block: bytes, needles: list[bytes] | None, ignore_case: bool, first_row: int):
        """(row, raw line) for the lines of ``block`` (complete lines) that may match."""
        if needles is None:
            lines = block.split(b"\n")
            if block.endswith(b"\n"):
                lines.pop()
            for i, raw in enumerate(lines):
                yield first_row + i, raw
            return
        haystack = block.lower() if ignore_case else block
        starts = set()
        for needle in needles:
            pos = haystack.find(needle)
            while pos != -1:
                starts.add(haystack.rfind(b"\n", 0, pos) + 1)
                end = haystack.find(b"\n", pos)
                if end == -1:
                    break
                pos = haystack.find(needle, end)
        row, previous = first_row, 0
        for start in sorted(starts):
            row += block.count(b"\n", previous, start)
            previous = start
            end = block.find(b"\n", start)
            yield row, block[start : end if end != -1 else len(block)]

    def _scan(
        self,
        predicate: Callable[[Any], bool],
        needles: list[bytes] | None,
        ignore_case: bool,
        progress: ProgressCallback | None,
        stop: threading.Event | None,
    ) -> Iterator[int]:
        matches = row = done_bytes = 0
        carry = b""
        skipping_long_line = False
        with open(self.path, "rb") as fh:
            while True:
                if stop is not None and stop.is_set():
                    return
                chunk = fh.read(SEARCH_CHUNK_BYTES)
                eof = not chunk
                done_bytes += len(chunk)
                if skipping_long_line and not eof:
                    newline = chunk.find(b"\n")
                    if newline == -1:
                        continue
                    chunk, skipping_long_line, row = chunk[newline + 1 :], False, row + 1
                if not eof:
                    buffer = carry + chunk
                    cut = buffer.rfind(b"\n") + 1
                    if cut == 0:
                        carry = buffer
                        if len(carry) > self.max_line_bytes:
                            # Too long to parse, so it cannot match: skip to its end.
                            carry, skipping_long_line = b"", True
                        continue
                    block, carry = buffer[:cut], buffer[cut:]
                elif carry:
                    block, carry = carry + b"\n", b""
                else:
                    block = b""
                for line_row, raw in self._candidate_lines(block, needles, ignore_case, row):
                    data = self._parse_for_search(raw, line_row)
                    if data is not None and predicate(data):
                        matches += 1
                        yield line_row
                row += block.count(b"\n")
                if progress:
                    progress(done_bytes, self.size, matches)
                if eof:
                    return

    def _parse_for_search(self, raw: bytes, row: int) -> Any:
        if row == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            return None
        if self.kind == "text":
            return {"text": text}
        if not text.strip():
            return None
        return json_line(text)[0]


def first_page_seconds(path: str | Path, size: int = 50) -> tuple[float, list[PagedRow]]:
    """Time to open a file and get its first page (what the benchmark reports)."""
    began = time.perf_counter()
    paged = PagedFile(path)
    rows = paged.page(0, size)
    elapsed = time.perf_counter() - began
    paged.close()
    return elapsed, rows
