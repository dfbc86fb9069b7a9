"""Runs registry: ids, status from events + process liveness, resolve by prefix."""

import os
import subprocess
import sys

import pytest

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs, trainer_pid


def test_status_from_events_and_liveness(tmp_path):
    c = cfg.Config()
    run_dir = runs.new_run(c, name="demo", root=tmp_path)
    assert (run_dir / "config.yaml").exists()
    assert runs.summarize(run_dir).status == "created"

    w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)
    w.emit("run_started", config=c.to_dict(), footprint={}, datasets={}, devices=["cpu"])
    w.emit("step", step=3, total_steps=10, epoch=0.3, loss=1.5, learning_rate=1e-3, grad_norm=1.0,
           tokens_per_s=1.0, samples_per_s=1.0, elapsed_s=1.0, eta_s=2.0, memory={})
    w.emit("eval", step=3, eval_loss=1.2, perplexity=3.3, metrics={})
    w.emit("eval", step=6, eval_loss=1.4, perplexity=4.0, metrics={})

    # A live process that looks like a trainer -> running.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "finetui.engine.train"])
    try:
        trainer_pid.write(run_dir, proc.pid)
        info = runs.summarize(run_dir)
        assert info.status == "running" and info.step == 3 and info.best_eval_loss == 1.2
    finally:
        proc.kill()
        proc.wait()
    # Process gone, no finished event -> failed (killed or crashed).
    info = runs.summarize(run_dir)
    assert info.status == "failed" and "without a finished event" in info.error

    w.emit("finished", status="stopped", metrics={}, outputs={"adapter": "x"})
    assert runs.summarize(run_dir).status == "stopped"


def test_pid_reuse_by_another_program_is_not_running(tmp_path):
    run_dir = runs.new_run(cfg.Config(), name="x", root=tmp_path)
    (run_dir / runs.PID_FILE).write_text(str(os.getpid()))  # pytest, not a trainer
    assert runs.summarize(run_dir).status == "failed"


def test_resolve_by_prefix_and_errors(tmp_path):
    a = runs.new_run(cfg.Config(), name="alpha", root=tmp_path)
    runs.new_run(cfg.Config(), name="alpha", root=tmp_path)
    assert runs.resolve(a, tmp_path) == a
    assert runs.resolve(a.name, tmp_path) == a
    with pytest.raises(runs.RunError, match="ambiguous"):
        runs.resolve(a.name.split("-")[0], tmp_path)
    with pytest.raises(runs.RunError, match="no run"):
        runs.resolve("zzz", tmp_path)
    assert [i.id for i in runs.list_runs(tmp_path)][-1] == a.name


def test_runs_cli_list_and_show_json(tmp_path):
    run_dir = runs.new_run(cfg.Config(), name="cli", root=tmp_path)
    env = dict(os.environ, FINETUI_RUNS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "list"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert run_dir.name in out and "created" in out
    bad = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "show", "nope"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("finetui: no run 'nope'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_resumed_session_is_not_decided_by_the_earlier_finished_event(tmp_path):
    run_dir = runs.new_run(cfg.Config(), name="resumed", root=tmp_path)
    w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    w.emit("finished", status="stopped", metrics={}, outputs={})
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "finetui.engine.train"])
    try:
        trainer_pid.write(run_dir, proc.pid)
        assert runs.summarize(run_dir).status == "running"
    finally:
        proc.kill()
        proc.wait()
    w.emit("finished", status="completed", metrics={}, outputs={})
    assert runs.summarize(run_dir).status == "completed"
