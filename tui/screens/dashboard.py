"""A run's live dashboard: progress, loss/eval-loss chart, learning rate, grad norm,
tokens/s, GPUs and host, checkpoints, the log; and the run's controls (stop, kill,
resume, its config, chat with its result, the likely fix when it failed).

Pushed on top of the Runs screen (enter on a run). Data comes from the run's feed
(``tui.runfeed``): the trainer's pipe when this UI started it, ``events.jsonl`` otherwise.
Feeds apply events to a state in a thread; this screen looks at it on a 0.5 s timer and
hands the widgets copies of what changed, so a burst of events costs one redraw and the
screen never redraws more than twice a second (friendly to SSH). NVML, psutil, the
checkpoints folder and stdout.log are read in a thread worker once a second.

Layout at 80x24 (22 rows between the screen bar and the footer)::

    ● running  <run id>  full · tiny · cpu · live (or attached)
    ━━━━━━━━━━━━━━━━━━━━━━━━━━━ 24/40 60%  ep 1.50  0:28  eta 0:19
    loss 5.56  eval 5.78 (best 5.63@20)  lr 1.3e-3  gnorm 0.83  tok/s 2,054
    ranks 2 on 1 node  Σ tok/s 4,108  slowest rank 1: 0.61 s vs 0.42  (w)   (several processes only)
    data: 999 read · 974 kept · 25 skipped (empty text 20, …)  (from run_started)
    <chart: title row + plot rows>                        (grows with the window)
    <failure / stopped banner with its fix>               (only when it applies)
    host cpu … ram … trainer rss … peak …
    GPU rows (or one line saying why there are none); several processes: a row per GPU
    per node from the ranks' hardware events, the slowest rank's row marked
    checkpoints 10 20 30 (last checkpoint-30)
    <log: the last events, or stdout.log, or the checkpoints list>   (grows too)
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.binding import Binding

from finetui.tui.dashstate import (
    Fix, HwPoller, HwSnapshot, checkpoints_text, data_text, head_text, likely_fix, log_view, problem_text,
    progress_note, rank_summary, tokens_per_s,
)
from finetui.tui.runfeed import RunFeed, RunState, feeds
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.widgets.gpupanel import GpuPanel
from finetui.tui.widgets.logview import LogView
from finetui.tui.widgets.lossplot import LossPlot, Series, theme_colors
from finetui.tui.widgets.runcontrol import (  # noqa: F401 - the Runs screen imports them from here
    app_key, apply_to_settings, confirm_kill, resume_run, show_config, signal_trainer,
)
from finetui.tui.widgets.runprogress import MetricsLine, RunProgress
from finetui.tui.widgets.textline import TextLine

TICK_S = 0.5  # widgets redraw at most this often (2 Hz)
HW_POLL_S = 1.0
PLOTS = ("loss", "learning rate", "grad norm", "tokens/s")
VIEWS = ("log", "stdout.log", "checkpoints", "ranks", "gpus")  # ranks, gpus: runs of several processes only


class DashboardScreen(FinetuiScreen):
    MODE = "runs"  # it sits on the Runs screen's stack: the screen bar shows Runs
    BINDINGS = [
        Binding("escape,backspace", "back", "Runs", id="dashboard.back"),
        Binding("S", "stop", "Stop", id="dashboard.stop"),
        Binding("K", "kill", "Kill", id="dashboard.kill"),
        Binding("R", "resume", "Resume", id="dashboard.resume"),
        Binding("f", "fix", "Fix", id="dashboard.fix"),
        Binding("o", "config", "Config", id="dashboard.config"),
        Binding("t", "chat", "Chat", id="dashboard.chat"),
        Binding("m", "smooth", "Smooth", id="dashboard.smooth"),
        Binding("l", "log_scale", "Log-y", id="dashboard.log_scale"),
        Binding("p", "plot", "Plot", id="dashboard.plot"),
        Binding("v", "view", "View", show=False, id="dashboard.view"),
        # runs of several processes: the ranks line names the key (the footer has no room)
        Binding("w", "ranks", "Ranks", show=False, id="dashboard.ranks"),
    ]
    DEFAULT_CSS = """
    DashboardScreen #dash-head { height: 1; padding: 0 1; background: $surface; }
    DashboardScreen RunProgress, DashboardScreen MetricsLine { padding: 0 1; }
    DashboardScreen #data { height: 1; padding: 0 1; display: none; }
    DashboardScreen #ranks { height: 1; padding: 0 1; display: none; }
    DashboardScreen #chart { height: 2fr; min-height: 6; padding: 0 1 0 0; }
    DashboardScreen #problem { height: auto; max-height: 6; padding: 0 1; display: none; }
    DashboardScreen #problem.-failed { display: block; background: $error 15%; }
    DashboardScreen #problem.-stopped { display: block; background: $warning 10%; }
    DashboardScreen #problem.-hung { display: block; background: $error 15%; }
    DashboardScreen GpuPanel { padding: 0 1; background: $surface; }
    DashboardScreen #ckpts { height: 1; padding: 0 1; background: $surface; }
    DashboardScreen #log { height: 1fr; min-height: 3; padding: 0 1; }
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.feed: RunFeed | None = None
        self.plot = 0  # index in PLOTS
        self.view = 0  # index in VIEWS
        self._version = -1
        self._hw: HwSnapshot | None = None
        self._hw_seen: HwSnapshot | None = None  # the readings on screen
        self._hw_key: tuple = ()
        self._hw_parts_due = False
        self._status = ""
        self._fix: Fix | None = None
        self._keys_for: tuple = ()
        self._draw_timer = None
        self._last_draw = 0.0
        self._poller = HwPoller(self.run_dir)  # the poll worker's readers
        self._config: dict[str, Any] | None = None  # config.yaml, read by the poll worker
        self.draws = 0  # draws that changed something on screen (redraw-rate benchmark)
        self.draw_times: deque[float] = deque(maxlen=1000)  # monotonic time of each such draw
        self.shown_steps: list[tuple[int, float]] = []  # (step, wall time it reached the widgets)
        self.state: RunState | None = None  # the state last shown (tests read it)

    # ------------------------------------------------------------------ layout

    def compose_body(self):
        yield TextLine("", id="dash-head")
        yield RunProgress(id="progress")
        yield MetricsLine(id="metrics")
        yield TextLine("", id="ranks")
        yield TextLine("", id="data")
        yield LossPlot(title="loss", id="chart")
        yield TextLine("", id="problem")
        yield GpuPanel(id="gpus")
        yield TextLine("", id="ckpts")
        yield LogView(id="log")

    def on_mount(self) -> None:
        registry = feeds(self.app)
        self.feed = registry.feed(self.run_dir)
        registry.watch(self._feeds_changed)
        self.set_interval(HW_POLL_S, self.poll_hardware, name="dashboard hardware")
        self.poll_hardware()
        self.call_after_refresh(self.request_draw)

    def on_unmount(self) -> None:
        registry = feeds(self.app)
        registry.unwatch(self._feeds_changed)
        if self.feed is not None:
            registry.release(self.feed)

    # ------------------------------------------------------------------ when to draw
    #
    # Few wake-ups on purpose: on a box whose cores all train, every wake-up of the UI
    # takes a core from the trainer. Events: the registry pumps all feeds every 0.5 s and
    # calls _feeds_changed when something arrived. Hardware: one poll a second, whose
    # worker ends by calling _tick (launches, a newer session, new readings).

    def _feeds_changed(self, changed: set[str]) -> None:
        if self.feed is not None and self.feed.run_id in changed:
            self.request_draw()

    def _tick(self) -> None:
        """After each hardware poll: runs launched from this UI, a newer session started
        elsewhere, the new readings."""
        if self.feed is None or not self.is_attached:
            return
        registry = feeds(self.app)
        if self.is_active:
            for run_id in registry.take_new_launches():
                if run_id == self.run_id:  # our own resume: its pipe feed takes over
                    self._switch_feed(registry.feed(self.run_dir))
                else:  # a run started from Settings meanwhile: show that one
                    self.app.switch_screen(DashboardScreen(registry.feeds[run_id].run_dir))
                    return
        hw = self._hw
        if hw is None or hw is self._hw_seen:
            return
        if hw.newer_session_pid and self.feed.ended:
            self._switch_feed(registry.feed(self.run_dir))
        first = self._hw_seen is None
        self._hw_seen = hw
        with self.feed.lock:  # the feed's worker changes the state (the ranks' too) under it
            self._show_gpus(hw)  # its own 1 Hz cadence: a small widget
            hung = self.feed.state.hung_s()  # silence grows with no event: the banner counts it
            silent = tuple((r, int(q)) for r, q in self.feed.state.silent_ranks())
        key = (hw.last_checkpoint, frozenset(hw.existing_checkpoints), tuple(hw.stdout_lines[-3:]),
               None if hung is None else int(hung), silent)
        if first:
            self._version = -1  # the first poll brings config.yaml: draw everything once more
        if first or key != self._hw_key:
            self._hw_key = key
            self._hw_parts_due = True
            self.request_draw()

    def request_draw(self) -> None:
        """Draw now, or as soon as half a second has passed since the last draw: bursts of
        events cost one redraw and the screen never redraws more than twice a second."""
        if self._draw_timer is not None:
            return
        wait = self._last_draw + TICK_S - time.monotonic()
        if wait <= 0:
            self.draw()
        else:  # (+5 ms: asyncio may run a timer up to a clock tick early)
            self._draw_timer = self.set_timer(wait + 0.005, self._deferred_draw)

    def _deferred_draw(self) -> None:
        self._draw_timer = None
        self.draw()

    def draw(self) -> None:
        """Everything that changed since the last draw, in one go."""
        feed = self.feed
        if feed is None or not self.is_attached:
            return
        self._last_draw = time.monotonic()
        hw = self._hw_seen
        parts_due, self._hw_parts_due = self._hw_parts_due, False
        with feed.lock:  # the feed's worker appends to the state under this lock
            state = feed.state
            changed = state.version != self._version
            if changed:
                self._version = state.version
                self._show_state(state, hw)
            elif parts_due and hw is not None:
                self._show_hw_parts(state, hw)
        if changed or parts_due:
            self.draws += 1
            self.draw_times.append(self._last_draw)

    def _switch_feed(self, feed: RunFeed) -> None:
        if feed is self.feed:
            return
        if self.feed is not None:
            feeds(self.app).release(self.feed)
        self.feed = feed
        self._version = -1
        feeds(self.app).pump_soon()

    # ------------------------------------------------------------------ state -> widgets

    def _show_state(self, st: RunState, hw: HwSnapshot | None) -> None:
        """Called with the feed's lock held: copy what the widgets keep."""
        self.state = st
        colors = theme_colors(self.app)
        status = st.status
        last = st.last_step or {}
        cfg = st.config or self._config or {}  # config.yaml until run_started brings the real one
        self._status = status

        self.query_one("#dash-head", TextLine).show(head_text(st, self.run_id, cfg, colors))
        self.query_one(RunProgress).show(
            last.get("step"), last.get("total_steps"), last.get("epoch"), last.get("elapsed_s"),
            last.get("eta_s") if status == "running" else None, note=progress_note(st),
            bar_color=colors["good"] if status == "completed" else colors["train"])
        self.query_one(MetricsLine).show(
            loss=last.get("loss"), eval_loss=(st.last_eval or {}).get("eval_loss"), best_eval=st.best_eval,
            learning_rate=last.get("learning_rate"), grad_norm=last.get("grad_norm"), tokens_per_s=tokens_per_s(st))
        if last.get("step") is not None and (not self.shown_steps or self.shown_steps[-1][0] != last["step"]):
            self.shown_steps.append((int(last["step"]), time.time()))
            del self.shown_steps[:-1000]

        self._show_ranks(st)
        self._show_data(st)
        self._show_chart(st)
        self._show_problem(st, hw)
        self._show_checkpoints(st, hw)
        self._show_log(st, hw)
        self._refresh_keys()

    def _show_ranks(self, st: RunState) -> None:
        """A run of several processes: the ranks line, every node's GPUs, the ranks view."""
        widget = self.query_one("#ranks", TextLine)
        line = rank_summary(st.ranks, app_key(self.app, "dashboard.ranks", "w"))
        if widget.display != (line is not None):
            widget.display = line is not None
            self.refresh_bindings()  # w (Ranks) is offered for such runs only
        if line is not None:
            widget.show(line)
            if st.ranks.nodes:
                self._show_gpus(self._hw_seen)

    def _show_data(self, st: RunState) -> None:
        """The run_started data report, one line: records read, kept, skipped and why."""
        widget = self.query_one("#data", TextLine)
        text = data_text((st.started or {}).get("data"), max(self.size.width - 2, 20), theme_colors(self.app)["eval"])
        if widget.display != (text is not None):
            widget.display = text is not None
        if text is not None:
            widget.show(text)

    def _show_chart(self, st: RunState) -> None:
        colors = theme_colors(self.app)
        chart = self.query_one(LossPlot)
        # A run that failed before its first step has no curve: give the room to the log.
        shown = bool(st.steps) or st.status in ("running", "starting")
        if chart.display != shown:
            chart.display = shown
        name = PLOTS[self.plot]
        steps = list(st.steps)
        if name == "loss":
            series = [Series("train", steps, list(st.loss), colors["train"]),
                      Series("eval", list(st.eval_steps), list(st.eval_loss), colors["eval"], markers=True)]
        else:
            values = {"learning rate": st.learning_rate, "grad norm": st.grad_norm,
                      "tokens/s": st.tokens_per_s}[name]
            series = [Series(name, steps, list(values), colors["train"])]
        chart.set_series(series, title=name)

    def _show_problem(self, st: RunState, hw: HwSnapshot | None) -> None:
        banner = self.query_one("#problem", TextLine)
        last_ckpt = hw.last_checkpoint if hw else None
        self._fix = likely_fix(st, last_ckpt, self._config)
        kind, text = problem_text(st, last_ckpt, self._fix, self._config, max(self.size.width - 2, 20),
                                  theme_colors(self.app), partial(app_key, self.app))
        for name in ("-failed", "-stopped", "-hung"):  # class changes restyle the screen: only real ones
            if banner.has_class(name) != (kind == name):
                banner.set_class(kind == name, name)
        banner.show(text)

    def _show_checkpoints(self, st: RunState, hw: HwSnapshot | None) -> None:
        last = hw.last_checkpoint if hw else None
        self.query_one("#ckpts", TextLine).show(checkpoints_text(st, last, self._config))

    def _show_log(self, st: RunState | None, hw: HwSnapshot | None) -> None:
        key = app_key(self.app, "dashboard.view", "v")
        self.query_one(LogView).show(*log_view(VIEWS[self.view], st, hw, self.run_dir, theme_colors(self.app), key))

    def _show_hw_parts(self, st: RunState, hw: HwSnapshot) -> None:
        """What depends on the poll (checkpoints on disk, stdout.log); lock held."""
        self._show_problem(st, hw)
        self._show_checkpoints(st, hw)
        self._show_log(st, hw)
        self._refresh_keys()

    def _show_gpus(self, hw: HwSnapshot | None) -> None:
        st = self.state
        if st is not None and st.ranks.multi and st.ranks.nodes:  # every node, as its local rank 0 reported it
            slow = st.ranks.slowest()
            key = app_key(self.app, "dashboard.ranks", "w")
            self.query_one(GpuPanel).show_nodes(st.ranks.hw_rows(), slow.rank if slow else None,
                                                more_hint=f" ({key} {key}: every GPU)")
            return
        if hw is None:
            return
        devices = ((st.started or {}).get("devices") or []) if st else []
        on_gpu = any(str(d).startswith("cuda") for d in devices)
        memory = dict((st.last_step or {}).get("memory") or {}) if st else {}
        self.query_one(GpuPanel).show(hw.gpus, hw.problem, hw.host, memory, st.peak_bytes if st else None, on_gpu)

    def _refresh_keys(self) -> None:
        """The footer shows what fits the run's status; rebuilding it restyles widgets, so
        only when what check_action answers has changed."""
        key = (self._status, self._fix is not None)
        if key != self._keys_for:
            self._keys_for = key
            self.refresh_bindings()

    # ------------------------------------------------------------------ polling (thread)

    @work(thread=True, exclusive=True, group="dashboard-hw")
    def poll_hardware(self) -> None:
        """NVML, psutil, checkpoints and stdout.log, once a second, off the UI thread."""
        self._hw = self._poller.poll(self.feed)
        self._config = self._poller.config
        try:
            self.app.call_from_thread(self._tick)
        except Exception:  # the app is closing
            pass

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self._status
        if action in ("stop", "kill"):
            return status in ("running", "starting")
        if action == "resume":
            return status in ("stopped", "killed", "failed", "created")
        if action == "fix":
            return self._fix is not None
        if action == "chat":
            return status in ("completed", "stopped") or None
        if action == "ranks":
            return self.state is not None and self.state.ranks.multi
        return True

    def action_back(self) -> None:
        self.dismiss()

    def action_stop(self) -> None:
        if self._status not in ("running", "starting"):
            self.notify("the run is not running", title="Stop", severity="warning")
            return
        self._signal(kill=False)

    def action_kill(self) -> None:
        if self._status not in ("running", "starting"):
            self.notify("the run is not running", title="Kill", severity="warning")
            return
        last = self._hw.last_checkpoint if self._hw else None
        confirm_kill(self, self.run_id, last, lambda: self._signal(kill=True))

    @work(thread=True, group="dashboard-control")
    def _signal(self, kill: bool) -> None:
        signal_trainer(self, self.run_dir, self.feed, kill)

    def action_resume(self) -> None:
        if self._status in ("running", "starting"):
            self.notify("the run is still running", title="Resume", severity="warning")
            return
        resume_run(self, self.run_dir)

    def action_fix(self) -> None:
        fix = self._fix
        if fix is None:
            self.notify("nothing to fix: the run did not fail", title="Fix")
            return
        if fix.kind == "resume":
            self.action_resume()
        elif fix.kind == "stdout":
            self.view = VIEWS.index("stdout.log") - 1
            self.action_view()
        else:
            note = "fix: " + ", ".join(f"{k} {v}" for k, v in fix.overrides.items()) if fix.overrides else ""
            problem = apply_to_settings(self.app, self.run_dir, fix.overrides, note)
            if problem:
                self.notify(problem, title="Fix", severity="error", timeout=10)
            else:
                self.app.notify(f"{fix.text}; Start (g) makes a new run", title="Fix", timeout=8)

    def action_config(self) -> None:
        show_config(self, self.run_dir)

    def action_chat(self) -> None:
        self.app.chat_target = self.run_id
        self.app.action_goto("chat")

    def action_smooth(self) -> None:
        self.query_one(LossPlot).cycle_smoothing()

    def action_log_scale(self) -> None:
        self.query_one(LossPlot).toggle_log_scale()

    def action_plot(self) -> None:
        self.plot = (self.plot + 1) % len(PLOTS)
        if self.feed is not None:
            with self.feed.lock:
                self._show_chart(self.feed.state)

    def action_view(self) -> None:
        self.view = (self.view + 1) % len(VIEWS)
        if VIEWS[self.view] in ("ranks", "gpus") and not (self.state is not None and self.state.ranks.multi):
            self.view = 0  # one process: no ranks or GPUs views
        if self.feed is not None:
            with self.feed.lock:
                self._show_log(self.feed.state, self._hw)

    def action_ranks(self) -> None:
        """The log area: the ranks view, then every GPU of every node, then the log again."""
        if VIEWS[self.view] not in ("ranks", "gpus"):
            self.view = VIEWS.index("ranks") - 1
        self.action_view()

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Run: stop (checkpoint, then exit)", self.run_id, self.action_stop),
            ("Run: kill", self.run_id, self.action_kill),
            ("Run: resume from the last checkpoint", self.run_id, self.action_resume),
            ("Run: show / load its config", self.run_id, self.action_config),
            ("Run: chat with its result", self.run_id, self.action_chat),
            ("Chart: cycle smoothing", "off → 0.6 → 0.9", self.action_smooth),
            ("Chart: log scale", "toggle", self.action_log_scale),
            ("Chart: next plot", "loss, learning rate, grad norm, tokens/s", self.action_plot),
            ("Log: next view", "events, stdout.log, checkpoints (ranks)", self.action_view),
            ("Ranks: every rank's pace, then every GPU of every node", "several processes", self.action_ranks),
        ]
