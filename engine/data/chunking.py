"""Raw text longer than ``max_length``: split into windows, or cut (``data.long_text``).

A chat conversation longer than ``max_length`` is truncated (its replies are where they
are; a window without its prompt would train replies to nothing). Raw pretraining text
(``Conversation.kind == "text"``: c4-style ``{"text": ...}``, ``.txt`` files, wiki dumps)
has no such structure, so with ``long_text="chunk"`` (the default) its tokens are split
into windows of ``max_length`` tokens, each one training example; a wiki article of 5,000
tokens is ten examples at 512 instead of its first 512 tokens. ``overlap`` tokens
(``data.text_overlap``) of each window repeat the end of the one before as context: there
they are not trained (they were, in the window before). ``long_text="truncate"`` keeps the
first ``max_length`` tokens, as a chat conversation does.

Every example is made by :func:`engine.data.render.render` (a window is a slice of the very
tokens it renders), so the dataset builder and ``finetui data inspect`` agree. The tokens
kept against the record's total (:attr:`Rendered.kept_tokens`, :attr:`Rendered.full_tokens`)
are what the reports say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from finetui.engine.data import bigrecords
from finetui.engine.data import render as render_mod
from finetui.engine.data.conversation import Conversation

LONG_TEXT = ("chunk", "truncate")  # engine.config.LONG_TEXT (a test checks)


@dataclass
class Rendered:
    """The training examples one record becomes."""

    examples: list[render_mod.Example]  # one, or the windows of a long text
    full_tokens: int  # the record's tokens before truncation or chunking
    kept_tokens: int  # of those, the tokens an example holds (an overlap counted once)

    @property
    def chunked(self) -> bool:
        return len(self.examples) > 1

    @property
    def truncated(self) -> bool:
        return any(ex.truncated for ex in self.examples)


def check(long_text: str, overlap: int, max_length: int) -> None:
    if long_text not in LONG_TEXT:
        raise ValueError(f"long_text: expected {' or '.join(LONG_TEXT)}, got {long_text!r}")
    if overlap < 0 or 2 * overlap >= max_length:
        raise ValueError(f"text_overlap: {overlap} must be at least 0 and less than half of max_length ({max_length})")


def render_record(
    conv: Conversation,
    tokenizer,
    template: render_mod.Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
    long_text: str = "chunk",
    overlap: int = 0,
) -> Rendered:
    """The examples of one record: ``render`` as it is, or, for raw text longer than
    ``max_length`` under ``long_text="chunk"``, its windows (raises RenderError as render)."""
    check(long_text, overlap, max_length)
    if bigrecords.is_big(conv, max_length):  # a 10 MB text: tokenised in pieces, memory stays flat
        return bigrecords.render_record(conv, tokenizer, template, train_on=train_on, max_length=max_length,
                                        long_text=long_text, overlap=overlap)
    ex = render_mod.render(conv, tokenizer, template, train_on=train_on, max_length=max_length)
    return _rendered(conv, ex, tokenizer, max_length=max_length, long_text=long_text, overlap=overlap)


def render_records(
    convs: Sequence[Conversation],
    tokenizer,
    template: render_mod.Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
    long_text: str = "chunk",
    overlap: int = 0,
) -> list[Rendered | render_mod.RenderError]:
    """:func:`render_record` of each record (its Rendered, or the RenderError it raises),
    the records rendered together (:func:`engine.data.render.render_many`): the same
    examples, for less."""
    check(long_text, overlap, max_length)

    def whole(conv):
        return bigrecords.render_record(conv, tokenizer, template, train_on=train_on, max_length=max_length,
                                        long_text=long_text, overlap=overlap)

    def batch(small):
        return render_mod.render_many(small, tokenizer, template, train_on=train_on, max_length=max_length)

    def finish(conv, ex):
        return _rendered(conv, ex, tokenizer, max_length=max_length, long_text=long_text, overlap=overlap)

    return _big_and_batched(convs, max_length, whole, batch, finish)


def _big_and_batched(convs, max_length, whole, batch, finish) -> list:
    """Each record's result, in order: ``whole(conv)`` for a record too big to tokenise whole,
    and for the others ``finish(conv, r)`` of its result in ``batch(records)`` (the small ones
    together); a RenderError, raised or batched, is the record's result."""
    out: list = [None] * len(convs)
    small = []
    for i, conv in enumerate(convs):
        if bigrecords.is_big(conv, max_length):
            try:
                out[i] = whole(conv)
            except render_mod.RenderError as exc:
                out[i] = exc
        else:
            small.append(i)
    for i, r in zip(small, batch([convs[i] for i in small])):
        try:
            out[i] = r if isinstance(r, render_mod.RenderError) else finish(convs[i], r)
        except render_mod.RenderError as exc:
            out[i] = exc
    return out


