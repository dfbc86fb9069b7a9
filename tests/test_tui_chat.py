"""Chat screen, by keyboard through Textual's Pilot at 80x24, against real chat workers on
the tiny model: load with progress, streamed replies batched on a timer, esc, retry, undo,
clear, settings, saving a record, side by side (base vs tuned of a trained run, handed over
as the dashboard does), and the faults: a missing model, an adapter that does not fit its
base, a worker killed mid-reply, an empty prompt, a prompt longer than the context. What is
sent: a new conversation after a model swap, single-turn mode, the history indicator (the
worker's prompt_tokens show what it was really given)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from train_helpers import foreign_adapter
from tui_helpers import (  # noqa: F401
    SIZE, copy_run, notifications, settle, text_of, trained_run, tui_env, type_text,
)
from tui_helpers import wait_until as shared_wait_until

from finetui.engine.data import formats
from finetui.tui.app import FinetuiApp
from finetui.tui.chathistory import ChatHistory
from finetui.tui.screens.chat import FLUSH_S, ChatScreen
from finetui.tui.widgets.chatdialogs import LoadDialog, ParamsDialog, SaveRecordDialog


async def wait_until(pilot, predicate, timeout: float = 120.0, what: str = "") -> None:
    await shared_wait_until(pilot, predicate, timeout, what, step=0.05)


async def open_chat(pilot, app) -> ChatScreen:
    await settle(pilot, app)
    await pilot.press("c")
    await pilot.pause()
    assert isinstance(app.screen, ChatScreen)
    return app.screen


async def load_from_dialog(pilot, app, screen: ChatScreen, title: str) -> None:
    """ctrl+o, then arrow down to the option whose title starts with ``title`` and enter."""
    await pilot.press("ctrl+o")
    await wait_until(pilot, lambda: isinstance(app.screen, LoadDialog), 20, "the load dialog")
    options = app.screen.query_one("OptionList")
    wanted = next(i for i in range(options.option_count) if str(options.get_option_at_index(i).prompt).startswith(title))
    for _ in range(wanted - (options.highlighted or 0)):
        await pilot.press("down")
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, ChatScreen)


async def ready(pilot, screen: ChatScreen, pane=None) -> None:
    pane = pane or screen.main
    await wait_until(pilot, lambda: pane.state in ("ready", "failed"), 180, f"{pane.side} to load")
    assert pane.state == "ready", pane.problem


async def say(pilot, screen: ChatScreen, text: str, wait: bool = True) -> None:
    screen.prompt.focus()
    await type_text(pilot, text)
    await pilot.press("enter")
    await pilot.pause()
    if wait:
        await wait_until(pilot, lambda: not screen.busy, 120, "the reply")


def status(screen: ChatScreen) -> str:
    return text_of(screen.query_one("#chat-status"))


def header(screen: ChatScreen, pane) -> str:
    return text_of(pane.view.query_one(".pane-header"))


def history_shown(screen: ChatScreen, pane) -> str:
    """The pane's history indicator (top right)."""
    return text_of(pane.view.query_one(".pane-history")).strip()


def roles(pane) -> list[str]:
    return [m.role for m in pane.log.messages()]


def close_workers(screen: ChatScreen) -> list:
    """The worker processes of the screen, for the test to see them end."""
    return [p.client.proc for p in (screen.main, screen.base) if p.client is not None and p.client.proc]


async def unloaded(pilot, procs) -> None:
    await wait_until(pilot, lambda: all(p.poll() is not None for p in procs), 30, "the workers to end")


# ---------------------------------------------------------------------------- tiny


