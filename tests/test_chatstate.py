"""finetui.tui.chatstate without Textual or a worker: a conversation per pane, single-turn mode, a
model swap that starts a new conversation, the generation settings' rules, what a finished
reply leaves in the history, and a conversation saved as a training record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetui.tui.chatstate import (
    DEFAULT_PARAMS, ChatSession, ModelPane, generation_request, model_title, params_summary, parse_params,
    reply_outcome,
)

RAW = {"system": "be brief", "max_new_tokens": "64", "temperature": "0.7", "top_p": "0.9", "top_k": "40",
       "repetition_penalty": "1.1", "seed": ""}


def loaded(session: ChatSession, pane: ModelPane, target: str = "tiny", run_dir: Path | None = None) -> bool:
    """A model in a pane as the screen does it: start a worker (a stand-in: nothing runs),
    a new conversation on a swap, then the worker's ready."""
    swap = pane.start(object(), target, session.run_dir)
    if swap:
        session.history.restart(pane.side)
    if pane.side == "main":
        session.run_dir = run_dir
    pane.ready({"model": {"params": 1_500_000, "device": "cpu", "context": 1024}, "load_s": 0.5}, run_dir)
    return swap


def exchange(session: ChatSession, text: str, replies: dict[str, str | None]) -> int:
    """One turn asked of every pane on screen, each answering with ``replies[side]``."""
    turn = session.history.add(text)
    for pane in session.panes:
        job, _params = session.ask(pane, turn, widget=None)
        reply = replies[pane.side]
        done = {"text": reply or "", "new_tokens": 3, "stop_reason": "eos" if reply is not None else "cancelled"}
        session.answered(pane, job, done, shown="")
    return turn


def test_each_pane_keeps_its_own_conversation():
    session = ChatSession()
    assert session.not_ready() == "no model loaded: ctrl+o loads one (a run's result, tiny, or a folder)"
    loaded(session, session.main, "runs/r1/adapter", run_dir=Path("runs/r1"))
    assert session.not_ready() is None and session.label(session.main) == "tuned"
    exchange(session, "a?", {"main": "A."})
    # The base model joins: its conversation starts at the next turn.
    session.compare = True
    session.history.restart("base")
    loaded(session, session.base, "runs/r1")
    assert session.panes == [session.base, session.main] and session.label(session.base) == "base"
    turn = exchange(session, "b?", {"main": "B.", "base": "base B."})
    assert [m["content"] for m in session.messages_for(session.main, turn)] == ["a?", "A.", "b?"]
    assert [m["content"] for m in session.messages_for(session.base, turn)] == ["b?"]
    assert session.main.replies == {0: "A.", 1: "B."} and session.base.replies == {1: "base B."}
    nxt = session.history.add("c?")
    assert [m["content"] for m in session.messages_for(session.base, nxt)] == ["b?", "base B.", "c?"]


def test_single_turn_sends_each_message_alone():
    session = ChatSession()
    loaded(session, session.main)
    session.params["system"] = "sys"
    exchange(session, "a?", {"main": "A."})
    session.history.set_single_turn(True)
    for text in ("b?", "c?"):
        turn = exchange(session, text, {"main": text.upper()})
        assert session.main.last_job.messages == [{"role": "system", "content": "sys"},
                                                  {"role": "user", "content": text}]
    assert [m["content"] for m in session.record_messages(session.main)] == ["sys", "c?", "C?"]
    assert str(session.history.size("main")) == "single-turn"
    assert turn == 2


def test_a_model_swap_starts_a_new_conversation_and_the_same_model_keeps_it():
    session = ChatSession()
    assert loaded(session, session.main, "tiny") is True
    exchange(session, "a?", {"main": "A."})
    # The same model again (after a crash or an unload) keeps the conversation.
    assert loaded(session, session.main, "tiny") is False
    turn = session.history.add("b?")
    assert [m["content"] for m in session.messages_for(session.main, turn)] == ["a?", "A.", "b?"]
    session.history.pop()
    # Another model: nothing said before is sent to it.
    assert loaded(session, session.main, "/models/other") is True
    turn = session.history.add("b?")
    assert session.messages_for(session.main, turn) == [{"role": "user", "content": "b?"}]
    assert session.main.first_turn == 1 and session.turns == ["a?", "b?"]