# what counting keeps of one example: (n_trained, n_tokens, truncated, notes, trains_end)
Part = tuple[int, int, bool, tuple[str, ...], bool]


@dataclass
class Counted:
    """:func:`render_record` counted: each example's numbers, no tokens."""

    parts: list[Part]  # one, or one per window
    full_tokens: int
    kept_tokens: int

    @property
    def chunked(self) -> bool:
        return len(self.parts) > 1


def count_records(
    convs: Sequence[Conversation],
    tokenizer,
    template: render_mod.Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
    long_text: str = "chunk",
    overlap: int = 0,
    end_id: int | None = None,
) -> list[Counted | render_mod.RenderError]:
    """:func:`render_records` counted (``trains_end``: whether ``end_id`` is trained; a
    window the next one continues counts as training it, it has no end token to train):
    the records rendered and tokenised together (:func:`engine.data.render.count_many`),
    without examples; a long text to split into windows and a record too big to tokenise
    whole are rendered by :func:`render_record`, as training renders them."""
    check(long_text, overlap, max_length)

    def whole(conv):
        return _counted_whole(conv, tokenizer, template, train_on, max_length, long_text, overlap, end_id)

    def batch(small):
        return render_mod.count_many(small, tokenizer, template, train_on=train_on, max_length=max_length,
                                     end_id=end_id)

    def finish(conv, c):
        if c.truncated and conv.kind == "text" and long_text == "chunk":  # windows
            return whole(conv)
        return Counted([(c.n_trained, c.n_tokens, c.truncated, tuple(c.notes), c.trains_end)],
                       c.full_tokens, c.n_tokens)

    return _big_and_batched(convs, max_length, whole, batch, finish)


def _counted_whole(conv, tokenizer, template, train_on, max_length, long_text, overlap, end_id):
    try:
        rendered = render_record(conv, tokenizer, template, train_on=train_on, max_length=max_length,
                                 long_text=long_text, overlap=overlap)
    except render_mod.RenderError as exc:
        return exc
    n = len(rendered.examples)
    parts = [(ex.n_trained, ex.n_tokens, bool(ex.truncated), tuple(ex.notes),
              k + 1 < n or (end_id is not None and end_id in ex.labels))
             for k, ex in enumerate(rendered.examples)]
    return Counted(parts, rendered.full_tokens, rendered.kept_tokens)


def _rendered(conv: Conversation, ex: render_mod.Example, tokenizer, *, max_length: int, long_text: str,
              overlap: int) -> Rendered:
    """A record's examples from its rendering: the example, or a long text's windows."""
    if not ex.truncated or conv.kind != "text" or long_text != "chunk":
        return Rendered([ex], ex.full_tokens, ex.n_tokens)
    # render's own text, tokenised as render tokenises it: the very ids, with their offsets
    enc = tokenizer(ex.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    windows = _windows(len(ids), max_length, overlap)
    examples = [_window(ex, ids, offsets, start, end, context) for start, end, context in windows]
    return Rendered(examples, len(ids), windows[-1][1])


def _windows(n: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, context tokens) of each window over ``n`` tokens. A last window of one
    token is left out: a causal LM predicts nothing from a single token."""
    out = []
    start = 0
    while True:
        end = min(start + size, n)
        out.append((start, end, overlap if start else 0))
        if end >= n:
            break
        start = end - overlap
    if len(out) > 1 and out[-1][1] - out[-1][0] < 2:
        out.pop()
    return out


def _window(ex: render_mod.Example, ids: Sequence[int], offsets, start: int, end: int, context: int):
    """One window of a long text as an Example: its slice of the text, the ids, and labels
    for every token but the ``context`` ones it repeats from the window before."""
    a, b = offsets[start][0], offsets[end - 1][1]
    text = ex.text[a:b]
    trained = [k >= context for k in range(end - start)]
    labels = [tid if t else render_mod.IGNORE for tid, t in zip(ids[start:end], trained)]
    spans: list[tuple[int, int]] = []
    for (s, e), t in zip(offsets[start:end], trained):
        if not t or e <= s:
            continue
        s, e = s - a, e - a
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], e))
        else:
            spans.append((s, e))
    return render_mod.Example(
        input_ids=list(ids[start:end]),
        labels=labels,
        text=text,
        trained_spans=spans,
        n_tokens=end - start,
        n_trained=sum(trained),
        truncated=False,
        kept_chars=len(text),
        full_tokens=end - start,
        notes=list(ex.notes),
    )
