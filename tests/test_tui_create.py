"""Datasets -> "from documents" (tui.screens.create), by keyboard through Textual's Pilot at
80x24: pick a document, preview its passages, generate against a real HTTP endpoint on
127.0.0.1 through the `finetui data create` subprocess, review the pairs (accept, reject,
edit), save, and open the result in the dataset browser."""

from __future__ import annotations

import json

from test_data_create import FakeOpenAI, story
from tui_helpers import SIZE, settle, text_of, tui_env, type_text, wait_until  # noqa: F401

from finetui.tui.app import FinetuiApp
from finetui.tui.screens.create import CreateScreen, WriterDialog
from finetui.tui.screens.datasets import DatasetsScreen
from finetui.tui.widgets.dialogs import PathDialog


async def test_documents_to_a_reviewed_dataset_by_keyboard(tui_env, tmp_path):
    doc = story(tmp_path, 5)
    out = tmp_path / "story.jsonl"
    app = FinetuiApp()
    with FakeOpenAI(first_429=False) as server:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("n")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CreateScreen)
            await pilot.press("a")
            await pilot.pause()
            assert isinstance(app.screen, PathDialog)
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, str(tmp_path / "story.docx"))
            await pilot.press("enter")
            await pilot.pause()
            assert "unsupported document type '.docx'" in text_of(app.screen.query_one("#error"))
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, str(doc))
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(screen.passages) == 6, 20, "passages listed")
            assert "[table of contents]" in str(screen.query_one("#cr-list").get_option_at_index(0).prompt)
            await pilot.press("down")
            await pilot.pause()
            first_prose = screen.passages[1][0]
            assert first_prose.text[:40] in text_of(screen.query_one("#cr-detail"))
            # the output file and the endpoint
            await pilot.press("w")
            await pilot.pause()
            assert isinstance(app.screen, WriterDialog)
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, str(out))
            await pilot.press("tab")
            await type_text(pilot, server.url)
            await pilot.press("tab")
            await type_text(pilot, "fake-model")
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is screen and screen.base_url == server.url and screen.out == str(out)
            assert "fake-model @ 127.0.0.1:" in text_of(screen.query_one("#cr-head"))
            # generation runs in a subprocess; its progress shows here
            await pilot.press("g")
            await wait_until(pilot, lambda: screen.proc is None and screen.report is not None, 90, "generation")
            assert screen.report["written"] == 5 and len(server.requests) == 5
            assert "5 of 5" in text_of(screen.query_one("#cr-counts"))
            # review: accept, reject, edit
            await pilot.press("v")
            await pilot.pause()
            assert len(screen.pairs) == 5
            assert "pair 1/5" in text_of(screen.query_one("#cr-review-head"))
            await pilot.press("y")
            await pilot.press("n")
            await pilot.press("i")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, "Who crossed the river at dawn?")
            await pilot.press("enter")
            await pilot.pause()
            assert [p["status"] for p in screen.pairs[:3]] == ["accepted", "rejected", "accepted"]
            await pilot.press("ctrl+s")
            await pilot.pause()
            reviewed = tmp_path / "story.reviewed.jsonl"
            records = [json.loads(line) for line in reviewed.read_text().splitlines()]
            assert len(records) == 4  # 2 accepted, 2 not reviewed, 1 rejected left out
            assert records[1]["messages"][0]["content"] == "Who crossed the river at dawn?"
            rejected_passage = screen.pairs[1]["record"]["source"]["passage"]
            assert rejected_passage not in [r["source"]["passage"] for r in records]
            # the result opens in the dataset browser
            await pilot.press("b")
            await pilot.pause()
            assert isinstance(app.screen, DatasetsScreen)
            await wait_until(pilot, lambda: "story.reviewed.jsonl" in text_of(app.screen.query_one("#ds-source"))
                             and "messages" in text_of(app.screen.query_one("#ds-source")), 30, "browser")


async def test_stop_then_continue_from_the_screen(tui_env, tmp_path):
    doc = story(tmp_path, 16)
    out = tmp_path / "story.jsonl"
    app = FinetuiApp()
    with FakeOpenAI(first_429=False, delay=0.5) as server:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            screen = CreateScreen([str(doc)], out=str(out), model="m", base_url=server.url)
            await app.push_screen(screen)
            await wait_until(pilot, lambda: len(screen.passages) == 17, 20, "passages listed")
            await pilot.press("g")
            await wait_until(pilot, lambda: screen.counts["written"] >= 2, 60, "the first pairs")
            await pilot.press("x")
            await wait_until(pilot, lambda: screen.proc is None, 30, "the stop")
            assert "stopped" in text_of(screen.query_one("#cr-status"))
            first = out.read_text().splitlines()
            assert 2 <= len(first) < 16
            await pilot.press("g")
            await wait_until(pilot, lambda: screen.proc is None and screen.report is not None, 60, "the rest")
            assert screen.report["written"] == 16 and screen.report["already_done"] == len(first)
    hashes = [json.loads(line)["source"]["hash"] for line in out.read_text().splitlines()]
    assert len(hashes) == len(set(hashes)) == 16
