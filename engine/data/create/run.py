"""``finetui data create DOCS... --out FILE.jsonl``: a dataset made from documents.

Light module (stdlib and rich at import time). Each document is cut into passages
(:mod:`.passages`); boilerplate passages (tables of contents, indexes) are left out; for
every other passage the question writer (an OpenAI-compatible endpoint with
``--base-url``, else a local model, ``--model``, default the built-in ``smollm2``) writes
the question it answers, given the passage before it; each pair passes the quality gates
(:mod:`.quality`) and is appended to ``--out`` as a conversation in the messages format:

    {"messages": [{"role": "system", ...}?, {"role": "user", "content": QUESTION},
                  {"role": "assistant", "content": PASSAGE}],
     "source": {"document", "passage", "span", "page", "page_end", "heading", "hash"}}

Records are written in passage order; the same command run again continues where a
killed run stopped (:mod:`.store`). ``--preview`` prints the passages and writes nothing.
With ``--roles``, the documents are transcripts (``Name: text`` lines, or rows of
speaker/text) and each conversation is written as it is, through
:mod:`engine.data.transcripts` (no writer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from finetui.engine.data.create import documents, passages, quality
from finetui.engine.data.create.store import Store
from finetui.engine.data.create.writers import EndpointWriter, LocalWriter, PromptTemplate, WriterError

DEFAULT_LOCAL_MODEL = "smollm2"
SHOW_ERRORS = 3
FAIL_FAST = 3  # passages failed in a row before any succeeded: the run stops


def add_parser(data_sub: Any) -> None:
    """``finetui data create``, under ``finetui data``."""
    c = data_sub.add_parser(
        "create", help="make a dataset from documents (.txt .md .pdf .html .epub) or transcripts",
        description="Cut documents into passages, have a chat model write the question each passage answers, "
                    "and write the pairs as a JSONL dataset finetui trains on. Run the same command again to "
                    "continue after an interruption.")
    c.add_argument("documents", nargs="+", metavar="DOC", help="documents: .txt .md .pdf .html .epub")
    c.add_argument("--out", help="the dataset to write (.jsonl); beside it OUT.progress.jsonl and OUT.rejected.jsonl")
    c.add_argument("--min-chars", type=int, default=passages.MIN_CHARS,
                   help=f"merge paragraphs shorter than this (default {passages.MIN_CHARS})")
    c.add_argument("--max-chars", type=int, default=passages.MAX_CHARS,
                   help=f"split paragraphs longer than this at sentence ends (default {passages.MAX_CHARS})")
    c.add_argument("--preview", action="store_true", help="print the passages (with --json: one JSON object each) "
                                                          "and stop")
    w = c.add_argument_group("question writer")
    w.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                                      "(vLLM, llama.cpp server, Ollama, hosted APIs); without it a local model")
    w.add_argument("--model", help=f"the endpoint's model name; or a local model: a built-in, a run, a folder "
                                   f"(default {DEFAULT_LOCAL_MODEL})")
    w.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the endpoint's key (default OPENAI_API_KEY; unset: no key)")
    w.add_argument("--prompt", metavar="FILE", help="prompt template (default: engine/data/create/question_prompt.txt)")
    w.add_argument("--answer", choices=("passage", "rewrite"), default="passage",
                   help="the reply in each pair: the passage itself (default), or the writer's rewrite of it as "
                        "an answer to the question (a second request per passage)")
    w.add_argument("--rewrite-prompt", metavar="FILE",
                   help="with --answer rewrite: its template, with {question} and {passage} "
                        "(default: engine/data/create/answer_prompt.txt)")
    w.add_argument("--concurrency", type=int, default=4, help="endpoint requests at once (default 4)")
    w.add_argument("--retries", type=int, default=6, help="retries of a 429, 5xx or timeout (default 6)")
    w.add_argument("--retry-wait", type=float, default=1.0, metavar="S",
                   help="seconds before the first retry, doubled at each (default 1)")
    w.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default 120)")
    w.add_argument("--temperature", type=float, default=0.7, help="endpoint sampling temperature (default 0.7)")
    w.add_argument("--max-tokens", type=int, default=128, help="longest reply in tokens (default 128)")
    w.add_argument("--batch-size", type=int, default=8, help="local model: prompts generated at once (default 8)")
    o = c.add_argument_group("output")
    o.add_argument("--system", help="system prompt put in every record")
    o.add_argument("--max-question-chars", type=int, default=quality.MAX_QUESTION_CHARS,
                   help=f"refuse longer questions (default {quality.MAX_QUESTION_CHARS})")
    o.add_argument("--duplicate-threshold", type=float, default=quality.DUPLICATE_JACCARD,
                   help=f"refuse a question whose word-shingle Jaccard similarity with a kept one is at least this "
                        f"(default {quality.DUPLICATE_JACCARD})")
    o.add_argument("--keep-boilerplate", action="store_true",
                   help="write questions for tables of contents and indexes too")
    o.add_argument("--limit", type=int, metavar="N", help="at most N new passages this run")
    o.add_argument("--overwrite", action="store_true", help="start --out again instead of continuing it")
    o.add_argument("--roles", action="append", default=[], metavar="SPEAKER=ROLE,...",
                   help="the documents are transcripts: each speaker's role, e.g. --roles Host=user,Guest=assistant")
    o.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                   help="progress on stderr: a bar (auto: on a terminal) or one JSON object per passage")
    o.add_argument("--json", action="store_true", help="the final report as JSON on stdout")


# ---------------------------------------------------------------------------- report


@dataclass
class Report:
    out: str | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)
    passages: int = 0
    boilerplate: Counter = field(default_factory=Counter)
    already_done: int = 0
    new_written: int = 0
    written: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    left: int = 0
    repaired: list[str] = field(default_factory=list)
    writer: str | None = None
    elapsed_s: float = 0.0
    conversations: int = 0
    issues: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["boilerplate"] = dict(self.boilerplate)
        d["rejected"] = dict(self.rejected)
        return d

    def lines(self) -> list[str]:
        out = []
        for d in self.documents:
            pages = f", {d['pages']} pages" if d.get("pages") else ""
            what = f"{d.get('passages', 0)} passages" if "passages" in d else f"{d.get('conversations', 0)} conversations"
            out.append(f"{d['document']}{pages}: {what}")
        for line in self.repaired:
            out.append(f"repaired: {line}")
        if self.conversations or self.issues:
            out.append(f"conversations written: {self.written} ({self.new_written} this run) -> {self.out}")
            out.extend(f"  not used: {issue}" for issue in self.issues[:10])
            return out
        if self.boilerplate:
            parts = ", ".join(f"{n} {k}" for k, n in self.boilerplate.most_common())
            out.append(f"boilerplate passages left out: {sum(self.boilerplate.values())} ({parts})")
        if self.out is None:
            return out
        out.append(f"written: {self.written} ({self.new_written} this run, {self.already_done} done before) -> {self.out}")
        if self.rejected:
            parts = ", ".join(f"{n} {k}" for k, n in self.rejected.most_common())
            out.append(f"rejected by the quality gates: {sum(self.rejected.values())} ({parts}); see "
                       f"{Path(self.out).with_suffix('').name}.rejected.jsonl")
        else:
            out.append("rejected by the quality gates: 0")
        if self.retries:
            out.append(f"requests retried: {self.retries}")
        if self.failed:
            out.append(f"failed: {self.failed} (run the same command again to retry them)")
            out.extend(f"  {e}" for e in self.errors[:SHOW_ERRORS])
        if self.left:
            out.append(f"not started: {self.left} (--limit, or stopped; run the same command again to continue)")
        if self.writer:
            rate = f", {self.new_written / self.elapsed_s:.2f} pairs/s" if self.elapsed_s and self.new_written else ""
            out.append(f"writer: {self.writer}; {self.elapsed_s:.1f} s{rate}")
        return out


# ---------------------------------------------------------------------------- progress


class Progress:
    """A bar with ETA on stderr (rich) when it is a terminal, or JSON lines (``--progress
    jsonl``: what the TUI reads), or nothing."""

    def __init__(self, mode: str, total: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode, self.total, self.done = mode, total, 0
        self.counts: Counter = Counter()
        self.bar = None
        if mode == "bar" and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            from finetui.engine.console import console

            self.bar = Bar(TextColumn("questions"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
                           TimeRemainingColumn(), TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                           console=console(stderr=True), transient=False)
            self.task = self.bar.add_task("create", total=total, note="")
            self.bar.start()

    def step(self, status: str, passage: passages.Passage, question: str = "", reason: str | None = None) -> None:
        self.done += 1
        self.counts[status] += 1
        if self.bar is not None:
            note = ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items()))
            self.bar.update(self.task, completed=self.done, note=note)
        elif self.mode == "jsonl":
            event = {"event": "passage", "done": self.done, "total": self.total, "status": status,
                     "document": passage.document, "passage": passage.index, "question": question, "reason": reason}
            print(json.dumps(event, ensure_ascii=False), file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message)
        elif self.mode == "jsonl":
            print(json.dumps({"event": "note", "message": message}, ensure_ascii=False), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------- command


def parse_roles(items: Iterable[str]) -> dict[str, str]:
    from finetui.engine.data.inspection import parse_roles as parse

    return parse(list(items))


def passage_hash(p: passages.Passage) -> str:
    return p.hash


def read_all(paths: list[str], min_chars: int, max_chars: int) -> list[tuple[documents.Document, list[passages.Passage]]]:
    out = []
    for path in paths:
        doc = documents.read(path)
        out.append((doc, passages.passages(doc, min_chars, max_chars)))
    return out


def record(p: passages.Passage, question: str, system: str | None, writer: str | None = None,
           answer: str | None = None) -> dict[str, Any]:
    """A pair as the dataset holds it; ``answer``: a rewrite of the passage (None: the
    passage itself)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question},
                 {"role": "assistant", "content": p.text if answer is None else answer}]
    source = {"document": p.document, "passage": p.index, "span": [p.start, p.end], "page": p.page,
              "page_end": p.page_end, "heading": p.heading, "hash": p.hash, "writer": writer}
    if answer is not None:
        source["answer"] = "rewrite"
    return {"messages": messages, "source": source}


