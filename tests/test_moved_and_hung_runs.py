"""Runs can move; hangs are named (issue 24, item 10).

A run's records (events, summary.json, trainer_state.json) name its files relative to the
run folder, so a copied runs folder reads and resumes its own checkpoints, never the
original's; old records with absolute paths are read in the folder they are in now. A
trainer that says nothing (no event, no heartbeat) for train.hang_after_s while its process
lives is named hung by `finetui runs list`/`show` and the dashboard; the trainer beats
while loading and saving and while it makes progress, and falls silent when stuck. Each
test fails without the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from finetui.engine import events as ev
from finetui.engine import heartbeat, run_paths, runs, trainer_pid
from test_dashboard_helpers import (  # noqa: F401
    SIZE, dash_env, live_trainer, screen_text, synthetic_run, wait_for, writer,
)
from test_train_cli import finetui
from train_helpers import finish, launch, new_run, of_type, stdout_log, train

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- runs can move


@pytest.mark.slow
def test_a_copied_run_reads_and_resumes_its_own_folder(tmp_path, finetui_cache):
    """Train with keep_best, copy the runs folder, delete the original: no record of the copy
    names the original, runs show lists the copy's own files, and resuming the copy finds
    its best checkpoint in the copy (the Trainer does not drop it as missing)."""
    original = tmp_path / "first" / "runs"
    run_dir, rc, _ = train(original, "moved", train={"keep_best": True})
    assert rc == 0, stdout_log(run_dir)
    copy_root = tmp_path / "second" / "runs"
    shutil.copytree(original, copy_root)
    shutil.rmtree(tmp_path / "first")
    copy = copy_root / run_dir.name
    records = [copy / "events.jsonl", copy / "summary.json", *sorted(copy.glob("checkpoints/*/trainer_state.json"))]
    for record in records:
        assert str(tmp_path / "first") not in record.read_text(), record
    info = runs.summarize(copy)
    assert info.outputs["adapter"] == str(copy / "adapter")
    assert info.outputs["best_checkpoint"].startswith(str(copy / "checkpoints"))
    assert info.checkpoints and all(c.startswith(str(copy / "checkpoints")) for c in info.checkpoints)

    from finetui.engine import config as cfg

    cfg.save(cfg.load(copy / "config.yaml", ["train.max_steps=6"]), copy / "config.yaml")
    rc, events = finish(launch(copy, resume=True))
    assert rc == 0, stdout_log(copy)
    messages = [e["message"] for e in of_type(events, "log")]
    assert not [m for m in messages if "best checkpoint" in m and "does not exist" in m], messages
    (started,) = of_type(events, "run_started")
    assert started["resumed_from"] == "checkpoints/checkpoint-4"
    assert [e["path"] for e in of_type(events, "checkpoint")] == ["checkpoints/checkpoint-6"]
    assert of_type(events, "finished")[0]["outputs"]["adapter"] == "adapter"


def test_old_absolute_records_are_read_in_the_folder_they_are_in(tmp_path):
    """Records written before (absolute paths into the folder a run was copied from) name
    the copy's files; a path outside any run folder stays as it is."""
    run_dir = runs.new_run(__import__("finetui.engine.config", fromlist=["Config"]).Config(), name="old", root=tmp_path)
    elsewhere = f"/mnt/old-box/runs/{run_dir.name}"
    w = writer(run_dir)
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    w.emit("checkpoint", path=f"{elsewhere}/checkpoints/checkpoint-2", step=2)
    w.emit("finished", status="completed", metrics={},
           outputs={"adapter": f"{elsewhere}/adapter", "checkpoints": f"{elsewhere}/checkpoints"})
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # the list names checkpoints on disk only
    info = runs.summarize(run_dir)
    assert info.checkpoints == [str(run_dir / "checkpoints" / "checkpoint-2")]
    assert info.outputs == {"adapter": str(run_dir / "adapter"), "checkpoints": str(run_dir / "checkpoints")}
    renamed = run_paths.resolve(tmp_path / "renamed", "/mnt/x/runs/20260101-000000-a/checkpoints/checkpoint-9")
    assert renamed == tmp_path / "renamed" / "checkpoints" / "checkpoint-9"
    assert run_paths.resolve(run_dir, "/data/faq.jsonl") == Path("/data/faq.jsonl")
    assert run_paths.stored(run_dir, run_dir / "adapter") == "adapter"
    assert run_paths.stored(run_dir, "/data/faq.jsonl") == "/data/faq.jsonl"


# --------------------------------------------------------------------------- hangs are named


