"""GPU and host readings: one row per visible GPU (NVML through ``engine.hardware``), one
host row (CPU, RAM, the trainer's RSS) with the trainer's own peak allocated memory from
its step events.

The widget only renders; the dashboard polls NVML and psutil in a thread worker and hands
the readings over (:meth:`GpuPanel.show`). Missing readings show as N/A; without NVML or
without GPUs the panel says why in one plain line.

A run of several processes (torchrun) shows what each node's local rank 0 reported in its
event stream instead (:meth:`GpuPanel.show_nodes`, engine.ranks): one row per GPU per node,
or one CPU/RAM row for a node without GPUs, each naming the ranks on it; the slowest rank's
row stands out. At most ``max_rows`` rows; the rest are counted (the ranks view has all).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from finetui.engine.units import format_bytes, format_bytes_pair
from finetui.tui.dashstate import bar, node_line, panel_rows, pct_style

_pct_style, _bar = pct_style, bar


class GpuPanel(Widget):
    DEFAULT_CSS = """
    GpuPanel { height: auto; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gpus: list[Any] = []  # engine.hardware.GpuReading
        self.problem: str | None = None
        self.host: Any = None  # engine.hardware.HostReading
        self.trainer_memory: dict[str, Any] = {}  # from the last step event
        self.peak_bytes: int | None = None
        self.on_gpu = False
        self.polled = False
        self.nodes: list[Any] | None = None  # engine.ranks.HwRow, for a run of several processes
        self.slowest: int | None = None
        self.max_rows = 4
        self.more_hint = ""

    def show(self, gpus: list[Any], problem: str | None, host: Any, trainer_memory: dict[str, Any] | None,
             peak_bytes: int | None, on_gpu: bool) -> None:
        self.gpus, self.problem, self.host, self.nodes = gpus, problem, host, None
        self.trainer_memory = trainer_memory or {}
        self.peak_bytes, self.on_gpu, self.polled = peak_bytes, on_gpu, True
        lines = 1 + max(len(gpus), 1)
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines  # a layout change: only when the GPU count changes
        self.refresh()

    def show_nodes(self, rows: list[Any], slowest: int | None, more_hint: str = "") -> None:
        """Every node's readings from the ranks' streams (engine.ranks.RankBoard.hw_rows)."""
        self.nodes, self.slowest, self.more_hint, self.polled = rows, slowest, more_hint, True
        shown = min(len(rows), self.max_rows) + (1 if len(rows) > self.max_rows else 0)
        lines = max(shown, 1)
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines
        self.refresh()

    def render(self) -> Text:
        width = max(self.size.width, 20)
        if self.nodes is not None:
            return self._render_nodes(width)
        lines: list[Text] = [self._host_line(width)]
        if not self.polled:
            lines.append(Text("GPU  reading…", style="dim"))
        elif not self.gpus:
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append("GPU  ", style="bold")
            line.append(f"N/A: {self.problem or 'no GPU found'}", style="dim")
            lines.append(line)
        for g in self.gpus:
            lines.append(self._gpu_line(g, width))
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return Text("\n").join(lines)

    def _render_nodes(self, width: int) -> Text:
        rows = self.nodes or []
        lines = [node_line(row, self.slowest) for row in panel_rows(rows, self.slowest, self.max_rows)]
        if len(rows) > self.max_rows:
            lines.append(Text(f"… {len(rows) - self.max_rows} more GPU rows{self.more_hint}", style="dim"))
        if not lines:
            lines = [Text("nodes  waiting for the first hardware reading…", style="dim")]
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return Text("\n").join(lines)

    def _host_line(self, width: int) -> Text:
        h = self.host
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("host ", style="bold")
        if h is None:
            line.append("reading…", style="dim")
            return line
        line.append("cpu ", style="dim")
        line.append(f"{h.cpu_percent:.0f}%", style=_pct_style(h.cpu_percent))
        line.append("  ram ", style="dim")
        line.append(format_bytes_pair(h.ram_used_bytes, h.ram_total_bytes, missing="N/A"))
        line.append("  trainer rss ", style="dim")
        line.append(format_bytes(h.process_rss_bytes) if h.process_rss_bytes else "N/A")
        mem = self.trainer_memory
        label = "alloc" if self.on_gpu else "peak rss"
        if self.on_gpu:
            line.append(f"  {label} ", style="dim")
            line.append(f"{format_bytes(mem.get('allocated_bytes'), missing='N/A')}")
            line.append(" peak ", style="dim")
            line.append(format_bytes(self.peak_bytes, missing="N/A"), style="bold")
        else:
            line.append(f"  {label} ", style="dim")
            line.append(format_bytes(self.peak_bytes, missing="N/A"))
        return line

    def _gpu_line(self, g: Any, width: int) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        name = (g.name or "GPU").replace("NVIDIA ", "")
        line.append(f"{g.index} ", style="bold")
        line.append(f"{name[:12]:<12} ")
        line.append("util ", style="dim")
        util = g.util_percent
        line.append(f"{util:>3.0f}%" if isinstance(util, (int, float)) else " N/A", style=_pct_style(util))
        line.append(" ")
        line.append_text(_bar(util / 100 if isinstance(util, (int, float)) else None, 5))
        line.append("  mem ", style="dim")
        used, total = g.memory_used_bytes, g.memory_total_bytes
        mem_pct = used / total * 100 if isinstance(used, (int, float)) and total else None
        line.append(f"{format_bytes_pair(used, total, missing='N/A'):>15}", style=_pct_style(mem_pct))
        line.append("  ")
        temp = g.temperature_c
        line.append(f"{temp:.0f}°C" if isinstance(temp, (int, float)) else "N/A°C",
                    style="bold red" if isinstance(temp, (int, float)) and temp >= 85 else "")
        line.append("  ")
        power, limit = g.power_w, g.power_limit_w
        if isinstance(power, (int, float)):
            line.append(f"{power:.0f}/{limit:.0f} W" if isinstance(limit, (int, float)) else f"{power:.0f}/N/A W")
        else:
            line.append("N/A W", style="dim")
        return line
