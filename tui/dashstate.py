"""What the run dashboard reads and decides, without Textual: the status marks, the
hardware snapshot its poll thread hands over, the likely fix of a failed run, and the small
readers (the run's config.yaml, the tail of stdout.log) and text clipping it uses. Plain
Python, so tests drive it without an app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
