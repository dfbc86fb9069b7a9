"""No silent column loss: a column no field of the format reads is named, with the hint how
to map it; a system column is read by its name; a mapping reaches every canonical field.

Realistic files in ``tests/data/fidelity``: an OpenOrca-style JSONL (``id``,
``system_prompt``, ``question``, ``response``; some system prompts empty, as in OpenOrca)
and a question / plan / answer CSV. Read, normalised and rendered with the tiny model's
tokenizer exactly as training does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from finetui.engine.data import formats, render
from finetui.engine.data.inspection import inspect, parse_columns, print_report
from finetui.engine.data.readers import load_records

DATA = Path(__file__).resolve().parent / "data" / "fidelity"
ORCA = DATA / "openorca_system_prompt.jsonl"
PLAN = DATA / "question_plan_answer.csv"


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def orca_rows() -> list[dict]:
    return [json.loads(line) for line in ORCA.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------- system by its name


@pytest.mark.parametrize("fmt", ["qa", "openorca", "auto"])
def test_openorca_system_prompt_is_the_system_under_every_format(fmt, tokenizer):
    """format qa (a preset's) used to drop OpenOrca's system_prompt without a word."""
    result = load_records(ORCA, format=fmt)
    assert result.counts == {"ok": 6, "invalid": 0}
    rows = orca_rows()
    systems = [conv.system for _, conv in result.conversations]
    assert systems == [row["system_prompt"] or None for row in rows]
    template = render.resolve_template(tokenizer, "chatml")
    render.prepare_tokenizer(tokenizer, template)
    ex = render.render(result.conversations[0][1], tokenizer, template, max_length=4096)
    assert ex.text.startswith(f"<|im_start|>system\n{rows[0]['system_prompt']}<|im_end|>")
    assert rows[0]["system_prompt"] not in ex.trained_text()  # context, never trained
    # the id is the only column left, and it is said
    assert [c["column"] for c in result.column_use.to_list()] == ["id"]


@pytest.mark.parametrize("name", formats.SYSTEM_COLUMNS)
@pytest.mark.parametrize("record", [
    {"question": "Hi?", "answer": "Hello."},
    {"instruction": "Greet me.", "input": "", "output": "Hello."},
    {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
    {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
], ids=["qa", "alpaca", "sharegpt", "messages", "preference"])
def test_a_system_column_is_read_by_its_name_in_every_format(record, name):
    fmt = formats.detect_one(record)
    used: set[str] = set()
    conv = formats.to_conversation({**record, name: "Be brief."}, fmt, used=used)
    assert conv.system == "Be brief."
    assert name in used


# ------------------------------------------------------------- unused columns said


def test_a_plan_column_is_named_unused_by_inspect_with_the_hint(tokenizer):
    result = inspect(str(PLAN), tokenizer=tokenizer, template="chatml")
    assert result["format"] == "qa"
    assert result["unused_columns"] == [{"column": "plan", "records": 6, "of": 6, "example": f"{PLAN}:2"}]
    note = next(n for n in result["data_notes"] if "plan" in n)
    assert note.startswith("1 column not trained: plan (6 of 6 records)")
    assert "--column FIELD=plan" in note and "qa reads question, answer, system" in note
    out = io.StringIO()
    print_report(result, file=out)
    text = out.getvalue()
    assert "not trained as written" in text and "column not trained: plan" in text
    assert "--column FIELD=plan (data.columns" in text
    # --json carries the same
    assert json.loads(json.dumps(result, ensure_ascii=False))["unused_columns"][0]["column"] == "plan"


def test_an_alpaca_file_under_format_qa_says_instruction_is_not_trained(shared_datasets):
    """The LLaMA-Factory demo under a preset's format: qa (issue 19, item 12's file)."""
    result = load_records(shared_datasets / "llamafactory" / "alpaca_en_demo.json", format="qa")
    assert result.counts == {"ok": 412, "invalid": 587}
    assert result.column_use.to_list()[0]["column"] == "instruction"
    assert any(n.startswith("1 column not trained: instruction (412 of 412 records)") for n in result.notes())


def test_mapping_the_plan_trains_it(tokenizer):
    """--column system=plan (data.columns) puts the plan into the prompt; or alpaca's input."""
    as_system = load_records(PLAN, columns=parse_columns(["system=plan"]))
    assert as_system.notes() == []
    assert as_system.conversations[1][1].system.startswith("Split 24 into 20 + 4")
    as_input = load_records(PLAN, format="alpaca",
                            columns=parse_columns(["instruction=question", "input=plan", "output=answer"]))
    assert as_input.notes() == [] and as_input.counts == {"ok": 6, "invalid": 0}
    conv = as_input.conversations[1][1]
    assert conv.messages[0].content == "What is 17 * 24?\nSplit 24 into 20 + 4: 17*20 = 340, 17*4 = 68, add them."
    assert conv.messages[1].content == "17 × 24 = 408."


def test_a_mapped_column_no_record_has_is_said():
    result = load_records(PLAN, columns={"system": "sys_prompt"})
    assert "column mapping system=sys_prompt: no record has a column 'sys_prompt' (data.columns, --column)" \
        in result.notes()


def test_the_trainer_report_names_unused_columns(tokenizer, tmp_path, monkeypatch):
    from finetui.engine.config import Config
    from finetui.engine.data import dataset

    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    config = Config()
    config.data.path = str(PLAN)
    config.data.test_size = 0
    report = dataset.build(config, tokenizer).report
    assert any(w.startswith("1 column not trained: plan (6 of 6 records)") and "--column FIELD=plan" in w
               for w in report.warnings)


# ------------------------------------------------------- mapping reaches every field


CANONICAL = {
    "text": {"text": "Once upon a time."},
    "qa": {"question": "Hi?", "answer": "Hello.", "system": "Be brief."},
    "alpaca": {"instruction": "Greet.", "input": "Bob", "output": "Hello Bob.", "system": "Be brief.",
               "history": [["Hi?", "Hi."]], "tools": [{"name": "wave", "parameters": {}}]},
    "openorca": {"question": "Hi?", "response": "Hello.", "system": "Be brief."},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}],
                 "system": "Be brief.", "tools": [{"name": "wave", "parameters": {}}]},
    "messages": {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
                 "system": "Be brief.", "tools": [{"name": "wave", "parameters": {}}]},
    "chatml": {"text": "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>"},
    "preference": {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "system": "Be brief."},
}


# a transcript's records are its utterances, grouped by the readers: tests/test_transcripts.py
@pytest.mark.parametrize("fmt", [fmt for fmt in formats.FORMATS if fmt != "transcript"])
def test_a_mapping_reaches_every_canonical_field(fmt):
    """Each field of formats.FIELDS under a column name of the user's, mapped back."""
    canonical = CANONICAL[fmt]
    assert set(canonical) == set(formats.FIELDS[fmt])
    expected = formats.to_conversation(canonical, fmt)
    renamed = {f"my_{key}": value for key, value in canonical.items()}
    columns = {key: f"my_{key}" for key in canonical}
    used: set[str] = set()
    got = formats.to_conversation(renamed, fmt, columns, used=used)
    assert got.to_dict() == expected.to_dict()
    assert formats.unused_columns(renamed, used) == []
