"""A document's paragraphs -> passages, as seed 004 cuts a book.

Light module (stdlib). Within one section (the same headings), a paragraph shorter than
``min_chars`` (300) is merged with the paragraphs after it until the passage is long
enough; a paragraph longer than ``max_chars`` (2,000) is split at sentence boundaries into
pieces of about equal length, none longer than ``max_chars`` (a sentence longer than that
is cut between words). A short passage left at the end of a section joins the passage
before it when both fit in ``max_chars``. Passages never cross a heading: the heading is
each passage's metadata, with its first and last page. A passage's text is exactly
``document.text[start:end]``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Iterable

from finetui.engine.data.create.documents import Block, Document

MIN_CHARS = 300
MAX_CHARS = 2000

# A sentence ends at . ! ? or … (closing quotes or brackets may follow) before whitespace,
# except after a title or an initial (Mr. Dr. St. e.g. J.).
_END = re.compile(r"[.!?…][\"'’”)\]]*\s+")
_NO_END = re.compile(r"(\b(mr|mrs|ms|dr|prof|st|sr|jr|vs|etc|e\.g|i\.e|cf|no|vol|fig|ch|p|pp)\.|\b[A-Z]\.)\s+$",
                     re.IGNORECASE)


@dataclass
class Passage:
    document: str  # the file's name
    index: int  # 0-based, in the document
    text: str
    start: int  # span in Document.text
    end: int
    page: int | None = None
    page_end: int | None = None
    heading: str | None = None

    @property
    def hash(self) -> str:
        """What the progress sidecar keys a passage by: its document's name and its text."""
        return hashlib.sha256(f"{self.document}\n{self.text}".encode("utf-8")).hexdigest()[:24]

    def to_dict(self) -> dict:
        return {"document": self.document, "index": self.index, "span": [self.start, self.end], "page": self.page,
                "page_end": self.page_end, "heading": self.heading, "chars": len(self.text), "text": self.text}


def check_limits(min_chars: int, max_chars: int) -> None:
    if min_chars < 0:
        raise ValueError(f"--min-chars {min_chars}: must be 0 or more")
    if max_chars < 20:
        raise ValueError(f"--max-chars {max_chars}: must be at least 20")
    if min_chars > max_chars:
        raise ValueError(f"--min-chars {min_chars} is more than --max-chars {max_chars}")


def sentence_ends(text: str) -> list[int]:
    """Offsets in ``text`` where a sentence ends (after its punctuation and spaces)."""
    ends = []
    for m in _END.finditer(text):
        if _NO_END.search(text[:m.end()]):
            continue
        ends.append(m.end())
    return ends


def split_span(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """``text[start:end]`` cut into spans of at most ``max_chars``, at sentence ends where
    possible, about equal in length."""
    length = end - start
    if length <= max_chars:
        return [(start, end)]
    pieces = math.ceil(length / max_chars)
    target = length / pieces
    cuts = [start + e for e in sentence_ends(text[start:end]) if start + e < end]
    spans: list[tuple[int, int]] = []
    here = start
    while end - here > max_chars:
        limit = here + max_chars
        fitting = [c for c in cuts if here < c <= limit]
        # the sentence end nearest the even share, else the last one that fits
        wanted = here + target
        cut = min(fitting, key=lambda c: abs(c - wanted)) if fitting else None
        if cut is None:  # one sentence longer than max_chars: between words
            space = text.rfind(" ", here + 1, limit)
            cut = space + 1 if space > here else limit
        spans.append(_trim(text, here, cut))
        here = cut
    spans.append(_trim(text, here, end))
    return [s for s in spans if s[1] > s[0]]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sections(blocks: Iterable[Block]) -> list[list[Block]]:
    out: list[list[Block]] = []
    for block in blocks:
        if out and out[-1][-1].headings == block.headings:
            out[-1].append(block)
        else:
            out.append([block])
    return out


def passages(doc: Document, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[Passage]:
    """The document's passages (see the module's docstring)."""
    check_limits(min_chars, max_chars)
    text = doc.text
    result: list[Passage] = []
    for section in _sections(doc.blocks):
        # pieces: (start, end, page) of paragraphs, long ones split
        pieces = [(s, e, b.page_at(s), b.page_at(e - 1)) for b in section
                  for s, e in split_span(text, b.start, b.end, max_chars)]
        heading = section[0].heading
        first_of_section = len(result)
        current: list[tuple[int, int, int | None, int | None]] = []
        for piece in pieces:
            if current:
                length = piece[1] - current[0][0]
                if current[-1][1] - current[0][0] < min_chars and length <= max_chars:
                    current.append(piece)
                    continue
                result.append(_passage(doc, current, heading, len(result)))
            current = [piece]
        if current:
            short = current[-1][1] - current[0][0] < min_chars
            if short and len(result) > first_of_section and current[-1][1] - result[-1].start <= max_chars:
                before = result.pop()
                result.append(_passage(doc, [(before.start, before.end, before.page, before.page_end), *current],
                                       heading, len(result)))
            else:
                result.append(_passage(doc, current, heading, len(result)))
    return result


def _passage(doc: Document, pieces: list[tuple[int, int, int | None, int | None]], heading: str | None,
             index: int) -> Passage:
    start, end = pieces[0][0], pieces[-1][1]
    return Passage(doc.name, index, doc.text[start:end], start, end, pieces[0][2], pieces[-1][3], heading)
