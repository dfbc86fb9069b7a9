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

Reading happens in short thread workers (one every 0.5 s for all feeds, never blocking:
``select`` on the pipe, a seek+read on the file) that apply events to the state under its
lock; screens are told on the UI thread which runs changed and redraw at most twice a
second. Nothing here touches a widget.

Liveness: a feed also says whether the trainer process is alive (``Popen.poll`` for a
pipe; for a file, ``engine.runs.trainer_alive``: the very process ``trainer.pid`` records).
A run whose process is gone without a ``finished`` event is *failed* (killed or crashed):
see :meth:`RunState.status`.
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

from finetui.engine import events as ev
from finetui.engine import heartbeat, ranks, runs, trainer_pid
from finetui.engine.events import format_event
from finetui.engine.visible import visible

if TYPE_CHECKING:
    import subprocess

LOG_LINES = 500
PUMP_S = 0.5  # how often pipes and files are read (one short worker for all feeds)
LIVENESS_S = 1.0  # process table look-ups (psutil) at most this often
MAX_READ = 4 << 20  # bytes per feed per pump: a huge history arrives in slices, never a freeze


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
        self.alive_since: float | None = None  # when the live trainer started (a hang counts from then at most)
        # The history in events.jsonl is still being read: until it is, the status is
        # "loading" (a completed run read halfway would look failed and offer a resume).
        self.loading = False
        self.skipped = 0  # events lines that were not usable events (named in the log)
        self.exit_code: int | None = None  # the trainer's exit status, when we started it (pipe)
        self.killed_here = False  # the user killed it from this UI (K): not the OOM killer
        self.source = ""  # "pipe" | "file"
        # every rank of a run under torchrun (engine.ranks): rank 0's events from this
        # stream, the others' from their events.rank<R>.jsonl (RunFeed follows them)
        self.ranks = ranks.RankBoard()

    # ------------------------------------------------------------------ reading

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        when = event.get("time") or time.time()
        if "rank" in event:
            self.ranks.apply(event)
        if kind in ev.SAMPLE_TYPES:  # a reading (rank 0's node): no sign of life, no new session
            self.events += 1
            self.version += 1
            return
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
            self.ranks.new_session(event.get("world_size"), when)
        elif kind == "error":
            self.error = event
        elif kind == "finished":
            self.finished = event
        if kind != "step":
            text = format_event(event)
            if text:  # messages, paths, names: control characters made visible (engine.visible)
                self.lines.append((when, str(kind), visible(text)))
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
        """loading (the history is being read) | completed | stopped | failed | running |
        starting (nothing heard yet)."""
        if self.loading:
            return "loading"
        if self.finished is not None:
            return str(self.finished.get("status") or "failed")
        if self.process_alive is False and self.source:
            return "failed" if self.events or self.source == "pipe" else "created"
        return "running" if self.events or self.process_alive else "starting"

    def hung_s(self, now: float | None = None) -> float | None:
        """Seconds the running trainer has said nothing (no event, no heartbeat) when that is
        longer than the run's train.hang_after_s (engine.heartbeat), else None."""
        if self.status != "running" or self.process_alive is not True:
            return None
        since = max([t for t in (self.last_time, self.alive_since) if t is not None], default=None)
        return heartbeat.silence(since, heartbeat.hang_after(self.config), now)

    def silent_ranks(self, now: float | None = None) -> list[tuple[int, float]]:
        """(rank, seconds) of the ranks of a running multi-process run that have said
        nothing (no event but hardware readings) for the run's train.hang_after_s: dead or
        hung (engine.ranks.RankBoard.silent), the longest silent first."""
        if not self.ranks.multi or self.status != "running" or self.process_alive is not True:
            return []
        return self.ranks.silent(heartbeat.hang_after(self.config), now)

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
    state.process_alive = runs.trainer_alive(run_dir)
    return state


# --------------------------------------------------------------------------- feeds


