"""Datasets screen, by keyboard at 80x24: columns no field reads are named, the column
dialog maps them, and ``u`` carries the path, format, columns and template to the Settings
(what the browser shows is what the run trains)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tui_helpers import SIZE, open_path, record_launches, settle, text_of, tui_env, type_text, wait_until  # noqa: F401

from finetui.tui.app import FinetuiApp
from finetui.tui.screens.datasets import DatasetsScreen
from finetui.tui.widgets.columnmap import ColumnMapDialog
from finetui.tui.widgets.rowtable import RowTable

DATA = Path(__file__).resolve().parent / "data"
PLAN = DATA / "fidelity" / "question_plan_answer.csv"
ALPACA = DATA / "datasets" / "llamafactory" / "alpaca_en_demo.json"


def line(app, ident: str) -> str:
    return text_of(app.screen.query_one(ident))


def inside_screen(widget) -> bool:
    region = widget.region
    return region.x >= 0 and region.y >= 0 and region.right <= SIZE[0] and region.bottom <= SIZE[1]


async def test_unused_plan_column_is_named_and_mapped_by_keyboard(tui_env, finetui_cache):
    shutil.copy(PLAN, tui_env / "work" / PLAN.name)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await open_path(pilot, app, PLAN.name)
        await wait_until(pilot, lambda: "6 rows" in line(app, "#ds-source"), 20)
        assert "qa (detected)" in line(app, "#ds-source")
        columns = app.screen.query_one("#ds-columns")
        assert columns.display and inside_screen(columns)
        assert "not trained: plan (in 6 of 6 sampled)" in line(app, "#ds-columns") and "m map" in line(app, "#ds-columns")

        # m: the dialog lists the format and its fields; the system row picks the plan column.
        await pilot.press("m")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ColumnMapDialog)
        rows = line(app, "#cm-rows")
        assert rows.strip().splitlines()[0].lstrip("▶ ").startswith("format")
        for field in ("question", "answer", "system"):
            assert field in rows
        assert "not trained: plan (in 6 of 6 sampled)" in line(app, "#cm-check")
        await pilot.press("down", "down", "down")  # format, question, answer, system
        await pilot.press("right")  # auto -> question
        await pilot.press("right")  # -> plan
        await pilot.pause()
        assert "◂ plan ▸" in next(r for r in line(app, "#cm-rows").splitlines() if "system" in r)
        assert "every column with a value is read" in line(app, "#cm-check")
        assert "sample: 6 of 6 records read as qa" in line(app, "#cm-check")
        assert all(inside_screen(w) for w in dialog.query("Static"))  # fits 80x24
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, DatasetsScreen)
        assert app.screen.columns == {"system": "plan"}
        shown = line(app, "#ds-columns")
        assert "columns system=plan" in shown and "not trained" not in shown

        # The record renders with the plan as its system prompt (the render worker, as trained).
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(0) is not None, 10)
        await pilot.press("enter")
        rendered = app.screen.query_one("#ds-rendered")
        await wait_until(pilot, lambda: "trained" in text_of(rendered), 120)
        assert "<|im_start|>system\n1. Boil water. 2. Warm the pot." in text_of(rendered)
        assert "not trained: column" not in text_of(rendered)
        await pilot.press("escape")

        # u: path, format, columns and template go to the Settings.
        await pilot.press("u")
        await pilot.pause()
        data = app.settings_state.config.data
        assert (data.path, data.format, data.columns, data.template) == (PLAN.name, "qa", {"system": "plan"}, "auto")
        assert "Settings read it otherwise" not in line(app, "#ds-columns")


async def test_record_view_names_a_column_it_does_not_train(tui_env, finetui_cache):
    shutil.copy(PLAN, tui_env / "work" / PLAN.name)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await open_path(pilot, app, PLAN.name)
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(0) is not None, 10)
        await pilot.press("enter")
        rendered = app.screen.query_one("#ds-rendered")
        await wait_until(pilot, lambda: "trained" in text_of(rendered), 120)
        assert "not trained: column plan (m: map columns)" in text_of(rendered)


async def test_use_carries_the_detected_format_to_the_settings(tui_env):
    """alpaca_en_demo under the quickstart's format: qa lost 587 of 999 records; u now sets
    data.format to what the browser detected and shows."""
    shutil.copy(ALPACA, tui_env / "work" / ALPACA.name)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.settings_state.config.data.format == "qa"  # the quickstart's
        await open_path(pilot, app, ALPACA.name)
        await wait_until(pilot, lambda: "999 rows" in line(app, "#ds-source"), 20)
        assert "alpaca (detected)" in line(app, "#ds-source")
        await pilot.press("u")
        await pilot.pause()
        data = app.settings_state.config.data
        assert (data.path, data.format, data.columns, data.template) == (ALPACA.name, "alpaca", {}, "auto")
        assert data.test_path is None  # the quickstart's held-out FAQ file belongs to the FAQ

        from finetui.engine.data.readers import load_records

        loaded = load_records(data.path, format=data.format, columns=data.columns)
        assert loaded.counts == {"ok": 999, "invalid": 0}


async def test_settings_format_that_drops_a_column_is_said_in_the_browser(tui_env):
    """The Settings' own data (path + format qa, as a preset has it) on an alpaca file: the
    browser reads it as the run would and names the instruction column it does not train."""
    shutil.copy(ALPACA, tui_env / "work" / ALPACA.name)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.settings_state.config.data.path = ALPACA.name  # format qa stays, as with a preset
        await pilot.press("s")
        await settle(pilot, app)
        await pilot.press("d")
        await settle(pilot, app)
        await wait_until(pilot, lambda: ALPACA.name in line(app, "#ds-source") and "999 rows" in line(app, "#ds-source"),
                         20)
        assert "qa (data.format)" in line(app, "#ds-source")
        await wait_until(pilot, lambda: "not trained: instruction" in line(app, "#ds-columns"), 10)
        # the sample says what a run would drop, too (the first 50 records: 30 have no input)
        assert "30 of 50 sampled dropped · not trained: instruction (in 20 of 50 sampled)" in line(app, "#ds-columns")
        # m, format row: → to alpaca reads every column; apply, and the Settings differ: u fixes it.
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("right")  # qa -> alpaca (formats in their order)
        await pilot.pause()
        assert "◂ alpaca ▸" in line(app, "#cm-rows")
        assert "sample: 50 of 50 records read as alpaca" in line(app, "#cm-check")
        await pilot.press("enter")
        await settle(pilot, app)
        assert "Settings read it otherwise: u" in line(app, "#ds-columns")
        await pilot.press("u")
        await pilot.pause()
        assert app.settings_state.config.data.format == "alpaca"
        assert "Settings read it otherwise" not in line(app, "#ds-columns")


async def test_start_asks_before_a_run_that_would_drop_records(tui_env, monkeypatch):
    """Start with a preset's format: qa on alpaca_en_demo: the dialog says 587 of 999 records
    would be dropped and why; esc starts nothing. After u in Datasets the same Start has
    nothing to say; and a confirmed "start anyway" starts the run as configured."""
    from finetui.tui.screens.settings import SettingsScreen
    from finetui.tui.widgets.dialogs import ConfirmDialog

    launched = record_launches(monkeypatch)
    shutil.copy(ALPACA, tui_env / "work" / ALPACA.name)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        data = app.settings_state.config.data
        data.path, data.test_path = ALPACA.name, None  # format qa stays, as with a preset
        await pilot.press("s")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert line(app, ".dialog-title").strip() == "Records would be dropped: start anyway?"
        body = line(app, "VerticalScroll Static")
        assert f"{ALPACA.name}: 587 of the 999 records (58.8%) would be dropped, more than data.max_drop_fraction 5%" \
            in body
        assert f"e.g. {ALPACA.name}:2: field 'input': empty text" in body
        assert "the records look like alpaca, not qa" in body
        assert "enter start anyway" in line(app, ".dialog-hint")
        assert all(inside_screen(w) for w in app.screen.query(".dialog"))
        await pilot.press("escape")
        await pilot.pause()
        assert not launched

        # Datasets shows the file as the Settings read it, and what that loses; m picks alpaca,
        # u hands it back; Start has nothing to say.
        await pilot.press("d")
        await settle(pilot, app)
        await wait_until(pilot, lambda: "999 rows" in line(app, "#ds-source"), 20)
        assert "qa (data.format)" in line(app, "#ds-source")
        assert "not trained: instruction" in line(app, "#ds-columns")
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("right", "enter")
        await pilot.pause()
        assert "alpaca (chosen)" in line(app, "#ds-source")
        await pilot.press("u")
        await pilot.press("s")
        await settle(pilot, app)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert line(app, ".dialog-title").strip() == "Start a training run", line(app, "VerticalScroll Static")
        assert "would be dropped" not in line(app, "VerticalScroll Static")
        await pilot.press("escape")
        await pilot.pause()

        # Back to qa, and this time start anyway: the run starts with the settings as they are.
        app.settings_state.config.data.format = "qa"
        await pilot.press("g")
        await pilot.pause()
        assert line(app, ".dialog-title").strip() == "Records would be dropped: start anyway?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.run_processes, 10, "the run to start", step=0.05)
        assert len(launched) == 1
        assert cfg_of(launched[0]).data.format == "qa"
        app.run_processes[launched[0].name].wait()


def cfg_of(run_dir: Path):
    from finetui.engine import config as cfg

    return cfg.load(run_dir / "config.yaml")
