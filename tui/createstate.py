"""What the "dataset from documents" screen knows and decides, without Textual: the
documents cut into passages as ``finetui data create`` cuts them, the output file and the
question writer, the ``finetui data create --progress jsonl`` subprocess's progress and
outcome, and the review of the pairs it wrote (accept, reject, edit, save). Plain Python
(no Textual, no torch): tests drive it without an app; ``tui.screens.create`` only shows it.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from finetui.engine.data.create import documents, passages, quality
from finetui.engine.data.create.store import side_paths
from finetui.tui.jobs import cli_command, last_json

DEFAULT_MODEL = "smollm2"
STOPPED_CODES = (143,)  # SIGTERM's exit status through a shell; a negative code is a signal too


def reviewed_path(out: Path) -> Path:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return out.with_name(f"{stem}.reviewed.jsonl")


# ---------------------------------------------------------------------------- documents and the writer


def document_problem(path: Path) -> str | None:
    """Why ``path`` cannot be added (an unsupported type, no such file), or None."""
    try:
        documents.kind_of(path)
    except documents.DocumentError as exc:
        return str(exc)
    if not path.is_file():
        return f"{path}: no such file"
    return None


Cut = tuple[passages.Passage, "str | None"]  # a passage and its boilerplate kind (None: prose)


def read_passages(paths: list[str]) -> tuple[list[Cut], dict[str, str]]:
    """The documents cut into passages, each with its boilerplate kind, and a line per
    document (``story.md (6 passages, 3 pages)``). Raises DocumentError / ValueError."""
    found: list[Cut] = []
    info: dict[str, str] = {}
    for path in paths:
        doc = documents.read(path)
        cut = passages.passages(doc)
        pages = f", {doc.pages} pages" if doc.pages else ""
        info[path] = f"{doc.name} ({len(cut)} passages{pages})"
        found += [(p, quality.boilerplate(p.text, p.heading)) for p in cut]
    return found, info


def passage_line(p: passages.Passage, kind: str | None) -> str:
    """A passage in the list: ``[kind] doc #3 p.2 Heading · 812 ch · its first words``."""
    page = f"p.{p.page} " if p.page else ""
    head = f"{p.heading.split(' > ')[-1][:18]} " if p.heading else ""
    words = " ".join(p.text.split())[:40]
    return f"{p.document[:12]} #{p.index} {page}{head}· {len(p.text)} ch · {words}"


def passage_where(p: passages.Passage) -> str:
    """Where a passage stands: document and index, characters, pages, heading."""
    where = [f"{p.document} passage {p.index}", f"characters {p.start:,}-{p.end:,}"]
    if p.page:
        where.append(f"page {p.page}" + (f"-{p.page_end}" if p.page_end and p.page_end != p.page else ""))
    if p.heading:
        where.append(p.heading)
    return " · ".join(where)


def passages_summary(found: list[Cut]) -> str:
    skipped = sum(1 for _, kind in found if kind)
    return f"{len(found)} passages, {skipped} boilerplate (no question asked) · g generates"


def writer_problem(out: str, url: str, model: str) -> str | None:
    """What is wrong with the output file and writer the dialog was given, or None."""
    if not out.endswith(".jsonl"):
        return "the dataset file ends in .jsonl"
    if url and not url.startswith(("http://", "https://")):
        return "the endpoint URL starts with http:// or https://"
    if url and not model:
        return "an endpoint needs the model name it serves"
    return None


@dataclass
class Plan:
    """What ``g`` generates: the documents, the output file, the question writer."""

    docs: list[str] = field(default_factory=list)
    out: str = ""
    model: str = DEFAULT_MODEL
    base_url: str = ""
    doc_info: dict[str, str] = field(default_factory=dict)

    def add(self, path: Path) -> None:
        if str(path) not in self.docs:
            self.docs.append(str(path))
        if not self.out:
            self.out = str(path.with_suffix(".jsonl"))

    def heading(self) -> str:
        """``story.md (6 passages) → story.jsonl · smollm2 (local)``."""
        writer = f"{self.model} @ {urlsplit(self.base_url).netloc}" if self.base_url else f"{self.model} (local)"
        docs = ", ".join(self.doc_info.get(d, Path(d).name) for d in self.docs) or "no documents"
        out = Path(self.out).name if self.out else "?"
        return f"{docs} → {out} · {writer}"

    def problem(self) -> str | None:
        """Why generation cannot start, or None."""
        if not self.docs:
            return "add a document first (a)"
        if not self.out:
            return "set the output file first (w)"
        return None

    def command(self) -> list[str]:
        argv = cli_command("data", "create", *self.docs, "--out", self.out, "--progress", "jsonl", "--json")
        if self.base_url:
            argv += ["--base-url", self.base_url]
        return argv + ["--model", self.model]


# ---------------------------------------------------------------------------- generation


