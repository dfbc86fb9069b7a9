"""The event stream: one JSON object per line, shared by trainer, CLI and UI.

Light module (stdlib only). The trainer writes each event to its stdout *and* appends it to
``runs/<id>/events.jsonl``; readers use :func:`decode` for both, so a live pipe and a file
written by a run started elsewhere look the same.

Every event carries ``v`` (schema version), ``type``, ``time`` (unix seconds) and
``run_id``. The required fields of each type are listed in :data:`SCHEMA`; extra fields are
allowed (readers ignore what they do not know), so adding a field does not bump ``v``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator

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
    # status: completed | stopped | failed; metrics: final numbers; outputs: {name: path}
    "finished": ("status", "metrics", "outputs"),
}

ERROR_KINDS = ("oom", "disk", "data", "config", "model", "internal")
FINISH_STATUSES = ("completed", "stopped", "failed")
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
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def decode(line: str | bytes) -> dict[str, Any] | None:
    """Parse one line of the stream. Returns None for blank lines and for non-event
    output (a stray print from a library); raises nothing, so one bad line cannot stop a
    reader."""
    event = decode_object_line(line)
    if event is None or "type" not in event or "v" not in event:
        return None
    if event["v"] > VERSION:
        # A newer trainer: keep what we understand.
        event.setdefault("_newer_schema", True)
    return event


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
    """Writes events to stdout (the pipe to whoever started us) and to events.jsonl.

    If the pipe breaks (UI gone, SSH dropped) stdout is dropped and the file goes on:
    training must never die because nobody is watching. The file is written whole lines
    or nothing: a line the disk had no room for is cut back off (the pipe still gets
    it), and a torn last line left by an earlier process (killed mid-write) is ended
    before the first new event, so every event starts on its own line.
    """

    def __init__(self, run_id: str, path: str | Path | None, stream: IO[str] | None = sys.stdout):
        self.run_id = run_id
        self.path = Path(path) if path else None
        self.stream = stream
        self.file_error: OSError | None = None  # the last write the file could not take
        self._fd: int | None = None
        self._torn = False
        if self.path:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._torn = _ends_torn(self._fd)

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make(type_, self.run_id, **fields)
        line = encode(event) + "\n"
        if self._fd is not None:
            self._append(line.encode("utf-8"))
        if self.stream is not None:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._drop_stream()
        return event

    def _append(self, data: bytes) -> None:
        """One whole line at the end of the file, or nothing (the file is cut back to where
        it was when the disk is full or a file-size limit is reached)."""
        fd = self._fd
        if self._torn or _ends_torn(fd):
            data = b"\n" + data
        try:
            start = os.fstat(fd).st_size
        except OSError as exc:
            self.file_error = exc
            return
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
        stream, self.stream = self.stream, None
        try:
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _ends_torn(fd: int) -> bool:
    """Whether the file behind ``fd`` is non-empty and its last byte is not a newline."""
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """All events in a file (a partly written last line is skipped)."""
    events = []
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                event = decode(raw)
                if event is not None:
                    events.append(event)
    except FileNotFoundError:
        pass
    return events


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
