"""One line of training progress: bar, step/total, percent, epoch, elapsed and ETA; and
one line of the latest numbers (loss, eval loss, learning rate, grad norm, tokens/s).

Both are plain renders of the values they are handed (``show``), so they redraw only when
the dashboard's timer gives them something new.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from finetui.engine.units import format_duration


def fmt_num(value: float | None, digits: int = 4) -> str:
    if not isinstance(value, (int, float)):
        return "N/A"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.{max(digits - 2, 1)}e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.{digits}g}"


def fmt_rate(value: float | None) -> str:
    if not isinstance(value, (int, float)):
        return "N/A"
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.0f}"


class RunProgress(Widget):
    DEFAULT_CSS = """
    RunProgress { height: 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step: int | None = None
        self.total: int | None = None
        self.epoch: float | None = None
        self.elapsed: float | None = None
        self.eta: float | None = None
        self.note = ""
        self.bar_color = "cyan"

    def show(self, step: int | None, total: int | None, epoch: float | None, elapsed: float | None,
             eta: float | None, note: str = "", bar_color: str | None = None) -> None:
        new = (step, total, epoch, elapsed, eta, note, bar_color or self.bar_color)
        old = (self.step, self.total, self.epoch, self.elapsed, self.eta, self.note, self.bar_color)
        if new != old:
            self.step, self.total, self.epoch, self.elapsed, self.eta, self.note, self.bar_color = new
            self.refresh()

    def render(self) -> Text:
        width = self.size.width
        tail = Text(no_wrap=True)
        if self.step is None:
            tail.append(self.note or "no steps yet", style="dim")
        else:
            tail.append(f"{self.step}/{self.total}" if self.total else f"step {self.step}", style="bold")
            if self.total:
                tail.append(f" {100 * self.step / max(self.total, 1):.0f}%")
            if self.epoch is not None:
                tail.append(f"  ep {self.epoch:.2f}")
            tail.append(f"  {format_duration(self.elapsed)}")
            if self.eta is not None and self.total and self.step < self.total:
                tail.append(f"  eta {format_duration(self.eta)}")
            if self.note:
                tail.append(f"  {self.note}", style="dim")
        bar_w = max(10, min(40, width - tail.cell_len - 1))
        frac = 0.0
        if self.step is not None and self.total:
            frac = min(max(self.step / self.total, 0.0), 1.0)
        done = round(frac * bar_w)
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("━" * done, style=self.bar_color)
        line.append("━" * (bar_w - done), style="grey30")
        line.append(" ")
        line.append_text(tail)
        line.truncate(width, overflow="ellipsis")
        return line


class MetricsLine(Widget):
    """loss · eval (best) · lr · grad norm · tokens/s, from the latest events."""

    DEFAULT_CSS = """
    MetricsLine { height: 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.values: dict[str, Any] = {}

    def show(self, **values: Any) -> None:
        if values != self.values:
            self.values = values
            self.refresh()

    def render(self) -> Text:
        v = self.values
        text = Text(no_wrap=True, overflow="ellipsis")

        def item(label: str, value: str, style: str = "bold") -> None:
            if text.cell_len:
                text.append("  ")
            text.append(f"{label} ", style="dim")
            text.append(value, style=style)

        item("loss", fmt_num(v.get("loss")))
        eval_loss = fmt_num(v.get("eval_loss"))
        best = v.get("best_eval")
        if best is not None and best[1] != v.get("eval_loss"):
            eval_loss += f" (best {fmt_num(best[1])}@{best[0]})"
        item("eval", eval_loss)
        item("lr", fmt_num(v.get("learning_rate"), 3))
        item("gnorm", fmt_num(v.get("grad_norm"), 3))
        item("tok/s", fmt_rate(v.get("tokens_per_s")))
        text.truncate(self.size.width, overflow="ellipsis")
        return text