def test_the_heartbeat_beats_while_quiet_or_progressing_and_stops_when_stuck(tmp_path):
    """Real threads and a real events file: beats in a quiet phase (loading) and while
    progress is made; none while the main thread is stuck outside a quiet phase, so the
    silence grows; none after the finished event."""
    w = ev.EventWriter("r1", tmp_path / "events.jsonl", stream=None)
    beat = heartbeat.Heartbeat(w, every_s=0.2).start()
    try:
        beat.enter("loading")
        time.sleep(1.0)
        beat.leave()
        loading = beat.beats
        time.sleep(1.0)  # stuck: no progress, no quiet phase
        stuck = beat.beats - loading
        for _ in range(10):  # progress, no events of its own
            beat.progress("training")
            time.sleep(0.1)
        progressing = beat.beats - loading - stuck
        w.emit("finished", status="completed", metrics={}, outputs={})
        with beat.quiet("saving"):
            time.sleep(0.6)
    finally:
        beat.stop()
    events = ev.read_file(tmp_path / "events.jsonl")
    assert loading >= 3 and stuck == 0 and progressing >= 2, (loading, stuck, progressing)
    assert events[-1]["type"] == "finished"  # nothing after it (it would read as a new session)
    assert {e["phase"] for e in of_type(events, "heartbeat")} == {"loading", "training"}


async def test_a_silent_live_trainer_is_named_hung_by_the_list_and_the_dashboard(dash_env):
    """A run whose trainer lives but has said nothing for train.hang_after_s (10 s here):
    runs list marks it hung? and says why, runs show too, the dashboard shows the banner;
    a heartbeat ends it."""
    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.dashboard import DashboardScreen
    from finetui.tui.screens.runs import RunsScreen

    run = synthetic_run(steps=12, total=60, status=None, every=10, train__hang_after_s=10)
    with live_trainer(run):
        app = FinetuiApp()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state is not None
                           and app.screen.state.status == "running")
            assert "looks hung" not in screen_text(app)
            await wait_for(pilot, lambda: "looks hung" in screen_text(app), timeout=20, step=0.2)
            text = screen_text(app)
            assert "⚠ the trainer looks hung: no event or heartbeat for 0m 1" in text, text
            assert "hung after train.hang_after_s: 10 s" in text, text

            env = dict(os.environ, PYTHONPATH=str(REPO))
            listed = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "list"], env=env,
                                    capture_output=True, text=True, timeout=60)
            row = next(line for line in listed.stdout.splitlines() if line.startswith(run.name))
            assert row.split()[1] == "hung?", listed.stdout
            assert f"{run.name}: the trainer looks hung: no event or heartbeat for 0m 1" in listed.stderr
            shown = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "show", run.name, "--json"],
                                   env=env, capture_output=True, text=True, timeout=60)
            info = json.loads(shown.stdout)
            assert info["status"] == "running" and info["hung_s"] > 10

            writer(run).emit("heartbeat", phase="saving")
            await wait_for(pilot, lambda: "looks hung" not in screen_text(app), timeout=10, step=0.2)
            assert runs.summarize(run).hung_s is None


@pytest.mark.slow
def test_a_real_trainer_beats_while_loading_and_a_stopped_one_is_named_hung(tmp_path, finetui_cache):
    """A real trainer with train.hang_after_s 10 (a beat after 2 s of quiet): its start-up
    (imports, model, data) writes heartbeats of phase loading. Frozen (SIGSTOP: no step,
    no beat) it is named hung after 10 s; thawed, it is not."""
    run_dir = new_run(tmp_path / "runs", "beats", train={"max_steps": 100000, "eval_strategy": "no",
                                                         "save_strategy": "no", "hang_after_s": 10})
    proc = launch(run_dir)
    proc.stdout.close()
    try:
        deadline = time.time() + 180
        while not of_type(ev.read_file(run_dir / "events.jsonl"), "step") and time.time() < deadline:
            time.sleep(0.2)
        events = ev.read_file(run_dir / "events.jsonl")
        assert of_type(events, "step"), stdout_log(run_dir)
        first_step = events.index(of_type(events, "step")[0])
        assert "loading" in {e["phase"] for e in of_type(events[:first_step], "heartbeat")}
        assert runs.summarize(run_dir).hung_s is None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(11)
            info = runs.summarize(run_dir)
            assert info.status == "running" and info.hung_s is not None and info.hung_s > 10
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.time() + 30
        while runs.summarize(run_dir).hung_s is not None and time.time() < deadline:
            time.sleep(0.2)
        assert runs.summarize(run_dir).hung_s is None
    finally:
        proc.terminate()
        proc.wait(timeout=120)