async def test_load_tiny_stream_stop_retry_undo_clear(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        assert app.focused is screen.prompt
        assert "no model" in header(screen, screen.main)

        # Nothing loaded: enter says what to do, nothing is sent.
        await say(pilot, screen, "hello", wait=False)
        assert "no model loaded: ctrl+o" in status(screen) and screen.turns == []
        assert screen.prompt.value == "hello"  # kept for when a model is there
        await pilot.press("ctrl+u")

        # Load tiny from the dialog; the header shows loading progress, then the model.
        await load_from_dialog(pilot, app, screen, "tiny")
        assert screen.main.state == "loading" and "loading tiny" in header(screen, screen.main)
        await ready(pilot, screen)
        assert "tiny" in header(screen, screen.main) and "ctx 1024" in header(screen, screen.main)
        assert app.focused is screen.prompt

        # Empty prompt: refused, nothing sent.
        await pilot.press("space", "space", "enter")
        await pilot.pause()
        assert "empty prompt" in status(screen) and screen.turns == []
        await pilot.press("ctrl+u")

        # A streamed reply: its widget is refreshed on the 50 ms timer, not per token.
        screen.params.update(max_new_tokens=400, min_new_tokens=400)
        started = time.monotonic()
        await say(pilot, screen, "How do I start a run?")
        elapsed = time.monotonic() - started
        job = screen.main.last_job
        reply = job.widget
        assert roles(screen.main)[-2:] == ["user", "assistant"]
        assert reply.done["new_tokens"] == 400 and reply.done["stop_reason"] == "length"
        assert reply.text == reply.done["text"] and screen.main.replies[0] == reply.text
        assert reply.updates <= elapsed / FLUSH_S + 5, (reply.updates, elapsed)
        if job.fragments >= 20:
            assert reply.updates < job.fragments
        assert "400 tok" in reply.stats and "max tokens" in reply.stats

        # The log follows the bottom while the reader is there, and not after they scroll up.
        log = screen.main.log
        assert log.following and log.scroll_y == log.max_scroll_y
        log.focus()
        await pilot.press("home")
        # the scroll may animate over a few frames
        await wait_until(pilot, lambda: log.scroll_y == 0, 5, "the scroll to the top")
        assert not log.following and log.scroll_y == 0
        log.note("something new at the bottom")
        await pilot.pause()
        assert log.scroll_y == 0  # the reader's place is kept
        await pilot.press("end")
        await pilot.pause()
        assert log.following

        # Esc stops a long reply mid-way; the partial reply is kept, the UI answers.
        screen.params.update(max_new_tokens=900, min_new_tokens=900)
        await say(pilot, screen, "Tell me everything.", wait=False)
        try:
            await wait_until(pilot, lambda: screen.main.job is not None, 60, "the request")
        except AssertionError as exc:  # say what the screen said instead (seen once on CI, not here)
            raise AssertionError(f"{exc}: status {status(screen)!r}, pane {screen.main.state}, turns "
                                 f"{screen.turns}, prompt {screen.prompt.value!r}, focused {app.focused}") from None
        # Hold the worker still at its first token, so it cannot finish 900 tokens before the
        # keys land (on a loaded machine the UI's loop may not run for seconds): the reader
        # thread counts fragments, so this waits off the loop; the cancel is queued in the
        # worker's stdin and read as soon as it runs again.
        job, worker_pid = screen.main.job, screen.main.client.pid
        deadline = time.monotonic() + 60
        while job.fragments == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(worker_pid, signal.SIGSTOP)
        assert job.fragments > 0, "no tokens in 60 s"
        try:
            assert "esc stops" in status(screen)
            await type_text(pilot, "abc")  # the UI takes keys while a reply streams
            assert screen.prompt.value == "abc" and screen.busy
            await pilot.press("escape")
            await pilot.pause(0.2)
        finally:
            os.kill(worker_pid, signal.SIGCONT)
        await wait_until(pilot, lambda: not screen.busy, 30, "the stop")
        stopped = screen.main.last_job.widget
        assert stopped.done["stop_reason"] == "cancelled" and 0 < stopped.done["new_tokens"] < 900
        assert "stopped" in stopped.stats and screen.main.replies[1] == stopped.text
        assert len(screen.turns) == 2

        # Retry asks the last message again: same turn, a new reply in place of the old.
        screen.params.update(max_new_tokens=8, min_new_tokens=0)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.busy, 60, "the retry")
        assert len(screen.turns) == 2 and screen.main.last_job.widget is not stopped
        assert stopped not in screen.main.log.messages()
        assert screen.main.last_job.widget.done["new_tokens"] <= 8

        # Undo takes the last message back into the prompt box (not over a draft); clear empties the chat.
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert "holds a draft" in status(screen) and len(screen.turns) == 2
        await pilot.press("ctrl+u", "ctrl+z")
        await pilot.pause()
        assert screen.turns == ["How do I start a run?"] and screen.prompt.value == "Tell me everything."
        assert roles(screen.main).count("user") == 1
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert screen.turns == [] and screen.main.log.messages() == []
        assert screen.main.state == "ready"  # the model stays loaded

        # Esc with nothing to stop leaves the prompt box (screen keys work again); i comes back.
        await pilot.press("escape")
        await pilot.pause()
        assert app.focused is screen.main.log
        await pilot.press("i")
        await pilot.pause()
        assert app.focused is screen.prompt and screen.prompt.value == "Tell me everything."

        # Clear in the middle of a reply: the reply stops, the chat is empty, the next one works.
        await pilot.press("ctrl+u")
        screen.params.update(max_new_tokens=900, min_new_tokens=900)
        await say(pilot, screen, "Again, everything.", wait=False)
        await wait_until(pilot, lambda: screen.main.job is not None and screen.main.job.fragments > 0, 60, "tokens")
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not screen.busy and screen.turns == [] and screen.main.log.messages() == []
        screen.params.update(max_new_tokens=3, min_new_tokens=0)
        await say(pilot, screen, "hi")
        assert screen.turns == ["hi"] and screen.main.replies[0] is not None
        assert roles(screen.main) == ["user", "assistant"]

        procs = close_workers(screen)
        await load_from_dialog(pilot, app, screen, "Unload")
        assert screen.main.state == "empty" and "no model" in header(screen, screen.main)
        await unloaded(pilot, procs)


