"""The offline demo data in sample_data/: it parses with plain json/yaml, the FAQ is fit for
the tiny model to memorise (many short answers, no contradictory duplicates, some
moderation examples), and every shipped config validates against engine.config.

The real format readers are tested elsewhere; this only guards the data itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from finetui.engine import config

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
MODERATION = "Let's keep the discussion relevant to finetui."
PRESETS = sorted((SAMPLE / "presets").glob("*.yaml"))


def _jsonl(name: str) -> list[dict]:
    lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _norm(question: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", question.lower()).strip()


# ------------------------------------------------------------------------------- FAQ


@pytest.fixture(scope="module")
def faq() -> list[dict]:
    return _jsonl("finetui_faq.jsonl")


def test_faq_records_are_question_answer_strings(faq):
    for n, row in enumerate(faq, 1):
        assert set(row) == {"question", "answer"}, f"line {n}: {row}"
        assert isinstance(row["question"], str) and row["question"].strip(), f"line {n}"
        assert isinstance(row["answer"], str) and row["answer"].strip(), f"line {n}"
        assert row["question"] == row["question"].strip() and row["answer"] == row["answer"].strip()


def test_faq_sizes(faq):
    on_topic = [r for r in faq if r["answer"] != MODERATION]
    off_topic = [r for r in faq if r["answer"] == MODERATION]
    assert len(on_topic) >= 200
    assert len(off_topic) >= 20


def test_faq_moderation_answer_is_exact(faq):
    # A near-miss ("Lets keep...", no full stop) would teach the model two answers.
    for row in faq:
        if "keep the discussion" in row["answer"].lower():
            assert row["answer"] == MODERATION, row


def test_faq_off_topic_is_shuffled_in(faq):
    positions = [i for i, r in enumerate(faq) if r["answer"] == MODERATION]
    # Not bunched at one end: spread over the file, none among the first few lines.
    assert positions[0] > 5 and positions[-1] > len(faq) // 2
    assert max(b - a for a, b in zip(positions, positions[1:])) < len(faq) // 3


def test_faq_no_duplicate_questions(faq):
    seen: dict[str, int] = {}
    for n, row in enumerate(faq, 1):
        key = _norm(row["question"])
        assert key not in seen, f"line {n} repeats line {seen[key]}: {row['question']!r}"
        seen[key] = n


def test_faq_answers_are_short(faq):
    # The demo model has ~0.3M parameters and max_length 128: one short sentence each.
    for row in faq:
        words = len(row["answer"].split())
        assert words <= 25, f"{words} words: {row['answer']!r}"
        assert len(row["answer"]) <= 200, row["answer"]
        assert len(row["question"].split()) <= 20, row["question"]


def test_faq_uses_the_documented_keys(faq):
    # The keys the TUI binds; the FAQ must not teach other ones.
    answers = {_norm(r["question"]): r["answer"] for r in faq}
    expected = {
        "d": "Datasets", "s": "Settings", "r": "Runs", "c": "Chat", "e": "Eval",
    }
    for key, screen in expected.items():
        assert answers[_norm(f"What does the {key} key do?")] == f"The {key} key opens the {screen} screen."
    text = " ".join(r["answer"] for r in faq)
    assert "ctrl+p" in text and "Press q" in text and "Press ?" in text


# ------------------------------------------------------------------- other formats


def test_alpaca_sample():
    rows = json.loads((SAMPLE / "alpaca_sample.json").read_text(encoding="utf-8"))
    assert 8 <= len(rows) <= 20
    for row in rows:
        assert {"instruction", "input", "output"} <= set(row)
    assert any(row["input"] for row in rows)
    with_history = [r for r in rows if "history" in r]
    assert with_history and all("system" in r for r in with_history)
    for row in with_history:
        assert all(isinstance(pair, list) and len(pair) == 2 for pair in row["history"])


def test_sharegpt_sample():
    rows = json.loads((SAMPLE / "sharegpt_sample.json").read_text(encoding="utf-8"))
    assert 8 <= len(rows) <= 20
    for row in rows:
        turns = row["conversations"]
        speakers = [t["from"] for t in turns if t["from"] != "system"]
        assert speakers[0] == "human" and speakers[-1] == "gpt"
        assert all(a != b for a, b in zip(speakers, speakers[1:])), "turns must alternate"
        assert all(t["from"] in {"system", "human", "gpt"} and t["value"] for t in turns)
        assert all(t["from"] != "system" for t in turns[1:]), "system only first"
    assert any(r["conversations"][0]["from"] == "system" for r in rows)
    assert any(len(r["conversations"]) >= 4 for r in rows)


def test_messages_sample():
    rows = _jsonl("messages_sample.jsonl")
    assert 8 <= len(rows) <= 20
    for row in rows:
        msgs = row["messages"]
        roles = [m["role"] for m in msgs if m["role"] != "system"]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert any(len(r["messages"]) >= 4 for r in rows)


def test_chatml_sample():
    rows = _jsonl("chatml_sample.jsonl")
    assert 8 <= len(rows) <= 20
    block = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.+?)<\|im_end\|>\n", re.S)
    for row in rows:
        text = row["text"]
        assert block.sub("", text) == "", f"text outside ChatML blocks: {text!r}"
        roles = [m.group(1) for m in block.finditer(text)]
        assert roles[-1] == "assistant"
    assert any(row["text"].startswith("<|im_start|>system\n") for row in rows)


def test_text_sample():
    text = (SAMPLE / "text_sample.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) >= 5
    assert "finetui" in text


def test_preference_sample():
    rows = _jsonl("preference_sample.jsonl")
    assert 8 <= len(rows) <= 20
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]


# ------------------------------------------------------------------------- configs


def test_quickstart_validates():
    cfg = config.load(SAMPLE / "quickstart.yaml")
    assert cfg.model.name_or_path == "tiny"
    assert cfg.method.type == "full"
    assert cfg.data.path == "sample:finetui_faq"
    assert cfg.data.format == "qa"
    assert cfg.output.run_name == "quickstart"


def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert {"cpu_demo_tiny.yaml", "lora_7b_24gb.yaml", "qlora_7b_8_12gb.yaml", "full_small.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_validates_and_has_title(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# title: ") and lines[0][len("# title: "):].strip()
    assert lines[1].startswith("# description: ") and lines[1][len("# description: "):].strip()
    # Every key written in the file must be one the schema knows (extra="forbid" also
    # checks this; the plain yaml read proves the file needs nothing but yaml).
    data = yaml.safe_load("\n".join(lines))
    assert set(data) <= set(config.SECTIONS)
    config.load(path)


def test_cpu_demo_preset_is_the_quickstart():
    quick = yaml.safe_load((SAMPLE / "quickstart.yaml").read_text(encoding="utf-8"))
    demo = yaml.safe_load((SAMPLE / "presets" / "cpu_demo_tiny.yaml").read_text(encoding="utf-8"))
    assert demo == quick


def test_qlora_preset_is_4bit_nf4_paged():
    cfg = config.load(SAMPLE / "presets" / "qlora_7b_8_12gb.yaml")
    assert cfg.method.type == "qlora" and cfg.model.quantization == "4bit"
    assert cfg.model.bnb_4bit_quant_type == "nf4" and cfg.model.bnb_4bit_use_double_quant
    assert cfg.train.optimizer == "paged_adamw_32bit" and cfg.train.gradient_checkpointing


def test_faq_held_out_file_is_never_trained(faq):
    """sample_data/finetui_faq_test.jsonl: the demo's held-out questions. None is a training
    question; at least 8 are off-topic (the refusal rate needs them); the in-domain ones
    are training questions asked in other words, with the training answer."""
    held_out = _jsonl("finetui_faq_test.jsonl")
    trained = {_norm(r["question"]) for r in faq}
    assert not [r["question"] for r in held_out if _norm(r["question"]) in trained]
    off_topic = [r for r in held_out if r["answer"] == MODERATION]
    assert len(off_topic) >= 8
    answers = {r["answer"] for r in faq}
    assert all(r["answer"] in answers for r in held_out if r["answer"] != MODERATION)
    assert len(held_out) - len(off_topic) >= 15
