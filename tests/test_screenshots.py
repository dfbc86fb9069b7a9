"""The README's screenshots (docs/screens/*.svg) and its key table, kept current.

Each test draws one screen the way a user gets there (Textual Pilot at 100x30, the sample
data, the tiny model, a synthetic run for Runs and the dashboard) and compares Textual's
SVG screenshot with the committed file; the key-table test compares the README's table
between its markers with one made from the app's bindings (the help screen's own table).
``FINETUI_UPDATE_SCREENSHOTS=1`` rewrites the files instead of comparing.

The screens are made deterministic through their data, never their code: the run has a
fixed id and fixed event times (TZ=UTC), the host and GPU readings come from a fixed
reading (engine.hardware's data source), and Textual's own per-run SVG ids are fixed.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from test_dashboard_helpers import dash_env, synthetic_run  # noqa: F401
from tui_helpers import settle, wait_until

from finetui.engine import hardware
from finetui.tui.app import FinetuiApp

REPO = Path(__file__).resolve().parents[1]
SCREENS = REPO / "docs" / "screens"
CELL = 12.2  # the width of one terminal cell in Textual's SVG export
README = REPO / "README.md"
SIZE = (100, 30)
UPDATE = os.environ.get("FINETUI_UPDATE_SCREENSHOTS") == "1"
RUN_ID = "20261205-093000-faq-lora"
RUN_START = 1796463000.0  # 2026-12-05 09:30:00 UTC
KEYS_START = "<!-- keys: generated from the app's bindings by tests/test_screenshots.py -->"
KEYS_END = "<!-- /keys -->"


@pytest.fixture
def screen_env(dash_env, monkeypatch):  # noqa: F811
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    # a runs folder named as a user would name it, not a temporary path
    monkeypatch.setenv("FINETUI_RUNS_DIR", "runs")
    monkeypatch.setenv("FINETUI_FAKE_GPUS", json.dumps([
        {"name": "NVIDIA H100 80GB HBM3", "util_percent": 91, "memory_used_bytes": 21 * 1024 ** 3,
         "memory_total_bytes": 80 * 1024 ** 3, "temperature_c": 58, "power_w": 402.0, "power_limit_w": 700},
    ]))
    monkeypatch.setattr(hardware, "read_host", lambda pid=None: hardware.HostReading(
        cpu_percent=12.0, ram_used_bytes=9 * 1024 ** 3, ram_total_bytes=64 * 1024 ** 3, process_rss_bytes=None))
    yield dash_env
    if old_tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old_tz
    time.tzset()


def fixed_run(root: Path) -> Path:
    """A completed synthetic run (40 steps, eval and a checkpoint every 10) under a fixed id
    with fixed event times: one second per event from RUN_START."""
    made = synthetic_run(root=root / "work" / "runs", name="faq-lora", steps=40, every=10)
    target = made.parent / RUN_ID
    made.rename(target)
    lines = []
    for n, line in enumerate((target / "events.jsonl").read_text().splitlines()):
        event = json.loads(line)
        event["run_id"] = RUN_ID
        event["time"] = RUN_START + n
        text = json.dumps(event, separators=(",", ":"))
        lines.append(text.replace(str(made), str(target)))
    (target / "events.jsonl").write_text("\n".join(lines) + "\n")
    return target


def svg_of(app) -> str:
    svg = app.export_screenshot(title="finetui")
    # Textual prefixes the SVG's style classes and clip paths with a number of its own;
    # one fixed name, so that equal screens give equal files.
    prefix = re.search(r"terminal-(\d+)-", svg)
    if prefix:
        svg = svg.replace(f"terminal-{prefix.group(1)}", "terminal-finetui")
    # the checkout's own folder (Settings names the config file it loaded) as a relative path,
    # the line's drawn width with it (Textual sizes each text run by its cells)
    def relative(match: re.Match) -> str:
        head, length, rest, body = match.group(1), float(match.group(2)), match.group(3), match.group(4)
        if f"{REPO}/" not in body:
            return match.group(0)
        cut = len(f"{REPO}/") * body.count(f"{REPO}/")
        return f'{head}textLength="{round(length - cut * CELL, 1):g}"{rest}>{body.replace(f"{REPO}/", "")}</text>'

    return re.sub(r'(<text [^>]*?)textLength="([\d.]+)"([^>]*)>([^<]*)</text>', relative, svg)


def drawn(svg: str) -> str:
    """What a screenshot shows: its text, colours and rows; not the widths of the runs (a
    line that named the checkout's folder is as wide as that folder's absolute path)."""
    return re.sub(r' (?:x|width|textLength)="[\d.]+"', "", svg)


def check(name: str, svg: str) -> None:
    path = SCREENS / f"{name}.svg"
    if UPDATE:
        SCREENS.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        return
    assert path.exists(), f"{path} is missing: run FINETUI_UPDATE_SCREENSHOTS=1 pytest {__file__}"
    assert drawn(path.read_text()) == drawn(svg), (
        f"the {name} screen no longer looks like {path.relative_to(REPO)}; if the change is meant, "
        f"rewrite it with FINETUI_UPDATE_SCREENSHOTS=1 pytest tests/test_screenshots.py and commit it")


async def test_datasets_screen(screen_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.pause(0.5)
        await settle(pilot, app)
        check("datasets", svg_of(app))


async def test_settings_screen(screen_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("s")
        await settle(pilot, app)
        await pilot.pause(0.5)
        check("settings", svg_of(app))


async def test_runs_and_dashboard_screens(screen_env):
    from finetui.tui.screens.dashboard import DashboardScreen
    from finetui.tui.screens.runs import RunsScreen

    fixed_run(screen_env)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded
                         and any(i.id == RUN_ID for i in app.screen.infos), what="runs list")
        await pilot.pause(0.5)
        check("runs", svg_of(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state is not None
                         and app.screen.state.finished is not None and app.screen._hw is not None,
                         what="dashboard")
        from finetui.tui.widgets.gpupanel import GpuPanel

        panel = app.screen.query_one(GpuPanel)  # drawn from the poll at most twice a second
        await wait_until(pilot, lambda: panel.host is not None and panel.gpus and panel.peak_bytes,
                         what="the GPU panel's readings")
        await pilot.pause(0.8)
        check("dashboard", svg_of(app))


# --------------------------------------------------------------------------- keys


def keys_markdown(app) -> str:
    """The key table per screen, as the help screen (?) shows it with no remaps: one
    folded table per group (global keys, then each screen with its dialogs)."""
    out = []
    for title, rows in app.binding_groups():
        out.append(f"<details><summary><b>{title}</b></summary>\n")
        out.append("| key | does | id (for `keys:`) |")
        out.append("|---|---|---|")
        for keys, description, ident in rows:
            shown = keys.replace("|", "\\|")
            out.append(f"| `{shown}` | {description} | " + (f"`{ident}` |" if ident != "—" else "— |"))
        out.append("\n</details>\n")
    return "\n".join(out).rstrip() + "\n"


def readme_keys(text: str) -> str:
    assert KEYS_START in text and KEYS_END in text, f"README.md lost its key-table markers ({KEYS_START})"
    return text.split(KEYS_START, 1)[1].split(KEYS_END, 1)[0].strip("\n") + "\n"


async def test_readme_key_table_matches_the_keymap(tui_env_keys):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        made = keys_markdown(app)
    text = README.read_text()
    if UPDATE:
        head, rest = text.split(KEYS_START, 1)
        _old, tail = rest.split(KEYS_END, 1)
        README.write_text(f"{head}{KEYS_START}\n{made}{KEYS_END}{tail}")
        return
    assert readme_keys(text) == made, (
        "README.md's key table differs from the app's bindings; rewrite it with "
        "FINETUI_UPDATE_SCREENSHOTS=1 pytest tests/test_screenshots.py")


@pytest.fixture
def tui_env_keys(dash_env):  # noqa: F811
    """No user config: the keys as shipped."""
    return dash_env


async def test_chat_and_eval_screens(screen_env):
    """Chat and Eval as they open, before a model is loaded (a loaded model's answers are
    the engine's, not the screen's, and would tie the pictures to torch's numerics); Eval on
    the finished synthetic run, before it is evaluated."""
    fixed_run(screen_env)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("c")
        await settle(pilot, app)
        # out of the message box, as a user leaves it for the screen keys: its cursor blinks
        app.screen.set_focus(None)
        await pilot.pause(0.5)
        check("chat", svg_of(app))
        await pilot.press("e")
        await settle(pilot, app)
        await pilot.pause(0.5)
        check("eval", svg_of(app))
