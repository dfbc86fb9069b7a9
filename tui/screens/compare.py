"""Two runs side by side: their loss curves overlaid (one colour per run, eval points as
markers), their key numbers, and the settings that differ between their config.yaml.

Both runs are read from their events files in a worker thread, and again every 2 s while
either is running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from finetui.engine.units import format_duration
from finetui.tui.runfeed import RunState, read_state
from finetui.tui.safetext import safe
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.widgets.fieldform import show_value
from finetui.tui.widgets.lossplot import LossPlot, Series, theme_colors
from finetui.tui.widgets.runprogress import fmt_num, fmt_rate

PLOTS = ("loss", "learning rate", "grad norm", "tokens/s")
RELOAD_S = 2.0


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every setting that differs; missing = None."""
    fa, fb = flatten(a or {}), flatten(b or {})
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def load_config(run_dir: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def show(value: Any) -> str:
    """A config value as the Settings form shows it; — where a run does not have it."""
    return "—" if value is None else show_value(value)


class CompareScreen(FinetuiScreen):
    MODE = "runs"
    BINDINGS = [
        Binding("escape,backspace", "back", "Runs", id="compare.back"),
        Binding("m", "smooth", "Smooth", id="compare.smooth"),
        Binding("l", "log_scale", "Log-y", id="compare.log_scale"),
        Binding("p", "plot", "Plot", id="compare.plot"),
        Binding("f5,ctrl+l", "reload", "Reload", show=False, id="compare.reload"),
    ]
    DEFAULT_CSS = """
    CompareScreen #cmp-head { height: auto; padding: 0 1; background: $surface; }
    CompareScreen #cmp-chart { height: 1fr; min-height: 7; padding: 0 1 0 0; }
    CompareScreen #cmp-diff-box { height: 1fr; min-height: 4; padding: 0 1; scrollbar-size-vertical: 1; }
    """

    def __init__(self, run_a: str | Path, run_b: str | Path) -> None:
        super().__init__()
        self.run_a, self.run_b = Path(run_a), Path(run_b)
        self.states: tuple[RunState, RunState] | None = None
        self.configs: tuple[dict, dict] = ({}, {})
        self.plot = 0

    def compose_body(self):
        yield Static("reading both runs…", id="cmp-head")
        yield LossPlot(title="loss", id="cmp-chart")
        with VerticalScroll(id="cmp-diff-box"):
            yield Static("", id="cmp-diff")

    def on_mount(self) -> None:
        self.load()
        self.set_interval(RELOAD_S, self._auto_reload, name="compare reload")
        self.query_one("#cmp-diff-box").focus()

    def _auto_reload(self) -> None:
        if self.states and any(s.status == "running" for s in self.states):
            self.load()

    @work(thread=True, exclusive=True, group="compare")
    def load(self) -> None:
        states = (read_state(self.run_a), read_state(self.run_b))
        configs = (load_config(self.run_a), load_config(self.run_b))
        self.app.call_from_thread(self.show_runs, states, configs)

    def show_runs(self, states: tuple[RunState, RunState], configs: tuple[dict, dict]) -> None:
        self.states, self.configs = states, configs
        colors = theme_colors(self.app)
        head = Text()
        for label, state, color in (("A", states[0], colors["train"]), ("B", states[1], colors["second"])):
            if head:
                head.append("\n")
            head.append(f"{label} ━━ ", style=f"bold {color}")
            head.append(f"{state.run_id}", style="bold")
            last = state.last_step or {}
            best = state.best_eval
            head.append(f"  {state.status}  step {last.get('step', '-')}", style="dim")
            head.append(f"  loss {fmt_num(last.get('loss'))}", style="dim")
            head.append(f"  best eval {fmt_num(best[1]) if best else 'N/A'}", style="dim")
            head.append(f"  {fmt_rate(state.mean_tokens_per_s())} tok/s", style="dim")
            head.append(f"  {format_duration(last.get('elapsed_s'))}", style="dim")
        self.query_one("#cmp-head", Static).update(safe(head))  # run names, config values
        self._show_chart()
        diff = config_diff(*configs)
        text = Text()
        text.append(f"config: {len(diff)} setting{'s' if len(diff) != 1 else ''} differ", style="bold")
        text.append("  (A → B)\n", style="dim")
        key_w = min(max((len(k) for k, _a, _b in diff), default=10), 34)
        for key, a, b in diff:
            text.append(f"{key:<{key_w}} ", style="bold")
            text.append(show(a), style=colors["train"])
            text.append(" → ", style="dim")
            text.append(show(b), style=colors["second"])
            text.append("\n")
        if not diff:
            text.append("the two configs are the same\n", style="dim")
        self.query_one("#cmp-diff", Static).update(safe(text))

    def _show_chart(self) -> None:
        if self.states is None:
            return
        colors = theme_colors(self.app)
        name = PLOTS[self.plot]
        series = []
        for label, state, color in (("A", self.states[0], colors["train"]), ("B", self.states[1], colors["second"])):
            if name == "loss":
                series.append(Series(f"{label} train", list(state.steps), list(state.loss), color))
                series.append(Series(f"{label} eval", list(state.eval_steps), list(state.eval_loss), color,
                                     markers=True))
            else:
                values = {"learning rate": state.learning_rate, "grad norm": state.grad_norm,
                          "tokens/s": state.tokens_per_s}[name]
                series.append(Series(label, list(state.steps), list(values), color))
        self.query_one(LossPlot).set_series(series, title=name)

    def action_back(self) -> None:
        self.dismiss()

    def action_smooth(self) -> None:
        self.query_one(LossPlot).cycle_smoothing()

    def action_log_scale(self) -> None:
        self.query_one(LossPlot).toggle_log_scale()

    def action_plot(self) -> None:
        self.plot = (self.plot + 1) % len(PLOTS)
        self._show_chart()

    def action_reload(self) -> None:
        self.load()

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Compare: cycle smoothing", "off → 0.6 → 0.9", self.action_smooth),
            ("Compare: log scale", "toggle", self.action_log_scale),
            ("Compare: next plot", "loss, learning rate, grad norm, tokens/s", self.action_plot),
        ]
