"""A line chart drawn in braille cells: loss and eval loss on one set of axes.

Why not textual-plotext (not a dependency): at the sizes an 80x24 dashboard can give a chart
(about 78x9 cells), plotext spends four of ten rows on its frame, x ticks and x label,
draws its legend over the top-left corner (exactly where a loss curve starts), and picks
uneven y ticks (6.6, 5.6, 4.6, 2.6). Here every row but the title is data (2x4 dots per
cell: 156x36 dots at 80x10), the legend and x range sit in the title row, y labels take
only as many columns as they need, and the theme's colours are used. Rendering is a pure
function of the series and the size (tested on its own), cached until either changes.

Series are lines (a train loss: raw points are bucketed per dot column, min..max drawn, so
spikes stay visible with 100k steps) or markers (eval points: ``●`` over a thin line).
Smoothing is the debiased exponential moving average TensorBoard uses; with it on, the raw
curve stays behind in a dim colour. Log scale plots log10 of the positive values and labels
the axis in the original units.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

BRAILLE_BASE = 0x2800
# dot bit for (column 0-1, row 0-3) inside a cell
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
SMOOTHING_STEPS = (0.0, 0.6, 0.9)
MAX_POINTS = 4000  # longer series are reduced to chunk (mean, min, max) before drawing


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str = "cyan"
    markers: bool = False  # eval points: a glyph on each point over a thin line
    smooth: bool = True  # whether the chart's smoothing applies (not to sparse eval points)


def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: exponential moving average, debiased at the start."""
    if weight <= 0:
        return list(values)
    out: list[float | None] = []
    last, count = 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        count += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** count))
    return out


