"""Reliability with a real trainer (the tiny model on the sample FAQ, CPU):

* the TUI in tmux starts a run from Settings, the tmux session is killed (the TUI gets
  SIGHUP): the trainer keeps going; a new ``finetui`` lists the run as running, attaches
  with the whole history and follows it live to the end;
* kill -9 of the trainer under a dashboard (Pilot): shown as failed (process gone, no
  finished event) with resume from the last checkpoint offered; resume works.

Everything runs in tmp (XDG_CONFIG_HOME, FINETUI_RUNS_DIR, FINETUI_CACHE with the tiny
model prebuilt by the session fixture) and tmux sessions have unique names.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from test_dashboard_helpers import REPO, SIZE, dash_env, launch_on_dashboard, wait_for  # noqa: F401

from finetui.engine import events as ev
from finetui.engine import runs

pytestmark = pytest.mark.slow

STEPS = 120
SHORT_RUN = f"""\
model: {{name_or_path: tiny}}
method: {{type: full}}
data: {{path: "sample:finetui_faq", format: qa, max_length: 128, test_size: 0.1}}
train: {{epochs: 30, max_steps: {STEPS}, batch_size: 16, learning_rate: 3.0e-3, lr_scheduler: cosine,
        logging_steps: 1, save_strategy: steps, save_steps: 10, save_total_limit: 2,
        eval_strategy: steps, eval_steps: 40}}
