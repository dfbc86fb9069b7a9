"""What the run dashboard reads and decides, without Textual: the status marks, the
hardware snapshot its poll thread hands over, the likely fix of a failed run, and the small
readers (the run's config.yaml, the tail of stdout.log) and text clipping it uses. Plain
Python, so tests drive it without an app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from finetui.engine.ranks import RankBoard
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
    slow = board.slowest()
    if slow is not None:
        fastest = min(i.step_time for i in board.ranks.values() if i.step_time is not None)
        line.append("  slowest ", style="dim")
        line.append(f"rank {slow.rank}", style="bold yellow")
        line.append(f": {slow.step_time:.3g} s vs {fastest:.3g}", style="dim")
    line.append(f"  ({key})", style="dim")
    return line


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


RANK_HEAD = "rnk nod host       device   step s/stp own s  tok/s heard"


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
            v = step.get(key)
            line.append(f"{v:>5.3g} " if isinstance(v, (int, float)) else f"{'-':>5} ")
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
