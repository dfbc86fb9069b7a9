"""Records too big to tokenise whole: a 10 MB reply, a 10 MB raw text.

Tokenising a text costs about 300 bytes of memory per character on the way (the fast
tokenizer's alignments, then Python lists of ids and offsets): a 10 MB record took 3 GB.
A record whose text is longer than :func:`bound` characters (256k, or 64 per token of
``max_length``, whichever is more) never gets there:

* raw text split into windows (``long_text="chunk"``) is tokenised in pieces of
  :data:`PIECE_CHARS` cut before a space or line break, the pieces' ids and offsets joined
  in compact arrays, then cut into the same windows as :mod:`engine.data.chunking` makes;
* anything else is truncated at ``max_length`` anyway: it is rendered with each text cut
  once :func:`bound` characters of it precede the cut (the first ``max_length`` tokens lie
  well inside, checked by counting them), so ids and labels are those of the whole record,
  and the tokens of what was cut are counted in pieces, for the length the reports give.

Counts in pieces may differ from one pass over the whole text by a token where a piece is
cut; for a text that long (over 256k characters) only the lengths reported can differ.
Light module: the tokenizer is passed in; :mod:`engine.data.render` does the rendering.
"""

from __future__ import annotations

from array import array
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Iterator

from finetui.engine.data import render as render_mod
from finetui.engine.data.conversation import Conversation

BOUND_CHARS = 1 << 18  # a record with more characters of text than this is "big"
CHARS_PER_TOKEN = 64  # ... or than this many per token of max_length
PIECE_CHARS = 1 << 16  # characters tokenised at once
PIECES_AT_ONCE = 4  # pieces per tokenizer call
MARGIN = 64  # tokens past max_length the kept text must reach
KEEP_CHARS = 64  # what a cut text keeps at least (templates that look at its start)
_MARK = "\ue000finetui\ue001"


def bound(max_length: int) -> int:
    return max(BOUND_CHARS, CHARS_PER_TOKEN * max_length)


def size(conv: Conversation) -> int:
    """Characters of text in a conversation (raw text, system prompt, message contents)."""
    n = len(conv.text or "") + len(conv.system or "")
    return n + sum(len(m.content or "") for m in conv.messages)


def is_big(conv: Conversation, max_length: int) -> bool:
    return size(conv) > bound(max_length)