def test_generation_settings_rules():
    params, problem = parse_params(RAW)
    assert problem is None
    assert params == {"system": "be brief", "max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                      "repetition_penalty": 1.1, "seed": None}
    for key, value, problem in (
        ("temperature", "-1", "temperature: -1 must be a number >= 0 (0 = greedy)"),
        ("max_new_tokens", "0", "max_new_tokens: 0 must be an integer >= 1"),
        ("max_new_tokens", "2.5", "max_new_tokens: 2.5 is not an integer >= 1"),
        ("top_p", "1.5", "top_p: 1.5 must be a number in (0, 1]"),
        ("top_p", "0", "top_p: 0 must be a number in (0, 1]"),
        ("top_k", "", "top_k: (empty) is not an integer >= 0 (0 = off)"),
        ("repetition_penalty", "0", "repetition_penalty: 0 must be a number > 0 (1 = off)"),
        ("seed", "x", "seed: x is not an integer, or empty for none"),
    ):
        assert parse_params({**RAW, key: value})[1] == problem, key
    assert parse_params({**RAW, "seed": " 7 "})[0]["seed"] == 7


def test_what_a_request_carries_and_the_status_line_says():
    params = dict(DEFAULT_PARAMS)
    assert generation_request(params) == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                                          "repetition_penalty": 1.0, "min_new_tokens": 0}
    assert params_summary(params) == ("max 256 · greedy · top-p 1 · top-k off · rep 1", "")
    params.update(temperature=0.7, top_k=40, seed=3, system="  be\n brief ")
    assert generation_request(params)["seed"] == 3 and "system" not in generation_request(params)
    assert params_summary(params) == ("max 256 · temp 0.7 · top-p 1 · top-k 40 · rep 1 · seed 3", "be brief")


def test_a_finished_reply():
    assert reply_outcome({"text": "Hi.", "new_tokens": 2, "prompt_tokens": 10, "tokens_per_s": 99.6,
                          "stop_reason": "length"}, "") == ("Hi.", "2 tok · 100 tok/s · max tokens", "Hi.", 12)
    # stopped before its first token: nothing the next request could carry
    assert reply_outcome({"text": "", "new_tokens": 0, "stop_reason": "cancelled"}, "") == ("", "0 tok · stopped",
                                                                                          None, None)
    assert reply_outcome({}, "shown so far")[0] == "shown so far"


def test_a_prompt_every_pane_refused_goes_back():
    session = ChatSession()
    loaded(session, session.main)
    exchange(session, "a?", {"main": "A."})
    turn = session.history.add("x" * 5000)
    job, _ = session.ask(session.main, turn, widget=None)
    assert not session.unanswerable(turn) or session.main.busy  # still answering
    session.failed(session.main, job, "input")
    assert session.unanswerable(turn) and not session.unanswerable(0)
    assert session.main.replies == {0: "A.", 1: None}


def test_titles_headers_and_refusals(tmp_path):
    run = tmp_path / "r1"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny\n")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert model_title(str(run / "adapter"), False, None) == "r1 (base + adapter)"
    assert model_title(str(run), True, run) == "base model of r1"
    assert model_title("tiny", False, None) == "tiny"
    session = ChatSession()
    loaded(session, session.main)
    assert session.main.details() == ["tiny", "1.5M params", "cpu", "ctx 1024"]
    assert session.side_by_side_problem() == ("side by side needs a run's model: ctrl+o loads one "
                                              "(base vs tuned of that run)")
    session.main.state, session.main.title = "crashed", "tiny"
    assert session.not_ready() == "tiny is not loaded (crashed): ctrl+o loads a model"
    assert session.retry_turn() == (None, "nothing to retry yet")