output: {{run_name: tmuxrun}}
"""


def tmux(*args: str, check: bool = True) -> str:
    out = subprocess.run(["tmux", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_screen(session: str, predicate, timeout: float = 60.0, what: str = "") -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = capture(session)
        if predicate(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"tmux {session}: timed out waiting for {what}; screen was:\n{text}")


def start_tui(session: str, env: dict[str, str], cwd: Path) -> int:
    """`finetui` (python -m finetui.engine.cli) in a new 80x24 tmux session; returns its pid."""
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24",
         f"cd {cwd} && exec env {exports} {sys.executable} -m finetui.engine.cli")
    return int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])


def steps_in(run_dir: Path) -> list[int]:
    return [e["step"] for e in ev.read_file(run_dir / "events.jsonl") if e.get("type") == "step"]


@pytest.fixture
def tmux_env(tmp_path, finetui_cache_dir):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    for name in ("config", "work", "runs"):
        (tmp_path / name).mkdir()
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "FINETUI_RUNS_DIR": str(tmp_path / "runs"),
        "FINETUI_CACHE": str(finetui_cache_dir),
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
    }
    sessions: list[str] = []
    yield tmp_path, env, sessions
    for session in sessions:
        tmux("kill-session", "-t", session, check=False)
    for run_dir in (tmp_path / "runs").glob("*"):  # never leave a trainer behind
        pid = runs.read_pid(run_dir)
        if runs.pid_alive(pid):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_trainer_survives_the_tui_dying_and_a_new_tui_attaches_with_full_history(tmux_env):
    tmp, env, sessions = tmux_env
    (tmp / "work" / "short.yaml").write_text(SHORT_RUN)
    first = f"ftdash-{uuid.uuid4().hex[:8]}"
    sessions.append(first)
    tui_pid = start_tui(first, env, tmp / "work")
    wait_screen(first, lambda t: "Settings" in t and "help" in t, 30, "the first frame")

    # Settings: open the short config, start it (the confirmation shows the command).
    tmux("send-keys", "-t", first, "s")
    time.sleep(0.5)
    tmux("send-keys", "-t", first, "o")
    wait_screen(first, lambda t: "Open settings YAML" in t, 10, "the open dialog")
    tmux("send-keys", "-t", first, "C-a", "C-k")
    time.sleep(0.3)
    tmux("send-keys", "-t", first, "-l", str(tmp / "work" / "short.yaml"))
    time.sleep(0.5)
    tmux("send-keys", "-t", first, "Enter")
    wait_screen(first, lambda t: "short.yaml" in t and "Open settings YAML" not in t, 10, "the config loaded")
    tmux("send-keys", "-t", first, "g")
    wait_screen(first, lambda t: "Start a training run" in t, 10, "the start dialog")
    tmux("send-keys", "-t", first, "Enter")

    # The dashboard opens on the new run, live from the pipe.
    screen = wait_screen(first, lambda t: "● running" in t and "live" in t and f"/{STEPS}" in t, 120,
                         "steps on the live dashboard")
    (run_dir,) = list((tmp / "runs").iterdir())
    trainer_pid = runs.read_pid(run_dir)
    assert run_dir.name in screen and runs.pid_alive(trainer_pid)

    # Kill the tmux session: the TUI gets SIGHUP and goes; the trainer keeps training.
    at_kill = max(steps_in(run_dir) or [0])
    tmux("kill-session", "-t", first)
    sessions.remove(first)
    psutil.wait_procs([psutil.Process(tui_pid)], timeout=15) if psutil.pid_exists(tui_pid) else None
    assert not psutil.pid_exists(tui_pid) or psutil.Process(tui_pid).status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 60
    while max(steps_in(run_dir) or [0]) <= at_kill and time.monotonic() < deadline:
        time.sleep(0.1)
    assert max(steps_in(run_dir)) > at_kill, "the trainer stopped when its TUI died"
    assert runs.pid_alive(trainer_pid) or any(e["type"] == "finished" for e in ev.read_file(run_dir / "events.jsonl"))
    # Hold the trainer (SIGSTOP) while the new TUI comes up, so "running" is seen however
    # fast this machine trains; it goes on with SIGCONT below.
    os.kill(trainer_pid, signal.SIGSTOP)
    try:
        held_at = max(steps_in(run_dir))
        assert held_at < STEPS, "the run finished before it could be held; raise STEPS"

        second = f"ftdash-{uuid.uuid4().hex[:8]}"
        sessions.append(second)
        start_tui(second, env, tmp / "work")
        wait_screen(second, lambda t: "help" in t, 30, "the second TUI")
        tmux("send-keys", "-t", second, "r")
        listing = wait_screen(second, lambda t: "● running" in t and "tmuxrun" in t, 20, "the run listed as running")
        assert f"{held_at}/{STEPS}" in listing
        tmux("send-keys", "-t", second, "Enter")
        screen = wait_screen(second, lambda t: "attached" in t and f"{held_at}/{STEPS}" in t, 20,
                             "the attached dashboard with the whole history")
        assert "● running" in screen and f"step 1–{held_at}" in screen  # the chart starts at step 1
    finally:
        os.kill(trainer_pid, signal.SIGCONT)

    # Live to the end in the new TUI.
    screen = wait_screen(second, lambda t: "✔ completed" in t, 300, "the run completed")
    assert f"{STEPS}/{STEPS} 100%" in screen and f"step 1–{STEPS}" in screen
    events = ev.read_file(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, STEPS + 1))
    assert sum(e["type"] == "run_started" for e in events) == 1
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "completed"
    tmux("send-keys", "-t", second, "q")


async def test_kill_9_shows_failed_offers_resume_and_resume_completes(dash_env, finetui_cache):
    from finetui.engine import config as cfg
    from finetui.tui.app import FinetuiApp

    config = cfg.loads(SHORT_RUN)
    run_dir = runs.new_run(config, name="killed")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        proc, dash = await launch_on_dashboard(pilot, app, run_dir)
        assert dash.feed.source == "pipe"
        await wait_for(pilot, lambda: dash.state is not None and dash.state.checkpoints, timeout=180)
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        await wait_for(pilot, lambda: dash._status == "failed" and dash._hw is not None
                       and dash._hw.last_checkpoint is not None, timeout=20)
        await pilot.pause(1.2)
        last = runs.last_checkpoint(run_dir)
        text = "\n".join(line for line in _screen(app).splitlines())
        assert "✖ failed: the trainer was killed (SIGKILL) — often the out-of-memory killer" in text
        assert f"R: resume from {last.name}" in text
        assert not any(e["type"] == "finished" for e in ev.read_file(run_dir / "events.jsonl"))
        assert runs.summarize(run_dir).status == "failed"

        await pilot.press("R")
        await wait_for(pilot, lambda: dash.state.sessions == 2 and dash.feed.source == "pipe", timeout=60)
        await wait_for(pilot, lambda: dash._status == "completed", timeout=300)
        events = ev.read_file(run_dir / "events.jsonl")
        started = [e for e in events if e["type"] == "run_started"]
        assert len(started) == 2 and started[1]["resumed_from"].endswith(last.name)
        resumed_steps = [e["step"] for e in events[events.index(started[1]):] if e["type"] == "step"]
        assert resumed_steps[0] == int(last.name.split("-")[1]) + 1 and resumed_steps[-1] == STEPS
        assert dash.state.steps == list(range(1, STEPS + 1))
        assert app.run_processes[run_dir.name].wait(timeout=30) == 0


def _screen(app) -> str:
    from test_dashboard_helpers import screen_text

    return screen_text(app)