# ------------------------------------------------------------------------ tokenising in pieces


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[tuple[int, str]]:
    """(start, piece) cuts of ``text`` of at most ``size`` characters, each cut before a
    space or line break in the second half of the piece when there is one."""
    pos, n = 0, len(text)
    while pos < n:
        end = pos + size
        if end < n:
            cut = max(text.rfind(" ", pos + size // 2, end), text.rfind("\n", pos + size // 2, end))
            if cut > pos:
                end = cut
        yield pos, text[pos:end]
        pos = end


def _encode(tokenizer, parts: list[str]):
    return tokenizer(parts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text``, tokenised :data:`PIECES_AT_ONCE` pieces at a time."""
    total = 0
    batch: list[str] = []
    for _, piece in pieces(text):
        batch.append(piece)
        if len(batch) == PIECES_AT_ONCE:
            total += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
            batch = []
    if batch:
        total += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
    return total


class Offsets:
    """(start, end) character offsets in two compact arrays, indexed like a list of pairs."""

    def __init__(self) -> None:
        self.starts = array("i")
        self.ends = array("i")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return list(zip(self.starts[k], self.ends[k]))
        return self.starts[k], self.ends[k]


def encode_pieces(tokenizer, text: str) -> tuple[array, Offsets]:
    """Ids and offsets of ``text`` tokenised in pieces (offsets into ``text``)."""
    ids = array("i")
    offsets = Offsets()
    batch: list[tuple[int, str]] = []

    def flush() -> None:
        enc = _encode(tokenizer, [piece for _, piece in batch])
        for (start, _), piece_ids, piece_offsets in zip(batch, enc["input_ids"], enc["offset_mapping"]):
            ids.extend(piece_ids)
            offsets.starts.extend(start + int(a) for a, _ in piece_offsets)
            offsets.ends.extend(start + int(b) for _, b in piece_offsets)
        batch.clear()

    for item in pieces(text):
        batch.append(item)
        if len(batch) == PIECES_AT_ONCE:
            flush()
    if batch:
        flush()
    return ids, offsets


# ------------------------------------------------------------------------ big records


def text_windows(conv: Conversation, tokenizer, template, *, train_on: str, max_length: int, overlap: int):
    """The windows of a big raw text (``long_text="chunk"``): chunking's windows over its
    tokens in pieces. The text is what render makes of it (its BOS and EOS around)."""
    from finetui.engine.data import chunking

    marked = render_mod.render(Conversation(kind="text", text=_MARK), tokenizer, template,
                               train_on=train_on, max_length=max_length)
    before, _, after = marked.text.partition(_MARK)
    text = before + (conv.text or "") + after
    ids, offsets = encode_pieces(tokenizer, text)
    windows = chunking._windows(len(ids), max_length, overlap)
    whole = SimpleNamespace(text=text, notes=list(marked.notes))
    examples = [chunking._window(whole, ids, offsets, start, end, context) for start, end, context in windows]
    return chunking.Rendered(examples, len(ids), windows[-1][1])


def _cut(conv: Conversation, budget: int) -> tuple[Conversation, list[str], str]:
    """The conversation with every text cut once ``budget`` characters of text precede the
    cut (each cut text keeps at least KEEP_CHARS): (cut conversation, the parts cut off,
    the text before the first cut)."""
    used = 0
    removed: list[str] = []
    intact: list[str] = []

    def take(text: str | None) -> str | None:
        nonlocal used
        if not text:
            return text
        room = budget - used
        used += len(text)
        if room >= len(text):
            if not removed:
                intact.append(text)
            return text
        keep = max(room, KEEP_CHARS)
        if not removed and room > 0:
            intact.append(text[:room])
        removed.append(text[keep:])
        return text[:keep]

    system = take(conv.system)
    messages = [replace(m, content=take(m.content)) for m in conv.messages]
    text = take(conv.text)
    return replace(conv, system=system, messages=messages, text=text), removed, "".join(intact)


def render_truncated(conv: Conversation, tokenizer, template, *, train_on: str, max_length: int):
    """A big record rendered as it trains (its first ``max_length`` tokens), from its texts
    cut where the first ``max_length`` + MARGIN tokens are well behind; ``full_tokens``
    adds the tokens of what was cut, counted in pieces."""
    total = size(conv)
    budget = bound(max_length)
    while budget < total:
        cut, removed, intact = _cut(conv, budget)
        if count_tokens(tokenizer, intact) >= max_length + MARGIN:
            ex = render_mod.render(cut, tokenizer, template, train_on=train_on, max_length=max_length)
            if ex.truncated:
                extra = sum(count_tokens(tokenizer, part) for part in removed)
                return replace(ex, full_tokens=ex.full_tokens + extra)
        budget *= 4
    return render_mod.render(conv, tokenizer, template, train_on=train_on, max_length=max_length)


def render_record(conv: Conversation, tokenizer, template, *, train_on: str, max_length: int,
                  long_text: str, overlap: int) -> Any:
    """chunking.render_record for a big record (:func:`is_big`)."""
    from finetui.engine.data import chunking

    if conv.kind == "text" and long_text == "chunk":
        return text_windows(conv, tokenizer, template, train_on=train_on, max_length=max_length, overlap=overlap)
    ex = render_truncated(conv, tokenizer, template, train_on=train_on, max_length=max_length)
    return chunking.Rendered([ex], ex.full_tokens, ex.n_tokens)
