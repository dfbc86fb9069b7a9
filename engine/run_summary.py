"""A run's summary: what ``finetui runs list`` / ``show`` and the Runs screen show, kept in
``runs/<id>/summary.json`` so that listing does not read a long ``events.jsonl``.

Light module (stdlib only). The summary is the events file folded up to a byte offset: the
trainer rewrites it (atomically) as it emits events, and whoever reads it folds in the
lines written since, so it is exact even while a run goes on. When summary.json is absent
(a run from before summaries), garbled, or does not match the events file (a file
replaced by another or cut short: its first bytes or its size disagree), it is rebuilt from
events.jsonl, streaming (bounded memory), and stored again when that took a long read.

Bad lines cost only themselves: a line that is not a usable event (see
``engine.events.decode_checked``) is skipped and kept as a problem, ``events.jsonl:LINE:
why``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from finetui.engine import atomic
from finetui.engine import events as ev

SUMMARY_FILE = "summary.json"
EVENTS_FILE = "events.jsonl"
FORMAT = 1
HEAD_BYTES = 4096  # the events file's first bytes, hashed: a different file is noticed
MAX_PROBLEMS = 20  # bad lines kept by number and reason; the rest are counted
STORE_AFTER_BYTES = 1 << 20  # a reader that had to fold this much stores the result
TRAINER_EVERY_S = 5.0  # the trainer rewrites the summary at most this often on steps and logs


@dataclass
class Summary:
    """The fold of an events file's first ``offset`` bytes (``lines`` lines)."""

    format: int = FORMAT
    offset: int = 0
    lines: int = 0
    head: str = ""  # sha1 of the file's first min(offset, HEAD_BYTES) bytes
    events: int = 0
    sessions: int = 0  # run_started events (1 + resumes)
    started: float | None = None
    last_time: float | None = None
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    last_loss: float | None = None
    best_eval_loss: float | None = None
    checkpoints: list[str] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    finished: dict[str, Any] | None = None  # {status, outputs, time} of the last session's end
    problems: list[list[Any]] = field(default_factory=list)  # [line, why], the first MAX_PROBLEMS
    problem_count: int = 0

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one (checked) event in."""
        kind = event.get("type")
        when = event.get("time")
        self.events += 1
        if kind in ev.SAMPLE_TYPES:
            return  # a reading from its own thread: no sign of life, no new session
        if when is not None:
            self.last_time = when
        if self.finished is not None and kind != "finished":
            # Anything after a finished event is a new session (a resume): how the earlier
            # one ended no longer decides.
            self.finished = None
            self.error = self.hint = None
        if kind == "run_started":
            self.sessions += 1
            self.started = self.started or when
        elif kind == "step":
            self.step = event["step"]
            self.total_steps = event.get("total_steps", self.total_steps)
            self.epoch = event.get("epoch", self.epoch)
            if event.get("loss") is not None:
                self.last_loss = event["loss"]
        elif kind == "eval":
            loss = event.get("eval_loss")
            if loss is not None and (self.best_eval_loss is None or loss < self.best_eval_loss):
                self.best_eval_loss = loss
        elif kind == "checkpoint":
            self.checkpoints.append(event["path"])
        elif kind == "error":
            self.error = event.get("message")
            self.hint = event.get("hint")
        elif kind == "finished":
            self.finished = {"status": event["status"], "outputs": event.get("outputs") or {}, "time": when}

    def problem(self, line: int, why: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append([line, why])

    def problem_lines(self, events_path: str | Path = EVENTS_FILE) -> list[str]:
        """``events.jsonl:LINE: why (line skipped)`` for each bad line kept, and how many more."""
        name = Path(events_path).name
        shown = [f"{name}:{line}: {why} (line skipped)" for line, why in self.problems]
        if self.problem_count > len(self.problems):
            shown.append(f"{name}: {self.problem_count - len(self.problems)} more bad lines skipped")
        return shown

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Summary | None":
        """A stored summary, or None when it is garbled or from another format."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        names = {f.name for f in fields(cls)}
        try:
            summary = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None
        ints = (summary.offset, summary.lines, summary.events, summary.step, summary.problem_count)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ints) \
                or not isinstance(summary.head, str) or not isinstance(summary.checkpoints, list) \
                or not isinstance(summary.problems, list) \
                or not (summary.finished is None or isinstance(summary.finished, dict)):
            return None
        return summary


def _head(path: Path, size: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read(min(size, HEAD_BYTES))).hexdigest()


def _matches(summary: Summary, events: Path, size: int) -> bool:
    """Whether ``summary`` is a fold of the start of this events file."""
    if summary.offset > size:
        return False  # the file was cut short or replaced by a shorter one
    if summary.offset == 0:
        return True
    try:
        if _head(events, summary.offset) != summary.head:
            return False
        with open(events, "rb") as fh:
            fh.seek(summary.offset - 1)
            return fh.read(1) == b"\n"
    except OSError:
        return False


def _stored(run_dir: Path) -> Summary | None:
    try:
        return Summary.from_json((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def fold(summary: Summary, events: Path) -> int:
    """Fold the whole lines written after ``summary.offset`` in; returns the bytes read. A
    last line without its newline is left for later (it is being written)."""
    read = 0
    try:
        fh = open(events, "rb")
    except FileNotFoundError:
        return 0
    with fh:
        fh.seek(summary.offset)
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            read += len(raw)
            summary.lines += 1
            event, problem = ev.decode_checked(raw)
            if event is not None:
                summary.apply(event)
            elif problem is not None:
                summary.problem(summary.lines, problem)
    if read and summary.offset < HEAD_BYTES:
        summary.head = _head(events, summary.offset + read)
    summary.offset += read
    return read


def load(run_dir: str | Path, store: bool | None = None) -> Summary:
    """The run's summary, up to date with its events file. ``store``: True writes it to
    summary.json when it changed, False never does, None (readers) when more than
    STORE_AFTER_BYTES had to be read. Storing is best effort (a read-only folder still
    lists)."""
    run_dir = Path(run_dir)
    events = run_dir / EVENTS_FILE
    try:
        size = events.stat().st_size
    except OSError:
        size = 0
    summary = _stored(run_dir)
    if summary is None or not _matches(summary, events, size):
        summary = Summary()
    read = fold(summary, events) if summary.offset < size else 0
    if store or (store is None and read >= STORE_AFTER_BYTES):
        if read or not (run_dir / SUMMARY_FILE).exists():
            save(run_dir, summary)
    return summary


def save(run_dir: str | Path, summary: Summary) -> bool:
    """Write summary.json whole (engine.atomic); False when the folder cannot take it."""
    try:
        atomic.write_text(Path(run_dir) / SUMMARY_FILE, summary.to_json())
        return True
    except OSError:
        return False


class Keeper:
    """The trainer's side: called after each event it emits, rewrites summary.json (folding
    in what was appended since) at once on the events that decide a status (run_started,
    checkpoint, error, finished), and on the others (steps, evals, logs) at most every
    TRAINER_EVERY_S seconds, so a long run costs a small write now and then."""

    AT_ONCE = ("run_started", "checkpoint", "error", "finished")

    def __init__(self, run_dir: str | Path, every_s: float = TRAINER_EVERY_S):
        self.run_dir = Path(run_dir)
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event.get("type") not in self.AT_ONCE and now - self._last < self.every_s:
            return
        self._last = now
        try:
            load(self.run_dir, store=True)
        except OSError:
            pass  # the summary is a cache: readers rebuild it from events.jsonl
