"""The event stream: one JSON object per line, shared by trainer, CLI and UI.

Light module (stdlib only). The trainer writes each event to its stdout *and* appends it to
``runs/<id>/events.jsonl``; readers use :func:`decode` for both, so a live pipe and a file
written by a run started elsewhere look the same.

Every event carries ``v`` (schema version), ``type``, ``time`` (unix seconds) and
``run_id``; one the trainer also writes to ``events.jsonl`` carries ``offset``, where its
line starts in that file (a reader of the pipe reads from the file what the pipe dropped:
:class:`CatchUp`). The required fields of each type are listed in :data:`SCHEMA`; extra fields are
allowed (readers ignore what they do not know), so adding a field does not bump ``v``.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from finetui.engine.units import format_duration
from finetui.engine.visible import visible

VERSION = 1

# type -> required fields (beyond v/type/time/run_id)
SCHEMA: dict[str, tuple[str, ...]] = {
    # config: the validated config dict; footprint: params_total, params_trainable,
    # size_bytes, flops_per_token; datasets: {train: n, test: n}; devices: [str]
    "run_started": ("config", "footprint", "datasets", "devices"),
    # memory: {allocated_bytes, peak_bytes, rss_bytes}
    "step": (
        "step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm",
        "tokens_per_s", "samples_per_s", "elapsed_s", "eta_s", "memory",
    ),
    "eval": ("step", "eval_loss", "perplexity", "metrics"),
    "checkpoint": ("path", "step"),
    "log": ("level", "message"),
    "error": ("kind", "message", "hint"),
    # status: completed | stopped | killed | failed (killed: written by `finetui runs kill`
    # once the trainer is gone, engine.runs.stop); metrics: final numbers; outputs: {name: path}
    "finished": ("status", "metrics", "outputs"),
    # phase: loading | saving | training | evaluating ...; written only after a quiet spell
    # (engine.heartbeat): a run silent for train.hang_after_s while its trainer lives looks hung
    "heartbeat": ("phase",),
    # Under torchrun (engine.ranks). rank_step: every rank, at each logged step, into its own
    # stream: step_s (wall seconds per optimizer step), own_s (seconds per step of its own
    # forward passes, before it waits for the others), tokens_per_s (its own tokens only).
    "rank_step": ("step", "step_s"),
    # hardware: each node's local rank 0, every engine.ranks.HARDWARE_EVERY_S: gpus (a list
    # of engine.hardware.GpuReading dicts), host {cpu_percent, ram_used_bytes, ram_total_bytes}
    "hardware": ("gpus", "host"),
}

# Readings, not signs of life: written by a thread of their own (engine.ranks), they go on
# while the main thread hangs, so readers never count them when asking whether a run or a
# rank is alive, and they never start a new session after a finished event.
SAMPLE_TYPES = ("hardware",)

# What each event of a run under torchrun carries about where it comes from (engine.ranks.identity):
# rank (global), local_rank, node_rank (torchrun's GROUP_RANK), hostname (the node's).
IDENTITY_FIELDS = ("rank", "local_rank", "node_rank", "hostname")

ERROR_KINDS = ("oom", "disk", "data", "config", "model", "internal")
FINISH_STATUSES = ("completed", "stopped", "killed", "failed")
LOG_LEVELS = ("debug", "info", "warning", "error")


class EventError(ValueError):
    pass


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: send them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def make(type_: str, run_id: str, **fields: Any) -> dict[str, Any]:
    """Build a valid event dict; raises EventError if a required field is missing."""
    if type_ not in SCHEMA:
        raise EventError(f"unknown event type {type_!r} (known: {', '.join(SCHEMA)})")
    missing = [f for f in SCHEMA[type_] if f not in fields]
    if missing:
        raise EventError(f"{type_} event lacks {', '.join(missing)}")
    event = {"v": VERSION, "type": type_, "time": round(time.time(), 3), "run_id": run_id}
    event.update(_clean(fields))
    return event


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def decode_object_line(line: str | bytes) -> dict[str, Any] | None:
    """One JSON-lines line as a JSON object, or None for blank lines, non-JSON output (a
    stray print from a library) and JSON that is not an object; raises nothing. Shared by
    the event stream and the chat worker protocol."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        return None
    return obj if isinstance(obj, dict) else None


