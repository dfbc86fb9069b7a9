"""Dashboard latency and redraw rate: trainer step event -> on screen.

A headless finetui app (Textual Pilot, 80x24) opens a run's dashboard by keyboard (r,
enter) while step events are written with their timestamps, in two set-ups:

* attached: events appended to ``events.jsonl`` (a run started elsewhere; a stand-in
  process holds ``trainer.pid`` so the run reads as running);
* live: a fake trainer process started the way ``engine.runs.launch`` starts one writes
  events to its stdout pipe (and the file), handed to the app with ``app.run_launched``.

For each event, latency = the wall time the dashboard's progress widget first showed that
step (or a later one: at 2 redraws a second not every step of a 10 Hz stream is drawn)
minus the event's own ``time``. Also: draws and chart renders per second (sliding 1 s
windows), a burst of 2,000 events at once, how long the UI loop ever went without
running (a stall would mean work on the UI thread), and which thread read NVML.

    python benchmarks/dashboard_latency.py [--events 100] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAKE_TRAINER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from finetui.engine import events as ev
    run_dir, count, rate = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=sys.stdout)
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    time.sleep(1.5)  # the dashboard opens
    for step in range(1, count + 1):
        w.emit("step", step=step, total_steps=count, epoch=step / 10, loss=5.0 / step, learning_rate=1e-3,
               grad_norm=1.0, tokens_per_s=1000.0, samples_per_s=10.0, elapsed_s=step / rate,
               eta_s=(count - step) / rate, memory={}, tokens=step * 100)
        time.sleep(1.0 / rate)
    w.emit("finished", status="completed", metrics={}, outputs={})
''')


def step_fields(step: int, total: int, rate: float) -> dict:
    return dict(step=step, total_steps=total, epoch=step / 10, loss=5.0 / step, learning_rate=1e-3, grad_norm=1.0,
                tokens_per_s=1000.0, samples_per_s=10.0, elapsed_s=step / rate, eta_s=(total - step) / rate,
                memory={}, tokens=step * 100)


def max_per_second(times: list[float]) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:  # the window (t - 1 s, t]
            j += 1
        best = max(best, i - j + 1)
    return best


async def measure(mode: str, count: int, rate: float, root: Path) -> dict:
    from finetui.engine import config as cfg
    from finetui.engine import events as ev
    from finetui.engine import runs
    from finetui.engine import trainer_pid
    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.dashboard import DashboardScreen
    from finetui.tui.widgets.lossplot import LossPlot
    from finetui.tui.widgets.runprogress import RunProgress

    run_dir = runs.new_run(cfg.Config(), name=f"latency-{mode}", root=root / "runs")
    written: dict[int, float] = {}  # step -> event time
    holder = proc = None
    app = FinetuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        if mode == "attached":
            w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)
            w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
            holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "-m", "finetui.engine.train"])
            trainer_pid.write(run_dir, holder.pid)
            await pilot.press("r")
            await pilot.pause(1.0)
            await pilot.press("enter")
        else:
            script = root / "fake_trainer.py"
            script.write_text(FAKE_TRAINER)
            proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(count), str(rate), "finetui.engine.train"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True,
                                    env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"))
            trainer_pid.write(run_dir, proc.pid)
            app.run_launched(run_dir, proc)
        while not (isinstance(app.screen, DashboardScreen) and app.screen.state is not None):
            await pilot.pause(0.05)
        dash = app.screen
        chart = dash.query_one(LossPlot)
        progress = dash.query_one(RunProgress)
        await pilot.pause(0.6)

        def write_steps() -> None:
            for step in range(1, count + 1):
                written[step] = w.emit("step", **step_fields(step, count, rate))["time"]
                time.sleep(1.0 / rate)

        if mode == "attached":
            writer = threading.Thread(target=write_steps)
            writer.start()
        shown: list[tuple[int, float]] = []
        window_start = time.monotonic()
        stall, tick = 0.0, time.perf_counter()
        deadline = time.monotonic() + count / rate + 15
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # not pilot.pause: that forces a screen refresh each time
            now = time.perf_counter()
            stall, tick = max(stall, now - tick), now
            if progress.step is not None and (not shown or progress.step != shown[-1][0]):
                shown.append((progress.step, time.time()))
            if shown and shown[-1][0] >= count:
                break
        draws = [t for t in dash.draw_times if t >= window_start]
        renders = [t for t in chart.render_times if t >= window_start]
        if mode == "attached":
            writer.join()
        else:
            written = {e["step"]: e["time"] for e in ev.read_file(run_dir / "events.jsonl") if e["type"] == "step"}
        latencies = []
        for step, at in written.items():
            first = next((t for s, t in shown if s >= step), None)
            if first is not None:
                latencies.append(first - at)

        # A burst: 2,000 events at once (a long run attached late reads like this).
        burst_took = burst_draws = None
        if mode == "attached":
            before = dash.draws
            start = time.time()
            for step in range(count + 1, count + 2001):
                w.emit("step", **step_fields(step, count + 2000, rate))
            while progress.step != count + 2000 and time.time() - start < 20:
                await asyncio.sleep(0.01)
            burst_took, burst_draws = time.time() - start, dash.draws - before
        hw_thread = dash._hw.thread if dash._hw else "?"
    for p in (holder, proc):
        if p is not None:
            p.kill()
            p.wait()
    return {
        "mode": mode, "events": len(written), "shown_updates": len(shown),
        "latency_p50": statistics.median(latencies), "latency_p95": sorted(latencies)[int(0.95 * len(latencies)) - 1],
        "latency_max": max(latencies), "draws_per_s_max": max_per_second(draws),
        "chart_renders_per_s_max": max_per_second(renders), "ui_loop_max_gap_s": stall,
        "draws_per_s_mean": (len(draws) - 1) / max(draws[-1] - draws[0], 1e-9) if len(draws) > 1 else 0.0,
        "chart_renders_per_s_mean": (len(renders) - 1) / max(renders[-1] - renders[0], 1e-9)
        if len(renders) > 1 else 0.0,
        "draw_gap_min_s": min((b - a for a, b in zip(draws, draws[1:])), default=0.0),
        "burst_2000_s": burst_took, "burst_draws": burst_draws, "hw_poll_thread": hw_thread,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="step events per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update(XDG_CONFIG_HOME=str(root / "config"), FINETUI_RUNS_DIR=str(root / "runs"))
        os.environ.pop("FINETUI_FAKE_GPUS", None)
        results = [asyncio.run(measure(mode, args.events, args.rate, root)) for mode in ("attached", "live")]
    print(f"dashboard latency: {args.events} step events at {args.rate:g}/s, 80x24 headless Pilot app, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for r in results:
        print(f"  {r['mode']:8}  step event -> on screen: p50 {r['latency_p50'] * 1000:.0f} ms, "
              f"p95 {r['latency_p95'] * 1000:.0f} ms, max {r['latency_max'] * 1000:.0f} ms  (target <= 1000 ms)")
        print(f"            redraws: dashboard {r['draws_per_s_mean']:.2f}/s mean, {r['draws_per_s_max']} in any 1 s, "
              f"min gap {r['draw_gap_min_s'] * 1000:.0f} ms; chart paints {r['chart_renders_per_s_mean']:.2f}/s mean "
              f"(target <= 2/s); {r['shown_updates']} screen updates for {r['events']} events")
        print(f"            UI loop never stalled more than {r['ui_loop_max_gap_s'] * 1000:.0f} ms; "
              f"NVML/psutil polled in thread {r['hw_poll_thread']!r}")
        if r["burst_2000_s"] is not None:
            print(f"            burst of 2,000 events: on screen in {r['burst_2000_s'] * 1000:.0f} ms "
                  f"with {r['burst_draws']} redraws")
    ok = all(r["latency_max"] <= 1.0 and r["draws_per_s_max"] <= 2 and r["chart_renders_per_s_mean"] <= 2
             for r in results)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
