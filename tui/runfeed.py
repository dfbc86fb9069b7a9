"""A run's event feed for the UI: read from the trainer's pipe or from ``events.jsonl``,
added up into a :class:`RunState` that the dashboard renders.

Two sources, one decoder (``engine.events.decode``) and one consumer (``RunState.apply``):

* **pipe** - the UI started the trainer (``app.run_processes[run_id]``): its stdout carries
  the event stream. The pipe must be drained from the moment of launch, whether or not a
  dashboard is open (a full pipe would block the trainer), so pipe feeds belong to the app
  (:class:`FeedRegistry`), not to a screen. History that is only in the file (the sessions
  before a resume) is read first; the first pipe lines, which the trainer had also written
  to the file by then, are recognised and not counted twice.
* **file** - a run started elsewhere (``finetui train --detach``, an earlier UI): the whole
  ``events.jsonl`` first, then each line as it is appended. This tails past a ``finished``
  event, unlike ``engine.events.follow``: a resumed run's file has a ``finished`` in the
  middle and its new session after it.

Both readers run in thread workers and only append to the state under its lock; the
screens look at ``state.version`` on a timer (0.5 s) and redraw when it moved. Nothing
here touches a widget.

Liveness: a feed also says whether the trainer process is alive (``Popen.poll`` for a
pipe, ``engine.runs.pid_alive`` of ``trainer.pid`` for a file). A run whose process is gone
without a ``finished`` event is *failed* (killed or crashed): see :meth:`RunState.status`.
"""

from __future__ import annotations

import bisect
import os
import select
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import events as ev
from engine import runs
from engine.runs_cli import format_event

if TYPE_CHECKING:
    import subprocess

LOG_LINES = 500
POLL_S = 0.2  # file tail poll while idle; also how fast a reader notices it is closed
LIVENESS_S = 1.0  # process table look-ups (psutil) at most this often


class RunState:
    """What the event stream of one run adds up to. Pure data: no I/O, no widgets.

    Series are parallel lists (compact for long runs). A resumed run restarts at its last
    checkpoint, so a step at or before the last one seen cuts the series back to it: the
    curves show what the model really went through.
    """

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id
        self.version = 0  # bumped on every change; screens redraw when it moves
        self.events = 0
        self.config: dict[str, Any] | None = None
        self.started: dict[str, Any] | None = None  # the latest run_started event
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.sessions = 0  # run_started events (1 + resumes)
        self.steps: list[int] = []
        self.loss: list[float | None] = []
        self.learning_rate: list[float | None] = []
        self.grad_norm: list[float | None] = []
        self.tokens_per_s: list[float | None] = []
        self.eval_steps: list[int] = []
        self.eval_loss: list[float | None] = []
        self.last_step: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.peak_bytes: int | None = None
        self.checkpoints: list[tuple[int, str]] = []
        self.lines: deque[tuple[float, str, str]] = deque(maxlen=LOG_LINES)  # (time, type, text)
        self.error: dict[str, Any] | None = None
        self.finished: dict[str, Any] | None = None
        self.process_alive: bool | None = None  # None: not known yet
        self.source = ""  # "pipe" | "file"

    # ------------------------------------------------------------------ reading

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        when = event.get("time") or time.time()
        if self.finished is not None and kind != "finished":
            # Anything after a finished event is a new session (a resume).
            self.finished = None
            self.error = None
        self.events += 1
        self.first_time = self.first_time or when
        self.last_time = when
        if kind == "step":
            self._add_step(event)
        elif kind == "eval":
            self._cut_evals(event.get("step", 0))
            self.eval_steps.append(int(event.get("step") or 0))
            self.eval_loss.append(_num(event.get("eval_loss")))
            self.last_eval = event
        elif kind == "checkpoint":
            step, path = int(event.get("step") or 0), str(event.get("path") or "")
            self.checkpoints = [c for c in self.checkpoints if c[1] != path]
            self.checkpoints.append((step, path))
            self.checkpoints.sort()
        elif kind == "run_started":
            self.started = event
            self.config = event.get("config") or self.config
            self.sessions += 1
        elif kind == "error":
            self.error = event
        elif kind == "finished":
            self.finished = event
        if kind != "step":
            text = format_event(event)
            if text:
                self.lines.append((when, str(kind), text))
        self.version += 1

    def _add_step(self, event: dict[str, Any]) -> None:
        step = int(event.get("step") or 0)
        if self.steps and step <= self.steps[-1]:
            cut = bisect.bisect_left(self.steps, step)
            for series in (self.steps, self.loss, self.learning_rate, self.grad_norm, self.tokens_per_s):
                del series[cut:]
            self._cut_evals(step + 1)
        self.steps.append(step)
        self.loss.append(_num(event.get("loss")))
        self.learning_rate.append(_num(event.get("learning_rate")))
        self.grad_norm.append(_num(event.get("grad_norm")))
        self.tokens_per_s.append(_num(event.get("tokens_per_s")))
        self.last_step = event
        peak = (event.get("memory") or {}).get("peak_bytes")
        if isinstance(peak, (int, float)):
            self.peak_bytes = max(self.peak_bytes or 0, int(peak))

    def _cut_evals(self, step: int) -> None:
        if self.eval_steps and step <= self.eval_steps[-1]:
            cut = bisect.bisect_left(self.eval_steps, step)
            del self.eval_steps[cut:]
            del self.eval_loss[cut:]

    # ------------------------------------------------------------------ derived

    @property
    def status(self) -> str:
        """completed | stopped | failed | running | starting (nothing heard yet)."""
        if self.finished is not None:
            return str(self.finished.get("status") or "failed")
        if self.process_alive is False and self.source:
            return "failed" if self.events or self.source == "pipe" else "created"
        return "running" if self.events or self.process_alive else "starting"

    @property
    def process_gone(self) -> bool:
        """The trainer died without saying how it ended (kill -9, a crash)."""
        return self.finished is None and self.status == "failed"

    @property
    def best_eval(self) -> tuple[int, float] | None:
        pairs = [(loss, step) for step, loss in zip(self.eval_steps, self.eval_loss) if loss is not None]
        if not pairs:
            return None
        loss, step = min(pairs)
        return step, loss

    @property
    def total_steps(self) -> int | None:
        return (self.last_step or {}).get("total_steps")

    def mean_tokens_per_s(self) -> float | None:
        values = [v for v in self.tokens_per_s if v]
        return sum(values) / len(values) if values else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_state(run_dir: str | Path) -> RunState:
    """A state from a run's events file, once (the compare screen, tests)."""
    run_dir = Path(run_dir)
    state = RunState(run_dir.name)
    for event in ev.read_file(run_dir / "events.jsonl"):
        state.apply(event)
    state.source = "file"
    state.process_alive = runs.pid_alive(runs.read_pid(run_dir))
    return state


