"""The real `python -m finetui.engine.cli` (what `finetui` runs) in tmux at 80x24, keyboard only:
the first screen, help, a screen switch, an invalid then valid setting, quit.

Each test gets its own tmux server socket (-L) and session name, an isolated
XDG_CONFIG_HOME and FINETUI_RUNS_DIR, and kills its server at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, tmp_path: Path):
        self.socket = f"finetui-test-{uuid.uuid4().hex[:10]}"
        self.session = f"finetui-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp_path

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=check, timeout=30)

    def start(self) -> None:
        env = {
            "XDG_CONFIG_HOME": str(self.tmp / "config"),
            "FINETUI_RUNS_DIR": str(self.tmp / "runs"),
            "PYTHONPATH": str(REPO),
            "TERM": "screen-256color",
        }
        assignments = " ".join(f"{k}={v}" for k, v in env.items())
        command = f"cd {REPO} && exec env {assignments} {sys.executable} -m finetui.engine.cli"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", self.session, "-x", "80", "-y", "24", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.session, *(["-l"] if literal else []), *keys)
        time.sleep(0.15)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen}")

    def wait_gone(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.screen()
            if text not in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} still on screen after {timeout}s:\n{screen}")

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.session, check=False).returncode == 0

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(tmp_path)
    t.start()
    try:
        yield t
    finally:
        t.kill()


def test_tui_in_tmux_by_keyboard(tmux):
    # It opens on the sample dataset.
    tmux.wait_for("What is finetui?")
    screen = tmux.wait_for("275 rows")  # the count comes from a worker thread, after the first rows
    lines = screen.rstrip("\n").split("\n")
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert "Datasets" in lines[0] and "^p palette" in lines[0] and "sample:finetui_faq" in screen
    assert "Search" in lines[-1] and "Help" in lines[-1] and "Quit" in lines[-1]  # this screen's keys, all of them

    tmux.keys("/", literal=True)
    tmux.keys("LoRA", literal=True)
    tmux.keys("Enter")
    tmux.wait_for("matches for 'LoRA'")

    tmux.keys("s", literal=True)
    tmux.wait_for("name_or_path")
    screen = tmux.wait_for("quickstart")
    lines = screen.rstrip("\n").split("\n")
    assert "Preset" in lines[-1] and "Start" in lines[-1]
    assert "tiny" in screen

    tmux.keys("?", literal=True)
    screen = tmux.wait_for("app.screen_settings")
    assert "Keys" in screen
    tmux.keys("Escape")
    tmux.wait_for("name_or_path")

    tmux.keys("r", literal=True)
    tmux.wait_gone("name_or_path")  # the Runs screen (another issue's) replaced Settings
    tmux.keys("s", literal=True)
    tmux.wait_for("name_or_path")

    # train.batch_size: three section jumps, two rows down.
    tmux.keys("]", "]", "]", literal=True)
    tmux.keys("j", "j", literal=True)
    tmux.wait_for("Examples per device per step")
    tmux.keys("Enter")
    tmux.wait_for("Apply")  # the editor is open (keys sent before it are the form's, not the input's)
    tmux.keys("BSpace", "BSpace", "BSpace")
    tmux.keys("0", literal=True)
    tmux.keys("Enter")
    tmux.wait_for("greater than or equal to 1")
    tmux.keys("BSpace")
    tmux.keys("4", literal=True)
    tmux.keys("Enter")
    tmux.wait_for("1 changed")
    screen = tmux.wait_for("bs 4")  # the estimate follows (worker thread)
    assert "greater than or equal" not in screen

    tmux.keys("q", literal=True)
    deadline = time.time() + 10
    while tmux.alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), "q did not quit"
