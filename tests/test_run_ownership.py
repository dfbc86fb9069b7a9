"""Stop and kill signal only the run's own trainer (issue 24, item 4), with real processes:
a finished run whose pid now belongs to another run's live trainer, an unrelated process
with "finetui" in its command line leading a process group, a copied run folder, and a
trainer that does not lead its process group. Each test fails without the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs, trainer_pid
from cli_helpers import finetui
from train_helpers import file_events, launch, new_run, of_type, wait_for_step

REPO = Path(__file__).resolve().parents[1]
SLEEPER = "import time; time.sleep(120)"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(proc: subprocess.Popen, timeout: float = 10) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _reap(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _run_with_events(root: Path, name: str, finished: str | None) -> Path:
    run_dir = runs.new_run(cfg.Config(), name=name, root=root)
    w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    w.emit("step", step=1, total_steps=10, epoch=0.1, loss=1.0, learning_rate=1e-3, grad_norm=1.0,
           tokens_per_s=1.0, samples_per_s=1.0, elapsed_s=1.0, eta_s=9.0, memory={})
    if finished:
        w.emit("finished", status=finished, metrics={}, outputs={})
    w.close()
    return run_dir


@pytest.mark.slow
def test_stop_and_kill_never_reach_another_runs_trainer(tmp_path, finetui_cache):
    """Run B trains (a real trainer). Run A completed long ago and its trainer.pid now names
    B's trainer (the pid went round); run C is a copy of B's folder (its record is B's).
    `runs stop A` is refused as finished, `runs kill A` too, `runs stop C` and `runs kill C`
    find no trainer of C: B trains on. Then `runs stop B` stops B itself."""
    root = tmp_path / "runs"
    b = new_run(root, "b", train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    trainer = launch(b)
    trainer.stdout.close()  # nobody reads the pipe: the trainer goes on with the file
    try:
        wait_for_step(b, timeout=180)
        a = _run_with_events(root, "a", finished="completed")
        (a / runs.PID_FILE).write_text(str(trainer.pid))  # as finetui wrote it before: a bare pid
        c = root / (b.name + "-copy")
        shutil.copytree(b, c)
        (c / "events.jsonl").write_bytes(b"")
        (c / "summary.json").unlink(missing_ok=True)
        assert runs.read_pid(c) == trainer.pid

        stop_a = finetui("runs", "stop", a.name, cwd=tmp_path)
        assert stop_a.returncode == 1 and f"run {a.name} has finished (completed)" in stop_a.stderr, stop_a.stderr
        kill_a = finetui("runs", "kill", a.name, cwd=tmp_path)
        assert kill_a.returncode == 1 and "has finished" in kill_a.stderr, kill_a.stderr
        for action in ("stop", "kill"):
            out = finetui("runs", action, c.name, cwd=tmp_path)
            assert out.returncode == 1 and f"run {c.name} is not running" in out.stderr, out.stderr
        assert runs.summarize(a).status == "completed" and runs.summarize(c).status != "running"

        time.sleep(1.0)  # a SIGTERM would have been acted on by now (the trainer stops at a step's end)
        assert trainer.poll() is None and _alive(trainer.pid)
        assert not of_type(file_events(b), "finished")
        assert runs.summarize(b).status == "running"
        assert runs.stop(b)  # the run's own trainer: signalled
        assert _gone(trainer, 120)
        assert [e["status"] for e in of_type(file_events(b), "finished")] == ["stopped"]
    finally:
        _reap(trainer)


def test_kill_spares_an_unrelated_process_group(tmp_path):
    """A failed run's trainer.pid names a process that is not a trainer but has "finetui"
    in its command line (an editor on finetui/, say) and leads a group with a child:
    `runs kill` finds no trainer and neither process is touched."""
    root = tmp_path / "runs"
    run_dir = _run_with_events(root, "gone", finished=None)
    leader = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); "
                               f"print('ok', flush=True); {SLEEPER}", "finetui/notes.md"],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert leader.stdout.readline().strip() == b"ok"
        child = psutil.Process(leader.pid).children()[0]
        (run_dir / runs.PID_FILE).write_text(str(leader.pid))
        out = finetui("runs", "kill", run_dir.name, cwd=tmp_path)
        assert out.returncode == 1 and f"run {run_dir.name} is not running" in out.stderr, out.stderr
        time.sleep(0.3)
        assert _alive(leader.pid) and child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        assert runs.summarize(run_dir).status == "failed"
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_kill_takes_the_group_only_when_the_trainer_leads_it(tmp_path):
    """A trainer inside another process's group (its leader is not ours; the record a bare
    pid, as finetui wrote it before) is killed with its own children, the group's leader lives; a trainer that leads its own group (as
    engine.runs.launch starts it) takes its whole group with it."""
    root = tmp_path / "runs"
    inside = _run_with_events(root, "inside", finished=None)
    code = ("import subprocess, sys; t = subprocess.Popen([sys.executable, '-c', "
            "\"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            " time.sleep(120)\", '-m', 'finetui.engine.train', '--run-dir', sys.argv[1]]); "
            f"print(t.pid, flush=True); {SLEEPER}")
    leader = subprocess.Popen([sys.executable, "-c", code, str(inside)], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        pid = int(leader.stdout.readline())
        trainer = psutil.Process(pid)
        deadline = time.time() + 10
        while not trainer.children() and time.time() < deadline:
            time.sleep(0.05)
        (worker,) = trainer.children()
        assert os.getpgid(pid) == leader.pid != pid
        (inside / runs.PID_FILE).write_text(str(pid))  # a bare pid, as finetui wrote it before
        assert runs.summarize(inside).status == "running"
        out = finetui("runs", "kill", inside.name, cwd=tmp_path)
        assert out.returncode == 0 and f"killed: {inside.name}" in out.stdout, out.stderr
        psutil.wait_procs([worker], timeout=5)
        deadline = time.time() + 5
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(pid) and not worker.is_running()
        assert leader.poll() is None and _alive(leader.pid)  # the group's leader is not the trainer's
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()

    own = _run_with_events(root, "own", finished=None)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); "
                               f"print('ok', flush=True); {SLEEPER}", "-m", "finetui.engine.train", "--run-dir", str(own)],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ok"
        (child,) = psutil.Process(proc.pid).children()
        trainer_pid.write(own, proc.pid)
        assert runs.stop(own, kill=True)
        assert _gone(proc, 10)
        child.wait(timeout=10)  # the whole group went
    finally:
        _reap(proc)


def test_a_recorded_pid_now_another_process_is_not_the_trainer(tmp_path):
    """The record's start time no longer matches (the trainer ended and its pid went to a
    process that looks just like a trainer of this run): not running, nothing signalled."""
    root = tmp_path / "runs"
    run_dir = _run_with_events(root, "reused", finished=None)
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "-m", "finetui.engine.train", "--run-dir", str(run_dir)])
    try:
        record = trainer_pid.write(run_dir, proc.pid)
        assert runs.summarize(run_dir).status == "running"
        (run_dir / runs.PID_FILE).write_text(json.dumps(
            {"pid": proc.pid, "create_time": record.create_time - 30, "run_dir": record.run_dir}))
        assert runs.summarize(run_dir).status == "failed"
        assert runs.stop(run_dir) is False and runs.stop(run_dir, kill=True) is False
        time.sleep(0.3)
        assert proc.poll() is None
    finally:
        _reap(proc)
