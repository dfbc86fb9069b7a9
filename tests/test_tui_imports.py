"""The UI process never imports the heavy ML stack (torch, transformers, datasets, peft,
bitsandbytes): the app is started in a fresh interpreter, driven through every screen,
the palette, help, the preview, the footprint estimate, the model picker and Start's data
check, and its sys.modules is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "peft", "bitsandbytes", "accelerate", "tokenizers")

SCRIPT = r"""
import asyncio, json, sys
from finetui.tui.app import FinetuiApp, SCREEN_TABLE

async def settle(app):
    try:
        await asyncio.wait_for(app.workers.wait_for_complete(), 15)
    except asyncio.TimeoutError:
        pass  # a screen may follow a live run for good

async def main():
    app = FinetuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await settle(app)
        for entry in SCREEN_TABLE:
            app.screen.set_focus(None)  # a chat prompt would take the letter
            await pilot.press(entry.key)
            await pilot.pause()
            await settle(app)
        app.screen.set_focus(None)
        await pilot.press("s", "v")          # settings preview (YAML, command, estimate)
        await pilot.pause()
        await pilot.press("v", "question_mark")
        await pilot.pause()
        await pilot.press("escape", "ctrl+p")
        await pilot.pause()
        await pilot.press("escape")
        await settle(app)
        await pilot.press("m")               # the model picker: models listed and estimated
        await pilot.pause()
        await settle(app)
        assert type(app.screen).__name__ == "ModelPicker", app.screen
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("g")               # Start: the data is read to count drops first
        await pilot.pause()
        await settle(app)
        assert type(app.screen).__name__ == "ConfirmDialog", app.screen
        await pilot.press("escape")
        await pilot.pause()
    print(json.dumps(sorted(sys.modules)))

asyncio.run(main())
"""


def _modules(tmp_path: Path, code: str) -> set[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "FINETUI_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_ui_process_has_no_heavy_imports_after_start(tmp_path):
    modules = _modules(tmp_path, SCRIPT)
    assert "textual" in modules and "finetui.tui.screens.settings" in modules  # it really ran
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not loaded, f"heavy modules in the UI process: {loaded[:10]}"


def test_tui_modules_import_light():
    code = (
        "import importlib, json, pkgutil, sys, finetui.tui\n"
        "for m in pkgutil.walk_packages(finetui.tui.__path__, 'finetui.tui.'):\n"
        "    importlib.import_module(m.name)\n"
        "import finetui.engine.footprint\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not sorted(m for m in modules if m.split(".")[0] in HEAVY)