async def test_settings_dialog_and_save_as_a_training_record(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        screen.load("tiny")
        # Settings while the model loads: a bad value is refused with the rule, esc keeps the old ones.
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert isinstance(app.screen, ParamsDialog)
        await type_text(pilot, "You answer questions about finetui.")
        await pilot.press("down", "ctrl+a", "ctrl+k")
        await type_text(pilot, "6")
        await pilot.press("down", "ctrl+a", "ctrl+k")
        await type_text(pilot, "-1")
        await pilot.press("enter")
        await pilot.pause()
        assert "temperature: -1 must be a number >= 0" in text_of(app.screen.query_one("#error"))
        await pilot.press("ctrl+a", "ctrl+k", "0")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        assert screen.params["system"] == "You answer questions about finetui."
        assert screen.params["max_new_tokens"] == 6 and screen.params["temperature"] == 0
        assert "max 6" in status(screen) or "settings apply" in status(screen)

        await ready(pilot, screen)
        # Saving before anything was said: nothing to save.
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen) and "nothing to save" in status(screen)

        await say(pilot, screen, "What is finetui?")
        await say(pilot, screen, "And the Eval screen?")
        assert screen.messages_for(screen.main, 1)[0] == {"role": "system", "content": "You answer questions about finetui."}
        assert all(r["new_tokens"] <= 6 for r in (w.done for w in screen.main.log.messages() if w.done))

        # Save: a .json path is refused, a missing folder too; a .jsonl is appended to.
        target = tui_env / "work" / "my_records.jsonl"
        target.write_text('{"messages": [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "x"}]}')
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SaveRecordDialog)
        for bad, problem in (("records.json", "use a .jsonl file"), ("nowhere/records.jsonl", "no such folder")):
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, bad)
            await pilot.press("enter")
            await pilot.pause()
            assert problem in text_of(app.screen.query_one("#error"))
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "my_records.jsonl")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        assert any("appended a record of 5 messages" in n for n in notifications(app))
        lines = target.read_text().splitlines()
        assert len(lines) == 2  # the old last line had no newline: not glued onto
        record = json.loads(lines[1])
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        assert record["messages"][3]["content"] == "And the Eval screen?"
        assert record["messages"][4]["content"] == screen.main.replies[1]
        assert formats.detect([json.loads(line) for line in lines]) == "messages"
        conversation = formats.to_conversation(record, "messages")
        assert conversation.system == "You answer questions about finetui."
        procs = close_workers(screen)
    await asyncio.sleep(0)
    for proc in procs:  # leaving the app ends its workers
        proc.wait(timeout=30)


