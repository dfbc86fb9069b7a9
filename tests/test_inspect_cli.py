"""`finetui data inspect` as a user runs it: a subprocess on the demo datasets in tests/data."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_helpers import inspect_runner


@pytest.fixture
def run(tiny_model_dir):
    return inspect_runner(tiny_model_dir)


def as_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def trained_pieces(example: dict) -> list[str]:
    return [example["text"][a:b] for a, b in example["trained_spans"]]


def test_alpaca_json(run, shared_datasets):
    path = shared_datasets / "llamafactory" / "alpaca_en_demo.json"
    n = len(json.loads(path.read_text()))
    result = as_json(run(str(path), "--json"))
    assert result["format"] == "alpaca"
    c = result["counts"]
    assert c["records"] == n and c["ok"] + c["no_trained"] == n and c["invalid"] == 0
    assert 0 < c["truncated"] < n  # some alpaca answers are longer than 512 tiny tokens
    lengths = result["lengths"]
    assert lengths["min"] <= lengths["median"] <= lengths["p95"] <= lengths["max"]
    assert sum(b["count"] for b in result["histogram"]) == n
    assert any("longer than max_length 512" in w for w in result["warnings"])

    ex = result["example"]
    record = json.loads(path.read_text())[0]
    assert ex["index"] == 0 and ex["place"].endswith("alpaca_en_demo.json:2")
    assert record["instruction"] in ex["text"]
    # trained: the reply (as far as max_length keeps it), nothing of the instruction
    pieces = trained_pieces(ex)
    assert len(pieces) == 1 and record["output"].startswith(pieces[0][:200])
    assert record["instruction"] not in pieces[0]
    assert len(ex["input_ids"]) == len(ex["labels"]) == ex["n_tokens"]
    assert ex["n_trained"] == sum(1 for x in ex["labels"] if x != -100)


def test_alpaca_short_example_ends_with_end_token(run, shared_datasets):
    path = shared_datasets / "llamafactory" / "alpaca_en_demo.json"
    records = json.loads(path.read_text())
    index = min(range(len(records)), key=lambda i: len(records[i]["output"]) + len(records[i]["instruction"]))
    ex = as_json(run(str(path), "--json", "--example", str(index)))["example"]
    assert not ex["truncated"]
    assert trained_pieces(ex) == [records[index]["output"] + "<|im_end|>"]
    assert ex["trained_decoded"] == records[index]["output"] + "<|im_end|>"


def test_glaive_toolcall_registry_entry(run, shared_datasets):
    spec = str(shared_datasets / "llamafactory" / "dataset_info.json") + ":glaive_toolcall_en_demo"
    result = as_json(run(spec, "--json", "--template", "chatml", "--max-length", "4096"))
    assert result["format"] == "sharegpt" and result["template"] == "chatml"
    c = result["counts"]
    assert c["records"] == 100 and c["invalid"] == 0 and c["ok"] >= 97  # the first 100 records upstream
    ex = result["example"]
    pieces = trained_pieces(ex)
    # example 0: a reply, a tool call, the answer after the tool output, a refusal
    assert pieces[0] == "Of course! I can help you with that. Please tell me what ingredients you have.<|im_end|>"
    assert pieces[1].startswith('<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": ')
    assert pieces[1].endswith("</tool_call><|im_end|>")
    assert pieces[2].startswith("I found two recipes for you.") and len(pieces) == 4
    assert '"name": "search_recipes"' in ex["text"].split("<|im_end|>")[0]  # tools in the system turn
    assert not any("Chicken and Rice Casserole\", \"ingredients\"" in p for p in pieces)  # tool output
    assert not any("ignores" in w for w in result["warnings"])


def test_glaive_with_a_template_that_ignores_tools_warns(run, shared_datasets):
    spec = str(shared_datasets / "llamafactory" / "dataset_info.json") + ":glaive_toolcall_en_demo"
    # Phi 3.5's template has no tool support: calls would train as empty replies.
    phi = str(shared_datasets.parent / "chat_templates" / "phi3_5.jinja")
    result = as_json(run(spec, "--template", phi, "--json"))
    assert any("ignores tool calls" in w for w in result["warnings"])
    assert any("ignores the tool list" in w for w in result["warnings"])


def test_tiny_models_own_template_keeps_tool_calls(run, shared_datasets):
    spec = str(shared_datasets / "llamafactory" / "dataset_info.json") + ":glaive_toolcall_en_demo"
    result = as_json(run(spec, "--json"))
    assert result["template"] == "tokenizer"
    assert not any("ignores" in w for w in result["warnings"])


def test_text_output_marks_trained_spans(run, shared_datasets):
    spec = str(shared_datasets / "llamafactory" / "dataset_info.json") + ":glaive_toolcall_en_demo"
    proc = run(spec, "--template", "chatml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "format    sharegpt (detected)" in out
    assert "records   100:" in out and "truncated" in out
    assert "length histogram" in out and "tokens    min " in out
    assert "«Of course! I can help you with that. Please tell me what ingredients you have.<|im_end|>»" in out
    assert "«<tool_call>" in out
    assert "\x1b[" not in out  # no colour codes when not a terminal

    proc = run(str(shared_datasets / "llamafactory" / "alpaca_en_demo.json"))
    assert proc.returncode == 0, proc.stderr
    assert "format    alpaca (detected)" in proc.stdout and "«" in proc.stdout


def test_unusable_input_is_one_line_and_exit_1(run, tmp_path):
    missing = run(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and missing.stderr.startswith("finetui: ")

    bad_template = run(str(tmp_path / "nope.jsonl"), "--template", "nonexistent")
    assert bad_template.returncode == 1 and len(bad_template.stderr.strip().splitlines()) == 1

    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"question": "q?", "answer": "a."}\nnot json\n')
    strict = run(str(junk), "--strict")
    assert strict.returncode == 1 and "junk.jsonl:2" in strict.stderr
    lenient = as_json(run(str(junk), "--json"))
    assert lenient["counts"]["invalid"] == 1 and lenient["counts"]["ok"] == 1
    assert any("junk.jsonl:2" in issue for issue in lenient["issues"])

    missing_model = run(str(junk), "--model", "no-such-org/no-such-model")
    assert missing_model.returncode == 1 and len(missing_model.stderr.strip().splitlines()) == 1
    assert "no-such-org/no-such-model" in missing_model.stderr
