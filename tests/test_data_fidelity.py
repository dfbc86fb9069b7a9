"""Every record is trained as its author meant it, or the user is told why not.

Realistic files in ``tests/data/fidelity`` (see tests/data/SOURCES.md), read, normalised and
rendered with the tiny model's tokenizer exactly as training does:

- content parts: OpenAI chat exports (``{"type": "text", "text"}``, ``weight: 0``) and
  LLaMA-Factory v1 messages (``{"type": "text", "value"}``, ``loss_weight``) are joined and
  their per-message training flag honoured; only non-text parts are refused, by row and type;
- preference data: KTO rows labelled false are skipped and counted, chosen/rejected pairs
  train the chosen reply only, and ``finetui data inspect`` and the trainer's report say so;
- one empty turn drops its exchange, not the whole conversation, and is counted.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from finetui.engine.data import render
from finetui.engine.data.inspection import inspect, print_report
from finetui.engine.data.readers import load_records
from render_helpers import trained_runs

DATA = Path(__file__).resolve().parent / "data" / "fidelity"
TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def template_for(tokenizer, name: str):
    """chatml: finetui's, with {% generation %} markers; llama3_1: the real Llama 3.1
    template, no markers (masks come from rendering prefixes)."""
    spec = name if name == "chatml" else str(TEMPLATES / f"{name}.jinja")
    template = render.resolve_template(tokenizer, spec)
    render.prepare_tokenizer(tokenizer, template)
    return template




def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


# ------------------------------------------------------------------- content parts


@pytest.mark.parametrize("template", ["chatml", "llama3_1"])
def test_llamafactory_v1_parts_are_joined_and_loss_weight_0_is_not_trained(tokenizer, template):
    path = DATA / "llamafactory_v1_sft.jsonl"
    result = load_records(path)
    assert result.format == "messages"
    assert result.counts == {"ok": 4, "invalid": 1}
    # the only refusal names the row and the part type
    image_line = line_of(path, "image_url")
    assert [str(i) for i in result.issues] == [
        f"{path}:{image_line}: field 'messages[0].content[1]': image_url parts are not supported: "
        "finetui trains on text (remove the image_url parts or the record)"
    ]
    convs = [conv for _, conv in result.conversations]
    assert convs[0].system == "You are a helpful assistant."
    assert convs[2].messages[0].content == "List three prime numbers.\nAnswer with digits only."
    # LLaMA-Factory v1 tool_call parts become tool calls, its tools part the tool list
    tool = convs[3]
    assert tool.tools and tool.tools[0]["function"]["name"] == "multiply"
    assert tool.messages[1].tool_calls == [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 6, "b": 8}}}
    ]

    tmpl = template_for(tokenizer, template)
    end = "<|im_end|>" if template == "chatml" else "<|eot_id|>"
    # two turns, the first with loss_weight 0: rendered as context, only the second trained
    hamlet = render.render(convs[1], tokenizer, tmpl, max_length=4096)
    assert "A prince avenges his father and everyone dies." in hamlet.text
    assert trained_runs(tokenizer, hamlet) == [
        "A Danish prince learns his uncle murdered his father and sets out to prove it." + end
    ]
    assert [hamlet.text[a:b] for a, b in hamlet.trained_spans] == trained_runs(tokenizer, hamlet)
    first = render.render(convs[0], tokenizer, tmpl, max_length=4096)
    assert trained_runs(tokenizer, first) == ["I am an AI assistant." + end]


def test_openai_export_parts_joined_weight_0_context_audio_refused(tokenizer):
    path = DATA / "openai_chat_export.jsonl"
    result = load_records(path)
    assert result.counts == {"ok": 3, "invalid": 1}
    issue = result.issues[0]
    assert issue.line == line_of(path, "input_audio") and issue.field == "messages[1].content[1]"
    assert "input_audio parts are not supported" in str(issue)
    convs = [conv for _, conv in result.conversations]
    assert convs[1].messages[0].content == "Who wrote 'Romeo and Juliet'?\nJust the name, please."
    assert convs[2].messages[1].content == (
        "Around 384,400 kilometers.\nGive or take a few, like that really matters."
    )
    tmpl = template_for(tokenizer, "chatml")
    ex = render.render(convs[0], tokenizer, tmpl, max_length=4096)
    assert trained_runs(tokenizer, ex) == [
        "It has been the seat of government since the 10th century. Riveting stuff.<|im_end|>"
    ]
    assert "Paris, as if everyone doesn't know that already." in ex.text


# ----------------------------------------------------------------- preference data


def test_kto_rows_labelled_false_are_skipped_with_a_counted_reason():
    path = DATA / "kto_trl.jsonl"
    result = load_records(path)
    assert result.counts == {"ok": 4, "invalid": 0, "skipped": 3}
    trained = [conv.messages[-1].content for _, conv in result.conversations]
    assert trained == [" blue.", "144.", "The platypus.", "Danke."]
    assert [issue.line for issue in result.skips] == [2, 4, 6]
    assert str(result.skips[0]) == (
        f"{path}:2: field 'label': undesirable reply (KTO label false): not trained, SFT learns from "
        "desirable replies only"
    )
    assert result.notes() == [
        "3 of 7 records skipped: undesirable reply (KTO label false): not trained, SFT learns from "
        "desirable replies only"
    ]


def test_kto_conversational_and_llamafactory_kto_tag():
    result = load_records(DATA / "kto_trl_conversational.jsonl")
    assert result.counts == {"ok": 2, "invalid": 0, "skipped": 1}
    convs = [conv for _, conv in result.conversations]
    assert [m.content for m in convs[0].messages] == ["What color is the sky?", "It is blue."]
    assert convs[1].system == "Answer briefly." and convs[1].messages[-1].content == "Rome."

    # LLaMA-Factory's kto_en_demo layout: sharegpt + columns {kto_tag: label}
    result = load_records("kto_demo", dataset_dir=DATA / "llamafactory_kto")
    assert result.counts == {"ok": 2, "invalid": 0, "skipped": 1}
    assert [conv.messages[-1].content for _, conv in result.conversations] == ["Joyful.", "Eight."]


def test_preference_pairs_train_only_the_chosen_reply_and_inspect_says_so(tokenizer):
    path = DATA / "dpo_pairs.jsonl"
    result = inspect(str(path), tokenizer=tokenizer, template="chatml", max_length=4096)
    assert result["counts"]["ok"] == 3 and result["counts"]["invalid"] == 0
    assert "3 of 3 records are preference pairs: SFT trains the chosen reply; the rejected reply is not trained" in (
        result["data_notes"]
    )
    loaded = load_records(path)
    tmpl = template_for(tokenizer, "chatml")
    replies = []
    for (_, conv), raw in zip(loaded.conversations, map(json.loads, path.read_text().splitlines())):
        ex = render.render(conv, tokenizer, tmpl, max_length=4096)
        replies.append(trained_runs(tokenizer, ex))
        assert conv.rejected.content not in ex.text  # the rejected reply is not even in the input
    assert replies[0] == ["Put the egg in boiling water for 9 minutes, then cool it in cold water.<|im_end|>"]
    assert replies[1] == ["No. Even briefly it can damage your retina; use certified eclipse glasses.<|im_end|>"]
    # an HH-RLHF transcript: the shared turns are the prompt (their reply trains too), the
    # last reply is the chosen one
    hh = loaded.conversations[2][1]
    assert [m.role for m in hh.messages] == ["user", "assistant", "user", "assistant"]
    assert hh.messages[-1].content == "About 30 seconds each, without bouncing."
    assert hh.rejected.content == "Stretching is a waste of time."
    assert replies[2][-1] == "About 30 seconds each, without bouncing.<|im_end|>"

    out = io.StringIO()
    print_report(result, file=out)
    assert "not trained as written" in out.getvalue()
    assert "the rejected reply is not trained" in out.getvalue()


def test_inspect_and_the_trainer_report_say_what_is_skipped(tokenizer, tmp_path, monkeypatch):
    path = DATA / "kto_trl.jsonl"
    result = inspect(str(path), tokenizer=tokenizer, template="chatml")
    c = result["counts"]
    assert (c["records"], c["ok"], c["invalid"], c["skipped"]) == (7, 4, 0, 3)
    assert result["skipped"][0].startswith(f"{path}:2: field 'label': undesirable reply (KTO label false)")
    out = io.StringIO()
    print_report(result, file=out)
    text = out.getvalue()
    assert "records   7: 4 ok, 0 invalid, 3 skipped," in text
    assert "3 of 7 records skipped: undesirable reply (KTO label false)" in text
    assert f"skipped: {path}:2: field 'label'" in text

    from finetui.engine.config import Config
    from finetui.engine.data import dataset

    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    config = Config()
    config.data.path = str(path)
    config.data.test_size = 0
    report = dataset.build(config, tokenizer).report
    assert report.counts["records"] == 7 and report.counts["skipped"] == 3 and report.counts["ok"] == 4
    assert any(w.startswith("3 of 7 records skipped: undesirable reply (KTO label false)") for w in report.warnings)


# ------------------------------------------------------------ one bad turn, one drop


def test_one_empty_reply_drops_its_exchange_not_the_conversation(tokenizer):
    path = DATA / "sharegpt_12_turns_one_empty.jsonl"
    result = load_records(path)
    assert result.counts == {"ok": 1, "invalid": 0, "repaired": 1}
    conv = result.conversations[0][1]
    assert len(conv.messages) == 10
    assert [m.role for m in conv.messages] == ["user", "assistant"] * 5
    contents = [m.content for m in conv.messages]
    assert "How many days in Tokyo?" not in contents and "" not in contents
    assert contents[4] == "What about Kyoto?"
    assert [str(i) for i in result.repairs] == [
        f"{path}:1: field 'conversations[5].value': empty turn dropped with its exchange "
        "(conversations[4..5]; 10 of 12 turns kept)"
    ]
    assert result.notes() == [
        "1 record kept after a repair: empty turn dropped with its exchange (the rest of each conversation is trained)"
    ]
    ex = render.render(conv, tokenizer, template_for(tokenizer, "chatml"), max_length=4096)
    assert len(trained_runs(tokenizer, ex)) == 5

    shown = inspect(str(path), tokenizer=tokenizer, template="chatml", max_length=4096)
    assert shown["counts"]["repaired"] == 1 and shown["counts"]["ok"] == 1
    out = io.StringIO()
    print_report(shown, file=out)
    assert "1 repaired" in out.getvalue() and "repaired: " in out.getvalue()


def test_one_empty_user_turn_drops_its_exchange():
    result = load_records(DATA / "messages_empty_user_turn.jsonl")
    assert result.counts == {"ok": 1, "invalid": 0, "repaired": 1}
    conv = result.conversations[0][1]
    assert [m.content for m in conv.messages] == [
        "Can you help me write a haiku?",
        "Of course. What should it be about?",
        "Autumn leaves.",
        "Crimson leaves drifting\nacross the quiet river\nthe year exhales slow",
    ]
    assert result.repairs[0].field == "messages[2].content"


def test_strict_still_refuses_an_empty_turn():
    from finetui.engine.data.readers import DataError

    with pytest.raises(DataError, match=r"conversations\[5\]\.value': empty turn dropped"):
        load_records(DATA / "sharegpt_12_turns_one_empty.jsonl", on_error="strict")


def test_dataset_browser_counts_skipped_rows(finetui_cache):
    """The render worker's lengths job (the TUI Datasets screen's counts) counts skipped rows
    and lists them with the issues, and a skipped row rendered alone says why."""
    import subprocess
    import sys

    path = DATA / "kto_trl.jsonl"
    requests = [
        {"id": 1, "op": "lengths", "path": str(path)},
        {"id": 2, "op": "render", "record": json.loads(path.read_text().splitlines()[1])},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "finetui.engine.data.render_worker", "--model", "tiny"],
        input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1], timeout=300,
    )
    answers = {a.get("id"): a for a in map(json.loads, proc.stdout.splitlines()) if a["type"] != "progress"}
    counts = answers[1]["counts"]
    assert (counts["records"], counts["ok"], counts["invalid"], counts["skipped"]) == (7, 4, 0, 3)
    assert any(f"{path}:2: field 'label': undesirable reply" in issue for issue in answers[1]["issues"])
    assert answers[2]["type"] == "error" and "undesirable reply (KTO label false)" in answers[2]["message"]