async def test_prompt_too_long_and_worker_killed_keep_the_conversation(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        screen.load("tiny")
        await ready(pilot, screen)
        screen.params.update(max_new_tokens=4)
        await say(pilot, screen, "What is finetui?")
        first_reply = screen.main.replies[0]

        # Longer than the 1024-token context: a clear message, the text back in the prompt box.
        long_prompt = "word " * 1500
        screen.prompt.value = long_prompt
        await pilot.press("enter")
        await wait_until(pilot, lambda: not screen.busy, 60, "the refusal")
        notes = [m.text for m in screen.main.log.messages() if m.role == "error"]
        assert any("context is 1024 tokens" in n for n in notes)
        assert screen.prompt.value == long_prompt and screen.turns == ["What is finetui?"]
        assert screen.main.replies == {0: first_reply} and screen.main.state == "ready"
        assert any("Prompt not sent" in n for n in notifications(app))

        # The worker is killed mid-reply: the partial reply stays, marked; the chat goes on.
        screen.prompt.value = ""
        screen.params.update(max_new_tokens=900, min_new_tokens=900)
        await say(pilot, screen, "Tell me everything.", wait=False)
        await wait_until(pilot, lambda: screen.main.job is not None and screen.main.job.fragments > 0, 60, "tokens")
        pid = screen.main.client.pid
        os.killpg(pid, signal.SIGKILL)
        await wait_until(pilot, lambda: not screen.busy, 30, "the crash to be noticed")
        broken = screen.main.last_job.widget
        assert broken.text and "killed by SIGKILL" in broken.problem
        assert screen.main.state == "crashed" and "worker stopped" in header(screen, screen.main)
        assert any("conversation is kept" in m.text for m in screen.main.log.messages() if m.role == "error")
        assert screen.turns == ["What is finetui?", "Tell me everything."]
        assert screen.main.replies[0] == first_reply and screen.main.replies[1] is None

        # Sending now says what to do; reload, and retry answers the interrupted message.
        await say(pilot, screen, "hello?", wait=False)
        assert "ctrl+o" in status(screen) and len(screen.turns) == 2
        await pilot.press("ctrl+u")
        screen.load("tiny")
        await ready(pilot, screen)
        screen.params.update(max_new_tokens=4, min_new_tokens=0)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.busy, 60, "the retry")
        assert screen.main.replies[1] is not None and screen.main.last_job.widget.done["new_tokens"] <= 4
        assert screen.messages_for(screen.main, 1)[-1] == {"role": "user", "content": "Tell me everything."}
        procs = close_workers(screen)
    for proc in procs:
        proc.wait(timeout=30)


async def test_models_that_cannot_load(tui_env, finetui_cache):
    (tui_env / "work" / "runs").mkdir()  # a runs folder beside: absolute model paths still load
    adapter = foreign_adapter(tui_env / "work" / "foreign-adapter")
    empty = tui_env / "work" / "not-a-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        # A path that does not exist never leaves the dialog.
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, LoadDialog), 20)
        await pilot.press("tab")
        await type_text(pilot, "./models/nowhere")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, LoadDialog)
        assert "./models/nowhere: no such folder" in text_of(app.screen.query_one("#error"))
        await pilot.press("escape")
        await pilot.pause()

        # An adapter that does not fit its base: the worker says so; the screen stays usable.
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, LoadDialog), 20)
        await pilot.press("tab")
        await type_text(pilot, str(adapter))
        await pilot.press("enter")
        await pilot.pause()
        await wait_until(pilot, lambda: screen.main.state != "loading", 120, "the adapter to fail")
        assert screen.main.state == "failed"
        assert "does not fit its base model" in screen.main.problem and "size mismatch" in screen.main.problem
        assert "could not load" in header(screen, screen.main)
        assert any("does not fit" in n for n in notifications(app))

        # A folder with a broken config.json: the worker's error, not a hang.
        screen.load(str(empty))
        await wait_until(pilot, lambda: screen.main.state != "loading", 120, "the folder to fail")
        assert screen.main.state == "failed" and screen.main.problem
        errors = [m.text for m in screen.main.log.messages() if m.role == "error"]
        assert len(errors) == 2 and errors[1].startswith("cannot load not-a-model")

        # And after all that, tiny loads and answers.
        screen.load("tiny")
        await ready(pilot, screen)
        screen.params.update(max_new_tokens=3)
        await say(pilot, screen, "hi")
        assert screen.main.replies[0] is not None
        procs = close_workers(screen)
    for proc in procs:
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------- a run


