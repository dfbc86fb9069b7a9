"""finetui.tui.chatdriver without Textual, on real tiny-model chat workers: a load that
reports its stages then ready, replies streamed into their job and recorded in the history,
a stopped reply, a prompt every pane refuses going back, a worker killed mid-reply, a load
that fails, a load answered after its pane let go of it, and the load dialog's choices.

A queue stands in for the UI thread (the driver's threads post to it, the test runs what
they posted) and a recorder for the screen (what it would show)."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest

from finetui.tui.chatdriver import ChatDriver
from finetui.tui.chatstate import TINY, ChatSession


class Loop:
    """The UI thread: what the driver's threads post runs here, when the test waits."""

    def __init__(self) -> None:
        self.posted: queue.Queue = queue.Queue()

    def post(self, fn, *args) -> None:
        self.posted.put((fn, args))

    def until(self, condition, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                fn, args = self.posted.get(timeout=0.05)
            except queue.Empty:
                continue
            fn(*args)


class Shown:
    """A ChatView that writes down what it is told, as the screen would show it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.text: dict[int, str] = {}  # a reply's streamed text, by turn

    def stage_changed(self, pane) -> None:
        self.events.append(("stage", pane.side, pane.stage))

    def model_loaded(self, pane, note) -> None:
        self.events.append(("loaded", pane.side, note))

    def model_failed(self, pane, note, message) -> None:
        self.events.append(("failed", pane.side, note, message))

    def flush_reply(self, job) -> None:
        self.text[job.turn] = self.text.get(job.turn, "") + job.take()

    def reply_answered(self, pane, job, text, stats, done) -> None:
        self.events.append(("answered", pane.side, job.turn, text, stats))

    def reply_failed(self, pane, job, then, message, note, given_back) -> None:
        self.events.append(("reply failed", pane.side, job.turn, then, message, note, given_back))

    def last(self, kind: str) -> tuple:
        return [e for e in self.events if e[0] == kind][-1]


@pytest.fixture
def driven(finetui_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    chat, shown, loop = ChatSession(), Shown(), Loop()
    driver = ChatDriver(chat, shown, post=loop.post)
    yield chat, shown, loop, driver
    procs = [p.client.proc for p in (chat.main, chat.base) if p.client is not None and p.client.proc]
    for pane in (chat.main, chat.base):
        driver.close(pane.release())
    for proc in procs:
        proc.wait(timeout=30)


def ask(chat: ChatSession, loop: Loop, driver: ChatDriver, text: str, wait: bool = True):
    turn = chat.history.add(text)
    job = driver.ask(chat.main, turn, widget=None)
    if wait:
        loop.until(lambda: chat.main.job is None, 120, "the reply")
    return turn, job


def test_load_reply_stop_refusal_and_a_killed_worker(driven):
    chat, shown, loop, driver = driven
    main = chat.main
    assert driver.load(main, "tiny") is False  # no earlier turns: no separator
    assert main.state == "loading" and main.client is not None
    loop.until(lambda: main.state != "loading", 180, "tiny to load")
    assert main.state == "ready", main.problem
    stages = [e[2] for e in shown.events if e[0] == "stage"]
    assert stages and all(stages)  # the worker's loading messages, in the header as they come
    assert shown.last("loaded")[2].startswith("loaded tiny in ") and main.info["context"] == 1024
    assert chat.run_dir is None  # tiny is no run

    # A reply: streamed into its job, what was shown is what the history keeps.
    chat.params.update(max_new_tokens=6)
    turn, job = ask(chat, loop, driver, "What is finetui?")
    _, side, answered_turn, text, stats = shown.last("answered")
    assert (side, answered_turn) == ("main", turn) and text and stats.startswith(f"{job.gen.done['new_tokens']} tok")
    assert main.replies[turn] == text == shown.text[turn] == job.gen.done["text"]
    turn2, job2 = ask(chat, loop, driver, "And then?")
    assert [m["content"] for m in job2.messages] == ["What is finetui?", text, "And then?"]

    # Stopped after its first tokens: the reply says so, what came is kept.
    chat.params.update(max_new_tokens=900, min_new_tokens=900)
    turn3, job3 = ask(chat, loop, driver, "Tell me everything.", wait=False)
    loop.until(lambda: job3.fragments > 0, 60, "tokens")
    job3.cancel()
    loop.until(lambda: main.job is None, 60, "the stop")
    assert "stopped" in shown.last("answered")[4]
    assert main.replies[turn3] == shown.text[turn3] and 0 < job3.gen.done["new_tokens"] < 900

    # Longer than the context: not sent, taken off the history, given back.
    chat.params.update(max_new_tokens=4, min_new_tokens=0)
    long_prompt = "word " * 1500
    turn4, _ = ask(chat, loop, driver, long_prompt)
    _, _, failed_turn, then, message, _, given_back = shown.last("reply failed")
    assert (failed_turn, then) == (turn4, "give_back") and "context is 1024 tokens" in message
    assert given_back == (long_prompt, [main])
    assert len(chat.turns) == 3 and main.state == "ready"

    # The worker killed mid-reply: the pane says so, its client is let go and ended.
    chat.params.update(max_new_tokens=900, min_new_tokens=900)
    turn5, job5 = ask(chat, loop, driver, "Once more.", wait=False)
    loop.until(lambda: job5.fragments > 0, 60, "tokens")
    proc = main.client.proc
    os.killpg(main.client.pid, signal.SIGKILL)
    loop.until(lambda: main.job is None, 30, "the crash to be noticed")
    _, _, _, then, message, note, _ = shown.last("reply failed")
    assert then == "died" and "killed by SIGKILL" in message and "conversation is kept" in note
    assert main.state == "crashed" and main.client is None and main.replies[turn5] is None
    proc.wait(timeout=30)

    # The same model again keeps the conversation; unloading ends its worker.
    assert driver.load(main, "tiny") is False
    loop.until(lambda: main.state != "loading", 180, "tiny to load again")
    assert main.state == "ready"
    proc = main.client.proc
    assert driver.unload().startswith("unloaded tiny") and main.state == "empty" and main.client is None
    assert proc.wait(timeout=30) is not None


def test_a_failed_load_a_load_let_go_of_and_the_choices(driven, tmp_path):
    chat, shown, loop, driver = driven
    main = chat.main
    empty = tmp_path / "empty"
    empty.mkdir()
    chat.run_dir = tmp_path  # what an earlier run's model left
    driver.load(main, str(empty))
    loop.until(lambda: main.state != "loading", 180, "the folder to fail")
    assert main.state == "failed" and main.client is None and main.problem
    assert shown.last("failed")[1:] == ("main", f"cannot load empty: {main.problem}", main.problem)
    assert chat.run_dir is None

    # The pane lets go of a worker still loading (replaced meanwhile): once ready it is ended.
    chat.history.add("earlier")
    assert driver.load(main, "tiny") is True  # another model after turns: a new conversation
    assert main.first_turn == 1  # "earlier" is not in its conversation
    client = main.client
    main.release()
    loop.until(lambda: client.proc is not None and client.proc.poll() is not None, 60, "the worker to end")
    assert [e for e in shown.events if e[0] == "loaded"] == []

    got: list = []
    driver.choices(lambda items, problem: got.append((items, problem)))
    loop.until(lambda: got, 30, "the choices")
    assert got == [([TINY], "")]
