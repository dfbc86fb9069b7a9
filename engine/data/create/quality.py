"""Quality gates for generated pairs, each one a counted reason in the final report.

Light module (stdlib). Before a passage is sent to the writer, :func:`boilerplate` says
whether it is a table of contents, an index or a list of numbers (no question to ask of
it). After, :func:`clean_question` takes the question out of the reply (a ``Question:``
prefix, quotes, a preamble line) and :func:`question_problem` refuses an empty, overlong
or not-a-question reply; :class:`NearDuplicates` refuses a question too close to one
already kept (Jaccard similarity of normalised word 3-shingles).
"""

from __future__ import annotations

import re
from collections import defaultdict

MAX_QUESTION_CHARS = 300
DUPLICATE_JACCARD = 0.8
SHINGLE_WORDS = 3

# reasons, as counted in the report
EMPTY = "empty question"
OVERLONG = "overlong question"
NOT_QUESTION = "not a question"
DUPLICATE = "near-duplicate question"
BOILERPLATE = "boilerplate passage"
EMPTY_ANSWER = "empty answer"  # --answer rewrite

_BOILER_HEADING = re.compile(
    r"^(table of )?contents$|^index$|^(general |subject |name )index$|^bibliography$|^references$|^copyright\b"
    r"|^list of (figures|tables|illustrations)$", re.IGNORECASE)
_TOC_LINE = re.compile(r"((\.\s*){3,}|…|\s{2,}|\t)\s*(\d{1,4}|[ivxlc]{1,6})\s*$|\s(\d{1,4})$", re.IGNORECASE)
_INDEX_ENTRY = re.compile(r"^[^\d,]{1,60}(,\s*\d{1,4}([-–]\d{1,4})?)+\s*$")
_PREFIX = re.compile(r"^\s*(\*\*)?(question|q|interviewer|interview question)\s*(\d+)?\s*[:.)-]\s*(\*\*)?\s*",
                     re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)
_QUESTION_START = re.compile(
    r"^(what|why|how|when|where|who|whom|whose|which|is|are|was|were|do|does|did|can|could|should|would|will|"
    r"have|has|had|may|might|must|shall|tell|describe|explain)\b", re.IGNORECASE)


def boilerplate(text: str, heading: str | None = None) -> str | None:
    """What kind of boilerplate a passage is ("table of contents", "index", "numbers"),
    or None for prose."""
    last = (heading or "").split(" > ")[-1].strip()
    if _BOILER_HEADING.search(last):
        return "index" if "index" in last.lower() else "table of contents"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3:
        if sum(1 for line in lines if _INDEX_ENTRY.match(line)) >= 0.6 * len(lines):
            return "index"
        if sum(1 for line in lines if _TOC_LINE.search(line)) >= 0.6 * len(lines):
            return "table of contents"
    words = _WORD.findall(text)
    if len(words) >= 20 and sum(1 for w in words if w.isdigit()) >= 0.4 * len(words):
        return "numbers"
    return None


def clean_question(reply: str) -> str:
    """The question in a writer's reply: the first line that ends with ``?`` (else the
    first non-empty line), without a ``Question:`` prefix, list marker or quotes."""
    lines = [line.strip() for line in (reply or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    cleaned = [_strip(line) for line in lines]
    for line in cleaned:
        if line.endswith("?"):
            return line
    return cleaned[0]


def _strip(line: str) -> str:
    line = re.sub(r"^\s*([-*•]|\d{1,2}[.)])\s+", "", line)
    line = _PREFIX.sub("", line).strip()
    line = line.strip("*_ ").strip()
    if len(line) >= 2 and line[0] in "\"'“‘" and line[-1] in "\"'”’":
        line = line[1:-1].strip()
    return line


def question_problem(question: str, max_chars: int = MAX_QUESTION_CHARS) -> str | None:
    """Why a cleaned question is refused (a reason of this module), or None."""
    if not question.strip():
        return EMPTY
    if len(question) > max_chars:
        return OVERLONG
    if not question.rstrip().endswith("?") and not _QUESTION_START.match(question):
        return NOT_QUESTION
    if len(_WORD.findall(question)) < 2:
        return NOT_QUESTION
    return None


def shingles(text: str, n: int = SHINGLE_WORDS) -> frozenset[str]:
    """Normalised word n-shingles (case and punctuation folded); the words themselves
    when the text has fewer than ``n``."""
    words = [w.casefold() for w in _WORD.findall(text)]
    if len(words) < n:
        return frozenset(words)
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


class NearDuplicates:
    """Questions kept so far, indexed by shingle: :meth:`match` finds one whose Jaccard
    similarity with a new question is at least ``threshold``."""

    def __init__(self, threshold: float = DUPLICATE_JACCARD):
        self.threshold = threshold
        self.sets: list[frozenset[str]] = []
        self.labels: list[str] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def match(self, text: str) -> str | None:
        """The label of a kept question this one nearly duplicates, or None."""
        mine = shingles(text)
        if not mine:
            return None
        overlap: dict[int, int] = defaultdict(int)
        for s in mine:
            for k in self.index.get(s, ()):
                overlap[k] += 1
        for k, common in overlap.items():
            union = len(mine) + len(self.sets[k]) - common
            if union and common / union >= self.threshold:
                return self.labels[k]
        return None

    def add(self, text: str, label: str) -> None:
        mine = shingles(text)
        k = len(self.sets)
        self.sets.append(mine)
        self.labels.append(label)
        for s in mine:
            self.index[s].append(k)
