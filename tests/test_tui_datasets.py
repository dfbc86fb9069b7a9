"""Datasets screen, by keyboard through Textual's Pilot at 80x24: the sample on start-up,
search, opening files (bad ones too), a record rendered by the worker subprocess, the
token length histogram, and a big file paged lazily."""

from __future__ import annotations

import json

from tui_helpers import SIZE, notifications, open_path, settle, text_of, tui_env, type_text, wait_until  # noqa: F401

from finetui.tui import datasource
from finetui.tui.app import FinetuiApp
from finetui.tui.screens.datasets import DatasetsScreen
from finetui.tui.widgets.dialogs import PathDialog
from finetui.tui.widgets.pathinput import complete
from finetui.tui.widgets.rowtable import RowTable


def source_line(app) -> str:
    return text_of(app.screen.query_one("#ds-source"))


async def test_opens_on_the_sample_dataset(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await wait_until(pilot, lambda: "275 rows" in source_line(app), 20)
        assert isinstance(app.screen, DatasetsScreen)
        line = source_line(app)
        assert "sample:finetui_faq" in line and "qa" in line
        table = app.screen.query_one(RowTable)
        assert app.focused is table
        await wait_until(pilot, lambda: table.row(0) is not None, 10)
        assert table.row(0).data["question"] == "What is finetui?"


async def test_search_filters_with_a_match_count(tui_env):
    from finetui.tui.session import sample_dir

    lines = (sample_dir() / "finetui_faq.jsonl").read_text().splitlines()
    expected = [i for i, line in enumerate(lines) if "lora" in json.dumps(json.loads(line), ensure_ascii=False).lower()]
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("slash")
        await type_text(pilot, "lora")
        await pilot.press("enter")
        await settle(pilot, app)
        table = app.screen.query_one(RowTable)
        assert table.filter == expected
        assert f"{len(expected)} matches for 'lora'" in text_of(app.screen.query_one("#ds-status"))
        assert f"{len(expected)} match" in source_line(app)
        await pilot.press("escape")
        await pilot.pause()
        assert table.filter is None
        await pilot.press("slash")
        await type_text(pilot, "zzzznotthere")
        await pilot.press("enter")
        await settle(pilot, app)
        assert table.filter is None and "no match" in text_of(app.screen.query_one("#ds-status"))


async def test_open_files_good_and_bad(tui_env):
    work = tui_env / "work"
    (work / "mixed.jsonl").write_text('{"question": "q1", "answer": "a1"}\n{not json\n{"question": "q3", "answer": "a3"}\n')
    (work / "table.csv").write_text("instruction,input,output\nsay hi,,hi\nadd,1 2,3\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        # A path that does not exist: the dialog says so and stays; the sample stays open.
        await open_path(pilot, app, "nowhere.jsonl")
        assert isinstance(app.screen, PathDialog)
        assert "nowhere.jsonl: no such file or folder" in text_of(app.screen.query_one("#error"))
        await pilot.press("escape")
        await pilot.pause()
        assert "sample:finetui_faq" in source_line(app)

        # Tab completes the file name.
        await pilot.press("o")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "mix")
        await pilot.pause()
        await pilot.press("tab")
        assert app.screen.query_one("#path").value == "mixed.jsonl"
        await pilot.press("enter")
        await settle(pilot, app)
        await wait_until(pilot, lambda: "3 rows" in source_line(app), 10)
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(1) is not None, 10)
        assert table.row(1).error.startswith("invalid JSON") and table.row(1).place.endswith("mixed.jsonl:2")
        assert "qa (detected)" in source_line(app)

        await open_path(pilot, app, "table.csv")
        await wait_until(pilot, lambda: "2 rows" in source_line(app), 10)
        assert "alpaca (detected)" in source_line(app)

        # u: the open dataset becomes data.path in the Settings.
        await pilot.press("u")
        await pilot.pause()
        assert app.settings_state.config.data.path == "table.csv"


async def test_big_file_pages_lazily(tui_env):
    big = tui_env / "work" / "big.jsonl"
    with big.open("w") as fh:
        for i in range(200_000):
            fh.write(json.dumps({"text": f"row number {i}"}) + "\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await open_path(pilot, app, "big.jsonl")
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: "200,000 rows" in source_line(app), 30)
        await pilot.press("end")
        await wait_until(pilot, lambda: table.row(199_999) is not None, 10)
        assert table.row(199_999).data == {"text": "row number 199999"}
        assert table.cursor == 199_999
        assert len(table._rows) <= 64 * 100  # only a few pages are held


async def test_record_view_renders_with_trained_tokens(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(0) is not None, 10)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.view == "ds-record"
        assert '"question": "What is finetui?"' in text_of(app.screen.query_one("#ds-raw"))
        rendered = app.screen.query_one("#ds-rendered")
        await wait_until(pilot, lambda: "trained" in text_of(rendered), 120)
        shown = text_of(rendered)
        assert "<|im_start|>assistant" in shown and "tokens" in shown
        # The highlighted part is exactly the answer and its end-of-turn token.
        content = rendered.content
        trained_style = f"bold {app.theme_variables['success']}"
        highlighted = "".join(content.plain[s.start:s.end] for s in content.spans if s.style == trained_style)
        highlighted = highlighted.replace(" (highlighted)", "", 1)  # the legend uses the same style
        answer = table.row(0).data["answer"]
        assert highlighted.startswith(answer) and "<|im_end|>" in highlighted
        assert "What is finetui?" not in highlighted  # the question is not trained
        # Next record with l, back with esc.
        await pilot.press("l")
        await wait_until(pilot, lambda: '"question": "Which fine-tuning' in text_of(app.screen.query_one("#ds-raw")), 10)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.view == "ds-table" and table.cursor == 1

        # Token lengths: counts and a histogram from the same worker.
        await pilot.press("i")
        stats = app.screen.query_one("#ds-stats-text")
        await wait_until(pilot, lambda: "histogram" in text_of(stats), 120)
        assert "275: 275 ok" in text_of(stats)
        assert not [n for n in notifications(app) if "error" in n.lower()]


async def test_render_worker_failure_is_shown_not_fatal(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.settings_state.config.model.name_or_path = "./no-such-model"
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(0) is not None, 10)
        await pilot.press("enter")
        rendered = app.screen.query_one("#ds-rendered")
        await wait_until(pilot, lambda: "no-such-model" in text_of(rendered), 120)
        await pilot.press("escape", "s")
        await pilot.pause()
        assert app.current_mode == "settings"


def test_preview_and_format_detection(tmp_path):
    row = datasource.Row(0, "f:1", "", {"conversations": [{"from": "human", "value": "hi\nthere"}]})
    assert datasource.preview(row) == "conversations: [1 turns] hi⏎ there"
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    source = datasource.resolve(str(path))
    rows = datasource.open_rows(source)
    try:
        assert datasource.detect_format(rows, source) == ("alpaca", "detected")
        assert datasource.detect_format(rows, source, "qa") == ("qa", "data.format")
    finally:
        rows.close()


def test_path_completion(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "data" / "test.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    assert complete("da") == "data/"
    assert complete("data/tr") == "data/train.jsonl"
    assert complete("data/t") == "data/test.jsonl"  # first of several, shown as a suggestion
    assert complete("nothing") is None