def _check_args(args: argparse.Namespace) -> None:
    for name in ("concurrency", "batch_size", "max_tokens", "max_question_chars"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be 1 or more")
    if args.retries < 0:
        raise ValueError(f"--retries {args.retries}: must be 0 or more")
    if not 0 < args.duplicate_threshold <= 1:
        raise ValueError(f"--duplicate-threshold {args.duplicate_threshold}: must be more than 0 and at most 1")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit {args.limit}: must be 0 or more")
    passages.check_limits(args.min_chars, args.max_chars)
    if not args.preview and not args.out:
        raise ValueError("--out FILE.jsonl is needed (or --preview to see the passages)")


def command(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.roles:
        return transcripts_command(args)
    started = time.perf_counter()
    report = Report(out=None if args.preview else str(args.out))
    try:
        docs = read_all(args.documents, args.min_chars, args.max_chars)
    except documents.DocumentError as exc:
        raise ValueError(str(exc)) from None
    if args.preview:
        return _preview(docs, args.json)
    template = PromptTemplate.load(args.prompt)
    if args.rewrite_prompt and args.answer != "rewrite":
        raise ValueError("--rewrite-prompt is for --answer rewrite")
    rewrite = PromptTemplate.load_rewrite(args.rewrite_prompt) if args.answer == "rewrite" else None
    writer = _writer(args)
    # What shapes the records: a dataset is continued only under the same; the writer may
    # change (another endpoint, another model), each record names its own.
    settings = {"min_chars": args.min_chars, "max_chars": args.max_chars, "prompt": template.fingerprint(),
                "system": args.system, "answer": "passage" if rewrite is None else f"rewrite {rewrite.fingerprint()}"}
    store = Store(args.out, settings, overwrite=args.overwrite).open()
    report.repaired = store.repaired
    report.writer = writer.label
    todo: list[tuple[passages.Passage, passages.Passage | None]] = []
    for doc, ps in docs:
        report.documents.append({"document": doc.name, "pages": doc.pages, "passages": len(ps)})
        report.passages += len(ps)
        for i, p in enumerate(ps):
            kind = None if args.keep_boilerplate else quality.boilerplate(p.text, p.heading)
            if kind:
                report.boilerplate[kind] += 1
            elif store.is_done(p.hash):
                report.already_done += 1
            else:
                todo.append((p, ps[i - 1] if i else None))
    if args.limit is not None:
        report.left = max(0, len(todo) - args.limit)
        todo = todo[: args.limit]
    dups = quality.NearDuplicates(args.duplicate_threshold)
    for question, label in store.kept_questions:
        dups.add(question, label)
    progress = Progress(args.progress, len(todo))
    for line in store.repaired:
        progress.note(line)

    def rewrite_prompt(p: passages.Passage, prev: passages.Passage | None, reply: str) -> str | None:
        """The second request of a pair (--answer rewrite), when its question passes the gates."""
        if rewrite is None:
            return None
        question = quality.clean_question(reply)
        if quality.question_problem(question, args.max_question_chars) is not None:
            return None
        return rewrite.render(p, prev, question=question)

    def commit(p: passages.Passage, reply: str | WriterError, answer: str | WriterError | None = None) -> None:
        if isinstance(answer, WriterError) and not isinstance(reply, WriterError):
            reply = answer
        if isinstance(reply, WriterError):
            if reply.fatal:
                raise reply
            report.failed += 1
            report.errors.append(f"{p.document} passage {p.index}: {reply}")
            progress.step("failed", p, reason=str(reply))
            if report.failed >= FAIL_FAST and report.new_written == 0 and not store.reasons:
                # nothing has worked yet: a wrong URL or a server that is down, not a bad passage
                raise WriterError(f"the first {report.failed} passages all failed, the last with: {reply}", fatal=True)
            return
        question = quality.clean_question(reply)
        reason = quality.question_problem(question, args.max_question_chars)
        answer_text = answer.strip() if isinstance(answer, str) else None
        rec = record(p, question, args.system, writer.model, answer_text)
        if reason is None and rewrite is not None and not answer_text:
            reason = quality.EMPTY_ANSWER
        if reason is None:
            match = dups.match(question)
            if match is not None:
                reason = quality.DUPLICATE
                rec["duplicate_of"] = match
        if reason is not None:
            rec["reply"] = reply
            store.reject(rec, reason)
            progress.step("rejected", p, question, reason)
            return
        store.write(rec)
        dups.add(question, f"{p.document} passage {p.index}")
        report.new_written += 1
        progress.step("written", p, question)

    try:
        if isinstance(writer, EndpointWriter):
            writer.on_retry = progress.note
            _run_endpoint(writer, template, rewrite_prompt, todo, commit, args.concurrency)
            report.retries = writer.retried
        else:
            _run_local(writer, template, rewrite_prompt, todo, commit, args.batch_size, progress)
    except WriterError as exc:
        raise ValueError(str(exc)) from None
    finally:
        progress.close()
        store.close()
        report.written = store.written()
        report.rejected = Counter(store.reasons)
        report.elapsed_s = round(time.perf_counter() - started, 2)
    _print(report, args.json)
    return 1 if report.failed else 0


def _writer(args: argparse.Namespace) -> EndpointWriter | LocalWriter:
    if args.base_url:
        if not args.model:
            raise ValueError("--base-url needs --model: the model name the endpoint serves")
        key = os.environ.get(args.api_key_env) if args.api_key_env else None
        return EndpointWriter(args.base_url, args.model, key, temperature=args.temperature, max_tokens=args.max_tokens,
                              timeout=args.timeout, retries=args.retries, backoff=args.retry_wait)
    return LocalWriter(args.model or DEFAULT_LOCAL_MODEL, max_new_tokens=min(args.max_tokens, 256),
                       batch_size=args.batch_size)


def _run_endpoint(writer: EndpointWriter, template: PromptTemplate, rewrite_prompt: Callable, todo: list,
                  commit: Callable, concurrency: int) -> None:
    """Requests run ``concurrency`` at a time, in daemon threads (an interrupted run does not
    wait for requests in flight); replies are committed in passage order."""
    results: list[Any] = [None] * len(todo)
    ready = [threading.Event() for _ in todo]
    queue_ = deque(range(len(todo)))
    lock = threading.Lock()

    def work() -> None:
        while not writer.stopped.is_set():
            with lock:
                if not queue_:
                    return
                i = queue_.popleft()
            p, prev = todo[i]
            try:
                reply = writer.ask(template.render(p, prev))
                second = rewrite_prompt(p, prev, reply)
                results[i] = (reply, writer.ask(second) if second is not None else None)
            except WriterError as exc:
                results[i] = (exc, None)
            except Exception as exc:  # noqa: BLE001 - said as this passage's failure, never lost in a thread
                results[i] = (WriterError(f"{type(exc).__name__}: {exc}"), None)
            ready[i].set()

    for k in range(min(concurrency, len(todo))):
        threading.Thread(target=work, name=f"writer-{k}", daemon=True).start()
    try:
        for i, (p, _) in enumerate(todo):
            ready[i].wait()
            commit(p, *results[i])
    finally:
        writer.stopped.set()  # the other requests give up: no new ones, no more retries


def _run_local(writer: LocalWriter, template: PromptTemplate, rewrite_prompt: Callable, todo: list,
               commit: Callable, batch_size: int, progress: Progress) -> None:
    if not todo:
        return
    progress.note(f"loading {writer.model}")
    writer.load()
    for k in range(0, len(todo), batch_size):
        batch = todo[k:k + batch_size]
        replies = writer.ask_many([template.render(p, prev) for p, prev in batch])
        seconds = {k: rewrite_prompt(p, prev, reply) for k, ((p, prev), reply) in enumerate(zip(batch, replies))
                   if not isinstance(reply, WriterError)}
        wanted = [k for k, prompt in seconds.items() if prompt is not None]
        answers = dict(zip(wanted, writer.ask_many([seconds[k] for k in wanted]))) if wanted else {}
        for k, ((p, _), reply) in enumerate(zip(batch, replies)):
            commit(p, reply, answers.get(k))


def _preview(docs: list, as_json: bool) -> int:
    for doc, ps in docs:
        if not as_json:
            pages = f", {doc.pages} pages" if doc.pages else ""
            print(f"== {doc.name}{pages}: {len(ps)} passages")
        for p in ps:
            kind = quality.boilerplate(p.text, p.heading)
            if as_json:
                print(json.dumps({**p.to_dict(), "boilerplate": kind, "hash": p.hash}, ensure_ascii=False))
            else:
                page = f" p.{p.page}" + (f"-{p.page_end}" if p.page_end and p.page_end != p.page else "") if p.page else ""
                flag = f" [boilerplate: {kind}]" if kind else ""
                head = f" {p.heading}" if p.heading else ""
                text = " ".join(p.text.split())
                print(f"[{p.index}]{page}{head} ({len(p.text)} chars){flag}: {text[:160]}{'…' if len(text) > 160 else ''}")
    return 0


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for line in report.lines():
            print(line)


# ---------------------------------------------------------------------------- transcripts


def transcripts_command(args: argparse.Namespace) -> int:
    """Each document a transcript; each conversation in it one record, as the role
    mapping makes it (engine.data.transcripts through the readers)."""
    from finetui.engine.data import readers
    from finetui.engine.data.formats import DataError

    roles = parse_roles(args.roles)
    if args.preview:
        raise ValueError("--preview shows passages; a transcript's conversations: finetui data inspect FILE --roles ...")
    report = Report(out=str(args.out))
    store = Store(args.out, {"roles": roles, "system": args.system, "kind": "transcript"},
                  overwrite=args.overwrite).open()
    report.repaired = store.repaired
    try:
        for path in args.documents:
            if not Path(path).exists():
                raise ValueError(f"{path}: no such file")
            try:
                result = readers.load_records(path, format="transcript", roles=roles)
            except DataError as exc:
                raise ValueError(str(exc)) from None
            name = Path(path).name
            report.documents.append({"document": name, "conversations": len(result.conversations)})
            report.issues += [str(issue) for issue in result.issues]
            for i, (raw, conv) in enumerate(result.conversations):
                messages = conv.to_messages()
                if args.system and not conv.system:
                    messages.insert(0, {"role": "system", "content": args.system})
                h = hashlib.sha256(f"{name}\n{json.dumps(messages, ensure_ascii=False)}".encode()).hexdigest()[:24]
                report.conversations += 1
                if store.is_done(h):
                    report.already_done += 1
                    continue
                store.write({"messages": messages,
                             "source": {"document": name, "conversation": i, "place": raw.place, "hash": h}})
                report.new_written += 1
    finally:
        store.close()
    report.written = store.written()
    _print(report, args.json)
    return 0 if report.written else 1
