"""Long raw text is chunked, not truncated (``data.long_text``, ``data.text_overlap``).

``tests/data/fidelity/wiki_articles.jsonl`` is a wiki-dump style file (``id`` / ``title`` /
``text``, one article a line): four of its five articles are longer than 512 tokens of the
tiny model's tokenizer. Cut at max_length, less than half of its tokens would be trained;
split into windows, every one is, each window a training example placed ``file:line#chunkN``.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from cli_helpers import inspect_runner

from finetui.engine.data import render
from finetui.engine.data.inspection import inspect, print_report
from finetui.engine.data.readers import load_records

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO / "tests" / "data" / "fidelity" / "wiki_articles.jsonl"


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def full_tokens(tokenizer) -> list[int]:
    """Every record's tokens, rendered whole (what chunking must keep)."""
    template = render.resolve_template(tokenizer, "auto")
    render.prepare_tokenizer(tokenizer, template)
    return [len(render.render(conv, tokenizer, template, max_length=10**6).input_ids)
            for _, conv in load_records(WIKI).conversations]


def test_wiki_articles_are_split_into_windows_and_every_token_is_kept(tokenizer):
    lengths = full_tokens(tokenizer)
    assert len(lengths) == 5 and sum(n > 512 for n in lengths) == 4
    windows = sum(-(-n // 512) for n in lengths)

    result = inspect(str(WIKI), tokenizer=tokenizer, max_length=512)
    c = result["counts"]
    assert result["format"] == "text" and result["long_text"] == "chunk"
    assert (c["records"], c["ok"], c["truncated"], c["chunked"], c["examples"]) == (5, 5, 0, 4, windows)
    assert result["tokens_total"] == result["tokens_kept"] == sum(lengths)
    assert result["trained_tokens"] == sum(lengths)
    # the record lengths stay the records' own (a histogram of articles, not of windows)
    assert result["lengths"]["max"] == max(lengths)
    assert result["example"]["place"] == f"{WIKI}:1#chunk1" and result["example"]["windows"] == -(-lengths[0] // 512)
    # no warning that windows lack the end-of-text token: only the last one has it
    assert not any("train no" in w for w in result["warnings"])

    out = io.StringIO()
    print_report(result, file=out)
    text = out.getvalue()
    assert f"4 chunked into {windows - 1} windows" in text
    assert (f"kept      {sum(lengths):,} of {sum(lengths):,} tokens (100.0%); 4 records longer than max_length 512 "
            f"split into {windows - 1} windows (data.long_text: chunk)") in text


def test_truncate_is_an_explicit_choice_and_says_what_it_loses(tokenizer):
    lengths = full_tokens(tokenizer)
    result = inspect(str(WIKI), tokenizer=tokenizer, max_length=512, long_text="truncate")
    c = result["counts"]
    assert (c["ok"], c["truncated"], c["chunked"], c["examples"]) == (5, 4, 0, 5)
    kept = sum(min(n, 512) for n in lengths)
    assert result["tokens_kept"] == kept and result["tokens_total"] == sum(lengths)
    assert kept < 0.5 * sum(lengths)
    out = io.StringIO()
    print_report(result, file=out)
    assert (f"kept      {kept:,} of {sum(lengths):,} tokens ({100 * kept / sum(lengths):.1f}%); 4 records truncated at "
            "max_length 512 (4 raw texts: data.long_text: chunk trains them whole)") in out.getvalue()


def test_windows_are_the_rendered_tokens_and_an_overlap_is_context(tokenizer):
    from finetui.engine.data import chunking

    template = render.resolve_template(tokenizer, "auto")
    render.prepare_tokenizer(tokenizer, template)
    conv = load_records(WIKI).conversations[0][1]
    whole = render.render(conv, tokenizer, template, max_length=10**6)
    n = len(whole.input_ids)

    plain = chunking.render_record(conv, tokenizer, template, max_length=512)
    assert [len(ex.input_ids) for ex in plain.examples] == [512] * (n // 512) + [n % 512]
    assert [t for ex in plain.examples for t in ex.input_ids] == whole.input_ids
    assert all(ex.n_trained == ex.n_tokens and not ex.truncated for ex in plain.examples)
    assert "".join(ex.text for ex in plain.examples) == whole.text
    assert plain.examples[1].trained_text() == plain.examples[1].text

    lapped = chunking.render_record(conv, tokenizer, template, max_length=512, overlap=64)
    first, second = lapped.examples[0], lapped.examples[1]
    assert second.input_ids[:64] == first.input_ids[-64:]
    assert second.labels[:64] == [render.IGNORE] * 64 and second.labels[64:] == second.input_ids[64:]
    # every token is trained once, none twice
    assert sum(ex.n_trained for ex in lapped.examples) == n == lapped.kept_tokens == lapped.full_tokens
    assert lapped.examples[-1].input_ids[-1] == whole.input_ids[-1]

    # a conversation is never chunked: it is truncated as before
    chat = load_records(REPO / "tests" / "data" / "fidelity" / "sharegpt_12_turns_one_empty.jsonl").conversations[0][1]
    kept = chunking.render_record(chat, tokenizer, template, max_length=64)
    assert len(kept.examples) == 1 and kept.truncated and kept.kept_tokens == 64


def test_training_set_has_one_row_per_window_and_keeps_a_text_on_one_side(tokenizer, tmp_path, monkeypatch):
    from finetui.engine.config import Config
    from finetui.engine.data import dataset

    lengths = full_tokens(tokenizer)
    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    config = Config()
    config.data.path = str(WIKI)
    config.data.test_size = 0
    built = dataset.build(config, tokenizer)
    report = built.report
    windows = sum(-(-n // 512) for n in lengths)
    assert len(built.train) == windows
    assert (report.counts["records"], report.counts["ok"], report.counts["chunked"], report.counts["examples"]) == (
        5, 5, 4, windows)
    assert report.tokens_total == report.tokens_kept == sum(lengths) == sum(built.train["n_trained"])
    assert any(w.startswith(f"{sum(lengths):,} of {sum(lengths):,} tokens kept (100.0%); 4 records longer than "
                            "max_length 512 split into") for w in report.warnings)

    # the rows' places: file:line#chunkN (read back from the cached table)
    table, hit = dataset.tokenise(load_records(WIKI).conversations, tokenizer, built.template, max_length=512,
                                  train_on="assistant")
    assert hit
    places = table["place"]
    assert places[:4] == [f"{WIKI}:1#chunk1", f"{WIKI}:1#chunk2", f"{WIKI}:1#chunk3", f"{WIKI}:1#chunk4"]
    assert f"{WIKI}:3" in places  # the short article is one example, placed as it was

    # held out: whole articles, never a window of a trained one
    config.data.test_size = 0.2
    built = dataset.build(config, tokenizer)
    test_lengths = sorted(built.test["length"])
    assert len(built.train) + len(built.test) == windows
    assert any(sorted(min(512, n - 512 * k) for k in range(-(-n // 512))) == test_lengths for n in lengths)

    # data.long_text: truncate trains the first max_length tokens of each
    config.data.test_size = 0
    config.data.long_text = "truncate"
    report = dataset.build(config, tokenizer).report
    assert report.counts["examples"] == 5 and report.counts["truncated"] == 4
    assert report.tokens_kept == sum(min(n, 512) for n in lengths)


def test_long_text_settings_are_validated():
    from finetui.engine.config import ConfigError, validate

    assert validate({}).data.long_text == "chunk" and validate({}).data.text_overlap == 0
    with pytest.raises(ConfigError, match=r"data.long_text: Input should be 'chunk' or 'truncate'"):
        validate({"data": {"long_text": "cut"}})
    with pytest.raises(ConfigError, match=r"data.text_overlap: 256 must be less than half of data.max_length \(512\)"):
        validate({"data": {"text_overlap": 256}})
    assert validate({"data": {"text_overlap": 32, "max_length": 128}}).data.text_overlap == 32
    from finetui.engine.config import LONG_TEXT
    from finetui.engine.data import chunking

    assert LONG_TEXT == chunking.LONG_TEXT


def test_inspect_command_line_takes_long_text_and_overlap(tiny_model_dir):
    inspect_cli = inspect_runner(tiny_model_dir)

    def run(*args: str) -> subprocess.CompletedProcess:
        return inspect_cli(str(WIKI), *args)

    lapped = json.loads(run("--text-overlap", "64", "--json").stdout)
    assert lapped["text_overlap"] == 64 and lapped["counts"]["chunked"] == 4
    assert lapped["tokens_kept"] == lapped["tokens_total"]
    cut = run("--long-text", "truncate")
    assert cut.returncode == 0 and "4 records truncated at max_length 512" in cut.stdout
    bad = run("--text-overlap", "300")
    assert bad.returncode != 0 and "--text-overlap 300: must be at least 0 and less than half of --max-length (512)" in (
        bad.stderr + bad.stdout)