class RunFeed:
    """One run's events, from a pipe or a file, applied to ``self.state``.

    :meth:`pump` reads what is there *now* (never blocks) and is called from a short thread
    worker a few times a second (:class:`FeedRegistry`). Short workers rather than one
    reader thread per run: Textual's thread pool has cpu+4 threads (6 on a 2-core box),
    and a blocked reader would hold one for the whole run and keep the app from exiting
    while the trainer is silent.
    """

    def __init__(self, run_dir: str | Path, proc: subprocess.Popen | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.proc = proc
        self.source = "pipe" if proc is not None and proc.stdout is not None else "file"
        self.state = RunState(self.run_id)
        self.state.source = self.source
        if self.source == "pipe":
            self.state.alive_since = time.time()  # just launched by this UI
        self.state.loading = _size(self.events_path) > 0  # until the first pumps have read the history
        self._line = 0  # file: lines of events.jsonl read so far (bad ones are named by number)
        self.lock = threading.Lock()  # held while the state changes and while it is drawn
        self._pump_lock = threading.Lock()
        self.closed = False  # no one needs it any more
        self.ended = False  # the source is exhausted for good (pipe EOF and process reaped)
        self.problem: str | None = None
        self._started = False
        self._pending = b""
        self._offset = 0  # file: bytes read so far
        self._history: list[dict[str, Any]] = []  # pipe: what the file held when we started
        # pipe: the events the trainer dropped while we did not read (it never waits for
        # us: a suspended UI must not stall training) are read from the file in their place
        self._catch = ev.CatchUp(self.events_path)
        self._matched: int | None = None
        self._eof = False
        self._checked = 0.0
        self._rank_reader = ranks.RankFollower(self.run_dir)  # the other ranks' streams, if any

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else runs.read_pid(self.run_dir)

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def close(self) -> None:
        self.closed = True

    def pump(self) -> bool:
        """Read and apply what has arrived; True when the state changed. Thread-safe."""
        if self.closed or self.ended:
            return False
        if not self._pump_lock.acquire(blocking=False):
            return False  # another worker is at it
        try:
            before = self.state.version
            if self.source == "pipe":
                self._pump_pipe()
            else:
                self._pump_file()
            self._pump_ranks()
            return self.state.version != before
        except Exception as exc:  # a reader must never take the UI down
            self.problem = f"{type(exc).__name__}: {exc}"
            self.ended = True
            with self.lock:
                self.state.lines.append((time.time(), "error", f"reading this run stopped: {self.problem}"))
                self.state.version += 1
            return True
        finally:
            self._pump_lock.release()

    def _push(self, events: list[dict[str, Any]], loaded: bool = False) -> None:
        """Apply events; ``loaded``: the history is all read (the status stops saying loading)."""
        if not events and not (loaded and self.state.loading):
            return
        with self.lock:
            for event in events:
                try:
                    self.state.apply(event)
                except Exception as exc:  # noqa: BLE001 - one bad event costs only itself
                    self._skipped(f"{event.get('type')} event skipped: {type(exc).__name__}: {exc}")
            if loaded and self.state.loading:
                self.state.loading = False
                self.state.version += 1

    def _skipped(self, text: str) -> None:
        """Name a line that was not used (called with the lock held)."""
        self.state.skipped += 1
        self.state.lines.append((time.time(), "error", text))
        self.state.version += 1

    def _set_alive(self, alive: bool) -> None:
        with self.lock:
            if self.state.process_alive != alive:
                self.state.process_alive = alive
                self.state.version += 1

    def _lines(self, data: bytes) -> list[dict[str, Any]]:
        """Complete lines of ``data`` (after what was pending) decoded; a partial last
        line waits for its newline."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if self.source == "pipe":
            events = []
            for raw in lines:
                event = ev.decode(raw)
                if event is not None:
                    events.extend(self._catch.take(event, len(raw) + 1))
            return events
        events = []
        for raw in lines:
            self._line += 1
            event, problem = ev.decode_checked(raw)
            if event is not None:
                events.append(event)
            elif problem is not None:
                with self.lock:
                    self._skipped(f"{self.events_path.name}:{self._line}: {problem} (line skipped)")
        return events

    def _pump_ranks(self) -> None:
        """What the other ranks appended to their events.rank<R>.jsonl (engine.ranks)."""
        events = self._rank_reader.read()
        if events:
            with self.lock:
                for event in events:
                    self.state.ranks.apply(event)
                self.state.version += 1

    # ------------------------------------------------------------------ pipe

    def _pump_pipe(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        if not self._started:
            self._started = True
            self._set_alive(proc.poll() is None)
            # Sessions before this one (a resume) are only in the file.
            problems: list[tuple[int, str]] = []
            self._history = ev.read_file(self.events_path, problems)
            with self.lock:
                for line, problem in problems:
                    self._skipped(f"{self.events_path.name}:{line}: {problem} (line skipped)")
            self._push(self._history, loaded=True)
        if not self._eof:
            fd = proc.stdout.fileno()
            budget = MAX_READ
            while budget > 0 and select.select([fd], [], [], 0)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._eof = True
                    self._push(self._fresh(self._catch.rest()))  # what the pipe dropped at the end
                    break
                budget -= len(chunk)
                self._push(self._fresh(self._lines(chunk)))
        if self._eof:
            code = proc.poll()
            if code is not None:  # reaped: the run's process is over
                with self.lock:
                    self.state.exit_code = code  # a signal (SIGKILL: the OOM killer?) is named
                self._set_alive(False)
                proc.stdout.close()
                self.ended = True

    def _fresh(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop the pipe's first events if the file (read at start) already had them."""
        history, fresh = self._history, []
        for event in events:
            if self._matched is None:
                found = _find(history, event)
                self._matched = len(history) if found is None else found + 1
                if found is not None:
                    continue
            elif self._matched < len(history) and history[self._matched] == event:
                self._matched += 1
                continue
            else:
                self._matched = len(history)
            fresh.append(event)
        return fresh

    # ------------------------------------------------------------------ file

    def _pump_file(self) -> None:
        """events.jsonl from where we were; liveness of the trainer from the process table
        (at most once a second, and never before the file's last lines are read: a run is
        only declared gone once everything it wrote is in)."""
        path = self.events_path
        if not self._started:
            self._started = True
            self._set_alive(runs.trainer_alive(self.run_dir))
            record = trainer_pid.read(self.run_dir)
            self.state.alive_since = record.create_time if record is not None else None
        grew = False
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(self._offset)
                data = fh.read(MAX_READ)
        except FileNotFoundError:
            size, data = 0, b""
        if data:
            grew = True
            self._offset += len(data)
        # The history is read once a read reaches the end the file had when it began.
        self._push(self._lines(data) if data else [], loaded=self._offset >= size)
        now = time.monotonic()
        if not grew and now - self._checked >= LIVENESS_S:
            self._checked = now
            alive = runs.trainer_alive(self.run_dir)
            if alive and not self.state.process_alive:  # a new session: its trainer's start
                record = trainer_pid.read(self.run_dir)
                self.state.alive_since = record.create_time if record is not None else None
            if alive != self.state.process_alive and (alive or _size(path) <= self._offset):
                self._set_alive(alive)


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
    """The app's feeds, pumped together by one short thread worker every PUMP_S.

    Pipe feeds of trainers this UI started live as long as the app (their pipe must be
    drained whether or not a dashboard shows them); file feeds live while a screen holds
    them. Screens :meth:`watch` for changes: the callback runs on the UI thread right after
    a pump that changed something.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.feeds: dict[str, RunFeed] = {}
        self.new_launches: list[str] = []  # run ids adopted from app.run_processes, not yet shown
        self._adopted: dict[str, int] = {}  # run id -> id() of the Popen being read
        self._watchers: list[Any] = []
        self._pumping = False
        self.pumps = 0
        self.timer = app.set_interval(PUMP_S, self._tick, name="run feeds")

    def _tick(self) -> None:
        self.sync()
        if self._pumping or not self.feeds:
            return
        self._pumping = True
        self.app.run_worker(self._pump_all, thread=True, group="run-feeds", name="pump run feeds",
                            exit_on_error=False)

    def _pump_all(self) -> None:
        try:
            changed = {feed.run_id for feed in list(self.feeds.values()) if feed.pump()}
        finally:
            self._pumping = False
            self.pumps += 1
        if changed:
            try:
                self.app.call_from_thread(self._notify, changed)
            except Exception:  # the app is closing
                pass

    def _notify(self, changed: set[str]) -> None:
        for callback in list(self._watchers):
            callback(changed)

    def watch(self, callback) -> None:
        self._watchers.append(callback)

    def unwatch(self, callback) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)

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
            self.feeds[run_id] = RunFeed(run_dir, proc)
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
        if feed is not None and not (feed.source == "file" and feed.closed):
            return feed
        feed = RunFeed(run_dir)
        self.feeds[run_dir.name] = feed
        self.pump_soon()
        return feed

    def pump_soon(self) -> None:
        """Pump now rather than at the next tick (a screen just opened a feed)."""
        self._tick()

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
