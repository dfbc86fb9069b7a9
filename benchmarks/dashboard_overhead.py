"""Dashboard overhead: real tokens/s of the same small training, headless vs watched.

The same run (the tiny model on the sample FAQ, CPU, a step event every step so the
dashboard has the most to do) is trained 2 x 2 times, interleaved (headless, watched,
headless, watched, ...):

* headless: ``engine.runs.launch`` with its pipe closed at once (``finetui train --detach``);
* watched: a headless finetui app (Textual Pilot, 80x24) in this process starts it the
  way Settings does (``app.run_launched``) and shows its live dashboard, fed from the
  pipe, until the finished event.

Real tokens/s per run, from its events: the last step event's cumulative ``tokens``
(non-pad tokens) over the finished event's ``train_runtime_s`` (the Trainer's clock);
also the step events' own windowed ``tokens_per_s`` (sum of tokens over the sum of
window times, evaluation/checkpoint time excluded). The ratio is median(watched) /
median(headless); target >= 0.98. The UI's own CPU seconds per watched run are printed as
well (a load-independent view of what watching costs).

    python benchmarks/dashboard_overhead.py [--pairs 2] [--steps 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def config(steps: int):
    from finetui.engine import config as cfg

    c = cfg.load(REPO / "sample_data" / "quickstart.yaml")
    for key, value in (("train.max_steps", steps), ("train.logging_steps", 1), ("train.eval_strategy", "'no'"),
                       ("train.save_strategy", "'no'"), ("output.run_name", "overhead")):
        c = cfg.set_value(c, key, value)
    return c


def tokens_per_s(run_dir: Path) -> tuple[float, float]:
    """(tokens / train_runtime_s, windowed tokens/s) from the run's events."""
    from finetui.engine import events as ev

    events = ev.read_file(run_dir / "events.jsonl")
    steps = [e for e in events if e["type"] == "step"]
    finished = next(e for e in events if e["type"] == "finished")
    if finished.get("status") != "completed":
        raise SystemExit(f"run {run_dir.name} did not complete: {finished}")
    runtime = finished["metrics"].get("train_runtime_s") or finished["metrics"]["runtime_s"]
    overall = steps[-1]["tokens"] / runtime
    tokens = seconds = 0.0
    previous = 0
    for e in steps:
        delta = e["tokens"] - previous
        previous = e["tokens"]
        if e.get("tokens_per_s"):
            tokens += delta
            seconds += delta / e["tokens_per_s"]
    return overall, tokens / seconds


def headless(steps: int) -> Path:
    from finetui.engine import runs

    run_dir = runs.new_run(config(steps))
    proc = runs.launch(run_dir)
    proc.stdout.close()  # as `finetui train --detach`: nobody reads the pipe
    proc.wait()
    return run_dir


async def watched(steps: int) -> tuple[Path, float]:
    from finetui.engine import runs
    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.dashboard import DashboardScreen

    run_dir = runs.new_run(config(steps))
    app = FinetuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        cpu = time.process_time()
        proc = runs.launch(run_dir)
        app.run_launched(run_dir, proc)
        while not isinstance(app.screen, DashboardScreen):
            await pilot.pause(0.1)
        dash = app.screen
        while dash._status not in ("completed", "failed", "stopped"):
            await asyncio.sleep(0.5)  # not pilot.pause: that forces a screen refresh each time
        cpu = time.process_time() - cpu
        proc.wait()
        if dash.state.steps[-1] != steps:
            raise SystemExit(f"the dashboard showed {dash.state.steps[-1]} of {steps} steps")
    return run_dir, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="headless/watched pairs (interleaved)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update(XDG_CONFIG_HOME=str(root / "config"), FINETUI_RUNS_DIR=str(root / "runs"))
        os.environ.setdefault("FINETUI_CACHE", str(root / "cache"))
        from finetui.engine import tiny

        tiny.path()  # build the tiny model once, outside the timings
        results: dict[str, list[tuple[float, float]]] = {"headless": [], "watched": []}
        ui_cpu: list[tuple[float, float]] = []
        for i in range(args.pairs):
            for mode in (("headless", "watched") if i % 2 == 0 else ("watched", "headless")):
                start = time.time()
                if mode == "headless":
                    run_dir = headless(args.steps)
                else:
                    run_dir, cpu = asyncio.run(watched(args.steps))
                overall, windowed = tokens_per_s(run_dir)
                results[mode].append((overall, windowed))
                wall = time.time() - start
                if mode == "watched":
                    ui_cpu.append((cpu, wall))
                print(f"  {mode:8}  {overall:8.0f} tok/s  (windowed {windowed:8.0f})  wall {wall:5.1f} s"
                      + (f"  UI cpu {cpu:.2f} s" if mode == "watched" else ""), flush=True)
    h = [r[0] for r in results["headless"]]
    w = [r[0] for r in results["watched"]]
    hw = [r[1] for r in results["headless"]]
    ww = [r[1] for r in results["watched"]]
    ratio = statistics.median(w) / statistics.median(h)
    ratio_w = statistics.median(ww) / statistics.median(hw)
    cpu_share = statistics.median(c / wall for c, wall in ui_cpu)
    print(f"dashboard overhead: {args.steps} steps x {args.pairs} pairs, tiny model on CPU, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"  real tokens/s  headless median {statistics.median(h):.0f}, watched median {statistics.median(w):.0f}"
          f"  -> ratio {ratio:.3f}  (windowed {ratio_w:.3f})  (target >= 0.98)")
    print(f"  the UI process used {cpu_share * 100:.1f}% of one CPU while watching")
    print("PASS" if ratio >= 0.98 else "FAIL")
    return 0 if ratio >= 0.98 else 1


if __name__ == "__main__":
    sys.exit(main())
