"""The Datasets browser shows what a run trains for data.long_text, data.text_overlap and
data.roles (Textual Pilot at 80x24): a raw text longer than max_length is shown as the
windows it is split into (``#chunkN``), or truncated under ``long_text: truncate``; the
token lengths count the windows; a transcript with its speakers mapped in the Settings
renders as a conversation."""

from __future__ import annotations

from pathlib import Path

from test_tui_datasets import open_path, wait_until
from tui_helpers import SIZE, settle, text_of, tui_env  # noqa: F401

from finetui.tui.app import FinetuiApp
from finetui.tui.widgets.rowtable import RowTable

FIDELITY = Path(__file__).resolve().parent / "data" / "fidelity"
WIKI = str(FIDELITY / "wiki_articles.jsonl")
PODCAST = str(FIDELITY / "podcast_transcript.jsonl")


async def open_record(pilot, app, path: str) -> str:
    await open_path(pilot, app, path)
    table = app.screen.query_one(RowTable)
    await wait_until(pilot, lambda: table.row(0) is not None, 20)
    await pilot.press("enter")
    await pilot.pause()
    assert app.screen.view == "ds-record"
    rendered = app.screen.query_one("#ds-rendered")
    await wait_until(pilot, lambda: "trained" in text_of(rendered), 120)
    return text_of(rendered)


async def test_long_text_is_shown_as_its_windows(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        data = app.settings_state.config.data
        assert data.long_text == "chunk"  # the default
        data.max_length = 512
        shown = await open_record(pilot, app, WIKI)
        assert "truncated" not in shown and "✂" not in shown
        assert "split into" in shown and "windows" in shown
        assert "wiki_articles.jsonl:1#chunk1 · 512 tokens, 512 trained" in shown and "#chunk2" in shown

        # The token lengths count the windows the long texts make.
        await pilot.press("escape", "i")
        stats = app.screen.query_one("#ds-stats-text")
        await wait_until(pilot, lambda: "histogram" in text_of(stats), 120)
        assert "split into windows" in text_of(stats) and "0 truncated" in text_of(stats)


async def test_long_text_truncate_is_shown_truncated(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.settings_state.config.data.long_text = "truncate"
        app.settings_state.config.data.max_length = 512
        shown = await open_record(pilot, app, WIKI)
        assert "truncated: " in shown and "(data.long_text truncate" in shown and "✂ max_length" in shown
        assert "#chunk" not in shown and "windows" not in shown


async def test_transcript_with_roles_renders_as_a_conversation(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.settings_state.config.data.roles = {"Host": "user", "Guest": "assistant"}
        shown = await open_record(pilot, app, PODCAST)
        assert "<|im_start|>user" in shown and "<|im_start|>assistant" in shown
        assert "conversation:" in shown and "user, assistant" in shown
        # The columns line converts the sampled rows a conversation at a time, with the roles:
        # only the episode whose Producer has no role is dropped.
        columns_line = text_of(app.screen.query_one("#ds-columns"))
        assert "7 of 18 sampled dropped" in columns_line, columns_line
        # The Guest's words (a later row of the episode) are trained, the Host's are not.
        rendered = app.screen.query_one("#ds-rendered").content
        trained_style = f"bold {app.theme_variables['success']}"
        highlighted = "".join(rendered.plain[s.start:s.end] for s in rendered.spans if s.style == trained_style)
        assert "Thanks for having me." in highlighted
        assert "Welcome back to Deep Time" not in highlighted
