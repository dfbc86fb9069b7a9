"""What the run dashboard reads and decides, without Textual: the status marks, the
hardware snapshot its poll thread hands over, the likely fix of a failed run, and the small
readers (the run's config.yaml, the tail of stdout.log) and text clipping it uses; and
:class:`DashModel`, the screen's state: when to draw, what each widget shows from the feed's
state (a :class:`Frame`), the chart's plot and the log area's view, which keys apply to the
run's status and why an action is refused. Plain Python, so tests drive it without an app;
the screen only hands its frames to the widgets.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from finetui.engine.ranks import HwRow, RankBoard
from finetui.tui.runfeed import RunState

STATUS_MARK = {
    "running": ("●", "good"), "starting": ("…", "dim"), "completed": ("✔", "train"),
    "stopped": ("■", "eval"), "killed": ("✖", "eval"), "failed": ("✖", "bad"), "created": ("·", "dim"),
    "loading": ("…", "dim"),  # the history is still being read: no status, no resume offer yet
    "unreadable": ("?", "bad"),  # the Runs screen: a run folder that could not be read
}


@dataclass
class HwSnapshot:
    """What the poll thread read, handed to the UI in one assignment."""

    gpus: list[Any] = field(default_factory=list)
    problem: str | None = None
    host: Any = None
    last_checkpoint: Path | None = None
    existing_checkpoints: set[str] = field(default_factory=set)
    stdout_lines: list[str] = field(default_factory=list)
    newer_session_pid: int | None = None  # a trainer for this run started elsewhere
    thread: str = ""


@dataclass
class Fix:
    """What the dashboard offers when a run failed (the ``f`` key)."""

    kind: str  # settings | resume | stdout
    text: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        """What Settings says the config came with: ``fix: train.batch_size 8, …``."""
        return "fix: " + ", ".join(f"{k} {v}" for k, v in self.overrides.items()) if self.overrides else ""


def likely_fix(state: RunState, last_checkpoint: Path | None, config: dict[str, Any] | None = None) -> Fix | None:
    """The most likely way out of a failed run, from its error event. ``config`` is the
    run's config.yaml, for runs that failed before their run_started event."""
    if state.status != "failed":
        return None
    error = state.error
    if error is None:  # killed or crashed without a word: pick up where it left off
        where = f"from {last_checkpoint.name}" if last_checkpoint else "from step 0 (no checkpoint yet)"
        return Fix("resume", f"resume {where}")
    kind = error.get("kind")
    config = state.config or config or {}
    train = config.get("train") or {}
    data = config.get("data") or {}
    if kind == "oom":
        batch = int(train.get("batch_size") or 1)
        accum = int(train.get("gradient_accumulation_steps") or 1)
        if batch > 1:
            return Fix("settings", f"Settings with train.batch_size {batch // 2} (was {batch}) and "
                                   f"gradient_accumulation_steps {accum * 2} (same effective batch)",
                       {"train.batch_size": batch // 2, "train.gradient_accumulation_steps": accum * 2})
        if not train.get("gradient_checkpointing"):
            return Fix("settings", "Settings with train.gradient_checkpointing on (batch size is already 1)",
                       {"train.gradient_checkpointing": True})
        length = int(data.get("max_length") or 512)
        return Fix("settings", f"Settings with data.max_length {max(16, length // 2)} (was {length})",
                   {"data.max_length": max(16, length // 2)})
    if kind in ("config", "data", "model"):
        return Fix("settings", f"open this run's config in Settings and change what the {kind} error names")
    return Fix("stdout", "show stdout.log (the traceback is there)")


def clip(text: str, width: int, max_lines: int) -> str:
    """``text`` wrapped to ``width``, at most ``max_lines`` lines (the last one cut with …)."""
    import textwrap

    lines = textwrap.wrap(" ".join(text.split()), width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except Exception:
        return {}


def tail_lines(path: Path, size: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            end = fh.tell()
            fh.seek(max(0, end - size))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if end > size and lines:
        lines = lines[1:]  # the first one is cut
    return [line.rstrip() for line in lines if line.strip()][-200:]


# --------------------------------------------------------------------------- ranks
# A run of several processes (torchrun): what engine.ranks.RankBoard adds up, as text.


def fmt_rate(value: float | None) -> str:
    """Tokens per second as the metrics line writes them: ``2,054``, ``12.3k``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "N/A"
    return f"{value / 1000:,.1f}k" if value >= 10_000 else f"{value:,.0f}"


def pct_style(value: float | None) -> str:
    if not isinstance(value, (int, float)):
        return "dim"
    return "bold red" if value >= 95 else "bold yellow" if value >= 80 else "bold"


def bar(fraction: float | None, width: int) -> Text:
    text = Text()
    if not isinstance(fraction, (int, float)):
        text.append("·" * width, style="grey30")
        return text
    done = round(min(max(fraction, 0.0), 1.0) * width)
    text.append("▮" * done, style="cyan")
    text.append("▯" * (width - done), style="grey30")
    return text


def node_line(row: HwRow, slowest: int | None) -> Text:
    """One row of the per-node hardware table: ``n0 host-a  0 H100  87% ▮▮▮▮▯  40.0/80.0
    GiB 61°C  rank 0``, or CPU and RAM for a node without GPUs; the slowest rank's row stands out."""
    from finetui.engine.units import format_bytes_pair

    node, g = row.node, row.gpu
    slow = slowest is not None and any(i.rank == slowest for i in row.ranks)
    line = Text(no_wrap=True, overflow="ellipsis", style="bold yellow" if slow else "")
    where = f"n{node.node_rank if node.node_rank is not None else '?'} {node.host or ''}"
    line.append(f"{where[:11]:<11} ", style="bold")
    if g is None:
        h = node.host_reading or {}
        cpu = h.get("cpu_percent")
        line.append("cpu ", style="dim")
        line.append(f"{cpu:>3.0f}%" if isinstance(cpu, (int, float)) else " N/A", style=pct_style(cpu))
        line.append(" ")
        line.append_text(bar(cpu / 100 if isinstance(cpu, (int, float)) else None, 5))
        line.append("  ram ", style="dim")
        line.append(format_bytes_pair(h.get("ram_used_bytes"), h.get("ram_total_bytes"), missing="N/A"))
    else:
        name = str(g.get("name") or "GPU").replace("NVIDIA ", "")
        line.append(f"{g.get('index', '?')} {name[:9]:<9} ")
        util = g.get("util_percent")
        line.append(f"{util:>3.0f}%" if isinstance(util, (int, float)) else " N/A", style=pct_style(util))
        line.append(" ")
        line.append_text(bar(util / 100 if isinstance(util, (int, float)) else None, 5))
        used, total = g.get("memory_used_bytes"), g.get("memory_total_bytes")
        mem_pct = used / total * 100 if isinstance(used, (int, float)) and total else None
        line.append(f" {format_bytes_pair(used, total, missing='N/A'):>15}", style=pct_style(mem_pct))
        temp = g.get("temperature_c")
        line.append(f" {temp:.0f}°C" if isinstance(temp, (int, float)) else " N/A°C")
    ranks = ",".join(str(i.rank) for i in row.ranks)
    line.append(f"  rank {ranks}" if ranks else "", style="dim" if not slow else "")
    if slow:
        line.append(" ◀ slowest" + (f" {slowest}" if len(row.ranks) > 1 else ""), style="bold yellow")
    return line


def panel_rows(rows: list[HwRow], slowest: int | None, max_rows: int) -> list[HwRow]:
    """The rows the GPU panel has room for, in node order; the slowest rank's row is always
    among them."""
    if len(rows) <= max_rows:
        return rows
    shown = rows[:max_rows]
    slow = next((r for r in rows if slowest is not None and any(i.rank == slowest for i in r.ranks)), None)
    if slow is not None and slow not in shown:
        shown = shown[:max_rows - 1] + [slow]
    return shown


def rank_summary(board: RankBoard, key: str = "w") -> Text | None:
    """One line for a run of several processes (None for one): ranks, nodes, the run's
    throughput (the sum of every rank's own tokens/s), the slowest rank (its step time
    against the fastest one's) and the key of the ranks view."""
    if not board.multi:
        return None
    ranks = board.expected()
    nodes = {(i.node_rank, i.host) for i in board.ranks.values()} | set(board.nodes)
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("ranks ", style="bold")
    line.append(f"{len(ranks)}")
    line.append(f" on {len(nodes)} node{'s' if len(nodes) != 1 else ''}", style="dim")
    total = board.global_tokens_per_s()
    line.append("  Σ tok/s ", style="dim")
    line.append(fmt_rate(total) if total is not None else "…", style="bold")
    slow, times = board.slowest(), board.step_times()
    if slow is not None and times is not None:
        line.append("  slowest ", style="dim")
        line.append(f"rank {slow.rank}", style="bold yellow")
        line.append(f": {secs(slow.step_time)} vs {secs(times[0])}", style="dim")
    elif times is not None and len([i for i in board.ranks.values() if i.step_time is not None]) > 1:
        line.append(f"  even pace: {secs(times[1])}", style="dim")
    line.append(f"  ({key})", style="dim")
    return line


def secs(value: float | None) -> str:
    """A step time: ``17.5ms``, ``1.32s``; ``-`` when missing."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value * 1000:.3g}ms" if value < 1 else f"{value:.3g}s"


def silent_text(board: RankBoard, silent: list[tuple[int, float]]) -> str:
    """The banner's first line for silent ranks: ``⚠ rank 1 (node 0, host-a) silent for 12m
    03s: dead or hung`` (+ the others, fewer words)."""
    def where(rank: int) -> str:
        info = board.ranks.get(rank)
        return info.where() if info is not None else f"rank {rank} (never heard from)"

    (first, quiet), rest = silent[0], silent[1:]
    text = f"⚠ {where(first)} silent for {_duration(quiet)}: dead or hung"
    if rest:
        text += "; also " + ", ".join(f"rank {r} ({_duration(q)})" for r, q in rest[:6])
        if len(rest) > 6:
            text += f" and {len(rest) - 6} more"
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs} s"


RANK_HEAD = "rnk nod host       device   step s/step  own s  tok/s heard"


def rank_lines(board: RankBoard, silent: list[tuple[int, float]], now: float | None = None,
               bad: str = "red") -> list[Text]:
    """The ranks view: one row per rank of the session; the slowest one marked, a silent
    one (dead or hung) in ``bad``, a failed one with its error."""
    import time as _time

    now = _time.time() if now is None else now
    quiet = dict(silent)
    slow = board.slowest()
    lines = [Text(RANK_HEAD, style="dim")]
    for r in board.expected():
        info = board.ranks.get(r)
        step = (info.last_step or {}) if info else {}
        slowest = slow is not None and slow.rank == r
        line = Text(no_wrap=True, overflow="ellipsis", style="bold yellow" if slowest else "")
        line.append(f"{r:>3} ", style=f"bold {bad}" if r in quiet else "bold")
        node = info.node_rank if info and info.node_rank is not None else "?"
        line.append(f"{node!s:>3} {((info.host if info else None) or '?')[:10]:<10} ")
        line.append(f"{str((info.device if info else None) or '-')[:7]:<7} {step.get('step', '-')!s:>5} ")
        for key in ("step_s", "own_s"):
            line.append(f"{secs(step.get(key)):>6} ")
        line.append(f"{fmt_rate(step.get('tokens_per_s')) if step else '-':>6} ")
        if r in quiet:
            line.append(f"silent {_duration(quiet[r])}", style=f"bold {bad}")
        elif info is None or info.alive_time is None:
            line.append("never", style=bad)
        elif info.finished:
            line.append(info.finished, style=bad if info.finished == "failed" else "dim")
        else:
            line.append(f"{_duration(max(0.0, now - info.alive_time))} ago", style="dim")
        if slowest:
            line.append(" ◀ slowest", style="bold yellow")
        if info is not None and info.error:
            line.append(f"  {info.error}", style=bad)
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- the screen's lines
# What each part of the dashboard shows, from the state (the screen only hands it over).
# ``key(binding_id, default)`` is the key a binding has now (the user's keymap).


def head_text(st: RunState, run_id: str, cfg: dict[str, Any], colors: dict[str, str]) -> Text:
    """``● running  <run id>  full · tiny · cpu×2 · resumed ×1 · live``."""
    status = st.status
    mark, color = STATUS_MARK.get(status, ("?", "dim"))
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"{mark} {status}", style=f"bold {colors.get(color, color)}")
    head.append(f"  {run_id}", style="bold")
    method = (cfg.get("method") or {}).get("type") or ""
    model = (cfg.get("model") or {}).get("name_or_path") or ""
    devices = ((st.started or {}).get("devices") or [])
    bits = [b for b in (method, str(model)[-24:], devices[0].split(" ")[0] if devices else "") if b]
    if len(devices) > 1:
        bits[-1] += f"×{len(devices)}"
    if st.sessions > 1:
        bits.append(f"resumed ×{st.sessions - 1}")
    # live: reading the pipe of a trainer started here; attached: following events.jsonl
    bits.append("live" if st.source == "pipe" else "attached")
    head.append("  " + " · ".join(bits), style="dim")
    return head


def progress_note(st: RunState) -> str:
    """What the progress bar says before there is a step."""
    status = st.status
    if status == "running" and st.last_step is None:
        return "loading model and data…"
    return {"starting": "starting: loading model and data…", "created": "never started",
            "loading": "loading: reading the run's history…"}.get(status, "")


def tokens_per_s(st: RunState) -> float | None:
    """The run's throughput: for several processes the sum of every rank's own tokens/s
    (rank 0's step event has its own count times the world size), else the step event's."""
    total = st.ranks.global_tokens_per_s() if st.ranks.multi else None
    return total if total is not None else (st.last_step or {}).get("tokens_per_s")


def data_text(data: dict[str, Any] | None, width: int, skipped_style: str) -> Text | None:
    """The run_started data report in one line of at most ``width`` (the reasons go first)."""
    from finetui.engine.events import data_line

    line = None
    for reasons, extras in ((3, True), (2, True), (3, False), (2, False), (1, False), (0, False)):
        line = data_line(data, reasons=reasons, extras=extras)
        if line is None or len(line) <= width:
            break
    if line is None:
        return None
    head, _, rest = line.partition(" ")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(head + " ", style="bold")
    counts = (data or {}).get("counts") or {}
    text.append(rest, style=skipped_style if counts.get("ok", 0) < counts.get("records", 0) else "")
    return text


def problem_text(st: RunState, last_ckpt: Path | None, fix: Fix | None, config: dict[str, Any] | None,
                 width: int, colors: dict[str, str], key) -> tuple[str | None, Text]:
    """The banner under the chart: (its class: -failed | -stopped | -hung | None, its text):
    how a failed run failed and its likely fix, the ranks that went silent, a hung trainer,
    a stopped or killed run and where it resumes from."""
    from finetui.engine import errors, heartbeat

    status = st.status
    text = Text()
    silent = st.silent_ranks() if status == "running" else []
    hung = st.hung_s() if status == "running" else None
    stop, kill = key("dashboard.stop", "S"), key("dashboard.kill", "K")
    if status == "failed":
        error = st.error
        killed = errors.exit_problem(st.exit_code, st.run_id) if error is None and not st.killed_here else None
        if error is not None:
            head = f"✖ failed: {error.get('kind')} error: {error.get('message') or ''}"
        elif killed is not None:
            head = f"✖ failed: the trainer was {killed[0]}"
        else:
            head = "✖ failed: the trainer process is gone without a finished event (killed or crashed)"
        text.append(clip(head, width, 2), style=f"bold {colors['bad']}")
        if error is not None and error.get("hint"):
            text.append("\n" + clip(f"hint: {error['hint']}", width, 2))
        elif killed is not None:
            text.append("\n" + clip(f"hint: {killed[1]}", width, 2))
        if fix is not None:
            fix_key = key("dashboard.fix", "f") if fix.kind != "resume" else key("dashboard.resume", "R")
            text.append("\n" + clip(f"{fix_key}: {fix.text}", width, 2), style=f"bold {colors['eval']}")
        return "-failed", text
    limit = heartbeat.hang_after(st.config or config)
    if silent:
        # ranks of a run of several processes with nothing but readings for train.hang_after_s
        text.append(clip(silent_text(st.ranks, silent), width, 2), style=f"bold {colors['bad']}")
        text.append("\n" + clip(f"{stop}: stop  ·  {kill}: kill  ·  {key('dashboard.ranks', 'w')}: ranks  ·  "
                                f"silent after train.hang_after_s: {limit:g} s", width, 2))
        return "-hung", text
    if hung is not None:
        # no event or heartbeat for train.hang_after_s, and the process lives
        text.append(clip(f"⚠ the trainer looks hung: {heartbeat.describe(hung)} (process alive)", width, 2),
                    style=f"bold {colors['bad']}")
        text.append("\n" + clip(f"{stop}: stop  ·  {kill}: kill  ·  hung after train.hang_after_s: {limit:g} s",
                                width, 2))
        return "-hung", text
    if status in ("stopped", "killed"):
        text.append("■ stopped" if status == "stopped" else "✖ killed (no checkpoint saved at the kill)",
                    style=f"bold {colors['eval']}")
        step = (st.last_step or {}).get("step")
        if step is not None:
            text.append(f" at step {step}")
        where = last_ckpt.name if last_ckpt else "step 0 (no checkpoint)"
        text.append(f"  ·  {key('dashboard.resume', 'R')}: resume from {where}")
        return "-stopped", text
    return None, text


def checkpoints_text(st: RunState, last_ckpt: Path | None, config: dict[str, Any] | None) -> Text:
    """``checkpoints 10 20 30  (last on disk: checkpoint-30)``, or when the first one comes."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("checkpoints ", style="bold")
    if st.checkpoints:
        line.append(" ".join(str(step) for step, _path in st.checkpoints[-12:]))
        if last_ckpt is not None:
            line.append(f"  (last on disk: {last_ckpt.name})", style="dim")
    else:
        every = ((st.config or config or {}).get("train") or {}).get("save_steps")
        line.append("none yet" + (f" (every {every} steps)" if every else ""), style="dim")
    return line


def log_view(view: str, st: RunState | None, hw: HwSnapshot | None, run_dir: Path, colors: dict[str, str],
             key: str) -> tuple[str, list[Text], str]:
    """The log area's (title, lines, what it says when empty) for one of its views: log
    (the log and error events), stdout.log, checkpoints, ranks (several processes)."""
    import time

    multi = st is not None and st.ranks.multi
    if view == "log":
        prefix = f"{run_dir.resolve()}/"
        lines = []
        for when, kind, message in list(st.lines if st else [])[-200:]:
            line = Text(time.strftime("%H:%M:%S ", time.localtime(when)), style="dim")
            style = {"error": colors["bad"], "checkpoint": "dim", "eval": colors["eval"]}.get(kind, "")
            # Paths inside the run folder are shown relative to it: the name is what matters.
            line.append(message.replace(prefix, "").replace("\n", "  "), style=style)
            lines.append(line)
        more = ", ranks" if multi else ""
        return f"log  ({key}: stdout.log, checkpoints{more})", lines, "no log events yet"
    if view == "stdout.log":
        lines = [Text(s) for s in (hw.stdout_lines if hw else [])]
        return f"stdout.log (the trainer's stderr)  ({key}: checkpoints)", lines, "stdout.log is empty"
    if view == "ranks":
        board = st.ranks if st is not None else None
        lines = rank_lines(board, st.silent_ranks(), bad=colors["bad"]) if board is not None else []
        total = board.global_tokens_per_s() if board is not None else None
        head = "ranks" + (f"  Σ {total:,.0f} tok/s (every rank's own, summed)" if total is not None else "")
        return f"{head}  ({key}: GPUs)", lines, "no rank has reported yet"
    if view == "gpus":
        board = st.ranks if st is not None else None
        slow = board.slowest() if board is not None else None
        lines = [node_line(row, slow.rank if slow else None) for row in (board.hw_rows() if board else [])]
        return f"every GPU of every node  ({key}: log)", lines, "no node has reported its hardware yet"
    existing = hw.existing_checkpoints if hw else set()
    lines = []
    for step, path in (st.checkpoints if st else []):
        name = Path(path).name
        line = Text(f"step {step:>7}  {name}")
        if hw is not None and name not in existing:
            line.append("  removed (save_total_limit)", style="dim")
        else:
            line.append(f"  {Path(path).parent}/", style="dim")
        lines.append(line)
    return f"checkpoints  ({key}: {'ranks' if multi else 'log'})", lines, "no checkpoints yet"


class HwPoller:
    """What the dashboard's poll thread reads once a second, off the UI thread: NVML and
    psutil, the checkpoints on disk, the tail of stdout.log (read again only when it grew),
    and whether a newer trainer of the run started elsewhere."""

    STDOUT_TAIL_BYTES = 16384

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.backend = None  # engine.hardware backend, made on the first poll
        self.config: dict[str, Any] | None = None  # config.yaml, read on the first poll
        self._stdout_size = -1
        self._stdout_lines: list[str] = []

    def poll(self, feed) -> HwSnapshot:
        import threading

        from finetui.engine import hardware, runs

        if self.backend is None:
            self.backend = hardware.gpu_backend()
        if self.config is None:
            self.config = read_yaml(self.run_dir / "config.yaml")
        pid = feed.pid if feed is not None else runs.read_pid(self.run_dir)
        snap = HwSnapshot(thread=threading.current_thread().name)
        try:
            snap.gpus = self.backend.read()
        except Exception as exc:  # a driver hiccup is a reading, not a crash
            snap.problem = f"NVML read failed: {exc}"
        snap.problem = snap.problem or self.backend.problem
        alive = feed.proc.poll() is None if feed is not None and feed.proc is not None \
            else runs.trainer_alive(self.run_dir)
        try:
            snap.host = hardware.read_host(pid if alive else None)
        except Exception:
            snap.host = None
        snap.last_checkpoint = runs.last_checkpoint(self.run_dir)
        ckpt_dir = self.run_dir / "checkpoints"
        snap.existing_checkpoints = {p.name for p in ckpt_dir.glob("checkpoint-*")} if ckpt_dir.is_dir() else set()
        stdout_path = self.run_dir / "stdout.log"
        try:
            size = stdout_path.stat().st_size
        except OSError:
            size = 0
        if size != self._stdout_size:
            self._stdout_size = size
            self._stdout_lines = tail_lines(stdout_path, self.STDOUT_TAIL_BYTES)
        snap.stdout_lines = self._stdout_lines
        if feed is not None and feed.ended:
            file_pid = runs.read_pid(self.run_dir)
            if file_pid and file_pid != feed.pid and runs.pid_alive(file_pid, self.run_dir):
                snap.newer_session_pid = file_pid
        return snap


# --------------------------------------------------------------------------- the screen's state

TICK_S = 0.5  # widgets redraw at most this often (2 Hz)
PLOTS = ("loss", "learning rate", "grad norm", "tokens/s")
VIEWS = ("log", "stdout.log", "checkpoints", "ranks", "gpus")  # ranks, gpus: runs of several processes only


def _default_key(_binding_id: str, default: str) -> str:
    return default


@dataclass
class Look:
    """What the screen lends the lines: its width, the theme's colours (lossplot.theme_colors)
    and the key a binding has now (``key(binding_id, default)``, the user's keymap)."""

    width: int
    colors: dict[str, str]
    key: Callable[[str, str], str] = _default_key


@dataclass
class Curve:
    """One line of the chart (the screen makes a lossplot.Series of it)."""

    label: str
    xs: list[float]
    ys: list[float | None]
    color: str
    markers: bool = False


@dataclass
class PollParts:
    """What the hardware poll changes too (checkpoints on disk, stdout.log, how long a
    trainer or rank has been silent): the banner, the checkpoints line, the log area."""

    problem: tuple[str | None, Text]  # (the banner's class, its text)
    checkpoints: Text
    log: tuple[str, list[Text], str]  # (title, lines, what it says when empty)


@dataclass
class Frame:
    """Everything the dashboard shows of one state, for one draw."""

    head: Text
    progress: dict[str, Any]  # RunProgress.show's arguments
    metrics: dict[str, Any]  # MetricsLine.show's arguments
    ranks: Text | None  # the ranks line; None hides it (one process)
    gpus: tuple[str, tuple, dict] | None  # a GpuPanel call (method, args, kwargs), or leave it
    data: Text | None  # the data line; None hides it
    chart_shown: bool
    chart_title: str
    curves: list[Curve]
    poll: PollParts


def launch_route(launched: Iterable[str], run_id: str) -> tuple[bool, str | None]:
    """Runs launched from this UI since the last look, for the dashboard of ``run_id``:
    (whether our own resume came first: its pipe feed takes over, the run started meanwhile
    from Settings that the dashboard turns to, if any)."""
    own = False
    for launched_id in launched:
        if launched_id != run_id:
            return own, launched_id
        own = True
    return own, None


class DashModel:
    """The dashboard's state, without Textual. The screen's timer and poll call in; what
    each widget shows comes back as a :class:`Frame` (or :class:`PollParts`, a GPU panel
    call). Methods that take a state are called with the feed's lock held."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.plot = 0  # index in PLOTS
        self.view = 0  # index in VIEWS
        self.version = -1  # the state's version on screen
        self.poller = HwPoller(self.run_dir)  # the poll thread's readers
        self.hw: HwSnapshot | None = None  # the latest poll
        self.hw_seen: HwSnapshot | None = None  # the readings on screen
        self.hw_key: tuple = ()
        self.hw_parts_due = False
        self.config: dict[str, Any] | None = None  # config.yaml, read by the poll thread
        self.status = ""
        self.fix: Fix | None = None
        self.keys_for: tuple = ()
        self.last_draw = 0.0
        self.state: RunState | None = None  # the state last shown
        self.draws = 0  # draws that changed something on screen (redraw-rate benchmark)
        self.draw_times: deque[float] = deque(maxlen=1000)  # monotonic time of each such draw
        self.shown_steps: list[tuple[int, float]] = []  # (step, wall time it reached the widgets)

    # ------------------------------------------------------------------ polling

    def poll(self, feed) -> None:
        """In the poll thread: NVML, psutil, checkpoints, stdout.log and config.yaml."""
        self.hw = self.poller.poll(feed)
        self.config = self.poller.config

    def fresh_readings(self) -> HwSnapshot | None:
        """The latest poll when it is not on screen yet."""
        hw = self.hw
        return None if hw is None or hw is self.hw_seen else hw

    @staticmethod
    def newer_session(hw: HwSnapshot, feed_ended: bool) -> bool:
        """Whether a trainer of this run started elsewhere after ours ended: follow it."""
        return bool(hw.newer_session_pid) and feed_ended

    def readings_seen(self, hw: HwSnapshot, st: RunState) -> bool:
        """``hw`` goes on screen; True when what depends on the poll (checkpoints on disk,
        the tail of stdout.log, how long the trainer or a rank has been silent) changed,
        or on the first poll (it brings config.yaml: everything is drawn once more)."""
        first = self.hw_seen is None
        self.hw_seen = hw
        hung = st.hung_s()  # silence grows with no event: the banner counts it
        silent = tuple((r, int(q)) for r, q in st.silent_ranks())
        key = (hw.last_checkpoint, frozenset(hw.existing_checkpoints), tuple(hw.stdout_lines[-3:]),
               None if hung is None else int(hung), silent)
        if first:
            self.version = -1
        if first or key != self.hw_key:
            self.hw_key = key
            self.hw_parts_due = True
            return True
        return False

    # ------------------------------------------------------------------ when to draw

    def feed_switched(self) -> None:
        self.version = -1

    def draw_wait(self, now: float) -> float:
        """Seconds until the next draw may happen (<= 0: now)."""
        return self.last_draw + TICK_S - now

    def draw_plan(self, st: RunState, now: float) -> str | None:
        """A draw at ``now``: "all" (the state changed), "poll" (only what the poll
        changes), or None (nothing)."""
        self.last_draw = now
        parts_due, self.hw_parts_due = self.hw_parts_due, False
        changed = st.version != self.version
        if changed or parts_due:
            self.draws += 1
            self.draw_times.append(now)
        if changed:
            self.version = st.version
            return "all"
        return "poll" if parts_due and self.hw_seen is not None else None

    # ------------------------------------------------------------------ what to show

    def frame(self, st: RunState, look: Look) -> Frame:
        """Everything, from ``st`` and the readings on screen."""
        self.state = st
        colors = look.colors
        status = self.status = st.status
        last = st.last_step or {}
        cfg = st.config or self.config or {}  # config.yaml until run_started brings the real one
        if last.get("step") is not None and (not self.shown_steps or self.shown_steps[-1][0] != last["step"]):
            self.shown_steps.append((int(last["step"]), time.time()))
            del self.shown_steps[:-1000]
        ranks = rank_summary(st.ranks, look.key("dashboard.ranks", "w"))
        chart_shown, title, curves = self.chart(st, colors)
        return Frame(
            head=head_text(st, self.run_id, cfg, colors),
            progress=dict(step=last.get("step"), total=last.get("total_steps"), epoch=last.get("epoch"),
                          elapsed=last.get("elapsed_s"), eta=last.get("eta_s") if status == "running" else None,
                          note=progress_note(st),
                          bar_color=colors["good"] if status == "completed" else colors["train"]),
            metrics=dict(loss=last.get("loss"), eval_loss=(st.last_eval or {}).get("eval_loss"),
                         best_eval=st.best_eval, learning_rate=last.get("learning_rate"),
                         grad_norm=last.get("grad_norm"), tokens_per_s=tokens_per_s(st)),
            ranks=ranks,
            # every node's GPUs, as its local rank 0 reported them
            gpus=self.gpus(self.hw_seen, look) if ranks is not None and st.ranks.nodes else None,
            data=data_text((st.started or {}).get("data"), max(look.width - 2, 20), colors["eval"]),
            chart_shown=chart_shown, chart_title=title, curves=curves,
            poll=self.poll_parts(st, self.hw_seen, look),
        )

    def poll_parts(self, st: RunState, hw: HwSnapshot | None, look: Look) -> PollParts:
        """The banner (and the fix it offers), the checkpoints line and the log area."""
        last_ckpt = hw.last_checkpoint if hw else None
        self.fix = likely_fix(st, last_ckpt, self.config)
        return PollParts(
            problem=problem_text(st, last_ckpt, self.fix, self.config, max(look.width - 2, 20), look.colors,
                                 look.key),
            checkpoints=checkpoints_text(st, last_ckpt, self.config),
            log=self.log(st, hw, look))

    def log(self, st: RunState | None, hw: HwSnapshot | None, look: Look) -> tuple[str, list[Text], str]:
        """The log area in its current view."""
        return log_view(VIEWS[self.view], st, hw, self.run_dir, look.colors, look.key("dashboard.view", "v"))

    def chart(self, st: RunState, colors: dict[str, str]) -> tuple[bool, str, list[Curve]]:
        """(whether the chart is shown, its title, its curves) for the current plot. A run
        that failed before its first step has no curve: the room goes to the log."""
        shown = bool(st.steps) or st.status in ("running", "starting")
        name = PLOTS[self.plot]
        steps = list(st.steps)
        if name == "loss":
            curves = [Curve("train", steps, list(st.loss), colors["train"]),
                      Curve("eval", list(st.eval_steps), list(st.eval_loss), colors["eval"], markers=True)]
        else:
            values = {"learning rate": st.learning_rate, "grad norm": st.grad_norm,
                      "tokens/s": st.tokens_per_s}[name]
            curves = [Curve(name, steps, list(values), colors["train"])]
        return shown, name, curves

    def gpus(self, hw: HwSnapshot | None, look: Look) -> tuple[str, tuple, dict] | None:
        """The GPU panel's call: every node's readings from the ranks' streams (several
        processes, once a node has reported), else this machine's poll (None: no poll yet)."""
        st = self.state
        if st is not None and st.ranks.multi and st.ranks.nodes:
            slow = st.ranks.slowest()
            key = look.key("dashboard.ranks", "w")
            return "show_nodes", (st.ranks.hw_rows(), slow.rank if slow else None), \
                {"more_hint": f" ({key} {key}: every GPU)"}
        if hw is None:
            return None
        devices = ((st.started or {}).get("devices") or []) if st else []
        on_gpu = any(str(d).startswith("cuda") for d in devices)
        memory = dict((st.last_step or {}).get("memory") or {}) if st else {}
        return "show", (hw.gpus, hw.problem, hw.host, memory, st.peak_bytes if st else None, on_gpu), {}

    def keys_changed(self) -> bool:
        """Whether what :meth:`allows` answers may have changed since the last look (the
        footer is rebuilt only then: rebuilding it restyles widgets)."""
        key = (self.status, self.fix is not None)
        if key == self.keys_for:
            return False
        self.keys_for = key
        return True

    # ------------------------------------------------------------------ keys

    @property
    def multi(self) -> bool:
        return self.state is not None and self.state.ranks.multi

    def allows(self, action: str) -> bool | None:
        """Screen.check_action's answer: True offers the key, False hides it, None greys it."""
        status = self.status
        if action in ("stop", "kill"):
            return status in ("running", "starting")
        if action == "resume":
            return status in ("stopped", "killed", "failed", "created")
        if action == "fix":
            return self.fix is not None
        if action == "chat":
            return status in ("completed", "stopped") or None
        if action == "ranks":
            return self.multi
        return True

    def refusal(self, action: str) -> str | None:
        """Why ``action`` (stop, kill, resume, fix) does nothing now, or None."""
        if action in ("stop", "kill") and self.status not in ("running", "starting"):
            return "the run is not running"
        if action == "resume" and self.status in ("running", "starting"):
            return "the run is still running"
        if action == "fix" and self.fix is None:
            return "nothing to fix: the run did not fail"
        return None

    def next_plot(self) -> None:
        self.plot = (self.plot + 1) % len(PLOTS)

    def next_view(self) -> None:
        """The log area's next view; one process has no ranks or GPUs views."""
        self.view = (self.view + 1) % len(VIEWS)
        if VIEWS[self.view] in ("ranks", "gpus") and not self.multi:
            self.view = 0

    def ranks_view(self) -> None:
        """``w``: the ranks view, then every GPU of every node, then the log again."""
        if VIEWS[self.view] not in ("ranks", "gpus"):
            self.view = VIEWS.index("ranks") - 1
        self.next_view()

    def stdout_view(self) -> None:
        """The fix of a run that failed for no known reason: its traceback in stdout.log."""
        self.view = VIEWS.index("stdout.log") - 1
        self.next_view()