def _decimate(points: list[tuple[float, float]], chunks: int):
    """Long series -> one point per chunk: (middle x, mean y) with the chunk's (min, max).
    Built-in min/max/sum on slices keep this fast for 100k-step runs."""
    size = max(1, math.ceil(len(points) / chunks))
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    out, spread = [], []
    for i in range(0, len(points), size):
        seg = ys[i:i + size]
        out.append((xs[min(i + len(seg) // 2, len(xs) - 1)], sum(seg) / len(seg)))
        spread.append((min(seg), max(seg)))
    return out, spread, size


def fmt_axis(value: float) -> str:
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e5 or mag < 1e-3:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    if mag >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


class _Canvas:
    """Braille cells with one colour each; later layers win a cell they draw in."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.dots = [[0] * width for _ in range(height)]
        self.color: list[list[str | None]] = [[None] * width for _ in range(height)]
        self.glyph: list[list[str | None]] = [[None] * width for _ in range(height)]
        self._layer: list[list[int]] = [[-1] * width for _ in range(height)]
        self.layer = 0

    def dot(self, x: int, y: int, color: str) -> None:
        """x in 0..2W-1, y in 0..4H-1 (0 = top)."""
        if not (0 <= x < self.width * 2 and 0 <= y < self.height * 4):
            return
        cx, cy = x // 2, y // 4
        if self._layer[cy][cx] != self.layer:
            if self._layer[cy][cx] > self.layer:
                return
            self._layer[cy][cx] = self.layer
            self.dots[cy][cx] = 0  # the cell belongs to this layer now: only its dots show
        self.dots[cy][cx] |= DOT_BITS[x % 2][y % 4]
        self.color[cy][cx] = color

    def vline(self, x: int, y0: int, y1: int, color: str) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            self.dot(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: str) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), color)

    def mark(self, x: int, y: int, glyph: str, color: str) -> None:
        cx, cy = x // 2, y // 4
        if 0 <= cx < self.width and 0 <= cy < self.height:
            self.glyph[cy][cx] = glyph
            self.color[cy][cx] = color

    def rows(self) -> list[Text]:
        """One Text per cell row; neighbouring cells of one colour share one span (far
        fewer segments for the terminal and for Textual to handle)."""
        out = []
        for cy in range(self.height):
            text = Text()
            run: list[str] = []
            run_style = ""
            for cx in range(self.width):
                glyph = self.glyph[cy][cx]
                bits = self.dots[cy][cx]
                if glyph:
                    char, style = glyph, self.color[cy][cx] or ""
                elif bits:
                    char, style = chr(BRAILLE_BASE + bits), self.color[cy][cx] or ""
                else:
                    char, style = " ", ""
                if style != run_style and run:
                    text.append("".join(run), style=run_style or None)
                    run = []
                run_style = style
                run.append(char)
            if run:
                text.append("".join(run), style=run_style or None)
            out.append(text)
        return out


def render_chart(series: Sequence[Series], width: int, height: int, *, title: str = "",
                 log_scale: bool = False, smoothing: float = 0.0, x_label: str = "step",
                 dim_color: str = "grey42", axis_color: str = "grey50", empty: str = "waiting for data…") -> Text:
    """The whole chart as ``height`` lines of ``width`` cells."""
    width, height = max(width, 10), max(height, 2)
    # (series, points, is the dim raw curve behind a smoothed one, per-point (lo, hi) or None)
    prepared: list[tuple[Series, list[tuple[float, float]], bool, list | None]] = []

    for s in series:
        points = [(float(x), y) for x, y in zip(s.xs, s.ys) if y is not None and math.isfinite(y)]
        spread: list[tuple[float, float]] | None = None  # per point (lo, hi) after decimation
        weight = smoothing
        if len(points) > MAX_POINTS:
            points, spread, chunk = _decimate(points, MAX_POINTS // 2)
            weight = smoothing ** chunk  # one point now stands for `chunk` steps
        if log_scale:
            kept = [i for i, (_x, y) in enumerate(points) if y > 0]
            logged = [(points[i][0], math.log10(points[i][1])) for i in kept]
            if spread is not None:  # a chunk's min may be <= 0: clamp it to the chunk's mean
                spread = [(math.log10(spread[i][0]) if spread[i][0] > 0 else y, math.log10(spread[i][1]))
                          for i, (_x, y) in zip(kept, logged)]
            points = logged
        if smoothing > 0 and s.smooth and not s.markers and len(points) > 2:
            smoothed = ema([y for _x, y in points], weight)
            prepared.append((s, points, True, spread))
            prepared.append((s, [(x, y) for (x, _), y in zip(points, smoothed)], False, None))
        else:
            prepared.append((s, points, False, spread))

    header = Text(no_wrap=True, overflow="ellipsis")
    header.append(title, style="bold")
    for s in series:
        header.append("  ")
        header.append("●" if s.markers else "━━", style=s.color)
        header.append(f" {s.label}")
    all_points = [p for _s, pts, _raw, _sp in prepared for p in pts]
    lows = [v for _s, _p, _r, sp in prepared if sp for v, _hi in sp]
    highs = [v for _s, _p, _r, sp in prepared if sp for _lo, v in sp]
    if all_points:
        xmin = min(p[0] for p in all_points)
        xmax = max(p[0] for p in all_points)
        header.append(f"  {x_label} {xmin:g}–{xmax:g}", style="dim")
    flags = []
    if smoothing > 0:
        flags.append(f"smooth {smoothing:g}")
    if log_scale:
        flags.append("log")
    if flags:
        header.append("  [" + " · ".join(flags) + "]", style="dim")
    header.truncate(width, overflow="ellipsis")

    plot_h = height - 1
    lines = [header]
    if not all_points:
        for i in range(plot_h):
            lines.append(Text(empty if i == plot_h // 2 else "", style="dim", no_wrap=True))
        return Text("\n").join(lines)

    ys = [p[1] for p in all_points] + lows + highs
    ymin, ymax = min(ys), max(ys)
    if ymax - ymin < 1e-12:
        pad = abs(ymax) * 0.1 or (0.5 if log_scale else 1.0)
        ymin, ymax = ymin - pad, ymax + pad
    else:
        pad = (ymax - ymin) * 0.04
        # losses, rates and learning rates are never negative: no margin below zero
        ymin, ymax = (max(ymin - pad, 0.0) if ymin >= 0 and not log_scale else ymin - pad), ymax + pad
    if xmax - xmin < 1e-12:
        xmin, xmax = xmin - 1, xmax + 1

    def label(v: float) -> str:
        return fmt_axis(10 ** v if log_scale else v)

    labels = {0: label(ymax), plot_h - 1: label(ymin)}
    if plot_h >= 5:
        labels[(plot_h - 1) // 2] = label(ymax - (ymax - ymin) * ((plot_h - 1) // 2 + 0.5) / plot_h)
    gutter = max(len(t) for t in labels.values()) + 1
    plot_w = max(width - gutter, 4)
    canvas = _Canvas(plot_w, plot_h)
    dots_w, dots_h = plot_w * 2, plot_h * 4

    def to_dot(x: float, y: float) -> tuple[int, int]:
        dx = round((x - xmin) / (xmax - xmin) * (dots_w - 1))
        dy = round((ymax - y) / (ymax - ymin) * (dots_h - 1))
        return dx, dy

    for layer, (s, points, is_shadow, spread) in enumerate(prepared):
        canvas.layer = layer
        color = dim_color if is_shadow else s.color
        if s.markers:
            dotted = [to_dot(x, y) for x, y in points]
            for (x0, y0), (x1, y1) in zip(dotted, dotted[1:]):
                canvas.line(x0, y0, x1, y1, color)
            continue
        # Bucket by dot column: (first, last, min, max) of each column's dot rows, so a
        # spike stays visible however many steps share a column.
        buckets: dict[int, list[int]] = {}
        order: list[int] = []
        for i, (x, y) in enumerate(points):
            dx, dy = to_dot(x, y)
            lo = hi = dy
            if spread is not None:
                hi = to_dot(x, spread[i][0])[1]  # the lowest value is the lowest dot
                lo = to_dot(x, spread[i][1])[1]
            b = buckets.get(dx)
            if b is None:
                buckets[dx] = [dy, dy, min(lo, dy), max(hi, dy)]
                order.append(dx)
            else:
                b[1] = dy
                b[2] = min(b[2], lo, dy)
                b[3] = max(b[3], hi, dy)
        previous = None
        for dx in order:
            first, last, lo, hi = buckets[dx]
            if previous is not None:
                canvas.line(previous[0], previous[1], dx, first, color)
            canvas.vline(dx, lo, hi, color)
            previous = (dx, last)
    # Markers last: they sit on top of every line.
    for s, points, is_shadow, _spread in prepared:
        if s.markers and not is_shadow:
            for x, y in points:
                dx, dy = to_dot(x, y)
                canvas.mark(dx, dy, "●", s.color)

    for row, cells in enumerate(canvas.rows()):
        line = Text(no_wrap=True)
        text = labels.get(row, "")
        line.append(text.rjust(gutter - 1), style=axis_color)
        line.append("┤" if row in labels else "│", style=axis_color)
        line.append_text(cells)
        lines.append(line)
    return Text("\n").join(lines)


class LossPlot(Widget):
    """Shows :func:`render_chart` of the series it is given; re-renders only when the data,
    the toggles or its size change."""

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 5; }
    """

    def __init__(self, title: str = "", empty: str = "waiting for data…", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.empty = empty
        self.series: list[Series] = []
        self.log_scale = False
        self.smoothing = 0.0
        self.x_label = "step"
        self.renders = 0  # how often the chart was drawn (the redraw-rate benchmark reads it)
        self.render_times: deque[float] = deque(maxlen=1000)
        self._cache: tuple[tuple, Text] | None = None
        self._data_version = 0

    def set_series(self, series: list[Series], title: str | None = None) -> None:
        self.series = series
        if title is not None:
            self.title = title
        self._data_version += 1
        self.refresh()

    def set_options(self, *, log_scale: bool | None = None, smoothing: float | None = None) -> None:
        if log_scale is not None:
            self.log_scale = log_scale
        if smoothing is not None:
            self.smoothing = smoothing
        self._data_version += 1
        self.refresh()

    def toggle_log_scale(self) -> None:
        self.set_options(log_scale=not self.log_scale)

    def cycle_smoothing(self) -> float:
        i = SMOOTHING_STEPS.index(self.smoothing) if self.smoothing in SMOOTHING_STEPS else 0
        self.set_options(smoothing=SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)])
        return self.smoothing

    def render(self) -> Text:
        key = (self._data_version, self.size.width, self.size.height)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self.renders += 1
        self.render_times.append(time.monotonic())
        colors = theme_colors(self.app) if self.is_attached else theme_colors(None)
        text = render_chart(self.series, self.size.width, self.size.height, title=self.title,
                            log_scale=self.log_scale, smoothing=self.smoothing, x_label=self.x_label,
                            dim_color=colors["dim"], axis_color=colors["axis"], empty=self.empty)
        self._cache = (key, text)
        return text


def theme_colors(app) -> dict[str, str]:
    """Series colours from the current theme, as rich colours (fallbacks for a bare app
    or a theme variable rich cannot parse, such as "auto 60%")."""
    from rich.color import Color, ColorParseError

    variables = getattr(app, "theme_variables", None) or {}

    def pick(name: str, fallback: str) -> str:
        value = variables.get(name, fallback)
        try:
            Color.parse(value)
        except ColorParseError:
            return fallback
        return value

    return {
        "train": pick("primary", "cyan"),
        "eval": pick("warning", "yellow"),
        "second": pick("warning", "yellow"),  # the other run in a comparison
        "dim": pick("foreground-darken-3", "grey50"),
        "axis": pick("foreground-darken-3", "grey50"),
        "good": pick("success", "green"),
        "bad": pick("error", "red"),
    }
