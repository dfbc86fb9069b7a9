"""What crosses between `finetui data inspect`'s reader and its render workers
(engine/data/inspection.py: _pack / _unpack, _pack_results / _unpack_results): compact for
plain conversations and one-example results, exactly what the reader made and the worker
counted; and a realistic file renders in workers to the same report, places included."""

from __future__ import annotations

import json

from finetui.engine.data import inspection
from finetui.engine.data.conversation import Conversation, Message


def _convs():
    return [
        Conversation(messages=[Message("user", "q"), Message("assistant", "a")]),
        Conversation(messages=[Message("user", "q"), Message("assistant", "a"), Message("user", "q2"),
                               Message("assistant", "a2")], system="be brief"),
        Conversation(messages=[Message("user", "q"), Message("assistant", "")], system=""),
        # not plain: cross as they are
        Conversation(messages=[Message("user", "q"), Message("assistant", "a", train=False),
                               Message("user", "q2"), Message("assistant", "a2")]),
        Conversation(messages=[Message("user", "q"), Message("assistant", "", tool_calls=[
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}]), Message("tool", "1"),
                               Message("assistant", "one")]),
        Conversation(messages=[Message("user", "q"), Message("assistant", "a")], tools=[{"name": "f"}]),
        Conversation(kind="text", text="raw text"),
        Conversation(kind="preference", messages=[Message("user", "q"), Message("assistant", "good")],
                     rejected=Message("assistant", "bad")),
        Conversation(messages=[Message("user", "q"), Message("assistant", "a")], repairs=[("x", "dropped")]),
    ]


def test_plain_conversations_cross_as_tuples_and_come_back_equal():
    convs = _convs()
    packed = inspection._pack(convs)
    assert [type(p) is tuple for p in packed] == [True, True, True] + [False] * 6
    assert packed[1] == ("be brief", "user", "q", "assistant", "a", "user", "q2", "assistant", "a2")
    assert inspection._unpack(packed) == convs


def test_results_cross_flat_and_come_back_equal():
    results = [
        (None, (120, 120, False, False, [(40, 120, False, (), True)])),
        (None, (700, 512, False, True, [(512, 512, True, (), False)])),
        (None, (90, 90, False, False, [(0, 90, False, ("template ignores tools",), False)])),
        (None, (1500, 1500, True, True, [(512, 512, False, (), True), (512, 512, False, (), True),
                                          (476, 476, False, (), True)])),
        ("the conversation does not render", None),
    ]
    packed = inspection._pack_results(results)
    assert [len(p) for p in packed] == [7, 7, 2, 2, 2]
    assert inspection._unpack_results(packed) == results


def test_a_file_with_bad_lines_inside_a_workers_share_reports_as_one_process_does(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lines = []
    for i in range(3000):  # 12 batches of 256: the first two here, the rest in workers
        if i in (900, 1777):
            lines.append('{"instruction": "cut off", "output": ')  # not JSON
        elif i in (1000, 2500):
            lines.append(json.dumps({"instruction": f"no reply {i}", "output": ""}))  # invalid record
        elif i % 97 == 0:
            lines.append(json.dumps({"conversations": [{"from": "human", "value": f"q {i}"},
                                                       {"from": "gpt", "value": "a " * (i % 600)}],
                                     "system": "short"}))
        else:
            lines.append(json.dumps({"instruction": f"task {i}", "input": "x" * (i % 7),
                                     "output": "word " * (i % 300), "extra": i}))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    one = inspection.inspect(str(path), tokenizer=tok, num_proc=1, progress=False, max_length=256, example=2222)
    two = inspection.inspect(str(path), tokenizer=tok, num_proc=2, progress=False, max_length=256, example=2222)
    assert one == two
    assert one["counts"]["records"] == 3000 and one["counts"]["invalid"] >= 4
    issues = "\n".join(one["issues"])
    for line in (901, 1778, 1001, 2501):
        assert f"mixed.jsonl:{line}" in issues, issues
    assert one["counts"]["truncated"] > 0
