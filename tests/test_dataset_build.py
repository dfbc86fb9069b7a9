"""dataset.build: tokenised train/test sets from a config, on the tiny model.

Covers the shipped sample data and the shared LLaMA-Factory demos, split determinism by
seed, the tokenisation cache (second build renders nothing), truncation and no-trained
counts, an existing test split, and the pre-flight warnings.
"""

from __future__ import annotations

import json

import pytest

from finetui.engine.config import Config
from finetui.engine.data import dataset, render as render_mod
from finetui.engine.data.conversation import Conversation, Message


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def render_calls(monkeypatch):
    """Counts calls of engine.data.render.render (the real one runs)."""
    calls = {"n": 0}
    real = render_mod.render

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(render_mod, "render", counting)
    return calls


def config(path: str, **data) -> Config:
    cfg = Config()
    cfg.data.path = path
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def rows(ds) -> list[list[int]]:
    return [r["input_ids"] for r in ds]


def test_sample_data_builds(cache, tokenizer):
    built = dataset.build(config("sample:finetui_faq"), tokenizer)
    report = built.report
    assert set(built.train.column_names) == {"input_ids", "labels", "length", "n_trained"}
    assert report.counts["ok"] == report.counts["train"] + report.counts["test"] > 100
    assert report.counts["invalid"] == 0 and report.counts["no_trained"] == 0
    assert report.format == "qa" and report.template == "tokenizer" and report.end_token == "<|im_end|>"
    assert built.added_tokens == []
    assert built.eos_token_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    row = built.train[0]
    assert row["length"] == len(row["input_ids"]) == len(row["labels"])
    assert row["n_trained"] == sum(1 for x in row["labels"] if x != -100) > 0
    trained = [x for x in row["labels"] if x != -100]
    assert trained[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # learns to stop
    assert 0 < report.lengths["min"] <= report.lengths["median"] <= report.lengths["p95"] <= report.lengths["max"]
    assert report.trained_tokens < report.total_tokens


def test_build_matches_render(cache, tokenizer, shared_datasets):
    """The training rows are exactly what render() (the browser's view) produces."""
    from finetui.engine.data import readers

    path = str(shared_datasets / "llamafactory" / "alpaca_en_demo.json")
    built = dataset.build(config(path, test_size=0.0, max_samples=20), tokenizer)
    loaded = readers.load_records(path, max_samples=20)
    template = render_mod.resolve_template(tokenizer, "auto")
    expected = [render_mod.render(c, tokenizer, template, max_length=512) for _, c in loaded.conversations]
    assert rows(built.train) == [e.input_ids for e in expected]
    assert [r["labels"] for r in built.train] == [e.labels for e in expected]
    assert built.test is None


def test_split_is_deterministic_by_seed(cache, tokenizer):
    a = dataset.build(config("sample:finetui_faq", test_size=0.2), tokenizer)
    b = dataset.build(config("sample:finetui_faq", test_size=0.2), tokenizer)
    assert rows(a.test) == rows(b.test) and rows(a.train) == rows(b.train)
    n = a.report.counts["ok"]
    assert len(a.test) == round(n * 0.2) and len(a.train) + len(a.test) == n
    other = config("sample:finetui_faq", test_size=0.2)
    other.train.seed = 7
    c = dataset.build(other, tokenizer)
    assert rows(c.test) != rows(a.test)
    assert sorted(map(tuple, rows(c.test) + rows(c.train))) == sorted(map(tuple, rows(a.test) + rows(a.train)))


def test_second_build_is_a_cache_hit(cache, tokenizer, render_calls, shared_datasets):
    path = str(shared_datasets / "llamafactory" / "alpaca_en_demo.json")
    first = dataset.build(config(path, max_samples=50), tokenizer)
    assert not first.report.cache_hit and render_calls["n"] == 50
    second = dataset.build(config(path, max_samples=50), tokenizer)
    assert second.report.cache_hit and render_calls["n"] == 50  # nothing rendered again
    assert rows(second.train) == rows(first.train) and second.report.counts == first.report.counts
    assert list((cache / "datasets").glob("render-*.arrow"))
    # a setting that changes the tokens is a new key
    third = dataset.build(config(path, max_samples=50, max_length=128), tokenizer)
    assert not third.report.cache_hit and render_calls["n"] == 100
    other_template = dataset.build(config(path, max_samples=50, template="qa"), tokenizer)
    assert not other_template.report.cache_hit and render_calls["n"] == 150


def test_changed_data_is_a_cache_miss(cache, tokenizer, tmp_path, render_calls):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}."}) for i in range(10)))
    dataset.build(config(str(data)), tokenizer)
    assert dataset.build(config(str(data)), tokenizer).report.cache_hit
    data.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"b{i}."}) for i in range(10)))
    assert not dataset.build(config(str(data)), tokenizer).report.cache_hit