def test_save_as_a_training_record(tmp_path):
    session = ChatSession()
    assert session.save_choice() == ([], "")
    loaded(session, session.main)
    session.params["system"] = "sys"
    exchange(session, "a?", {"main": "A."})
    exchange(session, "b?", {"main": None})  # stopped: not in the record
    sides, summary = session.save_choice()
    assert sides == [("main", "tiny replies")]
    assert summary.startswith("1 exchange + the system prompt · appended as one line")
    out = tmp_path / "records.jsonl"
    out.write_text('{"messages": []}')  # no newline at its end
    assert session.append_record(out, "main") == (None, 3)
    lines = out.read_text().splitlines()
    assert json.loads(lines[1]) == {"messages": [{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": "a?"},
                                                 {"role": "assistant", "content": "A."}]}
    assert session.record_path == str(out)
    assert session.append_record(tmp_path / "r.json", "main") == ("r.json: records are JSON lines, use a .jsonl file", 0)
    assert session.append_record(tmp_path / "no" / "r.jsonl", "main")[0] == f"{tmp_path / 'no'}: no such folder"

class FakeClient:
    """Stands in for a ChatClient: whether its worker process still runs."""

    def __init__(self, alive: bool = True) -> None:
        self.alive = alive


def test_what_send_undo_and_single_turn_refuse_or_do():
    session = ChatSession()
    assert session.send_problem("  ") == "empty prompt: type a message first"
    assert session.send_problem("hi") == "no model loaded: ctrl+o loads one (a run's result, tiny, or a folder)"
    assert session.undo_problem("") == "nothing to undo"
    loaded(session, session.main)
    assert session.send_problem("hi") is None
    turn = session.history.add("a?")
    job, _ = session.ask(session.main, turn, widget=None)
    assert session.send_problem("b?") == "a reply is still coming: esc stops it, then send"
    assert session.undo_problem("") == "a reply is still coming: esc stops it first"
    session.answered(session.main, job, {"text": "A.", "new_tokens": 1, "stop_reason": "eos"}, shown="")
    assert session.undo_problem("draft").startswith("the prompt box holds a draft")
    assert session.undo_problem("") is None
    assert session.toggle_single_turn() == ("single-turn: each message is sent alone",
                                            "single-turn: each message goes without the earlier ones")
    assert session.history.single_turn
    assert session.toggle_single_turn()[0] == "multi-turn: a new conversation" and not session.history.single_turn


def test_what_a_failed_reply_leads_to():
    session = ChatSession()
    loaded(session, session.main)
    session.main.client = FakeClient()
    outcomes = []
    for kind in ("error", "closed", "crashed", "input"):
        turn = session.history.add(f"{kind}?")
        job, _ = session.ask(session.main, turn, widget=None)
        outcomes.append(session.reply_failed(session.main, job, kind))
        assert session.main.job is None and session.main.last_job is job
    assert outcomes == ["error", "closed", "died", "give_back"]  # one pane refused the last prompt: it goes back
    session.main.client = FakeClient(alive=False)
    job, _ = session.ask(session.main, session.history.add("x?"), widget=None)
    assert session.reply_failed(session.main, job, "internal") == "died"  # the worker is gone
    session.compare = True
    loaded(session, session.base, "runs/r1")
    turn = session.history.add("long")
    jobs = {pane.side: session.ask(pane, turn, widget=None)[0] for pane in session.panes}
    assert session.reply_failed(session.main, jobs["main"], "input") == "not_sent"  # the base still answers
    assert session.reply_failed(session.base, jobs["base"], "input") == "give_back"


def test_a_pane_that_fails_to_load_or_loses_its_worker():
    session = ChatSession()
    pane = session.main
    pane.start(FakeClient(), "runs/r9", None)
    assert pane.load_failed("no run 'r9' in runs/") == "cannot load runs/r9: no run 'r9' in runs/"
    assert (pane.client, pane.state, pane.problem) == (None, "failed", "no run 'r9' in runs/")
    client = FakeClient()
    loaded(session, pane)
    pane.client = client
    gone, note = pane.worker_died("exit status -9")
    assert gone is client and pane.client is None and (pane.state, pane.problem) == ("crashed", "exit status -9")
    assert note.startswith("the chat worker stopped: exit status -9. The conversation is kept")


def test_the_status_line_says_who_replies_or_the_settings():
    from rich.text import Text

    from finetui.tui.widgets.chatpane import status_line

    session = ChatSession()
    assert status_line(session, None, 0).plain == ("max 256 · greedy · top-p 1 · top-k off · rep 1 · system: (none)"
                                                  "  ^t edit")
    assert status_line(session, Text("refused"), 0).plain == "refused"
    loaded(session, session.main)
    session.ask(session.main, session.history.add("a?"), widget=None)
    assert status_line(session, None, 1).plain.startswith("⠙ tiny replying 0.")
    assert status_line(session, None, 1).plain.endswith("s · esc stops")



@pytest.mark.parametrize("module", ["finetui.tui.chatstate", "finetui.tui.chatdriver", "finetui.tui.evalstate", "finetui.tui.chathistory",
                                    "finetui.tui.dashstate"])
def test_no_textual_or_torch(module):
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = {{m.split('.')[0] for m in sys.modules}} & {{'textual', 'torch'}}; "
            "print(sorted(bad), file=sys.stderr); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_retry_asks_the_panes_of_that_turn_and_clear_cancels_what_is_in_flight():
    session = ChatSession()
    loaded(session, session.main, "runs/r1/adapter", run_dir=Path("runs/r1"))
    first = exchange(session, "a?", {"main": "A."})
    session.compare = True
    session.history.restart("base")
    loaded(session, session.base, "runs/r1")
    second = exchange(session, "b?", {"main": "B.", "base": "base B."})
    assert session.retry_panes(first) == [session.main]  # the base pane joined after it
    assert session.retry_panes(second) == [session.base, session.main]
    session.history.set_single_turn(True)  # a new conversation from here on
    assert session.retry_panes(second) is None
    job, _ = session.ask(session.main, session.history.add("c?"), widget=None)
    session.clear()
    assert job.cancelled and session.main.job is None and not session.busy and session.turns == []


def test_the_base_joining_and_leaving_and_an_unload():
    session = ChatSession()
    assert session.unloaded() is None
    loaded(session, session.main, "runs/r1/adapter", run_dir=Path("runs/r1"))
    assert session.set_compare(True) is None and session.panes == [session.base, session.main]
    session.set_compare(False)
    exchange(session, "a?", {"main": "A."})
    assert session.set_compare(True) == "the base model answers from here on; earlier turns are not in its context"
    assert session.base.first_turn == 1  # its conversation starts at the next turn
    loaded(session, session.base, "runs/r1")
    session.ask(session.base, session.history.add("b?"), widget=None)
    assert session.set_compare(False) is None
    assert (session.base.state, session.base.job, session.panes) == ("empty", None, [session.main])
    assert session.unloaded() == "unloaded runs/r1/adapter (its worker ended; memory freed)"
    assert (session.main.state, session.main.info, session.run_dir) == ("empty", {}, None)
