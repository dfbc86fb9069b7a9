"""`finetui runs [list|show ID|attach ID|stop ID|kill ID|export ID --tensorboard DIR] [--json]`.

Light: reads run folders and events files; never imports torch.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from finetui.engine import events as ev
from finetui.engine import runs
from finetui.engine.units import format_duration
from finetui.engine.visible import visible


DATE_KEYS = ("started", "ended")


def format_date(epoch: float | None) -> str:
    """``2026-12-05 21:03:17 +0100``: local time, ISO-like, with the offset."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))


def show_lines(info: runs.RunInfo) -> list[str]:
    """``finetui runs show RUN``: one ``key  value`` line per known field; dates in local
    time, the duration as 1m 05s, one line per checkpoint still on disk."""
    lines = []
    for key, value in info.to_dict().items():
        if key == "problems":
            lines += [f"{'problem':15} {visible(line)}" for line in value]
        elif key == "hung_s" and value is not None:
            lines.append(f"{'hung':15} {visible(hung_line(info))}")
        elif key in DATE_KEYS and value is not None:
            lines.append(f"{key:15} {format_date(value)}")
        elif key == "duration_s" and value is not None:
            lines.append(f"{'duration':15} {format_duration(value)}")
        elif key == "checkpoints":
            lines += [f"{'checkpoint':15} {visible(path)}" for path in value]
        elif key == "outputs" and value:
            lines += [f"{'output':15} {visible(name)}: {visible(path)}" for name, path in value.items()]
        elif value not in (None, [], {}):
            lines.append(f"{key:15} {visible(value)}")
    return lines


def _table(infos: list[runs.RunInfo]) -> str:
    head = ("RUN", "STATUS", "METHOD", "MODEL", "STEP", "LOSS", "EVAL", "TIME")
    rows = [head]
    for i in infos:
        step = f"{i.step}/{i.total_steps}" if i.total_steps else str(i.step)
        rows.append((i.id, "hung?" if i.hung_s is not None else i.status, i.method or "-", (i.model or "-")[-28:], step,
                     ev.format_number(i.last_loss), ev.format_number(i.best_eval_loss), format_duration(i.duration_s)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return visible("\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows))


def hung_line(info: runs.RunInfo) -> str:
    """``the trainer looks hung: no event or heartbeat for 12m 03s (pid 4242 is alive; ...)``."""
    from finetui.engine import heartbeat

    return (f"the trainer looks hung: {heartbeat.describe(info.hung_s or 0)} (pid {info.pid} is alive; "
            f"`finetui runs stop {info.id}` or kill it; train.hang_after_s sets when a quiet run is called hung)")


def attach(run_dir, out=sys.stdout) -> int:
    """Print the run's history, then follow it live until it finishes or its process dies."""
    status = "failed"
    dead_since: list[float] = []

    def gone() -> bool:
        # The trainer may die without a finished event (kill -9): stop following after a
        # grace period in which the last lines can still land.
        if runs.trainer_alive(run_dir):
            dead_since.clear()
            return False
        dead_since.append(time.time())
        return time.time() - dead_since[0] > 1.0

    finished = False
    for event in ev.follow(run_dir / "events.jsonl", stop=gone):
        for line in ev.event_lines(event):
            print(line, file=out, flush=True)
        if event.get("type") == "finished":
            status = event.get("status", "failed")
            finished = True
    if not finished:
        print(visible(f"run {run_dir.name}: trainer process is gone without a finished event "
                      f"(resume with `finetui train --resume {run_dir.name}`)"), file=out)
    return 0 if status in ("completed", "stopped") else 1


def export(run_dir, args) -> int:
    """``finetui runs export RUN --tensorboard DIR``: the run's events as TensorBoard scalars."""
    from pathlib import Path

    from finetui.engine import tb_export

    target = getattr(args, "tensorboard", None)
    if not target:
        raise runs.RunError("`finetui runs export RUN` needs --tensorboard DIR (the folder to write the scalars to)")
    if runs.trainer_alive(run_dir):
        raise runs.RunError(f"run {run_dir.name} is still running: export it when it has finished")
    try:
        path, count = tb_export.export(run_dir, Path(target).expanduser())
    except tb_export.ExportError as exc:
        raise runs.RunError(str(exc)) from None
    if args.json:
        print(json.dumps({"run": run_dir.name, "tensorboard": str(path), "scalars": count}))
    else:
        print(visible(f"{count} scalars from run {run_dir.name} -> {path} (tensorboard --logdir {target})"))
    return 0


def command(args) -> int:
    action = args.action
    if action == "list":
        infos = runs.list_runs()
        if args.json:
            print(json.dumps([i.to_dict() for i in infos], indent=1))
        elif not infos:
            print(f"no runs in {runs.runs_dir()}/ (start one with `finetui train CONFIG.yaml`)")
        else:
            print(_table(infos))
            for i in infos:  # bad lines and unreadable runs: named, never hiding the rest
                if i.status == "unreadable":
                    print(visible(f"{i.id}: {i.error}"), file=sys.stderr)
                elif i.problems:
                    print(visible(f"{i.id}: {i.problems[0]}" + (f" (+{len(i.problems) - 1} more: finetui runs show "
                                                                 f"{i.id})" if len(i.problems) > 1 else "")),
                          file=sys.stderr)
                if i.hung_s is not None:
                    print(visible(f"{i.id}: {hung_line(i)}"), file=sys.stderr)
        return 0
    if not args.run:
        raise runs.RunError(f"`finetui runs {action}` needs a run id (see `finetui runs list`)")
    run_dir = runs.resolve(args.run)
    if action == "show":
        info = runs.summarize(run_dir)
        if args.json:
            print(json.dumps(info.to_dict(), indent=1))
        else:
            print("\n".join(show_lines(info)))
        return 0
    if action == "attach":
        return attach(run_dir)
    if action == "export":
        return export(run_dir, args)
    if action in ("stop", "kill"):
        if not runs.stop(run_dir, kill=action == "kill"):
            raise runs.RunError(f"run {run_dir.name} is not running")
        print(visible(f"{'killed' if action == 'kill' else 'stopping (a checkpoint is being saved)'}: {run_dir.name}"))
        return 0
    raise runs.RunError(f"unknown action {action}")
