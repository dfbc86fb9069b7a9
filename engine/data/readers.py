"""Readers: a data source -> raw records, each with its place (``file:line``).

Light module: stdlib (+ pyarrow for parquet, ``datasets`` for hub ids, both imported only
inside the functions that need them). Sources:

* local ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` / ``.txt`` files, and
  folders of them (recursive, sorted, hidden files skipped; when file names carry split
  names such as ``train.jsonl`` / ``test-0001.parquet``, only the requested split is read);
* ``sample:NAME``: a file of the installed ``sample_data`` package;
* ``DIR/dataset_info.json:NAME`` (or ``NAME`` with ``dataset_dir``, or a bare ``NAME``
  listed in ``data/dataset_info.json`` under the current folder, LLaMA-Factory's default
  ``dataset_dir``, looked up before any hub id): a LLaMA-Factory registry entry, with its
  formatting, columns, tags and ranking;
* Hugging Face dataset ids (``org/name``, or ``hf:name``) through ``datasets.load_dataset``.

Bad input never crashes and is never dropped silently: every problem becomes an
:class:`Issue` (``data.jsonl:17: field 'conversations[2].value': empty turn``). With
``on_error="skip"`` issues are collected and counted; with ``"strict"`` the first one
raises :class:`DataError`. Two milder kinds are counted apart from the invalid ones:
``skipped`` (a well-formed row SFT must not train on: a KTO ``label: false``) and
``repaired`` (a record kept after dropping what could not be used: an empty turn with its
exchange); ``strict`` raises on a repair, never on a skip.

:func:`load_records` is the high-level entry (records -> format detection -> Conversation);
:func:`iter_records` and :func:`iter_conversations` are the streaming generators underneath.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from finetui.engine import configfile, hub
from finetui.engine.data import transcripts
from finetui.engine.data.columns import ColumnUse
from finetui.engine.data.conversation import Conversation
from finetui.engine.data.formats import (
    DETECT_SAMPLE,
    FORMATS,
    MESSAGE_CHARS,
    SHOW_CHARS,
    DataError,
    RecordError,
    RecordSkipped,
    _Reads,
    clip,
    shown,
    detect,
    detect_one,
    nesting_problem,
    registry_format,
    to_conversation,
    too_deep_message,
)
from finetui.engine.units import format_bytes

__all__ = [
    "DataError",
    "Issue",
    "LoadResult",
    "RawRecord",
    "RegistryEntry",
    "Source",
    "iter_conversations",
    "iter_records",
    "load_records",
    "read_registry",
    "resolve_source",
]

MB = 1_000_000
# A 10 MB line (a long document, a base64 blob) must load; only something absurd is refused,
# and even then it is skipped in chunks rather than read into memory.
DEFAULT_MAX_LINE_BYTES = 64 * MB
DEFAULT_MAX_ISSUES_KEPT = 1000
BINARY_SNIFF_BYTES = 1024
BINARY_NUL_SNIFF_BYTES = 64 << 10  # read when the first KB holds a NUL
TXT_SNIFF_BYTES = 1 << 20
JSON_CHUNK_BYTES = 1 << 22  # a JSON array is read 4 MB at a time
HUB_PROBE_TIMEOUT_S = 2.0

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "txt",
}
SAMPLE_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".parquet")
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "eval")
REGISTRY_FILE = "dataset_info.json"
DEFAULT_DATASET_DIR = "data"  # where a bare name is looked up (LLaMA-Factory's dataset_dir default)
# Keys under which a JSON object commonly holds its list of records.
CONTAINER_KEYS = ("data", "train", "rows", "records", "examples", "instances", "items", "samples")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_REGISTRY_SPEC = re.compile(r"^(?P<file>.*dataset_info\.json):(?P<name>[^/\\]+)$")
_SURROGATE = re.compile("[\udc80-\udcff]")
_JSON_WS = re.compile(r"[ \t\n\r]*")
_BLANK_LINE_BETWEEN = re.compile(rb"\S[ \t]*\r?\n[ \t]*\r?\n[ \t\r\n]*\S")
_decoder = json.JSONDecoder()
def _invalid(msg: str) -> str:
    """A JSON parse problem as the issue says it."""
    return msg if msg == too_deep_message() else f"invalid JSON: {msg}"


def json_line(text: str) -> tuple[Any, str | None]:
    """One line of JSON lines: (value, None), or (None, why it cannot be used): invalid
    JSON, or nested too deeply (never a RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None, too_deep_message()
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    problem = nesting_problem(value, text)
    return (None, problem) if problem else (value, None)


def nul_problem(raw: bytes | str) -> str | None:
    """A line holding a NUL byte is binary data, not text: why, naming the column."""
    at = raw.find(b"\0" if isinstance(raw, bytes) else "\0")
    return None if at < 0 else f"NUL byte at column {at + 1} (binary data in a text line)"


# --------------------------------------------------------------------------- types


def _place(source: str, line: int | None, row: int | None) -> str:
    """``source:line`` (1-based), else ``source#row`` (0-based), else just ``source``."""
    if line is not None:
        return f"{source}:{line}"
    if row is not None:
        return f"{source}#{row}"
    return source


@dataclass(frozen=True)
class RawRecord:
    """One record as read, with where it came from.

    ``line`` is 1-based (for a JSON array: the line where the element starts; for CSV:
    the line where the row starts). Sources without lines (parquet, hub datasets) leave
    it None and give the 0-based ``row`` instead.
    """

    index: int
    source: str
    line: int | None
    data: Any
    row: int | None = None

    @property
    def place(self) -> str:
        return _place(self.source, self.line, self.row)


SEVERITIES = ("invalid", "skipped", "repaired")


@dataclass(frozen=True)
class Issue:
    """One problem with the input; ``str()`` is the line shown to the user.

    ``severity``: ``invalid`` (the record, line or file cannot be used), ``skipped`` (a
    well-formed record that is not trained, e.g. a KTO ``label: false``) or ``repaired``
    (the record is kept without the part named, e.g. an empty turn)."""

    source: str
    line: int | None
    field: str | None
    message: str
    row: int | None = None
    severity: str = "invalid"

    def __post_init__(self):
        # a message shows at most formats.SHOW_CHARS of a value from the data (a 10 MB key)
        if self.field is not None and len(self.field) > SHOW_CHARS:
            object.__setattr__(self, "field", clip(self.field))
        if len(self.message) > MESSAGE_CHARS:
            object.__setattr__(self, "message", clip(self.message, MESSAGE_CHARS))

    @property
    def place(self) -> str:
        return _place(self.source, self.line, self.row)

    @property
    def kind(self) -> str:
        """The message without its particulars, for counting alike problems."""
        return self.message.split(" (")[0].split(": ")[0]

    def __str__(self) -> str:
        where = f"field '{self.field}': " if self.field else ""
        return f"{self.place}: {where}{self.message}"


@dataclass
class RegistryEntry:
    """A LLaMA-Factory ``dataset_info.json`` entry."""

    name: str
    dataset_dir: Path
    raw: dict[str, Any]

    @property
    def file_name(self) -> str | None:
        return self.raw.get("file_name")

    @property
    def hf_hub_url(self) -> str | None:
        return self.raw.get("hf_hub_url")

    @property
    def formatting(self) -> str:
        return self.raw.get("formatting", "alpaca")

    @property
    def columns(self) -> dict[str, str]:
        return dict(self.raw.get("columns") or {})

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.raw.get("tags") or {})

    @property
    def ranking(self) -> bool:
        return bool(self.raw.get("ranking"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset_dir": str(self.dataset_dir), **self.raw}


@dataclass
class Source:
    """What a data path resolved to."""

    kind: str  # file | folder | sample | registry | hub
    spec: str
    paths: list[Path] = field(default_factory=list)
    hub_id: str | None = None
    split: str = "train"
    subset: str | None = None
    hub_data_dir: str | None = None
    streaming: bool = False
    entry: RegistryEntry | None = None
    format: str | None = None  # implied by a registry entry
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "spec": self.spec, "paths": [str(p) for p in self.paths]}
        if self.hub_id:
            info.update(hub_id=self.hub_id, split=self.split, subset=self.subset)
        if self.entry is not None:
            info["entry"] = self.entry.to_dict()
        if self.skipped_files:
            info["skipped_files"] = list(self.skipped_files)
        return info


@dataclass
class LoadResult:
    """Records normalised to conversations, plus everything that went wrong.

    ``counts``: ``ok`` conversations and ``invalid`` issues (every issue is one thing that
    could not be used: a record, a line, a whole file). ``issues`` keeps the first
    ``DEFAULT_MAX_ISSUES_KEPT``; ``issue_kinds`` counts all of them by kind.
    """

    conversations: list[tuple[RawRecord, Conversation]]
    format: str
    issues: list[Issue]
    counts: dict[str, int]
    source_info: dict[str, Any]
    formats: dict[str, str] = field(default_factory=dict)
    issue_kinds: Counter = field(default_factory=Counter)
    # Skipped rows and repaired records (Issue.severity), kept apart from ``issues``; their
    # totals are ``counts["skipped"]`` / ``counts["repaired"]`` (keys present when not 0).
    skips: list[Issue] = field(default_factory=list)
    repairs: list[Issue] = field(default_factory=list)
    skip_kinds: Counter = field(default_factory=Counter)
    repair_kinds: Counter = field(default_factory=Counter)
    # columns whose values no conversion read (engine.data.columns): said in notes()
    column_use: ColumnUse | None = None
    # what is said of a whole source (text that reads as a transcript, trained as text)
    source_notes: list[str] = field(default_factory=list)
    # preference pairs among the records, when the conversations were handed on rather
    # than kept (load_records(each=...)); None: count them in ``conversations``
    preference_pairs: int | None = None

    def summary(self) -> str:
        lines = [f"{self.counts['ok']} records ok ({self.format}), {self.counts['invalid']} invalid"]
        for kind, n in self.issue_kinds.most_common():
            lines.append(f"  {n} x {kind}")
        lines.extend(f"  {line}" for line in self.notes())
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """What will not be trained as the file has it, beyond invalid records, one line
        per reason: skipped rows, repaired records, preference pairs trained on their
        chosen reply only."""
        total = self.counts.get("ok", 0) + self.counts.get("invalid", 0) + self.counts.get("skipped", 0)
        example = {}
        for issue in self.skips:
            example.setdefault(issue.kind, issue.message)
        lines = list(self.source_notes)
        lines += [
            f"{n} of {total} records skipped: {example.get(kind, kind)}" for kind, n in self.skip_kinds.most_common()
        ]
        if self.column_use is not None:
            lines += self.column_use.notes()
        lines += [
            f"{n} record{'s' if n != 1 else ''} kept after a repair: {kind} (the rest of each conversation is trained)"
            for kind, n in self.repair_kinds.most_common()
        ]
        pairs = self.preference_pairs
        if pairs is None:
            pairs = sum(1 for _, conv in self.conversations if conv.kind == "preference")
        if pairs:
            lines.append(
                f"{pairs} of {total} records are preference pairs: SFT trains the chosen reply; the "
                "rejected reply is not trained"
            )
        return lines

    def require_records(self) -> "LoadResult":
        """Raise DataError when nothing usable was read (training cannot start on it)."""
        if self.counts["ok"] == 0:
            first = f": {self.issues[0]}" if self.issues else (f": {self.skips[0]}" if self.skips else "")
            more = f" (+{self.counts['invalid'] - 1} more issues)" if self.counts["invalid"] > 1 else ""
            raise DataError(f"{self.source_info.get('spec')}: no usable records{first}{more}")
        return self


Reporter = Callable[[Issue], None]


class IssueCollector:
    """The ``on_error`` policy: ``skip`` keeps and counts issues, ``strict`` raises."""

    def __init__(self, on_error: str = "skip", max_kept: int = DEFAULT_MAX_ISSUES_KEPT):
        if on_error not in ("skip", "strict"):
            raise DataError(f"data.on_error: expected skip or strict, got {on_error!r}")
        self.on_error = on_error
        self.max_kept = max_kept
        self.issues: list[Issue] = []
        self.count = 0
        self.kinds: Counter[str] = Counter()
        # skipped rows and repaired records, counted apart (Issue.severity)
        self.skips: list[Issue] = []
        self.repairs: list[Issue] = []
        self.skip_kinds: Counter[str] = Counter()
        self.repair_kinds: Counter[str] = Counter()

    @property
    def skipped(self) -> int:
        return sum(self.skip_kinds.values())

    @property
    def repaired(self) -> int:
        return sum(self.repair_kinds.values())

    def __call__(self, issue: Issue) -> None:
        if issue.severity == "skipped":
            self.skip_kinds[issue.kind] += 1
            if len(self.skips) < self.max_kept:
                self.skips.append(issue)
            return
        if self.on_error == "strict":
            refused = " (on_error strict refuses a record it would repair)" if issue.severity == "repaired" else ""
            raise DataError(f"{issue}{refused}")
        if issue.severity == "repaired":
            self.repair_kinds[issue.kind] += 1
            if len(self.repairs) < self.max_kept:
                self.repairs.append(issue)
            return
        self.count += 1
        self.kinds[issue.kind] += 1
        if len(self.issues) < self.max_kept:
            self.issues.append(issue)


def _strict(issue: Issue) -> None:
    if issue.severity != "skipped":
        raise DataError(str(issue))


# ---------------------------------------------------------------------- resolving


def read_registry(dataset_dir: str | Path) -> dict[str, dict[str, Any]]:
    try:
        return configfile.json_object(Path(dataset_dir) / REGISTRY_FILE, expected="expected an object of dataset entries")
    except configfile.ConfigFileError as exc:
        raise DataError(str(exc)) from None


def _registry_entry(dataset_dir: Path, name: str) -> RegistryEntry:
    registry = read_registry(dataset_dir)
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(f"{dataset_dir / REGISTRY_FILE}: no dataset named {name!r}{hint}")
    raw = registry[name]
    if not isinstance(raw, dict):
        raise DataError(f"{dataset_dir / REGISTRY_FILE}: entry {name!r} is not an object")
    return RegistryEntry(name, dataset_dir, raw)


def _sample_path(name: str) -> Path:
    import importlib.resources

    try:
        root = importlib.resources.files("finetui.sample_data")
    except ModuleNotFoundError:
        raise DataError(f"sample:{name}: the sample_data package is not installed") from None
    candidates = [name] if Path(name).suffix in SUFFIXES else [name + s for s in SAMPLE_SUFFIXES]
    for candidate in candidates:
        item = root / candidate
        if item.is_file():
            return Path(str(item))
    available = sorted(
        {Path(p.name).stem for p in root.iterdir() if Path(p.name).suffix in SAMPLE_SUFFIXES and p.is_file()}
    )
    raise DataError(f"sample:{name}: no such sample (available: {', '.join(available) or 'none'})")


def _split_of(rel: Path) -> str | None:
    for part in rel.parts:
        stem = part.split(".")[0].lower()
        for split in SPLIT_NAMES:
            if stem == split or stem.startswith((f"{split}-", f"{split}_")):
                return split
    return None


def _folder_files(folder: Path, split: str) -> tuple[list[Path], list[str]]:
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in SUFFIXES or path.name == REGISTRY_FILE:
            skipped.append(str(path))
            continue
        files.append(path)
    if not files:
        kinds = ", ".join(sorted(SUFFIXES))
        raise DataError(f"{folder}: no data files in this folder (looked for {kinds}, hidden files skipped)")
    splits = {p: _split_of(p.relative_to(folder)) for p in files}
    if any(splits.values()):
        chosen = [p for p in files if splits[p] == split]
        if not chosen:
            found = ", ".join(sorted({s for s in splits.values() if s}))
            raise DataError(f"{folder}: files are named by split ({found}) but none is {split!r}; set data.split")
        skipped.extend(str(p) for p in files if p not in chosen)
        files = chosen
    return files, skipped


def _local(path: Path, spec: str, kind: str, split: str) -> Source:
    if path.is_dir():
        files, skipped = _folder_files(path, split)
        return Source(kind="folder" if kind == "file" else kind, spec=spec, paths=files, skipped_files=skipped, split=split)
    return Source(kind=kind, spec=spec, paths=[path], split=split)


def _outside(entry: RegistryEntry, path: Path, what: str) -> DataError:
    registry = entry.dataset_dir / REGISTRY_FILE
    return DataError(
        f"{registry}: entry {clip(entry.name)!r}: {what} is outside the dataset folder "
        f"{entry.dataset_dir.resolve()} (it is {clip(str(path))}); an entry reads only files inside its folder: "
        "move the file there, or give its path as data.path yourself"
    )


def _entry_path(entry: RegistryEntry, spec: str) -> Path:
    """The entry's file_name, kept inside its dataset folder (symlinks resolved): a
    downloaded dataset_info.json cannot make finetui read ../secret or /etc/hostname."""
    name = entry.file_name
    registry = entry.dataset_dir / REGISTRY_FILE
    if not isinstance(name, str):
        raise DataError(f"{registry}: entry {clip(entry.name)!r}: file_name must be a string, got {shown(name)}")
    if Path(name).is_absolute():
        raise _outside(entry, Path(name), f"file_name {clip(name)!r} (an absolute path)")
    path = entry.dataset_dir / name
    if not path.exists():
        raise DataError(f"{spec}: file_name {name!r} not found in {entry.dataset_dir}")
    root = entry.dataset_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise _outside(entry, path.resolve(), f"file_name {clip(name)!r}")
    return path


def _from_entry(entry: RegistryEntry, spec: str, split: str, subset: str | None) -> Source:
    fmt, columns, tags = registry_format(entry.raw)
    if entry.file_name is not None:
        path = _entry_path(entry, spec)
        source = _local(path, spec, "registry", entry.raw.get("split", split))
        root = entry.dataset_dir.resolve()
        for item in source.paths:  # a folder entry: no file in it may lead out either
            if not item.resolve().is_relative_to(root):
                raise _outside(entry, item.resolve(), f"file {clip(str(item))}")
    elif entry.hf_hub_url:
        source = Source(
            kind="registry",
            spec=spec,
            hub_id=entry.hf_hub_url,
            split=entry.raw.get("split", split),
            subset=entry.raw.get("subset", subset),
            hub_data_dir=entry.raw.get("folder"),
        )
    else:
        hubs = [k for k in ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry.raw]
        raise DataError(
            f"{spec}: entry has no file_name or hf_hub_url (only {', '.join(hubs) or 'nothing'}); "
            "finetui reads local files and Hugging Face datasets"
        )
    source.entry, source.format, source.columns, source.tags = entry, fmt, columns, tags
    return source


def resolve_source(
    spec: str | Path, *, dataset_dir: str | Path | None = None, split: str = "train", subset: str | None = None
) -> Source:
    """Work out what a ``data.path`` names, without reading records yet."""
    text = str(spec).strip()
    if not text:
        raise DataError("data.path is empty")
    if text.startswith("sample:"):
        return _local(_sample_path(text[len("sample:"):]), text, "sample", split)
    match = _REGISTRY_SPEC.match(text)
    if match and not Path(text).exists():
        registry = Path(match["file"]).expanduser()
        return _from_entry(_registry_entry(registry.parent, match["name"]), text, split, subset)
    path = Path(text).expanduser()
    if path.name == REGISTRY_FILE and path.is_file():
        raise DataError(f"{text}: a dataset registry; name an entry as {text}:NAME")
    if path.exists():
        return _local(path, text, "file", split)
    # A bare name is a dataset_info.json entry before it is a hub id (LLaMA-Factory's rule):
    # the given dataset_dir, else ./data when it holds a dataset_info.json. hf:NAME is the hub.
    registry_dir = dataset_dir
    if registry_dir is None and not text.startswith("hf:") and (Path(DEFAULT_DATASET_DIR) / REGISTRY_FILE).is_file():
        registry_dir = DEFAULT_DATASET_DIR
    if registry_dir is not None and (Path(registry_dir) / REGISTRY_FILE).is_file():
        registry = read_registry(registry_dir)
        if text in registry:
            return _from_entry(_registry_entry(Path(registry_dir), text), f"{registry_dir}/{REGISTRY_FILE}:{text}", split, subset)
    if text.startswith("hf:"):
        return Source(kind="hub", spec=text, hub_id=text[3:], split=split, subset=subset)
    if _HUB_ID.match(text) and path.suffix.lower() not in SUFFIXES:
        return Source(kind="hub", spec=text, hub_id=text, split=split, subset=subset)
    if dataset_dir is not None:
        raise DataError(f"{text}: no such file, folder, or entry in {Path(dataset_dir) / REGISTRY_FILE}")
    raise DataError(f"{text}: no such file or folder")


# ------------------------------------------------------------------------ reading


def _file_problem(path: Path) -> str | None:
    """A reason the file cannot be read as text data, or None."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "file is empty"
        with open(path, "rb") as fh:
            head = fh.read(BINARY_SNIFF_BYTES)
            if b"\0" in head:  # binary, or a stray NUL in a line: judged on more lines
                head += fh.read(BINARY_NUL_SNIFF_BYTES - len(head))
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if b"\0" in head and _binary(head):
        return "binary file, not text (NUL bytes in the first KB; save it as UTF-8 text)"
    return None


def _binary(head: bytes) -> bool:
    """Whether a file's first bytes, holding a NUL, are binary rather than text with a
    stray NUL in a line or two (those lines are skipped, file:line, the rest is read):
    UTF-16 (a BOM), bytes that are not UTF-8, or NULs in most of its lines."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut by the sniff's end
            return True
    lines = head.split(b"\n")
    return sum(b"\0" in line for line in lines) * 2 > len(lines)


def _bad_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def too_long_message(size: int, limit: int) -> str:
    return f"line too long ({format_bytes(size, si=True)} > limit {format_bytes(limit, si=True)})"


def _drain_line(fh) -> int:
    """Skip the rest of an over-long line in bounded chunks; return the bytes skipped."""
    skipped = 0
    while True:
        chunk = fh.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _iter_lines(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str):
    """(line_no, text) for each line of a file, bad lines reported; bounded memory."""
    with open(path, "rb") as fh:
        line_no = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                report(Issue(src, line_no, None, too_long_message(len(raw) + _drain_line(fh), max_line_bytes)))
                yield line_no, None
                continue
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            problem = nul_problem(raw)
            if problem:  # one line of binary costs that line, not the file
                report(Issue(src, line_no, None, problem))
                yield line_no, None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if encoding_errors != "replace":
                    report(Issue(src, line_no, None, _bad_utf8(raw, exc)))
                    yield line_no, None
                    continue
                text = raw.decode("utf-8", errors="replace")
            yield line_no, text.rstrip("\r\n")


def _read_jsonl(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str):
    content = False
    for line_no, text in _iter_lines(path, src, report, max_line_bytes, encoding_errors):
        if text is None:
            content = True
            continue
        if not text.strip():
            continue
        content = True
        data, problem = json_line(text)
        if problem:
            report(Issue(src, line_no, None, problem))
            continue
        yield line_no, None, data
    if not content:
        report(Issue(src, None, None, "file is empty"))


class _JsonSyntax(Exception):
    def __init__(self, pos: int, msg: str):
        self.pos, self.msg = pos, msg


class _LineCounter:
    """Line of a character position, counted incrementally (positions mostly increase)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        if pos < self.pos:
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _skip_ws(text: str, pos: int) -> int:
    return _JSON_WS.match(text, pos).end()


def _scan_array(text: str, pos: int) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) for each element of the JSON array at ``pos``."""
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return
    while True:
        try:
            value, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _JsonSyntax(exc.pos, exc.msg) from None
        except RecursionError:
            raise _JsonSyntax(pos, too_deep_message()) from None
        yield pos, end, value
        pos = _skip_ws(text, end)
        if pos >= len(text):
            raise _JsonSyntax(pos, "unterminated array (missing ']')")
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif text[pos] == "]":
            return
        else:
            raise _JsonSyntax(pos, "expected ',' or ']' after an array element")


def _member_position(text: str, pos: int, wanted: str) -> int:
    """Position of the value of key ``wanted`` in the (valid) JSON object at ``pos``."""
    pos = _skip_ws(text, pos + 1)
    while not text.startswith("}", pos):
        key, pos = _decoder.raw_decode(text, pos)
        pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # past ':'
        if key == wanted:
            return pos
        _, pos = _decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
    raise KeyError(wanted)


def _looks_like_json_lines(text: str, pos: int) -> bool:
    """Whether the text from ``pos`` reads as one object per line (first two lines)."""
    first_end = text.find("\n", pos)
    if first_end == -1:
        return False
    second = _skip_ws(text, first_end)
    return text[pos:first_end].rstrip().endswith("}") and text.startswith("{", second)


def _records_key(obj: dict[str, Any], split: str) -> str | None:
    """Which list in a JSON object holds the records, or None for a single record."""
    if detect_one(obj) is not None:
        return None
    lists = [k for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if not lists:
        return None
    if len(lists) == 1:
        return lists[0]
    for key in (split, *CONTAINER_KEYS):
        if key in lists:
            return key
    raise DataError(f"a JSON object with several lists ({', '.join(lists)}); cannot tell which holds the records")


def _starts_array(path: Path) -> bool:
    """Whether the file's JSON starts with ``[`` (after a BOM and whitespace)."""
    with open(path, "rb") as fh:
        head = fh.read(BINARY_SNIFF_BYTES)
        while head and not head.lstrip(b"\xef\xbb\xbf \t\r\n"):
            more = fh.read(BINARY_SNIFF_BYTES)
            if not more:
                break
            head += more
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


class _JsonStream:
    """A JSON text read in chunks: ``buf`` holds what is not consumed yet; lines and
    columns are counted across what was dropped."""

    def __init__(self, fh, encoding_errors: str):
        errors = "replace" if encoding_errors == "replace" else "surrogateescape"
        self.check_bytes = errors == "surrogateescape"
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors)
        self.buf = ""
        self.eof = False
        self.bad = False  # undecodable bytes seen (surrogate escapes in the text)
        self.base_line = 1  # line of buf[0]
        self.base_col = 0  # characters of buf[0]'s line before it
        self._at, self._line = 0, 1  # incremental line count within buf

    def more(self) -> bool:
        """Read the next chunk; False at the end of the file."""
        if self.eof:
            return False
        raw = self.fh.read(JSON_CHUNK_BYTES)
        text = self.decoder.decode(raw, final=not raw)
        if not raw:
            self.eof = True
        if not self.buf and text.startswith("\ufeff"):  # a BOM cut by the chunk size
            text = text[1:]
        if self.check_bytes and not self.bad and _SURROGATE.search(text):
            self.bad = True
        self.buf += text
        return bool(raw) or bool(text)

    def ws(self, pos: int) -> int:
        """Position of the next non-whitespace character (reading on as needed); len(buf) at the end."""
        while True:
            pos = _skip_ws(self.buf, pos)
            if pos < len(self.buf) or not self.more():
                return pos

    def line(self, pos: int) -> int:
        if pos < self._at:
            self._at, self._line = 0, self.base_line
        self._line += self.buf.count("\n", self._at, pos)
        self._at = pos
        return self._line

    def column(self, pos: int) -> int:
        nl = self.buf.rfind("\n", 0, pos)
        return pos - nl if nl >= 0 else self.base_col + pos + 1

    def drop(self, pos: int) -> int:
        """Forget ``buf[:pos]``; returns the new position of ``pos`` (0)."""
        self.line(pos)
        nl = self.buf.rfind("\n", 0, pos)
        self.base_col = pos - nl - 1 if nl >= 0 else self.base_col + pos
        self.base_line = self._line
        self.buf = self.buf[pos:]
        self._at, self._line = 0, self.base_line
        return 0


def _stream_json_array(path: Path, src: str, report: Reporter, encoding_errors: str):
    """The elements of a top-level JSON array, read in chunks of JSON_CHUNK_BYTES: memory
    holds one chunk and the element being read, not the file (a 273 MB array is ~8 MB)."""
    with open(path, "rb") as fh:
        s = _JsonStream(fh, encoding_errors)
        pos = s.ws(0)
        if pos >= len(s.buf):
            report(Issue(src, None, None, "file is empty"))
            return

        def syntax(pos: int, msg: str) -> None:
            report(Issue(src, s.line(pos), None, f"{_invalid(msg)} (column {s.column(pos)}); "
                                                 "the rest of the file could not be read"))

        pos = s.ws(pos + 1)  # past '['
        if s.buf.startswith("]", pos):
            return
        while True:
            try:
                value, end = _decoder.raw_decode(s.buf, pos)
            except json.JSONDecodeError as exc:
                # cut by the chunk's end (a string runs on): read on and try again
                if (exc.pos >= len(s.buf) - 16 or exc.msg.startswith("Unterminated string")) and s.more():
                    continue
                syntax(exc.pos, exc.msg)
                return
            except RecursionError:
                syntax(pos, too_deep_message())
                return
            if end > len(s.buf) - 16 and s.more():  # a number may go on in the next chunk
                continue
            bad = _SURROGATE.search(s.buf, pos, end) if s.bad else None
            deep = None if bad else nesting_problem(value, s.buf, pos, end)
            if bad:
                report(Issue(src, s.line(bad.start()), None, f"invalid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})"))
            elif deep:
                report(Issue(src, s.line(pos), None, deep))
            else:
                yield s.line(pos), None, value
            pos = s.ws(end)
            if pos >= len(s.buf):
                syntax(pos, "unterminated array (missing ']')")
                return
            if s.buf[pos] == "]":
                return
            if s.buf[pos] != ",":
                syntax(pos, "expected ',' or ']' after an array element")
                return
            pos = s.ws(pos + 1)
            if pos > JSON_CHUNK_BYTES:
                pos = s.drop(pos)


def _read_json(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str, split: str):
    if _starts_array(path):
        yield from _stream_json_array(path, src, report, encoding_errors)
        return
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    bad_bytes = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Keep going so one bad byte costs one record, not the file; records that hold
        # undecodable bytes are found by their surrogate escapes and reported below.
        bad_bytes = encoding_errors != "replace"
        text = raw.decode("utf-8", errors="surrogateescape" if bad_bytes else "replace")
    del raw
    line_of = _LineCounter(text)
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        report(Issue(src, None, None, "file is empty"))
        return

    def checked(start: int, end: int, value: Any):
        if bad_bytes:
            bad = _SURROGATE.search(text, start, end)
            if bad:
                line = line_of(bad.start())
                report(Issue(src, line, None, f"invalid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})"))
                return None
        deep = nesting_problem(value, text, start, end)
        if deep:
            report(Issue(src, line_of(start), None, deep))
            return None
        return (line_of(start), None, value)

    def syntax(pos: int, msg: str, after: str = "") -> Issue:
        line = line_of(pos)
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return Issue(src, line, None, f"{_invalid(msg)} (column {column}){after}")

    try:
        if text[pos] == "[":
            for start, end, value in _scan_array(text, pos):
                item = checked(start, end, value)
                if item:
                    yield item
            return
        if text[pos] != "{":
            value, _ = _decoder.raw_decode(text, pos)
            report(Issue(src, line_of(pos), None, f"top-level JSON is {type(value).__name__}; expected a list of records or an object"))
            return
        value, end = _decoder.raw_decode(text, pos)
    except _JsonSyntax as exc:
        report(syntax(exc.pos, exc.msg, "; the rest of the file could not be read"))
        return
    except (json.JSONDecodeError, RecursionError) as exc:
        if _looks_like_json_lines(text, pos):
            # A bad first line of JSON lines saved as .json: read the lines one by one.
            yield from _read_jsonl(path, src, report, max_line_bytes, encoding_errors)
        elif isinstance(exc, RecursionError):
            report(syntax(pos, too_deep_message()))
        else:
            report(syntax(exc.pos, exc.msg))
        return
    rest = _skip_ws(text, end)
    if rest < len(text):
        if text[rest] == "{":
            # JSON lines in a .json file: read it as such.
            yield from _read_jsonl(path, src, report, max_line_bytes, encoding_errors)
        else:
            report(syntax(rest, "extra data after the top-level object"))
        return
    try:
        key = _records_key(value, split)
    except DataError as exc:
        report(Issue(src, line_of(pos), None, str(exc)))
        return
    if key is None:
        item = checked(pos, end, value)
        if item:
            yield item
        return
    for start, end_, element in _scan_array(text, _member_position(text, pos, key)):
        item = checked(start, end_, element)
        if item:
            yield item


def _read_csv(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str):
    csv.field_size_limit(max(csv.field_size_limit(), max_line_bytes))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    errors = "replace" if encoding_errors == "replace" else "surrogateescape"
    with open(path, newline="", encoding="utf-8-sig", errors=errors) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            report(Issue(src, 1, None, f"invalid CSV header: {exc}"))
            return
        if not header or not any(h.strip() for h in header):
            report(Issue(src, None, None, "file is empty" if header is None else "CSV header is empty"))
            return
        header = [h.strip() for h in header]
        end_line = reader.line_num
        while True:
            start = end_line + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end_line = reader.line_num
                report(Issue(src, start, None, f"invalid CSV: {exc}"))
                continue
            end_line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            bad = next((c for c in row if _SURROGATE.search(c)), None)
            if bad is not None:
                byte = ord(_SURROGATE.search(bad).group()) - 0xDC00
                report(Issue(src, start, None, f"invalid UTF-8 (byte 0x{byte:02x})"))
                continue
            if len(row) != len(header):
                report(Issue(src, start, None, f"expected {len(header)} columns, got {len(row)}"))
                continue
            yield start, None, dict(zip(header, row))


def _read_txt(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str):
    """One document per line, or per blank-line-separated block when the file has any. A
    transcript (``Name: text`` lines, :func:`transcripts.sniff`) is read one conversation a
    block, blocks separated by blank or ``---`` lines (only ``---`` lines when blank lines
    stand between single turns), the whole file when it has neither."""
    with open(path, "rb") as fh:
        head = fh.read(TXT_SNIFF_BYTES)
    transcript = transcripts.sniff(head)
    blocks = transcript is not None or bool(_BLANK_LINE_BETWEEN.search(head))

    def separates(text: str) -> bool:
        if transcript is not None and transcripts.is_separator(text):
            return True
        return not text.strip() and transcript != "dashes"

    content = False
    if not blocks:
        for line_no, text in _iter_lines(path, src, report, max_line_bytes, encoding_errors):
            if text is None or text.strip():
                content = True
            if text and text.strip():
                yield line_no, None, {"text": text}
    else:
        block: list[str] = []
        start, size, broken = 0, 0, False
        for line_no, text in _iter_lines(path, src, report, max_line_bytes, encoding_errors):
            if text is not None and separates(text):
                if block and not broken:
                    yield start, None, {"text": "\n".join(block)}
                block, size, broken = [], 0, False
                continue
            if text is not None and not text.strip():
                continue  # a transcript's blank line between two turns
            content = True
            if not block and not broken:
                start = line_no
            if text is None:
                # Already reported; the rest of its block is unusable too.
                broken, block = True, []
                continue
            if broken:
                continue
            size += len(text) + 1
            if size > max_line_bytes:
                report(Issue(src, start, None, f"block too long (over {format_bytes(max_line_bytes, si=True)})"))
                broken, block = True, []
                continue
            block.append(text)
        if block and not broken:
            yield start, None, {"text": "\n".join(block)}
    if not content:
        report(Issue(src, None, None, "file is empty"))


def _read_parquet(path: Path, src: str, report: Reporter, max_line_bytes: int, encoding_errors: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{src}: reading parquet needs the 'pyarrow' package") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        report(Issue(src, None, None, f"not a valid parquet file: {str(exc).splitlines()[0]}"))
        return
    if parquet.metadata.num_rows == 0:
        report(Issue(src, None, None, "file is empty"))
        return
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            yield None, row, data
            row += 1


def _sniff_kind(path: Path) -> str:
    """Kind of a file with an unknown suffix, from its first non-blank character."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    return "txt"


def _iter_file(path: Path, report: Reporter, max_line_bytes: int, encoding_errors: str, split: str):
    src = str(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind != "parquet":
        problem = _file_problem(path)
        if problem:
            report(Issue(src, None, None, problem))
            return
    if kind is None:
        kind = _sniff_kind(path)
    if kind == "parquet" and path.stat().st_size == 0:
        report(Issue(src, None, None, "file is empty"))
        return
    if kind == "json":
        rows = _read_json(path, src, report, max_line_bytes, encoding_errors, split)
    else:
        reader = {"jsonl": _read_jsonl, "csv": _read_csv, "txt": _read_txt, "parquet": _read_parquet}[kind]
        rows = reader(path, src, report, max_line_bytes, encoding_errors)
    for line, row, data in rows:
        yield src, line, row, data


# --------------------------------------------------------------------------- hub


class _ForcedOffline:
    """Put datasets/huggingface_hub in offline mode for one call: they read the setting
    at import, so the environment alone is not enough once they are imported."""

    def __enter__(self):
        import datasets.config
        import huggingface_hub.constants

        self.saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        import datasets.config
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = self.saved
        return False


def _open_hub(hub_id: str, subset: str | None, split: str, streaming: bool, data_dir: str | None):
    offline_reason = "HF_HUB_OFFLINE=1" if hub.env_offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") else None
    if offline_reason is None and not hub.reachable(HUB_PROBE_TIMEOUT_S):  # datasets retries for ~25 s
        offline_reason = "no network"
    try:
        import datasets
    except ImportError:
        raise DataError(f"hub dataset {hub_id!r}: reading hub datasets needs the 'datasets' package") from None
    kwargs: dict[str, Any] = {"split": split, "streaming": streaming}
    if data_dir:
        kwargs["data_dir"] = data_dir
    try:
        if offline_reason:
            with _ForcedOffline():
                return datasets.load_dataset(hub_id, subset, **kwargs)
        return datasets.load_dataset(hub_id, subset, **kwargs)
    except Exception as exc:  # datasets raises many types; all mean "cannot read it"
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if offline_reason and isinstance(exc, (ConnectionError, FileNotFoundError, OSError)):
            raise DataError(
                f"hub dataset {hub_id!r} is not in the local cache and the network is unreachable "
                f"({offline_reason}): download it on a connected machine or point data.path at a local file"
            ) from None
        if "split" in message.lower() and split in message:
            raise DataError(f"hub dataset {hub_id!r}: {message}; set data.split") from None
        raise DataError(f"hub dataset {hub_id!r}: {message}") from None


def _iter_hub(source: Source):
    dataset = _open_hub(source.hub_id, source.subset, source.split, source.streaming, source.hub_data_dir)
    src = f"hf:{source.hub_id}[{source.split}]"
    for row, data in enumerate(dataset):
        yield src, None, row, data


# ------------------------------------------------------------------------ public


def iter_records(
    source: Source | str | Path,
    *,
    report: Reporter | None = None,
    dataset_dir: str | Path | None = None,
    split: str = "train",
    subset: str | None = None,
    streaming: bool = False,
    encoding_errors: str = "strict",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RawRecord]:
    """Every raw record of a source, in order, with its place.

    ``report`` receives each Issue; without one the first issue raises DataError.
    ``encoding_errors="replace"`` decodes bad UTF-8 with U+FFFD instead of reporting it.
    """
    report = report or _strict
    if not isinstance(source, Source):
        source = resolve_source(source, dataset_dir=dataset_dir, split=split, subset=subset)
    if source.hub_id:
        source.streaming = streaming
        rows = _iter_hub(source)
    else:
        rows = (
            item
            for path in source.paths
            for item in _iter_file(path, report, max_line_bytes, encoding_errors, source.split)
        )
    for index, (src, line, row, data) in enumerate(rows):
        yield RawRecord(index, src, line, data, row)


def _normalise(
    records: Iterator[RawRecord],
    fmt: str,
    columns: Mapping[str, str],
    tags: Mapping[str, str],
    report: Reporter,
    formats_seen: dict[str, str],
    column_use: ColumnUse | None = None,
    roles: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
) -> Iterator[tuple[RawRecord, Conversation]]:
    """Conversations from raw records; the format is detected per source file (a folder may
    mix formats) from its first DETECT_SAMPLE records. Rows of a transcript (one utterance
    each) are grouped by their conversation id until their file is read; text that reads as
    a transcript is one only when ``roles`` are given, else a line in ``notes`` says so."""
    pending: list[RawRecord] = []
    roles = transcripts.check_roles(roles)
    groups = transcripts.Groups(columns)

    def decide(source: str, sample: list[RawRecord]) -> None:
        data = [r.data for r in sample]
        if fmt != "auto":
            formats_seen[source] = fmt
        else:
            try:
                found = detect(data, columns, tags)
            except DataError as exc:
                # A format problem is a configuration problem: stop under either policy.
                raise DataError(f"{source}: {exc}") from None
            if found == "text":
                speakers = transcripts.text_transcript(data, columns)
                if speakers and roles:
                    found = "transcript"
                elif speakers and notes is not None:
                    notes.append(transcripts.looks_like_note(source, speakers))
            formats_seen[source] = found
        if formats_seen[source] == "transcript":
            try:
                transcripts.require_roles(data, columns, roles)
            except DataError as exc:
                raise DataError(f"{source}: {exc}") from None

    def at_turn(record: RawRecord, turn, field: str | None, message: str, severity: str = "invalid") -> Issue:
        """An Issue at a transcript turn's own place (its row, its line of a .txt block),
        else at the record's, the field naming the turn's line within the text."""
        if turn is not None and (turn.line is not None or turn.row is not None):
            return Issue(record.source, turn.line, field, message, turn.row, severity)
        if turn is not None and turn.offset:
            field = transcripts.locate(turn)
        return Issue(record.source, record.line, field, message, record.row, severity)

    def convert_transcript(record: RawRecord) -> Conversation | None:
        if transcripts.is_row(record.data, columns):
            groups.add(record)  # converted with the rest of its conversation (drain)
            return None
        first_line = record.line if _is_txt(record.source) else None
        reads = _Reads(record.data) if isinstance(record.data, dict) else record.data
        try:
            if not isinstance(reads, dict):
                raise RecordError(None, "record is not an object")
            conversation, dropped = transcripts.from_text(reads, columns, roles, first_line)
        except RecordError as exc:
            report(at_turn(record, getattr(exc, "turn", None), exc.field, exc.message))
            return None
        if column_use is not None:
            column_use.add(record.data, reads.read, record, "transcript")
        for turn, message in dropped:
            report(at_turn(record, turn, transcripts.locate(turn), message, "repaired"))
        conversation.repairs = []
        return conversation

    def drain() -> Iterator[tuple[RawRecord, Conversation]]:
        """The conversations of the transcript rows read so far (a file has ended)."""
        for rows in groups.take():
            first = rows[0]
            used: list[set[str]] = []
            try:
                conversation, dropped = transcripts.from_rows(rows, columns, roles, used)
            except RecordError as exc:
                report(at_turn(first, getattr(exc, "turn", None), exc.field, exc.message))
                continue
            if column_use is not None:
                for record, read in zip(rows, used):
                    column_use.add(record.data, read, record, "transcript")
            for turn, message in dropped:
                report(at_turn(first, turn, transcripts.locate(turn), message, "repaired"))
            conversation.repairs = []
            yield first, conversation

    def convert(record: RawRecord) -> Conversation | None:
        if formats_seen[record.source] == "transcript":
            return convert_transcript(record)
        try:
            used = set() if column_use is not None else None
            conversation = to_conversation(record.data, formats_seen[record.source], columns, tags, used=used)
            if column_use is not None:
                column_use.add(record.data, used, record, formats_seen[record.source])
        except RecordSkipped as exc:
            report(Issue(record.source, record.line, exc.field, exc.message, record.row, "skipped"))
            return None
        except RecordError as exc:
            report(Issue(record.source, record.line, exc.field, exc.message, record.row))
            return None
        for where, message in conversation.repairs:
            report(Issue(record.source, record.line, where, message, record.row, "repaired"))
        return conversation

    def flush() -> Iterator[tuple[RawRecord, Conversation]]:
        decide(pending[0].source, pending)
        for record in pending:
            conversation = convert(record)
            if conversation is not None:
                yield record, conversation
        pending.clear()

    source = None
    for record in records:
        if record.source != source:
            if pending and pending[0].source != record.source:
                yield from flush()
            yield from drain()
            source = record.source
        if record.source in formats_seen:
            conversation = convert(record)
            if conversation is not None:
                yield record, conversation
            continue
        pending.append(record)
        if fmt != "auto" or len(pending) >= DETECT_SAMPLE:
            yield from flush()
    if pending:
        yield from flush()
    yield from drain()


@functools.lru_cache(maxsize=256)
def _is_txt(source: str) -> bool:
    """Whether a source file is read as text (its records' lines are the file's own)."""
    kind = SUFFIXES.get(Path(source).suffix.lower())
    return kind == "txt" or (kind is None and Path(source).is_file() and _sniff_kind(Path(source)) == "txt")


def iter_conversations(
    path: str | Path | Source,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    report: Reporter | None = None,
    formats_seen: dict[str, str] | None = None,
    column_use: ColumnUse | None = None,
    roles: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
    **read_options: Any,
) -> Iterator[tuple[RawRecord, Conversation]]:
    """Streaming form of :func:`load_records`: (record, conversation) pairs; problems go to
    ``report`` (strict when None). ``read_options`` are :func:`iter_records`'s. ``roles``: a
    transcript's speaker -> role mapping; ``notes`` receives what is said of a whole
    source (text that reads as a transcript, trained as text)."""
    if format != "auto" and format not in FORMATS:
        raise DataError(f"data.format: unknown format {format!r} (known: auto, {', '.join(FORMATS)})")
    report = report or _strict
    source = path if isinstance(path, Source) else resolve_source(
        path,
        dataset_dir=read_options.pop("dataset_dir", None),
        split=read_options.pop("split", "train"),
        subset=read_options.pop("subset", None),
    )
    for key in ("dataset_dir", "split", "subset"):
        read_options.pop(key, None)
    if format == "auto" and source.format:
        format = source.format
    merged_columns = {**source.columns, **(columns or {})}
    merged_tags = {**source.tags, **(tags or {})}
    records = iter_records(source, report=report, **read_options)
    if column_use is not None:
        column_use.columns = dict(columns or {})  # the user's mapping (a registry's is its own business)
    yield from _normalise(records, format, merged_columns, merged_tags, report,
                          formats_seen if formats_seen is not None else {}, column_use, roles, notes)


def load_records(
    path: str | Path,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    dataset_dir: str | Path | None = None,
    split: str = "train",
    subset: str | None = None,
    streaming: bool = False,
    max_samples: int | None = None,
    on_error: str = "skip",
    encoding_errors: str = "strict",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    keep_raw: bool = False,
    roles: Mapping[str, str] | None = None,
    each: Callable[[RawRecord, Conversation], None] | None = None,
) -> LoadResult:
    """Read a data source and normalise every record to a Conversation (``roles``: a
    transcript's speaker -> role mapping, :mod:`engine.data.transcripts`).

    ``on_error="skip"`` collects issues and goes on; ``"strict"`` raises DataError at the
    first. A source whose format cannot be detected raises DataError under both. The
    RawRecords kept in the result carry their place only (``data=None``) unless
    ``keep_raw``, so a large dataset is not held twice. ``each``: called with every
    (record, conversation) as it is read, instead of keeping them (``conversations`` is
    then empty and memory flat: ``finetui data inspect`` on a million records).
    """
    collector = IssueCollector(on_error)
    source = resolve_source(path, dataset_dir=dataset_dir, split=split, subset=subset)
    formats_seen: dict[str, str] = {}
    column_use = ColumnUse()
    source_notes: list[str] = []
    conversations: list[tuple[RawRecord, Conversation]] = []
    pairs = iter_conversations(
        source,
        format=format,
        columns=columns,
        report=collector,
        formats_seen=formats_seen,
        column_use=column_use,
        roles=roles,
        notes=source_notes,
        streaming=streaming,
        encoding_errors=encoding_errors,
        max_line_bytes=max_line_bytes,
    )
    n_ok = n_pairs = 0
    for record, conversation in pairs:
        n_ok += 1
        if each is not None:
            n_pairs += conversation.kind == "preference"
            each(record if keep_raw else replace(record, data=None), conversation)
        else:
            conversations.append((record if keep_raw else replace(record, data=None), conversation))
        if max_samples is not None and n_ok >= max_samples:
            pairs.close()
            break
    distinct = sorted(set(formats_seen.values()))
    fmt = distinct[0] if len(distinct) == 1 else ("mixed" if distinct else (source.format or format))
    counts = {"ok": n_ok, "invalid": collector.count}
    if collector.skipped:
        counts["skipped"] = collector.skipped
    if collector.repaired:
        counts["repaired"] = collector.repaired
    return LoadResult(
        conversations=conversations,
        format=fmt,
        issues=collector.issues,
        counts=counts,
        source_info=source.describe(),
        formats=formats_seen,
        issue_kinds=collector.kinds,
        skips=collector.skips,
        repairs=collector.repairs,
        skip_kinds=collector.skip_kinds,
        repair_kinds=collector.repair_kinds,
        column_use=column_use,
        source_notes=source_notes,
        preference_pairs=n_pairs if each is not None else None,
    )
