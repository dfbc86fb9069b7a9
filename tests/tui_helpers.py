"""Helpers shared by the TUI tests (Textual Pilot): an isolated user environment and a few
ways to read what is on screen, and the tiny LoRA run the chat and eval screens share."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIZE = (80, 24)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tui_env(tmp_path, monkeypatch) -> Path:
    """Own XDG config dir, runs dir and working directory for one test."""
    (tmp_path / "config").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def user_config_dir(root: Path) -> Path:
    path = root / "config" / "finetui"
    path.mkdir(parents=True, exist_ok=True)
    return path


def notifications(app) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


def text_of(widget) -> str:
    """What a Static/Label shows, as plain text."""
    from rich.console import Console

    renderable = widget.render()
    content = getattr(widget, "content", None)
    if content is not None and not isinstance(content, str):
        renderable = content  # a Rich renderable (Table, Text) wrapped by Static
    console = Console(width=200, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


async def type_text(pilot, text: str) -> None:
    await pilot.press(*list(text))


async def settle(pilot, app, timeout: float = 15.0) -> None:
    """Let workers finish and messages drain (a screen may keep a worker running for
    good, e.g. one following a live run: give up waiting after ``timeout``)."""
    import asyncio

    await pilot.pause()
    try:
        await asyncio.wait_for(app.workers.wait_for_complete(), timeout)
    except asyncio.TimeoutError:
        pass
    await pilot.pause()


async def open_path(pilot, app, path: str) -> None:
    """The Datasets screen's open dialog (o): type a path, enter, wait for it to load."""
    from finetui.tui.widgets.dialogs import PathDialog

    await pilot.press("o")
    await pilot.pause()
    assert isinstance(app.screen, PathDialog)
    await pilot.press("ctrl+a", "ctrl+k")
    await type_text(pilot, path)
    await pilot.press("enter")
    await settle(pilot, app)


def train_tiny_run(tmp_path_factory, cache_dir: Path) -> Path:
    """A LoRA run of the tiny model on the sample FAQ (20 steps), trained once per session
    with `finetui train`, whichever test module asks first."""
    root = tmp_path_factory.getbasetemp() / "tui-trained-run"
    runs_dir = root / "runs"
    found = sorted(runs_dir.glob("*/adapter/adapter_config.json")) if runs_dir.exists() else []
    if found:
        return found[0].parent.parent
    command = [sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(runs_dir), "train",
               str(REPO / "sample_data" / "quickstart.yaml"), "--name", "tui",
               "--set", "method.type=lora", "--set", "train.max_steps=20",
               "--set", "train.eval_steps=20", "--set", "train.save_steps=20"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FINETUI_CACHE": str(cache_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in runs_dir.iterdir() if (p / "config.yaml").exists()]
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    return run_dir


def record_launches(monkeypatch) -> list[Path]:
    """engine.runs.launch replaced, for one test, by one that records the run folder and starts a
    process that exits at once (no training); returns the list of run folders it was given."""
    from finetui.engine import runs

    launched: list[Path] = []

    def fake_launch(run_dir, **kwargs):
        launched.append(run_dir)
        return subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE)

    monkeypatch.setattr(runs, "launch", fake_launch)
    return launched


def copy_run(run_dir: Path, runs_root: Path, name: str | None = None) -> Path:
    """A private copy of a trained run (no checkpoints) in a test's runs folder."""
    target = runs_root / (name or run_dir.name)
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoints", "trainer.pid", "eval", "merged"))
    return target


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, finetui_cache_dir) -> Path:
    return train_tiny_run(tmp_path_factory, finetui_cache_dir)


async def wait_until(pilot, predicate, timeout: float = 120.0, what: str = "",
                     step: float = 0.1) -> None:
    """Poll ``predicate`` every ``step`` seconds (pausing the pilot) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(step)
        await pilot.pause()
