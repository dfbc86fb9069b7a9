"""The run dashboard, driven by keyboard through Textual's Pilot at 80x24, on synthetic
event files (engine.events.EventWriter into run folders made with engine.runs.new_run) and
on a fake trainer that speaks the event stream on a pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from test_dashboard_helpers import (  # noqa: F401
    REPO, SIZE, dash_env, fake_launch, live_trainer, screen_text, started_event, step_event, synthetic_run,
    wait_for, widget_text, writer,
)

from finetui.engine import runs
from finetui.tui.app import FinetuiApp
from finetui.tui.runfeed import RunState, feeds
from finetui.tui.screens.dashboard import DashboardScreen, likely_fix
from finetui.tui.screens.runs import RunsScreen
from finetui.tui.widgets.dialogs import ConfirmDialog
from finetui.tui.widgets.gpupanel import GpuPanel
from finetui.tui.widgets.logview import LogView
from finetui.tui.widgets.lossplot import LossPlot, Series, ema, render_chart
from finetui.tui.widgets.runprogress import RunProgress


async def open_dashboard(pilot, app, run_id: str) -> DashboardScreen:
    """r (Runs), j down to the run, enter: the way a user gets there."""
    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded
                   and any(i.id == run_id for i in app.screen.infos))
    ids = [i.id for i in app.screen.infos]
    for _ in range(ids.index(run_id)):
        await pilot.press("j")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state is not None
                   and app.screen.state.events > 0)
    return app.screen


# --------------------------------------------------------------------------- units


def test_state_cuts_back_to_the_resumed_step_and_reads_sessions():
    state = RunState("r")
    for s in range(1, 13):
        state.apply({"type": "step", "step": s, "total_steps": 20, "loss": 1.0 / s, "time": 1})
    state.apply({"type": "eval", "step": 12, "eval_loss": 0.5, "time": 1})
    state.apply({"type": "finished", "status": "stopped", "time": 1})
    assert state.status == "stopped"
    state.apply({"type": "run_started", "config": {}, "time": 2})  # resume from checkpoint-10
    assert state.finished is None and state.sessions == 1
    state.apply({"type": "step", "step": 11, "total_steps": 20, "loss": 0.2, "time": 2})
    assert state.steps == list(range(1, 12)) and state.loss[-1] == 0.2
    assert state.eval_steps == []  # the eval at 12 belonged to the abandoned steps
    state.process_alive, state.source = False, "file"
    assert state.status == "failed" and state.process_gone


def test_likely_fix_halves_the_batch_on_oom_and_resumes_a_killed_run(tmp_path):
    state = RunState("r")
    state.apply({"type": "error", "kind": "oom", "message": "CUDA out of memory", "hint": "", "time": 1})
    state.apply({"type": "finished", "status": "failed", "time": 1})
    fix = likely_fix(state, None, {"train": {"batch_size": 16, "gradient_accumulation_steps": 1}})
    assert fix.kind == "settings"
    assert fix.overrides == {"train.batch_size": 8, "train.gradient_accumulation_steps": 2}
    fix = likely_fix(state, None, {"train": {"batch_size": 1}})
    assert fix.overrides == {"train.gradient_checkpointing": True}
    killed = RunState("k")
    killed.apply({"type": "step", "step": 3, "total_steps": 9, "loss": 1.0, "time": 1})
    killed.process_alive, killed.source = False, "file"
    fix = likely_fix(killed, tmp_path / "checkpoint-2")
    assert fix.kind == "resume" and "checkpoint-2" in fix.text


def test_chart_uses_every_row_for_data_and_handles_log_smoothing_and_gaps():
    xs = list(range(1, 101))
    ys = [5.0 / x if x != 50 else None for x in xs]  # a null loss (NaN in the trainer) is a gap
    text = render_chart([Series("train", xs, ys), Series("eval", [20, 40, 60], [0.5, 0.2, 0.1], markers=True)],
                        60, 10, title="loss", log_scale=True, smoothing=0.6)
    lines = text.plain.split("\n")
    assert len(lines) == 10 and all(len(line) <= 60 for line in lines)
    assert "━━ train" in lines[0] and "● eval" in lines[0] and "step 1–100" in lines[0]
    assert "smooth 0.6" in lines[0] and "log" in lines[0]
    top = lines[1].split("┤")[0].strip()
    assert 5.0 <= float(top) < 7.0  # top label: the largest loss (plus a little headroom)
    assert sum(line.count("●") for line in lines[1:]) == 3
    assert ema([1.0, 1.0, None, 1.0], 0.9) == [1.0, 1.0, None, 1.0]  # debiased: a constant stays put
    empty = render_chart([], 40, 6, empty="nothing").plain
    assert "nothing" in empty
    many = render_chart([Series("t", list(range(100_000)), [float(i % 7) for i in range(100_000)])], 80, 10)
    assert len(many.plain.split("\n")) == 10


def test_a_loss_axis_does_not_go_below_zero():
    """The headroom below the smallest value stops at 0 for values that cannot be negative."""
    text = render_chart([Series("train", list(range(1, 101)), [7.2 / x for x in range(1, 101)])], 60, 10)
    bottom = [line for line in text.plain.split("\n") if "┤" in line][-1].split("┤")[0].strip()
    assert float(bottom) >= 0.0


# --------------------------------------------------------------------------- screens


async def test_completed_run_shows_progress_chart_checkpoints_and_log(dash_env):
    run = synthetic_run(steps=40, every=10)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash.state.finished is not None and dash._hw is not None)
        await pilot.pause(0.6)
        text = screen_text(app)
        assert "✔ completed" in text and run.name in text
        assert "40/40 100%" in text
        assert "checkpoints 10 20 30 40" in text
        assert "finished: completed" in text
        assert "loss " in text and "eval " in text and "tok/s" in text and "gnorm" in text
        chart = dash.query_one(LossPlot)
        assert [s.label for s in chart.series] == ["train", "eval"]
        assert len(chart.series[0].xs) == 40 and len(chart.series[1].xs) == 4
        assert "step 1–40" in text
        # The footer offers what fits a completed run: no stop/kill, no resume.
        footer = text.splitlines()[-1]
        assert "Stop" not in footer and "Kill" not in footer and "Resume" not in footer
        assert "Chat" in footer and "Smooth" in footer

        await pilot.press("m")
        assert chart.smoothing == 0.6
        await pilot.press("l")
        assert chart.log_scale
        await pilot.pause(0.1)
        assert "[smooth 0.6 · log]" in screen_text(app)
        await pilot.press("p")
        assert chart.title == "learning rate"
        await pilot.press("p", "p", "p")
        assert chart.title == "loss"
        await pilot.press("v")
        assert dash.query_one(LogView).title.startswith("stdout.log")
        await pilot.press("v")
        assert dash.query_one(LogView).title.startswith("checkpoints")
        assert "checkpoint-40" in widget_text(dash.query_one(LogView))
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_live_file_feed_step_on_screen_within_a_second_then_failed_when_the_process_dies(dash_env):
    run = synthetic_run(steps=12, total=60, status=None, every=10)
    with live_trainer(run) as proc:
        app = FinetuiApp()
        async with app.run_test(size=SIZE) as pilot:
            dash = await open_dashboard(pilot, app, run.name)
            await wait_for(pilot, lambda: dash.state.status == "running" and dash.query_one(RunProgress).step == 12)
            footer = screen_text(app).splitlines()[-1]
            assert "Stop" in footer and "Kill" in footer and "Resume" not in footer
            w = writer(run)
            delays = []
            for s in range(13, 18):
                event = step_event(w, s, 60)
                took = await wait_for(pilot, lambda: dash.query_one(RunProgress).step == s, timeout=5, step=0.01)
                delays.append(took)
                assert time.time() - event["time"] < 1.5
                await pilot.pause(0.2)
            # ≤ 1 s is the target (benchmarks/dashboard_latency.py measures it); a loaded
            # 2-core CI box may stall one timer, so the test allows one slow outlier.
            assert sorted(delays)[len(delays) // 2] < 1.0 and max(delays) < 2.0, delays
            proc.kill()
            proc.wait()
            await wait_for(pilot, lambda: dash.state.status == "failed", timeout=6)
            await pilot.pause(0.6)
            text = screen_text(app)
            assert "✖ failed" in text and "gone without a finished event" in text
            assert "R: resume from checkpoint-10" in text
            footer = text.splitlines()[-1]
            assert "Resume" in footer and "Stop" not in footer


async def test_oom_error_shows_message_hint_and_fix_opens_settings_with_half_the_batch(dash_env):
    run = synthetic_run(name="oom", train__batch_size=16, error={
        "kind": "oom", "message": "CUDA out of memory. Tried to allocate 2.00 GiB",
        "hint": "lower train.batch_size or data.max_length"})
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash._fix is not None and dash._fix.overrides)
        await pilot.pause(0.6)
        text = screen_text(app)
        assert "oom error: CUDA out of memory" in text
        assert "hint: lower train.batch_size" in text
        assert "f: Settings with train.batch_size 8 (was 16)" in text
        await pilot.press("f")
        await pilot.pause(0.3)
        assert app.current_mode == "settings"
        state = app.settings_state
        assert state.config.train.batch_size == 8
        assert state.config.train.gradient_accumulation_steps == 2
        assert set(state.changed()) == {"train.batch_size", "train.gradient_accumulation_steps"}
        assert state.base_path == run / "config.yaml" and run.name in state.origin
        assert "train.batch_size=8" in state.train_command()


async def test_gpu_panel_fake_backend_two_gpus_one_without_power(dash_env, monkeypatch):
    monkeypatch.setenv("FINETUI_FAKE_GPUS", json.dumps([
        {"name": "NVIDIA H100 80GB HBM3", "util_percent": 87, "memory_used_bytes": 40 * 1024 ** 3,
         "memory_total_bytes": 80 * 1024 ** 3, "temperature_c": 61, "power_w": 420.5, "power_limit_w": 700},
        {"name": "NVIDIA A10", "util_percent": 3, "memory_used_bytes": 1024 ** 3, "memory_total_bytes": 24 * 1024 ** 3},
    ]))
    run = synthetic_run(steps=5, every=5)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash.query_one(GpuPanel).polled)
        await pilot.pause(0.6)
        panel = widget_text(dash.query_one(GpuPanel)).splitlines()
        assert panel[0].startswith("host cpu") and "peak rss" in panel[0]
        gpu0 = next(line for line in panel if line.startswith("0 "))
        gpu1 = next(line for line in panel if line.startswith("1 "))
        assert "H100" in gpu0 and "87%" in gpu0 and "40.0/80.0 GiB" in gpu0 and "61°C" in gpu0 and "420/700 W" in gpu0
        assert "A10" in gpu1 and "3%" in gpu1 and "1.0/24.0 GiB" in gpu1 and "N/A°C" in gpu1 and "N/A W" in gpu1
        assert dash._hw.thread != "MainThread"  # NVML is read off the UI thread
        text = screen_text(app)
        assert "0 H100" in text and "1 A10" in text


async def test_without_nvml_the_panel_says_so_plainly(dash_env):
    from finetui.engine import hardware

    run = synthetic_run(steps=3, every=5)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash.query_one(GpuPanel).polled)
        await pilot.pause(0.6)
        backend = hardware.gpu_backend()
        if not backend.read():  # this machine has no GPU (CI): one plain line, no crash
            assert f"GPU  N/A: {backend.problem}"[:60] in screen_text(app)


async def test_config_dialog_loads_the_run_config_into_settings_and_chat_targets_the_run(dash_env):
    run = synthetic_run(steps=5, every=5, train__batch_size=4)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await pilot.press("o")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmDialog)
        assert "batch_size: 4" in widget_text(app.screen.query_one("VerticalScroll Static"))
        await pilot.press("escape")
        assert app.screen is dash
        await pilot.press("o")
        await pilot.pause(0.1)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.current_mode == "settings"
        assert app.settings_state.config.train.batch_size == 4 and not app.settings_state.changed()
        # Back to the run, then chat with it.
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash._status == "completed")
        handed = []
        goto = app.action_goto
        app.action_goto = lambda mode: (handed.append((mode, app.chat_target)), goto(mode))
        await pilot.press("t")
        await pilot.pause(0.2)
        # The Chat screen (another issue) takes app.chat_target over when it shows.
        assert handed == [("chat", run.name)] and app.current_mode == "chat"


async def test_resumed_run_in_the_file_reads_past_the_first_finished_event(dash_env):
    run = synthetic_run(steps=12, total=20, status="stopped", every=5)
    w = writer(run)
    w.emit("log", level="info", message="resuming")
    started_event(w, __import__("test_dashboard_helpers").config(), resumed_from="checkpoint-10")
    for s in range(11, 21):
        step_event(w, s, 20)
    w.emit("finished", status="completed", metrics={}, outputs={})
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash.state.status == "completed")
        assert dash.state.steps == list(range(1, 21)) and dash.state.sessions == 2
        await pilot.pause(0.6)
        assert "resumed ×1" in screen_text(app)


async def test_pipe_feed_resume_stop_and_kill_on_a_fake_trainer(dash_env, monkeypatch):
    """R resumes a stopped run through the pipe (history from the file, nothing counted
    twice), S stops it gracefully, K kills it after asking."""
    monkeypatch.setattr(runs, "launch", fake_launch(dash_env, steps=400, interval=0.05))
    run = synthetic_run(steps=12, total=400, status="stopped", every=5)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        await wait_for(pilot, lambda: dash._status == "stopped")
        await pilot.press("R")
        await wait_for(pilot, lambda: dash.feed.source == "pipe" and dash.state.sessions == 2
                       and len(dash.state.steps) > 15, timeout=15)
        st = dash.state
        assert st.steps[:10] == list(range(1, 11)) and st.steps == sorted(set(st.steps))
        assert sum(1 for _t, kind, _m in st.lines if kind == "run_started") == 2
        assert run.name in app.run_processes
        await pilot.pause(0.6)
        assert "live" in screen_text(app) and "resumed ×1" in screen_text(app)

        await pilot.press("S")
        await wait_for(pilot, lambda: dash._status == "stopped", timeout=10)  # on screen, not only read
        assert app.run_processes[run.name].wait(timeout=5) == 0

        await pilot.press("R")
        await wait_for(pilot, lambda: dash._status == "running" and dash.state.sessions == 3, timeout=15)
        await pilot.press("K")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        assert app.screen is dash and dash.state.status == "running"
        await pilot.press("K")
        await pilot.pause(0.1)
        await pilot.press("y")
        await wait_for(pilot, lambda: dash.state.status == "killed", timeout=15)
        assert app.run_processes[run.name].wait(timeout=5) == -signal.SIGKILL
        await pilot.pause(0.6)
        shown = screen_text(app)
        assert "✖ killed" in shown and "R: resume from" in shown and "failed" not in shown


async def test_a_run_started_while_another_dashboard_is_open_takes_the_screen(dash_env, monkeypatch):
    first = synthetic_run(name="first", steps=5, every=5)
    second = synthetic_run(name="second", steps=0, status=None)
    launch = fake_launch(dash_env, steps=10, interval=0.05)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_dashboard(pilot, app, first.name)
        app.run_launched(second, launch(second))
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run_id == second.name)
        dash = app.screen
        await wait_for(pilot, lambda: dash.state is not None and dash.state.status == "completed", timeout=10)
        assert dash.state.steps == list(range(1, 11))


async def test_redraws_are_batched_to_two_per_second(dash_env):
    run = synthetic_run(steps=1, total=10_000, status=None)
    with live_trainer(run):
        app = FinetuiApp()
        async with app.run_test(size=SIZE) as pilot:
            dash = await open_dashboard(pilot, app, run.name)
            chart = dash.query_one(LossPlot)
            w = writer(run)
            draws, renders = dash.draws, chart.renders
            start = time.monotonic()
            for s in range(2, 202):  # ~100 events a second for 2 s
                step_event(w, s, 10_000)
                await pilot.pause(0.01)
            await wait_for(pilot, lambda: dash.query_one(RunProgress).step == 201, timeout=5)
            seconds = time.monotonic() - start
            assert (dash.draws - draws) <= 2 * seconds + 2
            assert (chart.renders - renders) <= 2 * seconds + 2


def test_ui_modules_never_import_torch():
    """The dashboard, runs, compare screens and the feed, opened in a headless app in a
    fresh interpreter: no torch, transformers, peft, datasets or bitsandbytes."""
    code = (
        "import asyncio, sys\n"
        "from finetui.tui.app import FinetuiApp\n"
        "import finetui.tui.screens.runs, finetui.tui.screens.dashboard, finetui.tui.screens.compare, finetui.tui.runfeed\n"
        "async def main():\n"
        "    app = FinetuiApp()\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.press('r'); await pilot.pause(0.5)\n"
        "asyncio.run(main())\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'bitsandbytes') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


async def test_feed_registry_drains_pipes_of_runs_started_here_without_a_dashboard(dash_env):
    run = synthetic_run(name="bg", steps=0, status=None)
    launch = fake_launch(dash_env, steps=30, interval=0.01)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        proc = launch(run)
        app.run_processes[run.name] = proc  # as app.run_launched does, but staying on Settings
        registry = feeds(app)
        await wait_for(pilot, lambda: registry.feeds.get(run.name) is not None
                       and registry.feeds[run.name].state.status == "completed", timeout=10)
        assert registry.feeds[run.name].state.steps == list(range(1, 31))
        assert proc.wait(timeout=5) == 0
