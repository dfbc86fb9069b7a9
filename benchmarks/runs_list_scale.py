"""Benchmark `finetui runs list` and `finetui runs show` on a run with a long history.

    python benchmarks/runs_list_scale.py                      # ~76 MB events.jsonl in /tmp
    python benchmarks/runs_list_scale.py --steps 20000        # a smaller file
    python benchmarks/runs_list_scale.py --repo /path/to/old  # the same run through another checkout
    python benchmarks/runs_list_scale.py --keep /tmp/bench    # keep (and reuse) the runs folder

The run folder holds a config.yaml and an events.jsonl written with engine.events.make and
encode, as the trainer writes it: run_started, ``--steps`` step events (every field, memory
included), an eval and a checkpoint every 1,000 steps, a log line every 100 steps, and a
``finished`` (completed) event. 208,000 steps are about 76 MB.

Each command is `python -m finetui.engine.cli runs ...` in a fresh subprocess started by a parent
that runs nothing else, so its peak RSS is the parent's ``ru_maxrss`` of its children; the
wall time is the subprocess's. ``runs list`` runs twice: the first call may have to read the
whole events file (no summary.json yet: runs made before summaries, or a copied folder),
the second reads the summary. The trainer writes summary.json itself; ``--drop-summary``
deletes it before the first call to measure that fallback.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import child_usage  # noqa: E402

RUN_ID = "20260101-000000-long-history"


def generate(runs_root: Path, steps: int) -> Path:
    """A completed run with ``steps`` step events; returns its events file."""
    sys.path.insert(0, str(ROOT))
    from finetui.engine import events as ev
    from finetui.engine.config import Config

    run_dir = runs_root / RUN_ID
    run_dir.mkdir(parents=True, exist_ok=True)
    config = Config()
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    rng = random.Random(0)
    rid = run_dir.name

    def line(type_: str, **fields) -> str:
        return ev.encode(ev.make(type_, rid, **fields)) + "\n"

    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as fh:
        fh.write(line("run_started", config=config.to_dict(), datasets={"train": 800, "test": 200},
                      devices=["cpu"], footprint={"params_total": 409_600, "params_trainable": 409_600,
                                                   "size_bytes": 1_638_400, "flops_per_token": 2_457_600}))
        loss = 3.0
        for step in range(1, steps + 1):
            loss = max(0.05, loss * 0.99997 + rng.uniform(-0.01, 0.01))
            fh.write(line("step", step=step, total_steps=steps, epoch=round(step / 1000, 4), loss=round(loss, 5),
                          learning_rate=2e-4 * (1 - step / steps), grad_norm=round(rng.uniform(0.2, 2.0), 5),
                          tokens_per_s=round(rng.uniform(9000, 11000), 1), samples_per_s=round(rng.uniform(30, 40), 2),
                          elapsed_s=round(step * 0.05, 3), eta_s=round((steps - step) * 0.05, 3),
                          memory={"allocated_bytes": 52_428_800, "peak_bytes": 73_400_320,
                                  "rss_bytes": 1_073_741_824 + step}))
            if step % 100 == 0:
                fh.write(line("log", level="info", message=f"step {step}: {rng.random():.6f}"))
            if step % 1000 == 0:
                fh.write(line("eval", step=step, eval_loss=round(loss + 0.1, 5), perplexity=round(2.7 ** loss, 4),
                              metrics={}))
                fh.write(line("checkpoint", step=step, path=f"checkpoints/checkpoint-{step}"))
        fh.write(line("finished", status="completed", metrics={"train_loss": round(loss, 5)},
                      outputs={"adapter": "adapter"}))
    return run_dir / "events.jsonl"


def measure(repo: Path, runs_root: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=child_usage.import_path(repo), FINETUI_RUNS_DIR=str(runs_root))
    command = [sys.executable, "-m", "finetui.engine.cli", "runs", *args]
    child_usage.assert_runs_checkout(repo, env)
    result = child_usage.measure(command, repo, env)
    if result["rc"] != 0:
        raise SystemExit(f"`finetui runs {' '.join(args)}` failed ({result['rc']}): {result['stderr']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=208_000)
    parser.add_argument("--keep", metavar="DIR", help="write the runs folder here and keep it (reused when there)")
    parser.add_argument("--repo", action="append", default=[], metavar="DIR",
                        help="checkout whose finetui runs (repeatable; default: this one)")
    parser.add_argument("--drop-summary", action="store_true",
                        help="delete the run's summary.json before each checkout's first call")
    args = parser.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="runs-list-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    events = root / RUN_ID / "events.jsonl"
    rows = []
    try:
        if not events.exists():
            began = time.perf_counter()
            generate(root, args.steps)
            print(f"generated {args.steps:,} steps, {events.stat().st_size / 1e6:,.1f} MB "
                  f"in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        size_mb = events.stat().st_size / 1e6
        for repo in [Path(r).resolve() for r in args.repo] or [ROOT]:
            if args.drop_summary:
                (root / RUN_ID / "summary.json").unlink(missing_ok=True)
            for label, cmd in (("list (1st)", ["list"]), ("list (2nd)", ["list"]), ("show", ["show", RUN_ID])):
                r = measure(repo, root, cmd)
                r.update(repo=str(repo), call=label, size_mb=round(size_mb, 1))
                rows.append(r)
                print(f"{repo}: runs {label}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:,.0f} MB",
                      file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'checkout':<40} {'call':<11} {'MB':>5} {'wall s':>7} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['repo'][-40:]:<40} {r['call']:<11} {r['size_mb']:>5.0f} {r['wall_s']:>7.2f} {r['peak_rss_mb']:>12,.0f}")
    print(child_usage.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