_NUMBER = "a number"
_COUNT = "an integer"
_TEXT = "a string"
_MAPPING = "an object"
_LIST = "a list"

# Fields readers use, by event type: (field, what it must be, whether it must be there).
# Optional fields may also be null. Unknown fields and types are let through (a newer
# trainer); these are what the CLI, the runs list and the dashboard read.
_FIELDS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "run_started": (("config", _MAPPING, False), ("footprint", _MAPPING, False), ("datasets", _MAPPING, False),
                    ("devices", _LIST, False), ("data", _MAPPING, False)),
    "step": (("step", _COUNT, True), ("total_steps", _COUNT, True), ("epoch", _NUMBER, False),
             ("loss", _NUMBER, False), ("learning_rate", _NUMBER, False), ("grad_norm", _NUMBER, False),
             ("tokens_per_s", _NUMBER, False), ("samples_per_s", _NUMBER, False), ("elapsed_s", _NUMBER, False),
             ("eta_s", _NUMBER, False), ("memory", _MAPPING, False)),
    "eval": (("step", _COUNT, True), ("eval_loss", _NUMBER, False), ("perplexity", _NUMBER, False),
             ("metrics", _MAPPING, False)),
    "checkpoint": (("path", _TEXT, True), ("step", _COUNT, True)),
    "log": (("level", _TEXT, False), ("message", _TEXT, False)),
    "error": (("kind", _TEXT, False), ("message", _TEXT, False), ("hint", _TEXT, False)),
    "finished": (("status", _TEXT, True), ("metrics", _MAPPING, False), ("outputs", _MAPPING, False)),
    "heartbeat": (("phase", _TEXT, False),),
    "rank_step": (("step", _COUNT, True), ("step_s", _NUMBER, False), ("own_s", _NUMBER, False),
                  ("tokens_per_s", _NUMBER, False), ("memory", _MAPPING, False)),
    "hardware": (("gpus", _LIST, False), ("host", _MAPPING, False)),
}
_IDENTITY = (("rank", _COUNT), ("local_rank", _COUNT), ("node_rank", _COUNT), ("hostname", _TEXT))


def _is(value: Any, what: str) -> bool:
    if what == _TEXT:
        return isinstance(value, str)
    if what == _MAPPING:
        return isinstance(value, dict)
    if what == _LIST:
        return isinstance(value, list)
    if isinstance(value, bool):
        return False
    if what == _COUNT:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:40] + "…"


def event_problem(event: dict[str, Any]) -> str | None:
    """Why a decoded JSON object is not an event readers can use, or None. Checks the
    envelope (v, type, time, run_id) and the type of each field readers use."""
    v = event.get("v")
    if "v" not in event or "type" not in event:
        return f"not an event (no {'v' if 'v' not in event else 'type'})"
    if not _is(v, _COUNT) or v < 1:
        return f"v is {_shown(v)}, not a schema version (an integer)"
    kind = event["type"]
    if not isinstance(kind, str):
        return f"type is {_shown(kind)}, not a string"
    if "time" in event and not _is(event["time"], _NUMBER):
        return f"{kind} event: time is {_shown(event['time'])}, not a number"
    if "run_id" in event and not isinstance(event["run_id"], str):
        return f"{kind} event: run_id is {_shown(event['run_id'])}, not a string"
    for name, what in _IDENTITY:
        if event.get(name) is not None and not _is(event[name], what):
            return f"{kind} event: {name} is {_shown(event[name])}, not {what}"
    for name, what, required in _FIELDS.get(kind, ()):
        if name not in event or event[name] is None:
            if required:
                return f"{kind} event lacks {name}"
            continue
        if not _is(event[name], what):
            return f"{kind} event: {name} is {_shown(event[name])}, not {what}"
    if kind == "run_started" and isinstance(event.get("devices"), list) \
            and not all(isinstance(d, str) for d in event["devices"]):
        return "run_started event: devices holds something that is not a string"
    return None


