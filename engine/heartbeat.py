"""The trainer's heartbeat, and when readers call a run hung.

Light module (stdlib only). A run that goes quiet for ``train.hang_after_s`` seconds (no
event, no heartbeat) while its trainer process lives *looks hung*: ``finetui runs list``,
``runs show`` and the dashboard say so. So that a slow phase is not taken for a hang, the
trainer (rank 0) runs :class:`Heartbeat`, a daemon thread that writes a ``heartbeat`` event
once nothing else went out for ``every_s`` seconds (a fifth of ``hang_after_s``, at most a
minute), but only while

* the main thread is in a named quiet phase: loading (imports, tokenizer, data, model, a
  checkpoint to resume from), saving (a checkpoint, the final weights) or loading the
  best checkpoint at the end; or
* it made progress since the last beat: a micro-batch trained or an evaluation batch done
  (engine.callbacks.EventCallback calls :meth:`Heartbeat.progress`).

A main thread stuck in one place (a collective that never returns, a data loader that
deadlocked, a stalled file system) makes no progress outside a quiet phase: the beats stop
and the readers name the hang. A single training micro-batch longer than ``hang_after_s``
(default 600 s) reads as hung too: raise it for such a run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

DEFAULT_HANG_AFTER_S = 600.0
MAX_EVERY_S = 60.0


def beat_every(hang_after_s: float) -> float:
    """How long the trainer stays quiet before it beats: a fifth of the hang threshold, at
    most a minute, at least a second."""
    return max(1.0, min(MAX_EVERY_S, float(hang_after_s) / 5))


def hang_after(config: dict[str, Any] | None) -> float:
    """``train.hang_after_s`` of a config dict (config.yaml, run_started's config), or the
    default when it is missing or not a positive number."""
    value = ((config or {}).get("train") or {}).get("hang_after_s") if isinstance(config, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_HANG_AFTER_S


def silence(last_event_time: float | None, hang_after_s: float, now: float | None = None) -> float | None:
    """Seconds since the last event when that is more than ``hang_after_s`` (the run looks
    hung, if its trainer is alive), else None."""
    if last_event_time is None:
        return None
    quiet = (time.time() if now is None else now) - last_event_time
    return quiet if quiet > hang_after_s else None


def describe(quiet_s: float) -> str:
    """``no event or heartbeat for 12m 03s``."""
    seconds = int(quiet_s)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    shown = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
    return f"no event or heartbeat for {shown}"


class Heartbeat:
    """Beats for an EventWriter (see the module docstring). ``start()`` once; ``stop()``
    before the process ends (it also stops by itself after a ``finished`` event: the
    writer then refuses heartbeats)."""

    def __init__(self, events, every_s: float) -> None:
        self.events = events  # engine.events.EventWriter
        self.every_s = every_s
        self.beats = 0
        self._phase: str | None = None  # a quiet phase: beat without progress
        self._doing = "training"  # what progress is made in (the heartbeat's phase otherwise)
        self._progress = 0
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finetui heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def enter(self, phase: str) -> None:
        """A quiet phase begins (beats go on without progress)."""
        self._phase = phase

    def leave(self) -> None:
        self._phase = None

    @contextlib.contextmanager
    def quiet(self, phase: str) -> Iterator[None]:
        before = self._phase
        self._phase = phase
        try:
            yield
        finally:
            self._phase = before

    def progress(self, doing: str = "training") -> None:
        """The main thread moved on (a micro-batch, an evaluation batch)."""
        self._doing = doing
        self._progress += 1

    def _run(self) -> None:
        tick = min(self.every_s / 4, 5.0)
        while not self._stop.wait(tick):
            if self.events.finished:
                return
            phase, progress = self._phase, self._progress
            if time.monotonic() - self.events.last_emit < self.every_s:
                self._seen = progress  # an event went out lately: it vouches for this progress
                continue
            if phase is None and progress == self._seen:
                continue  # no progress outside a quiet phase: stay silent (a hang shows)
            self._seen = progress
            try:
                beat = self.events.heartbeat(phase or self._doing, self.every_s)
            except Exception:  # noqa: BLE001 - a sign of life must never end a run
                beat = None
            if beat is not None:
                self.beats += 1