# --------------------------------------------------------------------------- feeds


class RunFeed:
    """One run's events, from a pipe or a file, applied to ``self.state`` in a thread."""

    def __init__(self, run_dir: str | Path, proc: subprocess.Popen | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.proc = proc
        self.source = "pipe" if proc is not None and proc.stdout is not None else "file"
        self.state = RunState(self.run_id)
        self.state.source = self.source
        self.lock = threading.Lock()
        self.closed = False  # asked to stop reading (screen gone, app exiting)
        self.ended = False  # the reader returned
        self.problem: str | None = None
        self.worker = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else runs.read_pid(self.run_dir)

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def start(self, node) -> RunFeed:
        """Read in a thread worker owned by ``node`` (the app for pipe feeds)."""
        self.worker = node.run_worker(self.run, thread=True, group=f"feed-{self.run_id}",
                                      name=f"feed {self.run_id} ({self.source})", exit_on_error=False)
        return self

    def close(self) -> None:
        self.closed = True

    def _stopping(self) -> bool:
        worker = self.worker
        return self.closed or (worker is not None and worker.is_cancelled)

    def _push(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        with self.lock:
            for event in events:
                self.state.apply(event)

    def _set_alive(self, alive: bool) -> None:
        with self.lock:
            if self.state.process_alive != alive:
                self.state.process_alive = alive
                self.state.version += 1

    def run(self) -> None:
        try:
            if self.source == "pipe":
                self._read_pipe()
            else:
                self._tail_file()
        except Exception as exc:  # a reader must never take the UI down
            self.problem = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.state.lines.append((time.time(), "error", f"feed stopped: {self.problem}"))
                self.state.version += 1
        finally:
            self.ended = True

    # ------------------------------------------------------------------ pipe

    def _read_pipe(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self._set_alive(self.proc.poll() is None)
        history = ev.read_file(self.events_path)
        self._push(history)
        matched: int | None = None  # where the pipe's first events sit in the history
        fd = self.proc.stdout.fileno()
        pending = b""
        while not self._stopping():
            # select with a timeout, not a blocking read: the thread must notice that the
            # app is exiting even while the trainer is silent (a long evaluation).
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # EOF: the trainer exited (or closed its end)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            fresh = []
            for raw in lines:
                event = ev.decode(raw)
                if event is None:
                    continue
                if matched is None:
                    matched = _find(history, event)
                    if matched is not None:
                        matched += 1
                        continue
                    matched = len(history)
                elif matched < len(history) and history[matched] == event:
                    matched += 1
                    continue
                else:
                    matched = len(history)
                fresh.append(event)
            self._push(fresh)
        if self._stopping():
            return
        try:
            self.proc.wait(timeout=10)
        except Exception:
            pass
        self._set_alive(self.proc.poll() is None)
        self.proc.stdout.close()

    # ------------------------------------------------------------------ file

    def _tail_file(self) -> None:
        """events.jsonl from the start, then as it grows, until closed. Liveness of the
        trainer is checked while idle; before a run is declared gone the rest of the file
        is read, so its last lines are never mistaken for missing."""
        pid_alive = runs.pid_alive(self.pid)
        self._set_alive(pid_alive)
        path = self.events_path
        offset = 0
        pending = b""
        checked = time.monotonic()
        while not self._stopping():
            grew = False
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(1 << 20)
            except FileNotFoundError:
                data = b""
            if data:
                grew = True
                offset += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                self._push([e for e in map(ev.decode, lines) if e is not None])
            now = time.monotonic()
            if not grew and now - checked >= LIVENESS_S:
                checked = now
                alive = runs.pid_alive(self.pid)
                # Before a run is declared gone, whatever it wrote last must be read.
                if alive != self.state.process_alive and (alive or _size(path) <= offset):
                    self._set_alive(alive)
            if not grew:
                time.sleep(POLL_S)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _find(history: list[dict[str, Any]], event: dict[str, Any]) -> int | None:
    """Index of ``event`` in the history, searching from the end (it is recent)."""
    for i in range(len(history) - 1, -1, -1):
        if history[i] == event:
            return i
    return None


class FeedRegistry:
    """The app's feeds: one per run being watched, pipe feeds for every trainer this UI
    started (kept for the app's lifetime so the pipe is always drained)."""

    def __init__(self, app) -> None:
        self.app = app
        self.feeds: dict[str, RunFeed] = {}
        self.new_launches: list[str] = []  # run ids adopted from app.run_processes, not yet shown
        self._adopted: dict[str, int] = {}  # run id -> id() of the Popen being read
        self.timer = app.set_interval(0.5, self.sync, name="run feeds")

    def sync(self) -> list[str]:
        """Start a pipe feed for each trainer the app launched since the last look."""
        adopted = []
        for run_id, proc in list(getattr(self.app, "run_processes", {}).items()):
            if self._adopted.get(run_id) == id(proc):
                continue
            self._adopted[run_id] = id(proc)
            if proc.stdout is None or proc.stdout.closed:
                continue
            run_dir = getattr(self.app, "run_dirs", {}).get(run_id) or runs.runs_dir() / run_id
            old = self.feeds.get(run_id)
            if old is not None:
                old.close()
            self.feeds[run_id] = RunFeed(run_dir, proc).start(self.app)
            adopted.append(run_id)
        self.new_launches.extend(adopted)
        return adopted

    def take_new_launches(self) -> list[str]:
        self.sync()
        new, self.new_launches = self.new_launches, []
        return new

    def feed(self, run_dir: str | Path) -> RunFeed:
        """The feed for a run: its pipe feed if this UI started it, else a file feed."""
        self.sync()
        run_dir = Path(run_dir)
        feed = self.feeds.get(run_dir.name)
        if feed is not None and not (feed.source == "file" and (feed.closed or feed.ended)):
            return feed
        feed = RunFeed(run_dir).start(self.app)
        self.feeds[run_dir.name] = feed
        return feed

    def release(self, feed: RunFeed) -> None:
        """A screen is done with a feed: file feeds stop (the file keeps the history);
        pipe feeds go on draining the pipe."""
        if feed.source == "file":
            feed.close()
            if self.feeds.get(feed.run_id) is feed:
                del self.feeds[feed.run_id]

    def forget(self, run_id: str) -> None:
        feed = self.feeds.pop(run_id, None)
        if feed is not None:
            feed.close()


def feeds(app) -> FeedRegistry:
    """The app's registry (made on first use; the app itself knows nothing of feeds)."""
    registry = getattr(app, "_finetui_feeds", None)
    if registry is None:
        registry = FeedRegistry(app)
        app._finetui_feeds = registry
    return registry
