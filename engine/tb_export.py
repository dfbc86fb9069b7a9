"""`finetui runs export RUN --tensorboard DIR`: a run's events as TensorBoard scalars.

finetui's own events (``events.jsonl``) are the record of a run; this writes them once into
a TensorBoard event file, for people who read their runs in TensorBoard, without having set
``train.report_to: [tensorboard]`` before training. Scalars (the step on the x axis, the
event's own time as wall time):

- ``train/<field>`` from every ``step`` event: loss, learning_rate, grad_norm, tokens_per_s,
  samples_per_s, epoch, elapsed_s, tokens, and ``memory/<name>`` from its memory readings;
- ``eval/<field>`` from every ``eval`` event: eval_loss (as ``eval/loss``), perplexity and
  the other numbers the evaluation gave.

A step seen twice (a run resumed from a checkpoint redoes the steps after it) is written
once, with its last value, as the resumed run's history reads.

Needs the tensorboard package (``pip install tensorboard``, in the ``trackers`` extra); its
writer comes through ``torch.utils.tensorboard``, imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetui.engine import events as ev

# step fields that are the x axis or bookkeeping, not a curve
SKIPPED = {"v", "type", "time", "run_id", "step", "total_steps", "offset", "eta_s", "memory", "metrics"}


class ExportError(RuntimeError):
    pass


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def scalars(events: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[float, float]]:
    """{(tag, step): (value, wall time)} from a run's events (the last value of a step wins)."""
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for event in events:
        kind, step = event.get("type"), event.get("step")
        if kind not in ("step", "eval") or not isinstance(step, int):
            continue
        when = float(event.get("time") or 0.0)
        prefix = "train" if kind == "step" else "eval"
        values = {k: v for k, v in event.items() if k not in SKIPPED}
        if kind == "step":
            for name, value in (event.get("memory") or {}).items():
                values[f"memory/{name}"] = value
        else:
            values["loss"] = values.pop("eval_loss", None)
            for name, value in (event.get("metrics") or {}).items():
                name = name.removeprefix("eval_")
                if name not in ("loss", "epoch"):
                    values.setdefault(name, value)
        for name, value in values.items():
            if _number(value):
                tag = name if name.startswith("memory/") else f"{prefix}/{name}"
                out[(tag, step)] = (float(value), when)
    return out


def export(run_dir: Path, out_dir: Path) -> tuple[Path, int]:
    """Write ``run_dir``'s events as scalars into ``out_dir`` (made if need be); returns
    (the event file, how many scalars)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportError("--tensorboard needs the tensorboard package, which is not installed: "
                          "pip install tensorboard (or pip install 'finetui[trackers]')") from None
    values = scalars(ev.read_file(run_dir / "events.jsonl"))
    if not values:
        raise ExportError(f"run {run_dir.name} has no step or eval events to export")
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(log_dir=str(out_dir))
    try:
        for (tag, step), (value, when) in sorted(values.items(), key=lambda item: (item[0][1], item[0][0])):
            writer.add_scalar(tag, value, global_step=step, walltime=when or None)
    finally:
        writer.close()
    written = sorted(set(out_dir.glob("events.out.tfevents.*")) - before)
    return (written[-1] if written else out_dir), len(values)
