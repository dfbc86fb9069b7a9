"""Helpers shared by the TUI tests (Textual Pilot): an isolated user environment and a few
ways to read what is on screen."""

from __future__ import annotations

from pathlib import Path

import pytest

SIZE = (80, 24)


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
