"""Trained tokens counted from token ids alone (engine.data.bytespans) are those the
tokenizer's character offsets give.

``finetui data inspect`` asks a byte-exact tokenizer for ids without offsets (a third
cheaper) and finds the token holding a character from the tokens' byte lengths. These tests
check that against ``Encoding.char_to_token`` at every character of realistic and
multilingual texts (emoji and CJK characters split across tokens included), on the tiny
model's byte-level BPE, on the same tokenizer split as Llama 3 and Qwen split (a Split step,
then ByteLevel), and on SmolLM2's real tokenizer; that whole counts are those of the path
with offsets on every realistic record, with most plain records taking the byte way; and
that tokenizers whose tokens are not the text's bytes are refused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finetui.engine.data import bytespans, chunking, readers, render

DATA = Path(__file__).resolve().parent / "data"
ALPACA = DATA / "datasets" / "llamafactory" / "alpaca_en_demo.json"
MULTILINGUAL = [
    ("Translate to Japanese: good morning", "おはようございます。今日はいい天気ですね 🌞"),
    ("Qu'est-ce qu'un café crème ?", "Un café crème est un expresso allongé de lait chaud — très répandu à Paris. ☕️"),
    ("Emoji only", "🎉🎉🎉👍🏽👨‍👩‍👧"),
    ("Mixed: Ελληνικά, русский, עברית, 中文", "Ναι. Да. כן. 是的。 done"),
    ("  leading spaces", "trailing spaces  "),
]
# Llama 3's and Qwen 2's pre-tokenizer: a Split on their pattern, then ByteLevel without regex
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _texts() -> list[str]:
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:60]
    pairs = [(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), r["output"]) for r in records]
    return [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in pairs + MULTILINGUAL]


def _split_like_llama3(tok):
    from tokenizers import Regex, pre_tokenizers

    tok = copy.deepcopy(tok)
    tok._tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def assert_every_character_placed_as_offsets_place_it(tok) -> None:
    backend = render._backend(tok)
    table = bytespans.ByteSpans.of(backend)
    assert table is not None, "a byte-level BPE tokenizer is byte-exact"
    texts = _texts()
    with_offsets = backend.encode_batch(texts, add_special_tokens=False)
    without = backend.encode_batch_fast(texts, add_special_tokens=False)
    checked = split_chars = 0
    for text, enc, fast in zip(texts, with_offsets, without):
        assert fast.ids == enc.ids
        for c, ch in enumerate(text):
            if ch.isspace() and table.trims:
                assert table.locate(text, fast.ids, [(c, c + 1)]) is None
                continue
            want = enc.char_to_token(c)
            assert table.locate(text, fast.ids, [(c, c + 1)]) == [(want, want)], (text, c, ch)
            checked += 1
            first = len(text[:c].encode("utf-8"))
            split_chars += _token_at(table, fast.ids, first) != _token_at(table, fast.ids, first + len(ch.encode()) - 1)
        # a span from each character to the end, as a reply's span runs to its end token
        spans = [(c, len(text) - 1) for c in range(0, len(text) - 1, 7) if not (table.trims and text[c].isspace())]
        assert table.locate(text, fast.ids, spans) == [(enc.char_to_token(a), enc.char_to_token(b - 1))
                                                        for a, b in spans]
    assert checked > 15_000
    assert split_chars > 10, "characters of several bytes cut across tokens were among them"


def _token_at(table, ids, byte: int) -> int:
    """The token holding ``byte`` (by the tokens' lengths)."""
    total = 0
    for k, i in enumerate(ids):
        total += table.lengths[i]
        if byte < total:
            return k
    raise AssertionError("past the end")


def test_tiny_byte_level_tokenizer(tiny_tokenizer):
    assert_every_character_placed_as_offsets_place_it(tiny_tokenizer)


def test_split_then_byte_level_as_llama3_and_qwen(tiny_tokenizer):
    assert_every_character_placed_as_offsets_place_it(_split_like_llama3(tiny_tokenizer))


def test_offsets_trimmed_of_whitespace(tiny_tokenizer):
    """A post-processor that trims whitespace off the offsets (RoBERTa's, some GPT-2s'):
    whitespace is left to the offsets, every other character placed as they place it."""
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    assert bytespans.ByteSpans.of(render._backend(tok)).trims
    assert_every_character_placed_as_offsets_place_it(tok)


@pytest.mark.real
def test_smollm2_real_tokenizer():
    from finetui.engine import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.fetch_builtin("smollm2"))
    assert_every_character_placed_as_offsets_place_it(tok)


