"""Where a character falls among a text's tokens, from the token ids alone.

``finetui data inspect`` counts trained tokens by asking which token holds the first and
the last character of each trained span (``Encoding.char_to_token``). That needs the
tokenizer's character offsets, and tracking them is about a third of what the Rust
tokenizer spends on a record (alpaca records, byte-level BPE under mimalloc: ~75 us a
record with offsets, ~48 without). For a *byte-exact* tokenizer, the tokens of a text are
its UTF-8 bytes cut in pieces: every token's length in bytes is known from the vocabulary,
so the token holding byte ``b`` is found from the running sum of those lengths.

A tokenizer is byte-exact here when nothing rewrites the text before the model splits it:
no normalizer, a ByteLevel pre-tokenizer (alone or after Split steps, as GPT-2, Llama 3,
Qwen and SmolLM2 have it), a ByteLevel decoder, and added tokens that strip no whitespace
around them. Each text is checked too: its tokens' lengths must add up to its own length
in bytes, or :func:`ByteSpans.locate` gives up and the caller tokenises it with offsets.

Heavy-free module (the tokenizer is passed in).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Any

ENABLED = True  # False: every text is tokenised with offsets (the equality tests run both)

# a token whose byte length is unknown: any text holding it fails the length check
UNKNOWN = 1 << 40


class ByteSpans:
    """The byte length of every token id of one byte-exact tokenizer."""

    __slots__ = ("lengths", "trims")

    def __init__(self, lengths: list[int], trims: bool):
        self.lengths = lengths
        self.trims = trims  # the post-processor trims whitespace off the tokens' offsets

    @classmethod
    def of(cls, backend: Any) -> "ByteSpans | None":
        """The table of a Rust ``tokenizers.Tokenizer``, or None when it is not byte-exact."""
        if backend is None or not _byte_exact(backend):
            return None
        from tokenizers import pre_tokenizers

        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        added = backend.get_added_tokens_decoder()
        if any(tok.lstrip or tok.rstrip for tok in added.values()):
            return None  # such a token's offsets hold the whitespace it took
        vocab = backend.get_vocab(with_added_tokens=True)
        lengths = [UNKNOWN] * (max(vocab.values(), default=-1) + 1)
        for piece, i in vocab.items():
            if i in added:
                lengths[i] = len(added[i].content.encode("utf-8"))
            elif alphabet.issuperset(piece):
                lengths[i] = len(piece)  # one ByteLevel character is one byte
        return cls(lengths, _trims_offsets(backend.post_processor))

    def locate(self, text: str, ids: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """For each (start_char, end_char) span, the tokens holding its first and last
        character, as ``(char_to_token(start), char_to_token(end - 1))``; None where that
        cannot be told from the ids (the caller then asks the tokenizer for offsets):
        the lengths do not add up to the text's, a span is empty or past the end, or the
        tokenizer trims whitespace off its offsets and an end character is whitespace."""
        if not ids:
            return None
        lengths = self.lengths
        try:
            ends = list(accumulate(map(lengths.__getitem__, ids)))
        except IndexError:
            return None
        ascii_only = text.isascii()
        if ends[-1] != (len(text) if ascii_only else len(text.encode("utf-8"))):
            return None
        n_chars = len(text)
        found = []
        for start, end in spans:
            if not 0 <= start < end <= n_chars:
                return None
            if self.trims and (text[start].isspace() or text[end - 1].isspace()):
                return None
            if ascii_only:
                first, last = start, end - 1
            else:
                first, last = len(text[:start].encode("utf-8")), len(text[:end - 1].encode("utf-8"))
            found.append((bisect_right(ends, first), bisect_right(ends, last)))
        return found


def _byte_exact(backend: Any) -> bool:
    """No normalizer, ByteLevel pre-tokenizer (possibly after Splits), ByteLevel decoder, BPE."""
    from tokenizers import decoders, models, pre_tokenizers

    if backend.normalizer is not None or not isinstance(backend.model, models.BPE):
        return False
    if getattr(backend.model, "byte_fallback", False):
        return False
    if not isinstance(backend.decoder, decoders.ByteLevel):
        return False
    pre = backend.pre_tokenizer
    steps = list(pre) if isinstance(pre, pre_tokenizers.Sequence) else [pre]
    if not steps or not isinstance(steps[-1], pre_tokenizers.ByteLevel):
        return False
    return all(isinstance(step, pre_tokenizers.Split) for step in steps[:-1])


def _trims_offsets(processor: Any) -> bool:
    """Whether ``processor`` (a tokenizer's post-processor) trims whitespace off the tokens'
    offsets; True for a kind not known here."""
    from tokenizers import processors

    if processor is None or isinstance(processor, (processors.TemplateProcessing, processors.BertProcessing)):
        return False
    if isinstance(processor, (processors.ByteLevel, processors.RobertaProcessing)):
        return bool(processor.trim_offsets)
    if isinstance(processor, processors.Sequence):
        return any(_trims_offsets(step) for step in processor)
    return True
