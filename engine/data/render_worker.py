"""JSON-lines render server for the dataset browser: the tokenizer lives here, not in the UI.

Heavy (transformers via the tokenizer; ``datasets`` for hub ids): a worker process only.
The TUI starts one per (model, template, max_length, train_on, long_text, text_overlap,
roles) and talks to it on stdin/stdout, one JSON object a line::

    python -m finetui.engine.data.render_worker --model tiny [--revision R] [--template auto]
                                        [--max-length 512] [--train-on assistant]
                                        [--long-text chunk] [--text-overlap 0]
                                        [--roles '{"Host": "user"}']

It answers ``{"type": "ready", "template", "end_token", "model"}`` once the tokenizer is
loaded (or ``{"type": "fatal", "message"}`` and exits 1), then serves requests, each with an
``id`` the answer repeats:

``{"op": "render", "record": {...}, "format": "auto", "columns": {}, "tags": {}, "group": [...]}``
    -> ``{"type": "rendered", "format", "text", "trained_spans", "n_tokens", "n_trained",
    "full_tokens", "truncated", "kept_chars", "notes", "messages", "unused", "windows"}``
    (engine.data.chunking.render_record, the function that builds the training set: what is
    shown is what is trained; ``unused``: the record's columns that no field of the format
    read; ``windows``: each example a raw text longer than max_length becomes under
    ``long_text=chunk``, ``[{"text", "trained_spans", "n_tokens", "n_trained"}]``, the top-level
    fields being the first's; ``group``: the rows of a row-shaped transcript's conversation,
    ``record`` among them, converted together as the readers do)
``{"op": "lengths", "path", "format", "columns", "split", "subset", "dataset_dir", "limit"}``
    -> ``progress`` lines, then ``{"type": "lengths", "counts", "stats", "histogram",
    "total_tokens", "trained_tokens", "records_seen", "limited", "issues", "unused_columns",
    "notes"}`` (``counts`` has ``chunked`` records and the ``examples`` they all make)
``{"op": "records", "path", "split", "subset", "dataset_dir", "limit"}``
    -> ``{"type": "records", "records": [{"place", "data"}], "limited"}`` (hub datasets,
    which need ``datasets``)
``{"op": "cancel", "target": ID}`` stops a running ``lengths``/``records`` job.

Errors are ``{"type": "error", "message"}`` naming the place (``file:line: field ...``).
Render requests are served between chunks of a long job, so browsing stays responsive
while the histogram is computed. Closing stdin ends the process.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from typing import Any

CHUNK = 25  # records of a long job between looks at the request queue
DEFAULT_LIMIT = 5000


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out_lock = threading.Lock()
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[Any] = set()

    # ----------------------------------------------------------------- plumbing

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False, default=str)
        with self.out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                self.send({"type": "error", "id": None, "message": f"bad request: {exc.msg}"})
                continue
            if request.get("op") == "cancel":
                self.cancelled.add(request.get("target"))
                continue
            self.requests.put(request)
        self.requests.put(None)

    # ----------------------------------------------------------------- start-up

    def load(self) -> None:
        from finetui.engine.data import render
        from finetui.engine.data.inspection import load_tokenizer

        from finetui.engine.data import chunking, transcripts

        chunking.check(self.args.long_text, self.args.text_overlap, self.args.max_length)
        self.roles = transcripts.check_roles(json.loads(self.args.roles or "{}"))
        self.render_mod = render
        self.tokenizer = load_tokenizer(self.args.model)
        self.template = render.resolve_template(self.tokenizer, self.args.template)
        self.added = render.prepare_tokenizer(self.tokenizer, self.template)
        self.end_token = render.detect_end_token(self.tokenizer, self.template)

    # ----------------------------------------------------------------- requests

    def render_record(self, record: Any, fmt: str, columns: dict, tags: dict,
                      group: list | None = None) -> dict[str, Any]:
        from types import SimpleNamespace

        from finetui.engine.data import transcripts
        from finetui.engine.data.formats import RecordError, detect_one, to_conversation, unused_columns

        if fmt in (None, "", "auto"):
            fmt = detect_one(record, columns or None, tags or None)
            if fmt is None:
                keys = ", ".join(list(record)[:12]) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"cannot tell this record's format from its keys ({keys}); set data.format")
            if fmt == "text" and self.roles and transcripts.text_transcript([record], columns or None):
                fmt = "transcript"  # as the readers decide: Name: text lines with data.roles
        used: set[str] = set()
        try:
            if fmt == "transcript" and transcripts.is_row(record, columns or None):
                rows = [SimpleNamespace(data=r, line=None, row=i) for i, r in enumerate(group or [record])]
                reads: list[set[str]] = []
                conv = transcripts.from_rows(rows, columns or None, self.roles, reads)[0]
                used = set().union(*reads) if reads else set()
            else:
                conv = to_conversation(record, fmt, columns or None, tags or None, used=used, roles=self.roles)
        except RecordError as exc:
            raise ValueError(str(exc)) from None
        rendered = self.render_one(conv)
        ex = rendered.examples[0]
        return {
            "format": fmt,
            "text": ex.text,
            "trained_spans": [list(s) for s in ex.trained_spans],
            "n_tokens": ex.n_tokens,
            "n_trained": ex.n_trained,
            "full_tokens": rendered.full_tokens,
            "truncated": rendered.truncated,
            "kept_chars": ex.kept_chars,
            "notes": ex.notes,
            "messages": [m.to_dict() for m in conv.messages],
            "system": conv.system,
            "kind": conv.kind,
            "unused": unused_columns(record, used),
            "windows": [{"text": w.text, "trained_spans": [list(s) for s in w.trained_spans],
                         "n_tokens": w.n_tokens, "n_trained": w.n_trained}
                        for w in rendered.examples] if rendered.chunked else [],
        }

    def render_one(self, conv):
        """The examples of one conversation, as the dataset builder makes them."""
        from finetui.engine.data import chunking

        return chunking.render_record(conv, self.tokenizer, self.template, train_on=self.args.train_on,
                                      max_length=self.args.max_length, long_text=self.args.long_text,
                                      overlap=self.args.text_overlap)

    def serve_render(self, request: dict[str, Any]) -> None:
        try:
            result = self.render_record(request.get("record"), request.get("format", "auto"),
                                        request.get("columns") or {}, request.get("tags") or {},
                                        request.get("group"))
        except Exception as exc:  # a bad record is an answer, not a crash
            self.send({"type": "error", "id": request.get("id"), "message": _one_line(exc)})
            return
        self.send({"type": "rendered", "id": request.get("id"), **result})

    def pending_renders(self) -> None:
        """Serve queued render requests (they jump ahead of a long job)."""
        held = []
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                break
            if request is None or request.get("op") != "render":
                held.append(request)
            else:
                self.serve_render(request)
        for request in held:
            self.requests.put(request)

    def job_lengths(self, request: dict[str, Any]) -> None:
        from finetui.engine.data import dataset as data_mod
        from finetui.engine.data import readers
        from finetui.engine.data.columns import ColumnUse

        rid = request.get("id")
        limit = int(request.get("limit") or DEFAULT_LIMIT)
        collector = readers.IssueCollector("skip")
        column_use = ColumnUse()
        pairs = readers.iter_conversations(
            request["path"],
            format=request.get("format") or "auto",
            columns=request.get("columns") or None,
            report=collector,
            column_use=column_use,
            dataset_dir=request.get("dataset_dir"),
            split=request.get("split") or "train",
            subset=request.get("subset"),
            roles=self.roles or None,
        )
        lengths: list[int] = []
        counts = {"records": 0, "ok": 0, "invalid": 0, "truncated": 0, "no_trained": 0, "chunked": 0, "examples": 0}
        total_tokens = trained_tokens = 0
        issues: list[str] = []
        limited = False
        for n, (record, conv) in enumerate(pairs):
            if rid in self.cancelled:
                self.send({"type": "cancelled", "id": rid})
                return
            if n >= limit:
                limited = True
                break
            counts["records"] += 1
            try:
                rendered = self.render_one(conv)
            except Exception as exc:
                counts["invalid"] += 1
                if len(issues) < 50:
                    issues.append(f"{record.place}: {_one_line(exc)}")
                continue
            lengths.append(rendered.full_tokens)
            counts["truncated"] += rendered.truncated
            counts["chunked"] += rendered.chunked
            n_trained = sum(ex.n_trained for ex in rendered.examples)
            if n_trained == 0:
                counts["no_trained"] += 1
            else:
                counts["ok"] += 1
                counts["examples"] += sum(1 for ex in rendered.examples if ex.n_trained)
                total_tokens += sum(ex.n_tokens for ex in rendered.examples)
                trained_tokens += n_trained
            if n % CHUNK == CHUNK - 1:
                self.send({"type": "progress", "id": rid, "done": n + 1})
                self.pending_renders()
        counts["invalid"] += collector.count
        counts["records"] += collector.count + collector.skipped
        counts["skipped"], counts["repaired"] = collector.skipped, collector.repaired
        issues = [str(i) for i in [*collector.issues, *collector.skips, *collector.repairs][:50]] + issues
        self.send({
            "type": "lengths", "id": rid, "counts": counts,
            "stats": data_mod.length_stats(lengths), "histogram": data_mod.histogram(lengths, 10),
            "total_tokens": total_tokens, "trained_tokens": trained_tokens, "records_seen": len(lengths),
            "limited": limited, "limit": limit, "issues": issues[:50], "max_length": self.args.max_length,
            "long_text": self.args.long_text, "text_overlap": self.args.text_overlap,
            "unused_columns": column_use.to_list(), "notes": column_use.notes(),
        })

    def job_records(self, request: dict[str, Any]) -> None:
        from finetui.engine.data import readers

        rid = request.get("id")
        limit = int(request.get("limit") or DEFAULT_LIMIT)
        collector = readers.IssueCollector("skip")
        out = []
        limited = False
        for n, record in enumerate(readers.iter_records(request["path"], report=collector,
                                                        dataset_dir=request.get("dataset_dir"),
                                                        split=request.get("split") or "train",
                                                        subset=request.get("subset"), streaming=True)):
            if rid in self.cancelled:
                self.send({"type": "cancelled", "id": rid})
                return
            if n >= limit:
                limited = True
                break
            out.append({"place": record.place, "data": record.data})
            if n % CHUNK == CHUNK - 1:
                self.pending_renders()
        self.send({"type": "records", "id": rid, "records": out, "limited": limited,
                   "issues": [str(i) for i in collector.issues[:50]]})

    def run(self) -> int:
        try:
            self.load()
        except Exception as exc:
            self.send({"type": "fatal", "message": _one_line(exc)})
            return 1
        self.send({"type": "ready", "model": self.args.model, "template": self.template.label,
                   "end_token": self.end_token, "added_tokens": self.added})
        threading.Thread(target=self.read_stdin, daemon=True).start()
        jobs = {"lengths": self.job_lengths, "records": self.job_records}
        while True:
            request = self.requests.get()
            if request is None:
                return 0
            op = request.get("op")
            if op == "render":
                self.serve_render(request)
            elif op in jobs:
                try:
                    jobs[op](request)
                except Exception as exc:
                    self.send({"type": "error", "id": request.get("id"), "message": _one_line(exc)})
            else:
                self.send({"type": "error", "id": request.get("id"), "message": f"unknown op {op!r}"})


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetui.engine.data.render_worker", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--template", default="auto")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--train-on", choices=("assistant", "all"), default="assistant")
    p.add_argument("--long-text", choices=("chunk", "truncate"), default="chunk")
    p.add_argument("--text-overlap", type=int, default=0)
    p.add_argument("--roles", default="{}", help="data.roles as JSON: {speaker: role}")
    args = p.parse_args(argv)
    from finetui.engine.perf import import_cache

    import_cache.install()
    return Worker(args).run()


if __name__ == "__main__":
    sys.exit(main())
