"""Faults injected on purpose, as a user's machine produces them: a checkpoint cut short or
damaged, a torn events.jsonl line, a full disk (a file-size limit), two trainers on one
run. Each test fails without the fix it guards (issue 24, items 1 and 2)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetui.engine import atomic
from finetui.engine import events as ev
from finetui.engine import runs
from cli_helpers import finetui
from test_train_cli import the_run
from train_helpers import write_config
from train_helpers import file_events, finish, launch, new_run, of_type, stdout_log, train

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- checkpoints

SAVE_EVERY_STEP = dict(method={"type": "lora"},
                       train={"max_steps": 3, "eval_strategy": "no", "save_steps": 1, "save_total_limit": 3})


def _trained_with_checkpoints(root, name):
    run_dir, rc, events = train(root, name, **SAVE_EVERY_STEP)
    assert rc == 0, stdout_log(run_dir)
    assert [p.name for p in runs.checkpoints(run_dir)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for path in runs.checkpoints(run_dir):
        assert (path / runs.COMPLETE_FILE).exists() and runs.checkpoint_problem(path) is None
    return run_dir


def _resume(run_dir, **kw):
    rc, events = finish(launch(run_dir, resume=True, **kw))
    assert rc == 0, stdout_log(run_dir)
    return events


def _damage(path: Path, how: str) -> None:
    if how == "no trainer_state":
        (path / "trainer_state.json").unlink()
    elif how == "garbled trainer_state":
        (path / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    elif how == "truncated weights":
        weights = path / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no marker":  # the save was cut before finetui wrote its marker
        (path / runs.COMPLETE_FILE).unlink()


@pytest.mark.slow
def test_resume_skips_an_incomplete_or_damaged_checkpoint(tmp_path, finetui_cache):
    """The newest checkpoint without trainer_state.json / with a garbled one / with its
    weights cut in half / without its completion marker: resume takes checkpoint-2, says
    which it skipped and why, and sets the broken one aside."""
    template = _trained_with_checkpoints(tmp_path, "ckpt")
    reasons = {"no trainer_state": "trainer_state.json is missing",
               "garbled trainer_state": "trainer_state.json is garbled",
               "truncated weights": "adapter_model.safetensors is truncated",
               "no marker": f"no {runs.COMPLETE_FILE}"}
    for i, (how, reason) in enumerate(reasons.items()):
        run_dir = tmp_path / f"case{i}"
        shutil.copytree(template, run_dir)
        for name in ("events.jsonl", "trainer.pid", "trainer.lock"):
            (run_dir / name).unlink(missing_ok=True)
        newest = run_dir / "checkpoints" / "checkpoint-3"
        _damage(newest, how)
        assert runs.last_checkpoint(run_dir).name == "checkpoint-2", how
        events = _resume(run_dir)
        (started,) = of_type(events, "run_started")
        assert started["resumed_from"].endswith("checkpoint-2"), how
        skipped = [e["message"] for e in of_type(events, "log") if e["message"].startswith("skipped ")]
        assert len(skipped) == 1 and skipped[0].startswith(f"skipped checkpoint-3: {reason}"), (how, skipped)
        assert skipped[0].endswith("(kept as skipped-checkpoint-3)"), skipped
        assert [s["step"] for s in of_type(events, "step")] == [3], how
        assert events[-1]["status"] == "completed"
        # the step-3 checkpoint was saved again, whole; the broken one is kept aside
        assert runs.checkpoint_problem(newest) is None and (newest.parent / "skipped-checkpoint-3").is_dir()


@pytest.mark.slow
def test_resume_from_a_chosen_checkpoint(tmp_path, finetui_cache):
    """`finetui train --resume RUN --checkpoint N` continues from checkpoint-N; a missing
    one is refused up front (exit 2) with the checkpoints there are."""
    run_dir = _trained_with_checkpoints(tmp_path / "runs", "pick")
    proc = finetui("train", "--resume", run_dir.name, "--checkpoint", "7", cwd=tmp_path)
    assert proc.returncode == 2 and "no checkpoint-7 (checkpoints: 1, 2, 3)" in proc.stderr, proc.stderr
    proc = finetui("train", "--resume", run_dir.name, "--checkpoint", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + stdout_log(run_dir)
    events = file_events(run_dir)
    started = of_type(events, "run_started")[-1]
    assert started["resumed_from"].endswith("checkpoint-1")
    assert [s["step"] for s in of_type(events, "step")][-2:] == [2, 3]
    newer = [e["message"] for e in of_type(events, "log") if e["message"].startswith("skipped ")]
    assert newer == [f"skipped checkpoint-{n}: newer than the checkpoint asked for (kept as skipped-checkpoint-{n})"
                     for n in (3, 2)]


def test_a_checkpoint_counts_only_once_marked(tmp_path):
    """Unit level: runs.checkpoint_problem / resumable_checkpoint without a trainer."""
    from safetensors.numpy import save_file
    import numpy as np

    ckpts = tmp_path / "checkpoints"
    for step in (1, 2):
        path = ckpts / f"checkpoint-{step}"
        path.mkdir(parents=True)
        save_file({"w": np.zeros((64, 64), dtype=np.float32)}, str(path / "model.safetensors"))
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (path / "optimizer.pt").write_bytes(b"x" * 1000)
        assert runs.mark_complete(path) is None
    assert runs.last_checkpoint(tmp_path).name == "checkpoint-2"
    (ckpts / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 10)  # cut short after the marker
    chosen, skipped = runs.resumable_checkpoint(tmp_path)
    assert chosen.name == "checkpoint-1"
    assert skipped == [(ckpts / "checkpoint-2", "optimizer.pt has 10 bytes, 1000 when saved")]
    (ckpts / "checkpoint-3").mkdir()  # a save killed at its very start
    assert runs.resumable_checkpoint(tmp_path)[1][0] == (ckpts / "checkpoint-3", f"no {runs.COMPLETE_FILE} "
                                                         "(the save did not finish)")


# --------------------------------------------------------------------------- events.jsonl


def test_a_torn_events_line_costs_only_itself(tmp_path):
    """A trainer killed mid-write left half a line; the next session's first event starts
    on a new line, and both readers (read_file, follow) keep every whole event."""
    path = tmp_path / "events.jsonl"
    first = ev.EventWriter("r", path, stream=None)
    first.emit("log", level="info", message="one")
    first.close()
    whole = ev.encode(ev.make("log", "r", level="info", message="torn"))
    with open(path, "a") as fh:
        fh.write(whole[: len(whole) // 2])  # killed here
    second = ev.EventWriter("r", path, stream=None)
    second.emit("log", level="info", message="two")
    second.emit("log", level="info", message="three")
    second.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and ev.decode(lines[-2])["message"] == "three"
    assert [e["message"] for e in ev.read_file(path)] == ["one", "two", "three"]
    followed = [e["message"] for e in ev.follow(path, poll_s=0.01, stop=lambda: True)]
    assert followed == ["one", "two", "three"]


def _write_under_limit(path: Path, limit: int, big: int) -> subprocess.CompletedProcess:
    code = (
        "import resource, signal, sys\n"
        "from finetui.engine import events as ev\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        f"w = ev.EventWriter('r', {str(path)!r}, stream=sys.stdout)\n"
        "w.emit('log', level='info', message='small')\n"
        f"w.emit('log', level='info', message='x' * {big})\n"
        "w.emit('error', kind='disk', message='out of disk space', hint='free some')\n"
        "print('file_error', w.file_error is not None)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_an_event_the_disk_cannot_take_leaves_whole_lines(tmp_path):
    """A full disk (a file-size limit here) mid-line: the file is cut back to its last whole
    line, the pipe still carries every event, and later events that fit are written."""
    path = tmp_path / "events.jsonl"
    proc = _write_under_limit(path, limit=4096, big=8000)
    assert proc.returncode == 0, proc.stderr
    piped = [ev.decode(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["type"] for e in piped] == ["log", "log", "error"]
    assert "file_error True" in proc.stdout
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    kept = [json.loads(line) for line in raw.splitlines()]  # every line is whole JSON
    assert [e["type"] for e in kept] == ["log", "error"] and kept[-1]["kind"] == "disk"


@pytest.mark.slow
def test_disk_full_is_named_and_reaches_the_user(tmp_path, finetui_cache):
    """A file-size limit below the size of the weights (as a full disk does while a
    checkpoint is saved): `finetui train` says "out of disk space" with a hint, exits 1, and
    events.jsonl ends with whole JSON lines, the error among them."""
    config = write_config(tmp_path, train={"max_steps": 2, "eval_strategy": "no", "save_steps": 2})
    limit = 1_000_000  # the tiny model's weights are 1.3 MB; config, data cache and events are KBs

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("FINETUI_RUNS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "train", str(config)], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    run_dir = the_run(tmp_path)
    assert proc.returncode == 1, proc.stderr + stdout_log(run_dir)
    assert "finetui: disk error: out of disk space" in proc.stderr, proc.stderr
    assert "hint: free space on the disk" in proc.stderr
    lines = (run_dir / "events.jsonl").read_bytes().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    assert events[-2]["type"] == "error" and events[-2]["kind"] == "disk"
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "failed"
    assert runs.summarize(run_dir).error.startswith("out of disk space")


def test_small_files_are_replaced_whole(tmp_path, monkeypatch):
    """atomic.write_text: a write that fails midway leaves the old content and no temp file."""
    target = tmp_path / "config.yaml"
    atomic.write_text(target, "old: 1\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic.write_text(target, "new: 2\n")
    assert target.read_text() == "old: 1\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# --------------------------------------------------------------------------- one owner per run


@pytest.mark.slow
def test_one_trainer_per_run(tmp_path, finetui_cache):
    """While a trainer runs, a second launch, a second trainer started by hand and a second
    `finetui train --resume` each refuse, naming the run and the live pid; the first run's
    events.jsonl gets nothing from them."""
    root = tmp_path / "runs"
    run_dir = new_run(root, "busy", train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    first = launch(run_dir)
    try:
        assert ev.decode(first.stdout.readline()) is not None  # started
        pid = first.pid
        try:
            second = launch(run_dir, resume=True)
        except runs.RunBusy as exc:
            assert f"run {run_dir.name} is in use by trainer pid {pid}" in str(exc)
        else:
            second.kill()
            second.communicate()
            pytest.fail("a second trainer started on a run in use")
        assert runs.read_pid(run_dir) == pid

        by_hand = subprocess.run(
            [sys.executable, "-m", "finetui.engine.train", "--run-dir", str(run_dir), "--resume"],
            capture_output=True, text=True, timeout=120,
            env={k: v for k, v in dict(os.environ, PYTHONPATH=str(REPO)).items() if k != runs.LOCK_FD_ENV})
        assert by_hand.returncode == 1
        assert f"run {run_dir.name} is in use by trainer pid {pid}" in by_hand.stderr
        piped = [ev.decode(line) for line in by_hand.stdout.splitlines()]
        assert [e["type"] for e in piped] == ["error", "finished"]

        cli = finetui("train", "--resume", run_dir.name, cwd=tmp_path)
        assert cli.returncode != 0 and run_dir.name in cli.stderr and str(pid) in cli.stderr, cli.stderr
        assert all(e.get("type") != "error" for e in file_events(run_dir))
        assert len(of_type(file_events(run_dir), "run_started")) <= 1
    finally:
        first.terminate()  # SIGTERM: checkpoint, finished (stopped)
        finish(first)
    assert not runs.is_locked(run_dir)  # released with the process