async def test_side_by_side_base_and_tuned_from_the_dashboard(tui_env, finetui_cache, trained_run):
    run_dir = copy_run(trained_run, tui_env / "runs")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        # What the dashboard's "chat with this run" does:
        app.chat_target = run_dir.name
        app.action_goto("chat")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen) and app.chat_target is None
        await ready(pilot, screen)
        assert screen.run_dir == run_dir.resolve()
        assert f"tuned · {run_dir.name} (adapter)" in header(screen, screen.main)

        # Side by side: the run's base in a second worker; the same prompt goes to both.
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert screen.compare and screen.base.state == "loading"
        await ready(pilot, screen, screen.base)
        assert header(screen, screen.base).startswith("● base · tiny")
        screen.params.update(max_new_tokens=12)
        await say(pilot, screen, "How do I start a run?")
        for pane in (screen.base, screen.main):
            assert roles(pane)[-2:] == ["user", "assistant"] and pane.replies[0] is not None
        base_view, main_view = screen.base.view.region, screen.main.view.region
        assert base_view.width >= 38 and main_view.width >= 38 and base_view.x < main_view.x  # two columns
        assert base_view.y == main_view.y
        for pane in (screen.base, screen.main):  # each pane its own history, short in a column
            assert history_shown(screen, pane).startswith("1 turn · ~")
        assert screen.base.client.base and not screen.main.client.base
        assert screen.base.client.pid != screen.main.client.pid

        # Narrow terminal: stacked, still both readable.
        await pilot.resize_terminal(60, 24)
        await pilot.pause()
        await pilot.pause()
        base_view, main_view = screen.base.view.region, screen.main.view.region
        assert base_view.width == main_view.width == 60 and base_view.y < main_view.y

        # Save the base side's conversation.
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SaveRecordDialog)
        app.screen.query_one("RadioSet").query("RadioButton")[1].value = True
        app.screen.query_one("#path").focus()
        await pilot.press("enter")
        await pilot.pause()
        record = json.loads((tui_env / "work" / "chat_records.jsonl").read_text())
        assert record["messages"][-1]["content"] == screen.base.replies[0]

        # Single-turn applies to both sides.
        await pilot.press("ctrl+n")
        await say(pilot, screen, "And the Eval screen?")
        for pane in (screen.base, screen.main):
            assert pane.last_job.messages == [{"role": "user", "content": "And the Eval screen?"}]
            assert history_shown(screen, pane) == "single-turn"

        # Loading another model closes the base pane and its worker.
        base_proc = screen.base.client.proc
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not screen.compare and screen.base.client is None
        base_proc.wait(timeout=30)
        procs = close_workers(screen)
    for proc in procs:
        proc.wait(timeout=30)