def test_truncation_and_no_trained_are_counted(cache, tokenizer, shared_datasets):
    path = str(shared_datasets / "llamafactory" / "dataset_info.json") + ":glaive_toolcall_en_demo"
    built = dataset.build(config(path, max_length=160, template="chatml", test_size=0.0), tokenizer)
    report = built.report
    assert report.format == "sharegpt"
    assert all(r["length"] <= 160 for r in built.train)
    # count independently with render()
    from finetui.engine.data import readers

    loaded = readers.load_records(path)
    template = render_mod.resolve_template(tokenizer, "chatml")
    examples = [render_mod.render(c, tokenizer, template, max_length=160) for _, c in loaded.conversations]
    assert report.counts["truncated"] == sum(e.truncated for e in examples) > 0
    assert report.counts["no_trained"] == sum(e.n_trained == 0 for e in examples) > 0  # long tool prompts
    assert report.counts["ok"] == len(built.train) == sum(e.n_trained > 0 for e in examples)
    assert any("no trained token within max_length 160" in i and "glaive_toolcall_en_demo.json:" in i
               for i in report.issues)
    assert any("longer than max_length 160" in w for w in report.warnings)


def test_existing_test_split_and_no_test(cache, tokenizer, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 3)):
        lines = [json.dumps({"question": f"{split} q{i}?", "answer": f"a{i}."}) for i in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines))
    built = dataset.build(config(str(folder), test_split="test"), tokenizer)
    assert len(built.train) == 12 and len(built.test) == 3
    assert built.report.counts["train"] == 12 and built.report.counts["test"] == 3
    none = dataset.build(config(str(folder), test_size=0.0), tokenizer)
    assert none.test is None and len(none.train) == 12


def test_num_proc_gives_the_same_rows(cache, tokenizer):
    one = dataset.build(config("sample:finetui_faq", test_size=0.0), tokenizer)
    two = dataset.build(config("sample:finetui_faq", test_size=0.0, num_proc=2), tokenizer)
    assert two.report.cache_hit  # same inputs: the cache of the one-process build
    cache_two = cache.parent / "cache2"
    import os

    os.environ["FINETUI_CACHE"] = str(cache_two)  # restored by the cache fixture's monkeypatch
    fresh = dataset.build(config("sample:finetui_faq", test_size=0.0, num_proc=2), tokenizer)
    assert not fresh.report.cache_hit
    assert rows(fresh.train) == rows(one.train)


def test_unusable_data_raises(cache, tokenizer, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"nonsense": 1}\n')
    with pytest.raises(ValueError):
        dataset.build(config(str(empty)), tokenizer)


# ------------------------------------------------------------------ pre-flight


def test_preflight_pad_equals_eos(cache, tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    built = dataset.build(config("sample:finetui_faq"), tokenizer)
    assert any("pad token is the eos token" in w for w in built.report.warnings)


def test_preflight_end_token_not_eos(cache, tokenizer):
    tokenizer.eos_token = "<|endoftext|>"  # the template still ends turns with <|im_end|>
    built = dataset.build(config("sample:finetui_faq", template="tokenizer"), tokenizer)
    warning = [w for w in built.report.warnings if "ends assistant turns with <|im_end|>" in w]
    assert warning and "eos is <|endoftext|>" in warning[0]
    assert built.eos_token_ids == [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]


def test_preflight_clean_and_counts(tokenizer):
    template = render_mod.resolve_template(tokenizer, "auto")
    conv = Conversation(messages=[Message("user", "Hi"), Message("assistant", "Hello")])
    good = render_mod.render(conv, tokenizer, template)
    assert render_mod.preflight(tokenizer, template, [good]) == []
    untrained = render_mod.render(Conversation(messages=[Message("user", "Hi")]), tokenizer, template)
    long = render_mod.render(conv, tokenizer, template, max_length=good.n_tokens - 1)
    assert long.truncated
    warnings = render_mod.preflight(tokenizer, template, [good, untrained, long], max_length=good.n_tokens - 1)
    assert any("1 of 3 records have no trained token" in w for w in warnings)
    assert any(f"1 of 3 records are longer than max_length {good.n_tokens - 1}" in w for w in warnings)
    # the truncated one lost its <|im_end|>, but truncated records are not blamed for that
    assert not any("train no" in w for w in warnings)
