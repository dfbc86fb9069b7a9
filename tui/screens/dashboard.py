"""A run's live dashboard: progress, loss/eval-loss chart, learning rate, grad norm,
tokens/s, GPUs and host, checkpoints, the log; and the run's controls (stop, kill,
resume, its config, chat with its result, the likely fix when it failed).

Pushed on top of the Runs screen (enter on a run). Data comes from the run's feed
(``tui.runfeed``): the trainer's pipe when this UI started it, ``events.jsonl`` otherwise.
Feeds apply events to a state in a thread; this screen looks at it on a 0.5 s timer and
hands the widgets copies of what changed, so a burst of events costs one redraw and the
screen never redraws more than twice a second (friendly to SSH). NVML, psutil, the
checkpoints folder and stdout.log are read in a thread worker once a second. What to show
and when is decided by ``tui.dashstate.DashModel`` (plain Python, tested without an app);
this screen composes the widgets, binds the keys and hands the model's frames over.

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
from functools import partial
from pathlib import Path

from textual import work
from textual.binding import Binding

from finetui.tui.dashstate import DashModel, Frame, Look, PollParts, launch_route
from finetui.tui.dashstate import likely_fix  # noqa: F401 - tests import it from here
from finetui.tui.runfeed import RunFeed, feeds
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.widgets.gpupanel import GpuPanel
from finetui.tui.widgets.logview import LogView
from finetui.tui.widgets.lossplot import LossPlot, Series, theme_colors
from finetui.tui.widgets.runcontrol import (
    app_key, apply_to_settings, confirm_kill, resume_run, show_config, signal_trainer,
)
from finetui.tui.widgets.runprogress import MetricsLine, RunProgress
from finetui.tui.widgets.textline import TextLine

HW_POLL_S = 1.0


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
        self.model = DashModel(run_dir)
        self.run_dir = self.model.run_dir
        self.run_id = self.model.run_id
        self.feed: RunFeed | None = None
        self._draw_timer = None

    # what tests and benchmarks read (the model's)
    state = property(lambda self: self.model.state)  # the state last shown
    draws = property(lambda self: self.model.draws)
    draw_times = property(lambda self: self.model.draw_times)
    shown_steps = property(lambda self: self.model.shown_steps)
    _hw = property(lambda self: self.model.hw)
    _status = property(lambda self: self.model.status)
    _fix = property(lambda self: self.model.fix)

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

    def _look(self) -> Look:
        return Look(self.size.width, theme_colors(self.app), partial(app_key, self.app))

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
            own, other = launch_route(registry.take_new_launches(), self.run_id)
            if own:  # our own resume: its pipe feed takes over
                self._switch_feed(registry.feed(self.run_dir))
            if other is not None:  # a run started from Settings meanwhile: show that one
                self.app.switch_screen(DashboardScreen(registry.feeds[other].run_dir))
                return
        hw = self.model.fresh_readings()
        if hw is None:
            return
        if self.model.newer_session(hw, self.feed.ended):
            self._switch_feed(registry.feed(self.run_dir))
        with self.feed.lock:  # the feed's worker changes the state (the ranks' too) under it
            self._show_gpus(self.model.gpus(hw, self._look()))  # its own 1 Hz cadence: a small widget
            due = self.model.readings_seen(hw, self.feed.state)
        if due:
            self.request_draw()

    def request_draw(self) -> None:
        """Draw now, or as soon as half a second has passed since the last draw: bursts of
        events cost one redraw and the screen never redraws more than twice a second."""
        if self._draw_timer is not None:
            return
        wait = self.model.draw_wait(time.monotonic())
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
        with feed.lock:  # the feed's worker appends to the state under this lock
            plan = self.model.draw_plan(feed.state, time.monotonic())
            if plan == "all":
                self._show_frame(self.model.frame(feed.state, self._look()))
            elif plan == "poll":
                self._show_poll_parts(self.model.poll_parts(feed.state, self.model.hw_seen, self._look()))

    def _switch_feed(self, feed: RunFeed) -> None:
        if feed is self.feed:
            return
        if self.feed is not None:
            feeds(self.app).release(self.feed)
        self.feed = feed
        self.model.feed_switched()
        feeds(self.app).pump_soon()

    # ------------------------------------------------------------------ frames -> widgets

    def _show_frame(self, frame: Frame) -> None:
        """Called with the feed's lock held (the frame holds copies of what widgets keep)."""
        self.query_one("#dash-head", TextLine).show(frame.head)
        self.query_one(RunProgress).show(**frame.progress)
        self.query_one(MetricsLine).show(**frame.metrics)
        if self.query_one("#ranks", TextLine).show_or_hide(frame.ranks):
            self.refresh_bindings()  # w (Ranks) is offered for runs of several processes only
        self._show_gpus(frame.gpus)
        self.query_one("#data", TextLine).show_or_hide(frame.data)
        self._show_chart(frame.chart_shown, frame.chart_title, frame.curves)
        self._show_poll_parts(frame.poll)

    def _show_chart(self, shown: bool, title: str, curves) -> None:
        chart = self.query_one(LossPlot)
        if chart.display != shown:
            chart.display = shown
        chart.set_series([Series(c.label, c.xs, c.ys, c.color, markers=c.markers) for c in curves], title=title)

    def _show_poll_parts(self, parts: PollParts) -> None:
        kind, text = parts.problem
        self.query_one("#problem", TextLine).show_classed(text, kind, ("-failed", "-stopped", "-hung"))
        self.query_one("#ckpts", TextLine).show(parts.checkpoints)
        self.query_one(LogView).show(*parts.log)
        if self.model.keys_changed():  # the footer shows what fits the run's status
            self.refresh_bindings()

    def _show_gpus(self, call: tuple[str, tuple, dict] | None) -> None:
        if call is not None:
            method, args, kwargs = call
            getattr(self.query_one(GpuPanel), method)(*args, **kwargs)

    def _show_log(self) -> None:
        if self.feed is not None:
            with self.feed.lock:
                self.query_one(LogView).show(*self.model.log(self.feed.state, self.model.hw, self._look()))

    # ------------------------------------------------------------------ polling (thread)

    @work(thread=True, exclusive=True, group="dashboard-hw")
    def poll_hardware(self) -> None:
        """NVML, psutil, checkpoints and stdout.log, once a second, off the UI thread."""
        self.model.poll(self.feed)
        try:
            self.app.call_from_thread(self._tick)
        except Exception:  # the app is closing
            pass

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.model.allows(action)

    def _refused(self, action: str, title: str, severity: str = "warning") -> bool:
        refusal = self.model.refusal(action)
        if refusal:
            self.notify(refusal, title=title, severity=severity)
        return refusal is not None

    def action_back(self) -> None:
        self.dismiss()

    def action_stop(self) -> None:
        if not self._refused("stop", "Stop"):
            self._signal(kill=False)

    def action_kill(self) -> None:
        if not self._refused("kill", "Kill"):
            hw = self.model.hw
            confirm_kill(self, self.run_id, hw.last_checkpoint if hw else None, lambda: self._signal(kill=True))

    @work(thread=True, group="dashboard-control")
    def _signal(self, kill: bool) -> None:
        signal_trainer(self, self.run_dir, self.feed, kill)

    def action_resume(self) -> None:
        if not self._refused("resume", "Resume"):
            resume_run(self, self.run_dir)

    def action_fix(self) -> None:
        fix = self.model.fix
        if self._refused("fix", "Fix", severity="information") or fix is None:
            return
        if fix.kind == "resume":
            self.action_resume()
        elif fix.kind == "stdout":
            self.model.stdout_view()
            self._show_log()
        else:
            problem = apply_to_settings(self.app, self.run_dir, fix.overrides, fix.note)
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
        self.model.next_plot()
        if self.feed is not None:
            with self.feed.lock:
                self._show_chart(*self.model.chart(self.feed.state, theme_colors(self.app)))

    def action_view(self) -> None:
        self.model.next_view()
        self._show_log()

    def action_ranks(self) -> None:
        """The log area: the ranks view, then every GPU of every node, then the log again."""
        self.model.ranks_view()
        self._show_log()

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