async def test_side_by_side_needs_a_run(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not screen.compare and "needs a run" in status(screen)


# ---------------------------------------------------------------------------- what is sent


def test_chat_history_without_textual():
    """finetui.tui.chathistory on its own: contexts per side, a restart, single-turn, the size."""
    history = ChatHistory()
    for text, reply in (("a?", "A."), ("b?", None), ("c?", "C.")):  # b: stopped with nothing
        turn = history.add(text)
        history.answered("main", turn, reply)
    assert history.context("main") == [0, 2]
    assert [m["content"] for m in history.messages("main", 2, "sys")] == ["sys", "a?", "A.", "c?"]
    assert str(history.size("main")) == "history 2 turns · 8 chars"

    # The worker's count, while the history is exactly that request plus its reply.
    sent = history.messages("main", 2)
    history.answered("main", 2, "C.", sent, tokens=40)
    assert str(history.size("main")) == "history 2 turns · ~40 tok"
    assert str(history.size("main", system="be brief")) == "history 2 turns · 8 chars"

    # Another model on main: its conversation starts with the next turn; base is untouched.
    assert history.restart("main") is True and history.restart("main") is False
    turn = history.add("d?")
    assert history.messages("main", turn) == [{"role": "user", "content": "d?"}]
    assert history.context("base", turn) == []  # base answered nothing
    assert str(history.size("main")) == "history 0 turns"
    history.answered("main", turn, "D.")
    assert history.record("main") == [{"role": "user", "content": "d?"}, {"role": "assistant", "content": "D."}]

    # Single-turn: every request alone; back to multi-turn starts afresh.
    history.set_single_turn(True)
    for text in ("e?", "f?"):
        turn = history.add(text)
        assert history.messages("main", turn) == [{"role": "user", "content": text}]
        history.answered("main", turn, text.upper())
    assert str(history.size("main")) == "single-turn"
    assert [m["content"] for m in history.record("main")] == ["f?", "F?"]
    history.set_single_turn(False)
    assert str(history.size("main")) == "history 0 turns"
    turn = history.add("g?")
    history.answered("main", turn, "G.")
    assert [m["content"] for m in history.messages("main", history.add("h?"))] == ["g?", "G.", "h?"]

    # Undo across a restart takes the turn back into the new conversation's place.
    history.pop()
    history.pop()
    assert history.side("main").start == len(history.turns) == 6
    history.clear()
    assert history.turns == [] and history.side("main").start == 0 and not history.single_turn


async def test_a_model_swap_starts_a_new_conversation(tui_env, finetui_cache, tiny_model_dir):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        assert history_shown(screen, screen.main) == "history 0 turns"
        await load_from_dialog(pilot, app, screen, "tiny")
        await ready(pilot, screen)
        screen.params.update(max_new_tokens=6)

        await say(pilot, screen, "hi")
        alone = screen.main.last_job.widget.done["prompt_tokens"]  # "hi" with nothing before it
        await say(pilot, screen, "What is finetui?")
        done = screen.main.last_job.widget.done
        assert done["prompt_tokens"] > alone  # the first exchange went along
        assert history_shown(screen, screen.main) == f"history 2 turns · ~{done['prompt_tokens'] + done['new_tokens']} tok"

        # Another model (the same weights from a folder: a different target) by keyboard.
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, LoadDialog), 20, "the load dialog")
        await pilot.press("tab")
        await type_text(pilot, str(tiny_model_dir))
        await pilot.press("enter")
        await pilot.pause()
        await ready(pilot, screen)
        assert screen.main.target == str(tiny_model_dir)
        assert history_shown(screen, screen.main) == "history 0 turns"
        rules = [m.text for m in screen.main.log.messages() if m.role == "rule"]
        assert rules == [f"── new conversation: {tiny_model_dir.name} ──"]
        assert roles(screen.main).count("user") == 2  # the old transcript stays on screen

        # The next request carries no earlier turn: the worker is given "hi" alone.
        await say(pilot, screen, "hi")
        assert screen.main.last_job.messages == [{"role": "user", "content": "hi"}]
        assert screen.main.last_job.widget.done["prompt_tokens"] == alone
        assert history_shown(screen, screen.main).startswith("history 1 turn · ~")
        await say(pilot, screen, "What is finetui?")
        assert [m["content"] for m in screen.main.last_job.messages][:1] == ["hi"]
        assert history_shown(screen, screen.main).startswith("history 2 turns")

        # Swap again, then ctrl+r: the last message asked again as the first of the new one.
        screen.load("tiny")
        await ready(pilot, screen)
        assert history_shown(screen, screen.main) == "history 0 turns"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.busy, 60, "the retry")
        assert screen.main.last_job.messages == [{"role": "user", "content": "What is finetui?"}]
        assert len(screen.turns) == 5 and history_shown(screen, screen.main).startswith("history 1 turn")

        # ctrl+l still empties everything.
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert history_shown(screen, screen.main) == "history 0 turns" and screen.main.log.messages() == []
        procs = close_workers(screen)
    for proc in procs:
        proc.wait(timeout=30)


async def test_single_turn_mode_by_key(tui_env, finetui_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, app)
        keys = {k.description: k.key_display for k in app.screen.query("FooterKey")}
        assert keys.get("Single-turn") == "^n"  # in the footer at 80x24
        screen.load("tiny")
        await ready(pilot, screen)
        screen.params.update(max_new_tokens=6)
        await say(pilot, screen, "hi")
        alone = screen.main.last_job.widget.done["prompt_tokens"]
        await say(pilot, screen, "What is finetui?")
        assert history_shown(screen, screen.main).startswith("history 2 turns")

        # ctrl+n from the prompt box: single-turn; each message goes alone.
        assert app.focused is screen.prompt
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert history_shown(screen, screen.main) == "single-turn"
        assert any(m.role == "rule" and "single-turn" in m.text for m in screen.main.log.messages())
        for _ in range(2):
            await say(pilot, screen, "hi")
            assert screen.main.last_job.messages == [{"role": "user", "content": "hi"}]
            assert screen.main.last_job.widget.done["prompt_tokens"] == alone
            assert history_shown(screen, screen.main) == "single-turn"

        # The same key: multi-turn again, from a new conversation.
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert history_shown(screen, screen.main) == "history 0 turns"
        await say(pilot, screen, "hi")
        assert screen.main.last_job.widget.done["prompt_tokens"] == alone
        await say(pilot, screen, "hi")
        assert len(screen.main.last_job.messages) == 3 and screen.main.last_job.widget.done["prompt_tokens"] > alone
        assert history_shown(screen, screen.main).startswith("history 2 turns")
        procs = close_workers(screen)
    for proc in procs:
        proc.wait(timeout=30)
