"""Readers (engine.data.readers) on the real datasets in tests/data/datasets (see
tests/data/SOURCES.md) and on local files of every supported kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetui.engine.data.readers import (
    DataError,
    RawRecord,
    iter_conversations,
    iter_records,
    load_records,
    resolve_source,
)

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------- shared datasets

# file (relative to tests/data/datasets) -> (format, kind, record count); glaive_toolcall_en_demo,
# c4_demo and dpo_en_demo are their upstream files' first 100 records
SHARED_FILES = {
    "llamafactory/alpaca_en_demo.json": ("alpaca", "chat", 999),
    "llamafactory/identity.json": ("alpaca", "chat", 91),
    "llamafactory/glaive_toolcall_en_demo.json": ("sharegpt", "chat", 100),
    "llamafactory/c4_demo.jsonl": ("text", "text", 100),
    "llamafactory/dpo_en_demo.json": ("preference", "preference", 100),
    "torchtune/chat_tiny.json": ("sharegpt", "chat", 1),
    "torchtune/alpaca_tiny.json": ("alpaca", "chat", 100),
    "torchtune/instruct_tiny.json": ("alpaca", "chat", 2),
    "axolotl/conversation.json": ("sharegpt", "chat", 1),
}

# dataset_info.json name -> (format, kind, record count)
REGISTRY_NAMES = {
    "identity": ("alpaca", "chat", 91),
    "alpaca_en_demo": ("alpaca", "chat", 999),
    "glaive_toolcall_en_demo": ("sharegpt", "chat", 100),
    "c4_demo": ("text", "text", 100),
    "dpo_en_demo": ("preference", "preference", 100),
}


def test_every_shared_dataset_file_is_covered(shared_datasets):
    on_disk = {
        str(p.relative_to(shared_datasets))
        for p in shared_datasets.rglob("*")
        if p.suffix in (".json", ".jsonl") and p.name != "dataset_info.json"
    }
    assert on_disk == set(SHARED_FILES), "a new shared dataset needs an entry in SHARED_FILES"


@pytest.mark.parametrize("relpath", sorted(SHARED_FILES))
def test_shared_file_loads_and_normalises(shared_datasets, relpath):
    fmt, kind, count = SHARED_FILES[relpath]
    result = load_records(shared_datasets / relpath, on_error="strict")
    assert result.format == fmt
    assert result.counts == {"ok": count, "invalid": 0}
    assert result.issues == []
    for record, conv in result.conversations:
        assert conv.kind == kind
        assert record.line is not None and record.line >= 1
        if kind == "text":
            assert conv.text.strip()
        else:
            assert any(m.role == "assistant" for m in conv.messages)
            assert all(m.content.strip() or m.tool_calls for m in conv.messages)


@pytest.mark.parametrize("name", sorted(REGISTRY_NAMES))
def test_shared_dataset_by_registry_name(shared_datasets, name):
    fmt, kind, count = REGISTRY_NAMES[name]
    registry = shared_datasets / "llamafactory" / "dataset_info.json"
    by_spec = load_records(f"{registry}:{name}", on_error="strict")
    by_name = load_records(name, dataset_dir=registry.parent, on_error="strict")
    for result in (by_spec, by_name):
        assert result.format == fmt and result.counts["ok"] == count
        assert result.source_info["kind"] == "registry"
        assert result.source_info["entry"]["name"] == name
        assert {conv.kind for _, conv in result.conversations} == {kind}


def test_glaive_toolcall_by_name_has_tools_and_tool_calls(shared_datasets):
    result = load_records("glaive_toolcall_en_demo", dataset_dir=shared_datasets / "llamafactory", on_error="strict")
    convs = [conv for _, conv in result.conversations]
    with_tools = [c for c in convs if c.tools]
    raw = json.loads((shared_datasets / "llamafactory" / "glaive_toolcall_en_demo.json").read_text())
    assert len(with_tools) == sum(1 for r in raw if json.loads(r["tools"])) == 59  # the rest have "[]"
    assert all(t["type"] == "function" and t["function"]["name"] for c in with_tools for t in c.tools)
    calls = [m for c in convs for m in c.messages if m.tool_calls]
    assert len(calls) == 73  # every function_call turn in the file parses
    assert all(isinstance(m.tool_calls[0]["function"]["arguments"], dict) for m in calls)
    assert sum(m.role == "tool" for c in convs for m in c.messages) == 73


def test_dpo_demo_is_preference_with_system_prompts(shared_datasets):
    result = load_records(shared_datasets / "llamafactory" / "dpo_en_demo.json", on_error="strict")
    convs = [conv for _, conv in result.conversations]
    assert all(c.kind == "preference" and c.rejected and c.rejected.content.strip() for c in convs)
    assert all(c.messages[-1].role == "assistant" for c in convs)
    assert sum(1 for c in convs if c.system) == 29  # the 29 system turns of its first 100 records
    assert all(c.messages[-1].content != c.rejected.content for c in convs)


def test_identity_keeps_placeholders(shared_datasets):
    result = load_records(shared_datasets / "llamafactory" / "identity.json")
    replies = [conv.messages[-1].content for _, conv in result.conversations]
    assert sum("{{name}}" in r for r in replies) > 50
    assert sum("{{author}}" in r for r in replies) > 50


def test_json_array_lines_point_at_each_element(shared_datasets):
    path = shared_datasets / "llamafactory" / "identity.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    result = load_records(path, keep_raw=True)
    for record, _ in result.conversations:
        assert lines[record.line - 1].strip() == "{"
        # The element's first field is on the next line.
        assert json.dumps(record.data["instruction"], ensure_ascii=False) in lines[record.line]


def test_shared_folder_mixes_formats_per_file(shared_datasets):
    result = load_records(shared_datasets / "torchtune", on_error="strict")
    assert result.format == "mixed"
    assert sorted(set(result.formats.values())) == ["alpaca", "sharegpt"]
    assert result.counts["ok"] == 103


# ------------------------------------------------------------------ local sources


def test_jsonl_places(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)])
    records = list(iter_records(path))
    assert [r.place for r in records] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert isinstance(records[0], RawRecord) and records[0].index == 0


def test_json_object_holding_a_list(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(
        '{\n  "version": 2,\n  "data": [\n    {"question": "a", "answer": "b"},\n\n    {"question": "c", "answer": "d"}\n  ]\n}\n'
    )
    result = load_records(path, on_error="strict")
    assert [r.line for r, _ in result.conversations] == [4, 6]


def test_json_object_with_split_lists_picks_the_split(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [{"text": "t1"}, {"text": "t2"}], "test": [{"text": "x"}]}))
    assert load_records(path).counts["ok"] == 2
    assert load_records(path, split="test").counts["ok"] == 1


def test_json_lines_in_a_json_file(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])
    result = load_records(path, on_error="strict")
    assert [r.line for r, _ in result.conversations] == [1, 2]


def test_single_record_json_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}))
    result = load_records(path, on_error="strict")
    assert result.format == "messages" and result.counts["ok"] == 1


def test_csv_with_multiline_cells_and_column_mapping(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"line one\nline two",first\nsecond q,second a\n', encoding="utf-8")
    result = load_records(path, on_error="strict")
    assert result.format == "qa"
    assert [r.line for r, _ in result.conversations] == [2, 4]
    assert result.conversations[0][1].messages[0].content == "line one\nline two"
    mapped = tmp_path / "m.tsv"
    mapped.write_text("Q\tA\nwhy\tbecause\n")
    result = load_records(mapped, columns={"question": "Q", "answer": "A"}, on_error="strict")
    assert result.conversations[0][1].messages[1].content == "because"


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["i0", "i1", "i2"], "output": ["o0", "", "o2"]}), path)
    result = load_records(path)
    assert result.format == "alpaca"
    assert result.counts == {"ok": 2, "invalid": 1}
    assert str(result.issues[0]) == f"{path}#1: field 'output': empty text"
    assert [r.place for r, _ in result.conversations] == [f"{path}#0", f"{path}#2"]


def test_txt_lines_and_blocks(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first doc\nsecond doc\nthird doc\n")
    result = load_records(lines, on_error="strict")
    assert result.format == "text" and [c.text for _, c in result.conversations] == ["first doc", "second doc", "third doc"]
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("para one\nstill one\n\n\npara two\n\npara three\nmore\n")
    result = load_records(blocks, on_error="strict")
    assert [(r.line, c.text) for r, c in result.conversations] == [
        (1, "para one\nstill one"),
        (5, "para two"),
        (7, "para three\nmore"),
    ]


def test_folder_recursive_sorted_hidden_skipped(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b"}])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "a.jsonl", [{"text": "sub-a"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / ".hidden.jsonl", [{"text": "hidden"}])
    (tmp_path / ".git").mkdir()
    write_jsonl(tmp_path / ".git" / "x.jsonl", [{"text": "git"}])
    (tmp_path / "README.md").write_text("# notes")
    result = load_records(tmp_path, on_error="strict")
    assert [c.text for _, c in result.conversations] == ["a", "b", "sub-a"]
    assert result.source_info["kind"] == "folder"
    assert str(tmp_path / "README.md") in result.source_info["skipped_files"]


def test_folder_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "t"}, {"text": "t2"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "x"}])
    assert load_records(tmp_path).counts["ok"] == 2
    assert load_records(tmp_path, split="test").counts["ok"] == 1
    with pytest.raises(DataError, match="none is 'validation'"):
        load_records(tmp_path, split="validation")


def test_max_samples_stops_early(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(100)])
    result = load_records(path, max_samples=7)
    assert result.counts["ok"] == 7 and result.conversations[-1][0].line == 7


def test_explicit_format_and_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "<|im_start|>user\nhi<|im_end|>"}])
    assert load_records(path, format="text").conversations[0][1].kind == "text"
    with pytest.raises(DataError, match="unknown format 'yaml'"):
        load_records(path, format="yaml")


def test_undetectable_format_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"foo": 1, "bar": "x"}])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(path) in str(info.value) and "foo" in str(info.value) and "data.columns" in str(info.value)


def test_iter_conversations_streams(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(1000)])
    stream = iter_conversations(path)
    record, conv = next(stream)
    assert record.line == 1 and conv.text == "0"
    stream.close()


def test_sample_name_resolves_in_the_package():
    samples = sorted(p.stem for p in (REPO / "sample_data").glob("*.jsonl"))
    if "finetui_faq" not in samples:
        pytest.skip("sample_data/finetui_faq.jsonl not written yet")
    result = load_records("sample:finetui_faq", on_error="strict")
    assert result.source_info["kind"] == "sample" and result.counts["ok"] > 100
    assert result.conversations[0][0].source.endswith("finetui_faq.jsonl")
    with pytest.raises(DataError, match=r"sample:nope: no such sample \(available: .*finetui_faq"):
        load_records("sample:nope")


def test_registry_errors(shared_datasets, tmp_path):
    registry = shared_datasets / "llamafactory" / "dataset_info.json"
    with pytest.raises(DataError, match="did you mean identity"):
        load_records(f"{registry}:identiti")
    with pytest.raises(DataError, match="not found"):
        load_records(f"{registry}:alpaca_zh_demo")  # listed, but the file is not there
    with pytest.raises(DataError, match="only ms_hub_url"):
        load_records(f"{registry}:deepctrl")


def test_registry_hub_entry_goes_through_the_hub_reader(shared_datasets, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source(f"{shared_datasets}/llamafactory/dataset_info.json:adgen_eval")
    assert source.hub_id == "HasturOfficial/adgen" and source.split == "validation"
    assert source.format == "alpaca" and source.columns == {"prompt": "content", "response": "summary"}


def test_missing_path_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder$"):
        load_records(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- hub


def test_offline_hub_id_fails_fast_with_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys\n"
        "from finetui.engine.data.readers import load_records, DataError\n"
        "try:\n"
        "    load_records('finetui-test/no-such-dataset-xyz')\n"
        "except DataError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert time.monotonic() - began < 30
    message = out.stdout.strip()
    assert "\n" not in message
    assert message == (
        "hub dataset 'finetui-test/no-such-dataset-xyz' is not in the local cache and the network is "
        "unreachable (HF_HUB_OFFLINE=1): download it on a connected machine or point data.path at a local file"
    )


def test_hub_reader_rows_and_places(tmp_path, monkeypatch):
    """A packaged builder (parquet) works offline, so the hub path is exercised for real."""
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"question": ["q0", "q1"], "answer": ["a0", "a1"]}), data / "train.parquet")
    source = resolve_source("hf:parquet")
    source.hub_data_dir = str(data)
    for streaming in (False, True):
        pairs = list(iter_conversations(source, streaming=streaming))
        assert [r.place for r, _ in pairs] == ["hf:parquet[train]#0", "hf:parquet[train]#1"]
        assert pairs[1][1].messages[1].content == "a1"