class Progress:
    """One ``finetui data create`` run as its stderr tells it: JSON events (a passage done,
    a note) and plain log lines; then its report on stdout."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.total = 0
        self.done = 0
        self.last_question = ""
        self.log_tail: deque[str] = deque(maxlen=6)
        self.report: dict[str, Any] | None = None

    def reset(self) -> None:
        self.__init__()

    def take(self, line: str) -> bool:
        """One stderr line; True when it moved the progress (a passage event)."""
        line = line.rstrip("\n")
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict) and "event" in event:
            if event["event"] == "passage":
                self.total, self.done = event["total"], event["done"]
                self.counts[event["status"]] += 1
                if event.get("question") and event["status"] == "written":
                    self.last_question = event["question"]
                return True
            if event["event"] == "note":
                self.log_tail.append(event["message"])
        elif line.strip():
            self.log_tail.append(line[-200:])
        return False

    def counts_line(self) -> str:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items())) or "starting…"
        return f"{sum(self.counts.values())} of {self.total or '?'}: {counts}"

    def last_line(self) -> str:
        return f"last question: {self.last_question}" if self.last_question else ""

    def finish(self, code: int, stdout: str) -> tuple[str, bool]:
        """The process ended: (what the status line says, whether it is an error)."""
        report = last_json(stdout.strip().splitlines()[-1]) if stdout.strip() else None
        failure = report.get("error") if report is not None and report.get("ok") is False else None
        self.report = None if failure is not None else report
        if failure is not None:  # --json failures are engine.json_errors' object on stdout
            return f"finetui data create failed: {failure.get('message')}", True
        if self.report is not None:
            rejected = sum(self.report.get("rejected", {}).values())
            return (f"done: {self.report['written']} pairs written, {rejected} rejected by the gates, "
                    f"{self.report.get('failed', 0)} failed · v review"), code != 0
        if code < 0 or code in STOPPED_CODES:
            return "stopped · g continues where it stopped · v reviews what is written", False
        tail = self.log_tail[-1] if self.log_tail else f"exit status {code}"
        return f"finetui data create failed: {tail}", True


# ---------------------------------------------------------------------------- review


def question_of(record: dict[str, Any]) -> dict[str, Any]:
    """A pair's question: its user message."""
    return next(m for m in record["messages"] if m["role"] == "user")


def answer_of(record: dict[str, Any]) -> str:
    return next(m for m in record["messages"] if m["role"] == "assistant")["content"]


class Review:
    """The pairs written so far (``pending``) and those a quality gate refused
    (``rejected``, with the reason), one at a time: accept, reject, edit, save."""

    def __init__(self) -> None:
        self.pairs: list[dict[str, Any]] = []  # {"record", "status", "reason"}
        self.index = 0

    def load(self, out: Path) -> str | None:
        """Read the output file and its rejected pairs; the problem when there is nothing."""
        if not out.exists():
            return "nothing written yet: g generates"
        pairs = []
        for path, status in ((out, "pending"), (side_paths(out)[1], "rejected")):
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                pairs.append({"record": record, "status": status, "reason": record.pop("reason", None)})
        pairs.sort(key=lambda p: (str(p["record"]["source"].get("document")), p["record"]["source"].get("passage", 0)))
        self.pairs, self.index = pairs, 0
        return None if pairs else "no pairs yet"

    @property
    def pair(self) -> dict[str, Any]:
        return self.pairs[self.index]

    def heading(self) -> str:
        """``pair 2/5 · accepted · accepted 1 · rejected 0 · pending 4``."""
        pair = self.pair
        counts = Counter(p["status"] for p in self.pairs)
        state = pair["status"] + (f" ({pair['reason']})" if pair["reason"] and pair["status"] == "rejected" else "")
        return (f"pair {self.index + 1}/{len(self.pairs)} · {state} · accepted {counts['accepted']} · "
                f"rejected {counts['rejected']} · pending {counts['pending']}")

    def where(self) -> str:
        source = self.pair["record"]["source"]
        where = f"{source.get('document')} passage {source.get('passage')}"
        return where + (f" · page {source['page']}" if source.get("page") else "")

    def decide(self, status: str) -> None:
        """Mark the pair (accepted | rejected) and move to the next one."""
        self.pair["status"] = status
        self.index = min(self.index + 1, len(self.pairs) - 1)

    def move(self, step: int) -> None:
        self.index = max(0, min(len(self.pairs) - 1, self.index + step))

    def edit(self, question: str) -> str | None:
        """Keep an edited question and accept the pair; the problem when it is empty."""
        value = question.strip()
        if not value:
            return "the question is empty: write one, or esc"
        question_of(self.pair["record"])["content"] = value
        self.pair["status"] = "accepted"
        return None

    def save(self, out: Path) -> tuple[Path, int] | None:
        """The accepted and unreviewed pairs as ``OUT.reviewed.jsonl`` (written whole):
        (the file, how many pairs), None when there are none to review."""
        if not self.pairs:
            return None
        from finetui.engine import atomic

        target = reviewed_path(out)
        kept = [p["record"] for p in self.pairs if p["status"] != "rejected"]
        text = "".join(json.dumps({k: v for k, v in r.items() if k not in ("reply", "duplicate_of")},
                                  ensure_ascii=False) + "\n" for r in kept)
        atomic.write_text(target, text)
        return target, len(kept)