def decode_checked(line: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One line of the stream: (event, None), (None, why it is not a usable event), or
    (None, None) for a blank line. Raises nothing."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    text = line.strip()
    if not text:
        return None, None
    if not text.startswith("{"):
        return None, "not a JSON object"
    try:
        obj = json.loads(text)
    except RecursionError:
        return None, "JSON nested too deeply"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    problem = event_problem(obj)
    if problem:
        return None, problem
    if obj["v"] > VERSION:
        # A newer trainer: keep what we understand.
        obj.setdefault("_newer_schema", True)
    return obj, None


def decode(line: str | bytes) -> dict[str, Any] | None:
    """Parse one line of the stream. Returns None for blank lines, for non-event output (a
    stray print from a library) and for an event whose envelope or fields have the wrong
    type (see :func:`event_problem`); raises nothing, so one bad line cannot stop a
    reader."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    return decode_checked(line)[0]


def validate(event: dict[str, Any]) -> None:
    """Raise EventError if the event does not follow the schema."""
    for key in ("v", "type", "time", "run_id"):
        if key not in event:
            raise EventError(f"event lacks {key}")
    required = SCHEMA.get(event["type"])
    if required is None:
        raise EventError(f"unknown event type {event['type']!r}")
    missing = [f for f in required if f not in event]
    if missing:
        raise EventError(f"{event['type']} event lacks {', '.join(missing)}")
    if event["type"] == "error" and event["kind"] not in ERROR_KINDS:
        raise EventError(f"error kind {event['kind']!r} not in {ERROR_KINDS}")
    if event["type"] == "finished" and event["status"] not in FINISH_STATUSES:
        raise EventError(f"finished status {event['status']!r} not in {FINISH_STATUSES}")


class EventWriter:
    """Writes events to events.jsonl and then to stdout (the pipe to whoever started us).

    If the pipe breaks (UI gone, SSH dropped) stdout is dropped and the file goes on:
    training must never die because nobody is watching. Nor must it wait for a reader that
    stopped reading (a suspended TUI or CLI, a hung SSH terminal): the pipe is written
    without blocking, and an event it has no room for is dropped there (counted in
    ``pipe_dropped``); the file has it, and each event's ``offset`` lets the reader fetch
    the ones it missed (:class:`CatchUp`). A line the pipe took only in part is finished
    before the next one goes in, so the pipe carries whole lines.

    The file is written whole lines or nothing: a line the disk had no room for is cut
    back off (the pipe still gets it), and a torn last line left by an earlier process
    (killed mid-write) is ended before the first new event, so every event starts on its
    own line. Thread-safe (the trainer's heartbeat thread emits too).
    """

    def __init__(self, run_id: str, path: str | Path | None, stream: IO[str] | None = sys.stdout,
                 identity: dict[str, Any] | None = None):
        self.run_id = run_id
        self.identity = dict(identity or {})  # added to every event (engine.ranks.identity under torchrun)
        self.path = Path(path) if path else None
        self.stream = stream
        self.file_error: OSError | None = None  # the last write the file could not take
        # Called with each event once it is in the file (the trainer keeps the run's
        # summary.json with it: engine.run_summary.Keeper); its errors never stop a run.
        self.after_emit: Callable[[dict[str, Any]], None] | None = None
        self.pipe_dropped = 0  # events the pipe had no room for (the file has them)
        self.last_emit = time.monotonic()  # when the last event went out
        self.finished = False  # a finished event went out: this session said how it ended
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._torn = False
        if self.path:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._torn = _ends_torn(self._fd)
        self._pipe = _nonblocking_pipe(stream)  # None: the stream is not a pipe (a terminal, a file)
        self._pending = b""  # the rest of a line the pipe took only in part

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        return self._emit(type_, fields, alive=True)

    def sample(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        """A reading (one of :data:`SAMPLE_TYPES`) from a thread of its own: written like any
        event, but it does not count as the main thread's sign of life (the heartbeat still
        beats when only readings went out), and none follows the finished event."""
        with self._lock:
            if self.finished:
                return None
            return self._emit(type_, fields, alive=False)

    def _emit(self, type_: str, fields: dict[str, Any], alive: bool) -> dict[str, Any]:
        with self._lock:
            event = make(type_, self.run_id, **{**self.identity, **fields})
            where = self._file_end() if self._fd is not None else None
            if where is not None:
                event["offset"] = where[0] + where[1]  # past the newline that ends a torn line
            data = (encode(event) + "\n").encode("utf-8")
            if where is not None:
                self._append(data, *where)
            if self._pipe is not None:
                self._to_pipe(data)
            elif self.stream is not None:
                try:
                    self.stream.write(data.decode("utf-8"))
                    self.stream.flush()
                except (BrokenPipeError, OSError, ValueError):
                    self._drop_stream()
            if where is not None and self.after_emit is not None:  # after the pipe: it never waits on this
                try:
                    self.after_emit(event)
                except Exception:  # noqa: BLE001 - a cache; readers rebuild it from the file
                    pass
            if alive:
                self.last_emit = time.monotonic()
            self.finished = self.finished or type_ == "finished"
            return event

    def heartbeat(self, phase: str, quiet_s: float) -> dict[str, Any] | None:
        """A ``heartbeat`` event, when nothing went out for ``quiet_s`` seconds and this
        session has not finished (checked and written as one step: a heartbeat never
        follows the finished event, which would read as a new session)."""
        with self._lock:
            if self.finished or time.monotonic() - self.last_emit < quiet_s:
                return None
            return self.emit("heartbeat", phase=phase)

    def _file_end(self) -> tuple[int, int] | None:
        """(size of the file, 1 when its last line is torn else 0); None when it cannot be
        looked at (the event then goes to the pipe only)."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.file_error = exc
            return None
        return size, int(self._torn or _ends_torn(self._fd))

    def _to_pipe(self, data: bytes) -> None:
        """The line into the pipe if it has room now, else dropped (never waits)."""
        if self._pending and not self._flush_pending():
            self.pipe_dropped += 1
            return
        try:
            written = os.write(self._pipe, data)
        except BlockingIOError:
            self.pipe_dropped += 1
            return
        except OSError:  # EPIPE: nobody reads any more
            self._drop_stream()
            return
        self._pending = data[written:]

    def _flush_pending(self) -> bool:
        """Finish a line the pipe took only in part; True once it is all in."""
        try:
            written = os.write(self._pipe, self._pending)
        except BlockingIOError:
            return False
        except OSError:
            self._drop_stream()
            return False
        self._pending = self._pending[written:]
        return not self._pending

    def _append(self, data: bytes, start: int, torn: int) -> None:
        """One whole line at the end of the file (which is ``start`` bytes long, its last
        line torn when ``torn``), or nothing (the file is cut back to where it was when the
        disk is full or a file-size limit is reached)."""
        fd = self._fd
        if torn:
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self._torn = False
        except OSError as exc:
            self.file_error = exc
            try:
                os.ftruncate(fd, start)  # frees what the partial line took
            except OSError:
                self._torn = True  # the next line starts on a new one

    def _drop_stream(self) -> None:
        # Point the stream's own fd (fd 1 when it is stdout) at /dev/null, so what is still
        # buffered, and later prints from libraries, cannot raise either.
        if self._pipe is not None:
            try:
                os.close(self._pipe)
            except OSError:
                pass
            self._pipe, self._pending = None, b""
        stream, self.stream = self.stream, None
        try:
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        with self._lock:
            if self._pipe is not None:
                if self._pending:
                    self._flush_pending()  # once, without waiting: the reader has the file
                if self._pipe is not None:
                    os.close(self._pipe)
                    self._pipe = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _nonblocking_pipe(stream: IO[str] | None) -> int | None:
    """A descriptor of the pipe behind ``stream`` that never blocks a write, or None when
    the stream is not a pipe. The pipe is opened anew (/proc/self/fd) so the non-blocking
    flag is ours alone, not shared with other holders of the pipe (torchrun's launcher)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
    except (AttributeError, ValueError, OSError):
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        pass
    try:
        own = os.dup(fd)
        os.set_blocking(own, False)
        return own
    except OSError:
        return None


class CatchUp:
    """Reading the trainer's pipe without missing an event. The trainer drops what the pipe
    has no room for (a reader that stopped reading must not stop training); every event
    carries ``offset``, where its line starts in events.jsonl. When an event arrives whose
    line starts past the end of the one before, the lines between are read from the file
    (:meth:`take`), and when the pipe ends, whatever the file has after the last line that
    came (:meth:`rest`)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.next: int | None = None  # where the line after the last one seen starts
        self.from_file = 0  # events read from the file, not the pipe

    def take(self, event: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """``event`` came off the pipe as a line of ``size`` bytes: the events missed before
        it (read from the file), then it."""
        offset = event.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            return [event]
        missed = self._read(self.next, offset) if self.next is not None and offset > self.next else []
        self.next = offset + size
        return [*missed, event]

    def rest(self) -> list[dict[str, Any]]:
        """The pipe has ended: the events the file has after the last one taken."""
        return self._read(self.next, None) if self.next is not None else []

    def _read(self, start: int, end: int | None) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(start)
                data = fh.read() if end is None else fh.read(end - start)
        except OSError:
            return []
        events = [e for e in map(decode, data.split(b"\n")[:-1]) if e is not None]  # whole lines only
        self.from_file += len(events)
        return events


def pipe_events(pipe: IO[bytes], events_path: str | Path | None) -> Iterator[dict[str, Any]]:
    """Every event of a trainer's pipe (binary, read line by line until it ends), the ones
    it dropped read from ``events_path`` in their place (:class:`CatchUp`)."""
    catch = CatchUp(events_path)
    for raw in iter(pipe.readline, b""):
        event = decode(raw)
        if event is not None:
            yield from catch.take(event, len(raw))
    yield from catch.rest()


def _ends_torn(fd: int) -> bool:
    """Whether the file behind ``fd`` is non-empty and its last byte is not a newline."""
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False


def read_file(path: str | Path, problems: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """All events in a file (a partly written last line is skipped). A line that is not a
    usable event is skipped too, and added to ``problems`` as (line number, why)."""
    return list(iter_file(path, problems))


def iter_file(path: str | Path, problems: list[tuple[int, str]] | None = None,
              start: int = 0, first_line: int = 1) -> Iterator[dict[str, Any]]:
    """The events of a file one at a time (bounded memory), from byte ``start`` (the start
    of line ``first_line``); bad lines go to ``problems`` as (line number, why). A last line
    without its newline is read when it is a whole event, and skipped without a word when
    not (it is being written)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        fh.seek(start)
        for line_no, raw in enumerate(fh, first_line):
            event, problem = decode_checked(raw)
            if not raw.endswith(b"\n") and event is None:
                return
            if event is not None:
                yield event
            elif problem is not None and problems is not None:
                problems.append((line_no, problem))


def _at_end(fh) -> bool:
    here = fh.tell()
    more = fh.read(1)
    fh.seek(here)
    return not more


def follow(path: str | Path, poll_s: float = 0.2, stop: Any = None) -> Iterator[dict[str, Any]]:
    """Yield every event in the file, then new ones as they are appended.

    Ends after a ``finished`` event that is the last line so far, or when ``stop()`` returns true (checked while idle).
    A partial line at the end is held back until its newline arrives.
    """
    path = Path(path)
    while not path.exists():
        if stop is not None and stop():
            return
        time.sleep(poll_s)
    with open(path, "rb") as fh:
        pending = b""
        while True:
            chunk = fh.readline()
            if chunk:
                pending += chunk
                if not pending.endswith(b"\n"):
                    continue
                event = decode(pending)
                pending = b""
                if event is not None:
                    yield event
                    if event.get("type") == "finished" and _at_end(fh):
                        # A resumed run appends a new session after an earlier finished
                        # event: only a finished event at the end of the file ends it.
                        return
                continue
            if stop is not None and stop():
                return
            time.sleep(poll_s)


# --------------------------------------------------------------------------- as text
# One plain line per event: `finetui runs attach`, `finetui train` off a terminal, the dashboard.


def format_number(value: float | None, digits: int = 4) -> str:
    """``digits`` significant digits, ``-`` for a missing value."""
    return "-" if value is None else f"{value:.{digits}g}"


def data_line(data: dict[str, Any] | None, reasons: int = 3, extras: bool = True) -> str | None:
    """The run_started data report in one line: ``data: 999 read · 974 kept · 25 skipped
    (empty text 20, invalid JSON 5) · 317 truncated`` (records read from the training
    source, kept for training, not trained with the ``reasons`` most frequent reasons, and
    with ``extras`` repaired and truncated)."""
    counts = (data or {}).get("counts") or {}
    read, kept = counts.get("records"), counts.get("ok")
    if not isinstance(read, int) or not isinstance(kept, int):
        return None
    parts = [f"{read:,} read", f"{kept:,} kept"]
    dropped = read - kept
    if dropped > 0:
        why = [(kind, n) for kind, n in ((data or {}).get("reasons") or {}).items() if n]
        shown = [f"{kind} {n:,}" for kind, n in why[:reasons]]
        if shown and len(why) > reasons:
            shown.append(f"{len(why) - reasons} more")
        parts.append(f"{dropped:,} skipped" + (f" ({', '.join(shown)})" if shown else ""))
    for key in ("repaired", "truncated") if extras else ():
        if counts.get(key):
            parts.append(f"{counts[key]:,} {key}")
    return "data: " + " · ".join(parts)


def event_lines(event: dict[str, Any]) -> list[str]:
    """What the CLI prints for an event: format_event's line, and for run_started the data
    report's line under it."""
    line = format_event(event)
    lines = [line] if line else []
    if event.get("type") == "run_started":
        data = data_line(event.get("data"))
        if data:
            lines.append(data)
    return [visible(line) for line in lines]  # messages, paths and names from the run folder


def format_event(event: dict[str, Any]) -> str | None:
    """One plain line for an event (used by attach and by `finetui train` off a terminal)."""
    t = event.get("type")
    if t == "run_started":
        fp = event.get("footprint") or {}
        ds = event.get("datasets") or {}
        return (f"started: {fp.get('params_total', '?')} params ({fp.get('params_trainable', '?')} trainable), "
                f"train {ds.get('train', '?')} / test {ds.get('test', '?')} examples, "
                f"devices {', '.join(event.get('devices') or []) or '?'}")
    if t == "step":
        return (f"step {event['step']}/{event['total_steps']}  epoch {format_number(event.get('epoch'), 3)}  "
                f"loss {format_number(event.get('loss'))}  lr {format_number(event.get('learning_rate'), 3)}  "
                f"{format_number(event.get('tokens_per_s'), 4)} tok/s  eta {format_duration(event.get('eta_s'))}")
    if t == "eval":
        return f"eval  step {event['step']}  eval_loss {format_number(event.get('eval_loss'))}  ppl {format_number(event.get('perplexity'))}"
    if t == "checkpoint":
        return f"checkpoint  step {event['step']}  {event['path']}"
    if t == "log":
        return f"[{event.get('level')}] {event.get('message')}"
    if t == "error":
        hint = f"\n  hint: {event['hint']}" if event.get("hint") else ""
        return f"error ({event.get('kind')}): {event.get('message')}{hint}"
    if t == "finished":
        metrics = event.get("metrics") or {}
        shown = "  ".join(f"{k} {format_number(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
        return f"finished: {event.get('status')}  {shown}"
    return None
