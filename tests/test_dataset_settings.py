"""finetui.tui.datasource's part between the dataset browser and the Settings, without an app:
which columns the readers use, when the Settings would read the open dataset otherwise,
and what "u" (use in Settings) writes."""

from __future__ import annotations

from types import SimpleNamespace

from finetui.tui import datasource


def data(**kw):
    base = {"path": "data.jsonl", "format": "auto", "columns": {}, "test_path": None, "template": "chatml"}
    return SimpleNamespace(**{**base, **kw})


def test_columns_of_an_entry_and_the_users():
    entry = SimpleNamespace(columns={"prompt": "instruction", "response": "output"}, paths=["a.json"])
    assert datasource.merged_columns(entry, {"response": "answer"}) == {"prompt": "instruction", "response": "answer"}
    assert datasource.merged_columns(None, {"prompt": "q"}) == {"prompt": "q"}
    # what the entry maps already stays the entry's; only the user's own changes are kept
    assert datasource.own_columns(entry, {"prompt": "instruction", "response": "answer"}) == {"response": "answer"}


def test_when_the_settings_read_it_otherwise():
    settings = data(format="auto")
    assert not datasource.reads_otherwise(settings, "data.jsonl", "qa", "detected", {})
    assert datasource.reads_otherwise(settings, "data.jsonl", "qa", "chosen", {})  # a format picked here
    assert datasource.reads_otherwise(settings, "data.jsonl", "qa", "detected", {"question": "q"})
    assert not datasource.reads_otherwise(data(format="qa", columns={"question": "q"}), "data.jsonl", "qa", "chosen",
                                          {"question": "q"})
    assert not datasource.reads_otherwise(settings, "other.jsonl", "qa", "chosen", {})  # another dataset
    assert not datasource.reads_otherwise(settings, "data.jsonl", None, "unknown", {})


def test_what_use_writes():
    one = SimpleNamespace(columns={}, paths=["x.jsonl"])
    folder = SimpleNamespace(columns={}, paths=["a.jsonl", "b.jsonl"])
    assert datasource.use_values(data(), "x.jsonl", "qa", "detected", one, {"question": "q"}, "llama3") == {
        "path": "x.jsonl", "format": "qa", "columns": {"question": "q"}, "template": "llama3"}
    assert datasource.use_values(data(), "dir", "qa", "detected", folder, {}, "chatml")["format"] == "auto"
    assert datasource.use_values(data(), "dir", "qa", "chosen", folder, {}, "chatml")["format"] == "qa"
    assert datasource.use_values(data(), "x.jsonl", None, "unknown", one, {}, "chatml")["format"] == "auto"
    held_out = data(test_path="data_test.jsonl")
    assert datasource.use_values(held_out, "x.jsonl", "qa", "detected", one, {}, "chatml")["test_path"] is None
    assert "test_path" not in datasource.use_values(held_out, "data.jsonl", "qa", "detected", one, {}, "chatml")
