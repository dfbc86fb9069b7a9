"""A chat template rendered once per conversation shape, then filled in by substitution.

Light module (the Jinja rendering itself is passed in by :mod:`engine.data.render`).

Rendering a chat template with Jinja costs some 40-60 us a record, as much as reading it;
``finetui data inspect`` on a million records spends a minute of CPU there. Most templates
write each message's content verbatim: the text of every conversation of one *shape* (its
roles in order, which contents are empty, the generation prompt) is then fixed text with
the contents in between. The first conversation of a shape is rendered by Jinja with a
sentinel in each content; the text around the sentinels is the skeleton, and the shape's
later conversations are the skeleton with their contents put in (the ``{% generation %}``
spans moved with them).

A skeleton is kept only when the template demonstrably writes contents untouched: it must
render, exactly as the skeleton filled with them, probe contents wrapped in whitespace
(templates that ``trim``) and, for each string literal the template source holds, contents
starting and ending with that literal (templates that look for ``</think>`` or
``<tool_call>`` in a content, or at how it starts). A template that fails any probe for a
shape (Llama 3's trims contents; Qwen 3's splits reasoning out of replies) renders that
shape with Jinja as before, as does every message with tool calls or other keys, a
conversation with tools, and a content that is only whitespace. The skeleton is Jinja's own
output cached, not a second implementation of any template; ``tests/test_skeleton.py``
compares both on every format and real template.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

ENABLED = True  # False: every conversation renders with Jinja (the equality tests run both)
MAX_SHAPES = 4096  # shapes kept per template (and tokenizer state); past it, Jinja renders
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters around a sentinel
_MAX_LITERAL = 400  # longer literals are template prose, not something looked for in a content

Spans = list[tuple[int, int]]
Render = Callable[[list[dict[str, Any]]], tuple[str, "Spans | None"]]


@dataclass(frozen=True)
class Skeleton:
    """Fixed text around slots; slot ``k`` takes the content of message ``slots[k]``."""

    pieces: tuple[str, ...]  # len(slots) + 1
    slots: tuple[int, ...]
    # generation spans, each end as (slot count before it, offset into that piece)
    spans: tuple[tuple[tuple[int, int], tuple[int, int]], ...] | None

    def fill(self, values: list[str]) -> tuple[str, Spans | None]:
        pieces = self.pieces
        parts = [pieces[0]]
        for value, piece in zip(values, pieces[1:]):
            parts.append(value)
            parts.append(piece)
        text = "".join(parts)
        if self.spans is None:
            return text, None
        starts = [0]  # where piece j starts in the text
        at = 0
        for piece, value in zip(pieces, values):
            at += len(piece) + len(value)
            starts.append(at)
        return text, [(starts[a] + da, starts[b] + db) for (a, da), (b, db) in self.spans]


def shape(messages: list[dict[str, Any]]) -> tuple | None:
    """The conversation's shape, or None when a skeleton cannot render it: a message with
    anything but a string role and a string content, or a content that is only whitespace
    (a template may test ``content.strip()``)."""
    out = []
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return None
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or type(content) is not str:
            return None
        if content and not content.strip():
            return None
        out.append((role, bool(content)))
    return tuple(out)


class Cache:
    """The skeletons of one template, for one tokenizer state (``env``: whatever else the
    rendering reads, e.g. the special tokens); a changed ``env`` starts afresh."""

    def __init__(self, source: str):
        self.source = source
        self.dated = "strftime_now" in source  # templates that write today's date
        self.env: Any = None
        self.shapes: dict[tuple, Skeleton | None] = {}
        self._literals: tuple[str, ...] | None = None

    def render(self, env: Any, messages: list[dict[str, Any]], key: Any, jinja: Render) -> tuple[str, Spans | None] | None:
        """(text, generation spans) of ``messages`` from the shape's skeleton, building it
        with ``jinja`` the first time; None when no skeleton renders this conversation."""
        if not ENABLED:
            return None
        form = shape(messages)
        if form is None:
            return None
        if self.dated:
            env = (env, time.strftime("%Y-%m-%d"))
        if env != self.env:
            self.env, self.shapes = env, {}
        full_key = (key, form)
        try:
            skeleton = self.shapes[full_key]
        except KeyError:
            if len(self.shapes) >= MAX_SHAPES:
                return None
            skeleton = self.shapes[full_key] = build(messages, jinja, self.literals())
        if skeleton is None:
            return None
        return skeleton.fill([messages[i]["content"] for i in skeleton.slots])

    def literals(self) -> tuple[str, ...]:
        if self._literals is None:
            self._literals = template_literals(self.source)
        return self._literals


def template_literals(source: str) -> tuple[str, ...]:
    """The string literals of a Jinja template that hold more than whitespace, in order."""
    import jinja2

    try:
        stream = jinja2.Environment().lexer.tokenize(source)
        found = [token.value for token in stream if token.type == "string"]
    except jinja2.TemplateSyntaxError:
        return ()
    return tuple(dict.fromkeys(v for v in found if isinstance(v, str) and v.strip() and len(v) <= _MAX_LITERAL))


def build(messages: list[dict[str, Any]], jinja: Render, literals: tuple[str, ...]) -> Skeleton | None:
    """The skeleton of this conversation's shape, or None when the template does not write
    every content verbatim (or fails to render the probes)."""
    slots = tuple(i for i, m in enumerate(messages) if m["content"])

    def render(values: list[str]) -> tuple[str, Spans | None]:
        probe = [dict(m) for m in messages]
        for i, value in zip(slots, values):
            probe[i]["content"] = value
        text, spans = jinja(probe)
        return text, (None if spans is None else [tuple(s) for s in spans])

    try:
        values = [f"{_OPEN}{k}{_CLOSE}" for k in range(len(slots))]
        text, spans = render(values)
        skeleton = _locate(text, spans, values, slots)
        if skeleton is None:
            return None
        probes = [[f"\n \t{_OPEN}{k} w\n\n{_CLOSE} \n" for k in range(len(slots))]]
        probes += [[f"{lit}{_OPEN}{k}{_CLOSE}{lit}" for k in range(len(slots))] for lit in literals]
        for values in probes:
            if render(values) != skeleton.fill(values):
                return None
    except Exception:  # the Jinja path says what is wrong, record by record
        return None
    return skeleton


def _locate(text: str, spans: Spans | None, values: list[str], slots: tuple[int, ...]) -> Skeleton | None:
    pieces: list[str] = []
    marks: list[tuple[int, int]] = []
    at = 0
    for value in values:
        found = text.find(value, at)
        if found < 0:
            return None
        pieces.append(text[at:found])
        marks.append((found, found + len(value)))
        at = found + len(value)
    pieces.append(text[at:])
    if any(_OPEN in p or _CLOSE in p for p in pieces):  # a content written twice
        return None
    ends = None
    if spans is not None:
        ends = []
        for span in spans:
            pair = []
            for pos in span:
                j = sum(1 for _, stop in marks if stop <= pos)
                if j < len(marks) and marks[j][0] < pos:  # inside a content: not a fixed place
                    return None
                pair.append((j, pos - (marks[j - 1][1] if j else 0)))
            ends.append(tuple(pair))
        ends = tuple(ends)
    return Skeleton(tuple(pieces), slots, ends)