def test_a_text_whose_lengths_do_not_add_up_is_left_to_offsets(tiny_tokenizer):
    backend = render._backend(tiny_tokenizer)
    table = bytespans.ByteSpans.of(backend)
    text = "<|im_start|>assistant\nHello there<|im_end|>"
    ids = backend.encode(text, add_special_tokens=False).ids
    assert table.locate(text, ids, [(22, len(text))]) is not None
    assert table.locate(text + "!", ids, [(22, len(text))]) is None  # ids of another text
    assert table.locate(text, ids, [(22, len(text) + 5)]) is None  # past the end
    assert table.locate(text, ids, [(30, 30)]) is None  # empty
    assert table.locate(text, [], [(0, 1)]) is None


def _tokenizer_json(tiny_model_dir) -> dict:
    return json.loads((Path(tiny_model_dir) / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("change", ["metaspace", "normalizer", "byte_fallback", "lstrip", "decoder"])
def test_tokenizers_whose_tokens_are_not_the_text_bytes_are_refused(tiny_model_dir, change):
    from tokenizers import Tokenizer

    spec = _tokenizer_json(tiny_model_dir)
    assert bytespans.ByteSpans.of(Tokenizer.from_str(json.dumps(spec))) is not None
    if change == "metaspace":  # SentencePiece-style: spaces become ▁, one is prepended
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
        spec["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    elif change == "normalizer":
        spec["normalizer"] = {"type": "NFKC"}
    elif change == "byte_fallback":
        spec["model"]["byte_fallback"] = True
    elif change == "lstrip":  # the token's offsets take the whitespace before it
        spec["added_tokens"][0]["lstrip"] = True
    elif change == "decoder":
        spec["decoder"] = None
    assert bytespans.ByteSpans.of(Tokenizer.from_str(json.dumps(spec))) is None


@pytest.mark.parametrize("template_name", ["tokenizer", "qa"])
def test_inspect_counts_are_those_of_offsets_and_most_records_count_from_bytes(tiny_tokenizer, monkeypatch,
                                                                               template_name):
    convs = [conv for _, conv in readers.load_records(str(ALPACA)).conversations]
    from finetui.engine.data.conversation import Conversation, Message

    convs += [Conversation(messages=[Message("user", q), Message("assistant", a)]) for q, a in MULTILINGUAL]
    for tok in (tiny_tokenizer, _split_like_llama3(tiny_tokenizer)):
        tok = copy.deepcopy(tok)
        template = render.resolve_template(tok, template_name)
        render.prepare_tokenizer(tok, template)
        end_id = tok.convert_tokens_to_ids(template.end_token)
        placed = []
        locate = bytespans.ByteSpans.locate

        def counting_locate(self, text, ids, spans):
            found = locate(self, text, ids, spans)
            placed.append(found is not None)
            return found

        for max_length in (512, 40):
            with monkeypatch.context() as m:
                m.setattr(bytespans.ByteSpans, "locate", counting_locate)
                by_bytes = chunking.count_records(convs, tok, template, max_length=max_length, end_id=end_id)
            with monkeypatch.context() as m:
                m.setattr(bytespans, "ENABLED", False)
                by_offsets = chunking.count_records(convs, tok, template, max_length=max_length, end_id=end_id)
            assert [(c.parts, c.full_tokens, c.kept_tokens) for c in by_bytes] == \
                [(c.parts, c.full_tokens, c.kept_tokens) for c in by_offsets]
        assert len(placed) >= 2 * len(convs) * 0.95 and sum(placed) > 0.95 * len(placed), (sum(placed), len(placed))
