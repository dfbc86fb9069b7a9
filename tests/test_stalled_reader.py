"""A stalled reader never stalls training (issue 24, item 3). The trainer writes each event
to events.jsonl first and to its pipe without blocking: what a full pipe cannot take is
dropped there, and a reader that reads again fetches it from the file (engine.events
CatchUp). Real tiny-model trainers, a reader that never reads and a suspended (SIGSTOP)
`finetui train`; each test fails without the fix (the trainer blocks once ~64 KB of events
fill the pipe, ~150 steps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetui.engine import events as ev
from finetui.engine import runs
from finetui.tui.runfeed import RunFeed
from train_helpers import file_events, launch, make_config, new_run, of_type, stdout_log

REPO = Path(__file__).resolve().parents[1]
STEPS = 300  # ~450 bytes a step event: ~135 KB, twice what a pipe holds
QUIET = {"max_steps": STEPS, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not within {timeout:.0f} s")


def test_a_pipe_writer_never_waits_and_the_reader_catches_up(tmp_path):
    """The writer on a pipe nobody reads: every emit returns at once, the overflow is
    counted, and pipe_events reads what was dropped from the file: every event, in order."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    w = ev.EventWriter("r1", tmp_path / "events.jsonl", stream=stream)
    started = time.monotonic()
    for step in range(1, 2001):
        w.emit("log", level="info", message=f"event {step} " + "x" * 200)
    took = time.monotonic() - started
    w.emit("finished", status="completed", metrics={}, outputs={})
    w.close()
    stream.close()
    assert took < 10 and w.pipe_dropped > 1000
    with os.fdopen(read_end, "rb") as pipe:
        got = list(ev.pipe_events(pipe, tmp_path / "events.jsonl"))
    assert got == ev.read_file(tmp_path / "events.jsonl")
    assert [e["message"].split()[1] for e in got[:-1]] == [str(i) for i in range(1, 2001)]


@pytest.mark.slow
def test_training_finishes_while_the_ui_reads_nothing_and_the_feed_catches_up(tmp_path, finetui_cache):
    """The TUI's feed reads the pipe once and then not at all (a suspended UI) while a real
    trainer runs 300 steps: the trainer finishes; the feed, reading again, has every step
    and the finished event, those the pipe dropped read from events.jsonl."""
    run_dir = new_run(tmp_path / "runs", "stalled", train=QUIET)
    proc = launch(run_dir)
    try:
        feed = RunFeed(run_dir, proc)
        _wait(lambda: feed.pump() or feed.state.events > 0, 120, "a first event")
        started = time.time()
        proc.wait(timeout=300)  # nobody reads the pipe from here on
        took = time.time() - started
        assert proc.returncode == 0, stdout_log(run_dir)
        while not feed.ended:
            feed.pump()
        state = feed.state
        assert state.steps == list(range(1, STEPS + 1))
        assert state.finished is not None and state.finished["status"] == "completed"
        assert state.events == len(file_events(run_dir))
        assert feed._catch.from_file > 0  # the pipe did drop events: they came from the file
        print(f"\n{STEPS} steps in {took:.1f} s unread; {feed._catch.from_file} of {state.events} events "
              f"read from events.jsonl")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_suspended_finetui_train_never_stalls_the_trainer_and_catches_up(tmp_path, finetui_cache):
    """`finetui train` is suspended (SIGSTOP, as a hung SSH terminal does) right after it
    started the run: the trainer still finishes; resumed (SIGCONT), the CLI prints up to the
    last step and the finished event and exits 0."""
    config = tmp_path / "stalled.yaml"
    config.write_text(make_config(train=QUIET).to_yaml())
    out_path = tmp_path / "out.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("FINETUI_RUNS_DIR", None)
    with open(out_path, "wb") as out:
        cli = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "train", str(config)], cwd=tmp_path,
                               stdout=out, stderr=subprocess.PIPE, env=env)
    try:
        _wait(lambda: out_path.read_bytes().count(b"\n") >= 1, 120, "the run id")
        run_dir = runs.resolve(out_path.read_text().splitlines()[0], tmp_path / "runs")
        cli.send_signal(signal.SIGSTOP)
        _wait(lambda: of_type(file_events(run_dir), "finished"), 300, "the trainer's finished event")
        _wait(lambda: not runs.trainer_alive(run_dir), 60, "the trainer's exit")
        cli.send_signal(signal.SIGCONT)
        _, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        lines = out_path.read_text().splitlines()
        # off a terminal the CLI may print only some step lines: the last one and the finished
        # event are among those the pipe dropped, so they come from the file
        steps = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
        assert steps and steps == sorted(set(steps)) and steps[-1] == STEPS, lines[-5:]
        assert lines[-1].startswith("finished: completed")
    finally:
        if cli.poll() is None:
            cli.send_signal(signal.SIGCONT)
            cli.kill()
            cli.wait()
