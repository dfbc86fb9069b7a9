"""Make a dataset from documents, reached from Datasets (``n``).

Three views on one screen, keyboard only, at 80x24:

* **passages**: the documents picked (``a`` adds one: .txt .md .pdf .html .epub) cut into
  passages as ``finetui data create`` cuts them (``engine.data.create``, light modules:
  read in a worker thread), each with its page, heading and length, the selected one in
  full below; boilerplate (a table of contents, an index) is marked. ``w`` sets the output
  file and the question writer (a local model, default ``smollm2``, or an OpenAI-compatible
  endpoint).
* **progress** (``g`` generates): ``finetui data create ... --progress jsonl`` runs as a
  subprocess (the model is loaded there, never here); its JSON lines move the bar, the
  counts and the last question. ``x`` stops it; the output stays and ``g`` continues it.
* **review** (``v``): the pairs one by one, the question above its passage. ``y`` accepts,
  ``n`` rejects, ``i`` edits the question (enter keeps the edit and accepts), ``←``/``→``
  move. Pairs a quality gate refused are shown too, rejected, with the reason. ``ctrl+s``
  saves the accepted and unreviewed pairs as ``OUT.reviewed.jsonl``; ``b`` saves and opens
  that file in the dataset browser, ready to use in Settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, Input, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from finetui.engine.data.create import documents, passages, quality
from finetui.engine.data.create.store import side_paths
from finetui.tui.screens.base import FinetuiScreen
from finetui.tui.widgets.dialogs import DIALOG_CSS, PathDialog

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "smollm2"
HINTS = {
    "cr-passages": "a add document · w output & writer · g generate · v review · esc back",
    "cr-progress": "x stop · v review · esc passages (leaving the screen stops it)",
    "cr-review": "y accept · n reject · i edit · ←/→ move · ctrl+s save · b save & browse",
}


def reviewed_path(out: Path) -> Path:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return out.with_name(f"{stem}.reviewed.jsonl")


class WriterDialog(ModalScreen[dict | None]):
    """The output file and the question writer: a local model, or an endpoint."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = "WriterDialog { align: center middle; }\nWriterDialog Input { margin: 0; }\n" + DIALOG_CSS

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self.values = values

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static("Output and question writer", classes="dialog-title")
            yield Static("dataset file (.jsonl)", classes="dialog-hint")
            yield Input(self.values.get("out", ""), id="wr-out", compact=True)
            yield Static("endpoint URL (blank: a local model), e.g. http://127.0.0.1:8000/v1", classes="dialog-hint")
            yield Input(self.values.get("base_url", ""), id="wr-url", compact=True)
            yield Static("model (local: smollm2, a run, a folder; endpoint: its model name)", classes="dialog-hint")
            yield Input(self.values.get("model", ""), id="wr-model", compact=True)
            yield Static("", classes="dialog-error", id="wr-error")
            yield Static("enter ok · tab next · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#wr-out", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        out = self.query_one("#wr-out", Input).value.strip()
        url = self.query_one("#wr-url", Input).value.strip()
        model = self.query_one("#wr-model", Input).value.strip()
        if not out.endswith(".jsonl"):
            self.query_one("#wr-error", Static).update("the dataset file ends in .jsonl")
            return
        if url and not url.startswith(("http://", "https://")):
            self.query_one("#wr-error", Static).update("the endpoint URL starts with http:// or https://")
            return
        if url and not model:
            self.query_one("#wr-error", Static).update("an endpoint needs the model name it serves")
            return
        self.dismiss({"out": out, "base_url": url, "model": model or DEFAULT_MODEL})

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuestionInput(Input):
    BINDINGS = [Binding("escape", "leave", "Leave the question", id="datasets.create_question_leave")]

    def action_leave(self) -> None:
        self.screen.leave_edit(keep=False)


class CreateScreen(FinetuiScreen):
    MODE = "datasets"
    BINDINGS = [
        Binding("a", "add", "Add document", id="datasets.create_add"),
        Binding("w", "writer", "Output & writer", id="datasets.create_writer"),
        Binding("g", "generate", "Generate", id="datasets.create_generate"),
        Binding("x", "stop", "Stop", id="datasets.create_stop"),
        Binding("v", "review", "Review", id="datasets.create_review"),
        Binding("y", "decide('accepted')", "Accept", id="datasets.create_accept"),
        Binding("n", "decide('rejected')", "Reject", id="datasets.create_reject"),
        Binding("i", "edit", "Edit", id="datasets.create_edit"),
        Binding("left,k", "move(-1)", "Previous pair", show=False, id="datasets.create_prev"),
        Binding("right,j", "move(1)", "Next pair", show=False, id="datasets.create_next"),
        Binding("ctrl+s", "save", "Save", id="datasets.create_save"),
        Binding("b", "browse", "Browse", id="datasets.create_browse"),
        Binding("escape", "back", "Back", id="datasets.create_back"),
    ]
    DEFAULT_CSS = """
    CreateScreen #cr-head { height: 1; padding: 0 1; background: $surface; color: $text-muted; }
    CreateScreen #cr-switcher { height: 1fr; }
    CreateScreen #cr-list { height: 9; border: none; }
    CreateScreen #cr-detail, CreateScreen #cr-pair { padding: 0 1; }
    CreateScreen #cr-progress-view { padding: 1 1; }
    CreateScreen #cr-bar { margin-bottom: 1; }
    CreateScreen #cr-review-head { height: 1; padding: 0 1; background: $panel; }
    CreateScreen #cr-question { margin: 0 1; display: none; }
    CreateScreen #cr-question.-editing { display: block; }
    CreateScreen #cr-qtext { padding: 0 1; text-style: bold; color: $primary; }
    CreateScreen #cr-qtext.-editing { display: none; }
    CreateScreen #cr-status { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self, documents_: list[str] | None = None, out: str | None = None, model: str = DEFAULT_MODEL,
                 base_url: str = "") -> None:
        super().__init__()
        self.docs: list[str] = list(documents_ or [])
        self.out = out or ""
        self.model = model
        self.base_url = base_url
        self.passages: list[tuple[passages.Passage, str | None]] = []  # (passage, boilerplate kind)
        self.doc_info: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.counts: Counter = Counter()
        self.total = 0
        self.last_question = ""
        self.log_tail: deque[str] = deque(maxlen=6)
        self.report: dict[str, Any] | None = None
        self.pairs: list[dict[str, Any]] = []  # {"record", "status", "reason"}
        self.pair_index = 0
        self.editing = False

    # ------------------------------------------------------------------ layout

    def compose_body(self):
        yield Static("", id="cr-head")
        with ContentSwitcher(initial="cr-passages", id="cr-switcher"):
            with Vertical(id="cr-passages"):
                yield OptionList(id="cr-list")
                with VerticalScroll(id="cr-detail-scroll"):
                    yield Static("", id="cr-detail")
            with Vertical(id="cr-progress"):
                with Vertical(id="cr-progress-view"):
                    yield ProgressBar(total=None, id="cr-bar", show_eta=True)
                    yield Static("", id="cr-counts")
                    yield Static("", id="cr-last")
                    yield Static("", id="cr-log")
            with Vertical(id="cr-review"):
                yield Static("", id="cr-review-head")
                yield Static("", id="cr-qtext")
                yield QuestionInput("", id="cr-question", compact=True)
                with VerticalScroll(id="cr-pair-scroll"):
                    yield Static("", id="cr-pair")
        yield Static("", id="cr-status")

    def on_mount(self) -> None:
        if not self.out and self.docs:
            self.out = str(Path(self.docs[0]).with_suffix(".jsonl"))
        self.show_view("cr-passages")
        self.show_head()
        if self.docs:
            self.read_documents(list(self.docs))
        else:
            self.status("a adds a document: .txt .md .pdf .html .epub")

    @property
    def view(self) -> str:
        return self.query_one(ContentSwitcher).current or "cr-passages"

    def show_view(self, view: str) -> None:
        self.query_one(ContentSwitcher).current = view
        self.status(HINTS[view])
        self.refresh_bindings()
        if view == "cr-passages":
            self.query_one("#cr-list", OptionList).focus()
        else:
            self.set_focus(None)

    def status(self, message: str | Text, error: bool = False) -> None:
        text = message if isinstance(message, Text) else Text(message, style="bold red" if error else "")
        self.query_one("#cr-status", Static).update(text)

    def show_head(self) -> None:
        from urllib.parse import urlsplit

        writer = f"{self.model} @ {urlsplit(self.base_url).netloc}" if self.base_url else f"{self.model} (local)"
        docs = ", ".join(self.doc_info.get(d, Path(d).name) for d in self.docs) or "no documents"
        out = Path(self.out).name if self.out else "?"
        self.query_one("#cr-head", Static).update(
            Text(f"{docs} → {out} · {writer}", no_wrap=True, overflow="ellipsis"))

    # ------------------------------------------------------------------ documents and passages

    def action_add(self) -> None:
        if self.proc is not None:
            return
        self.app.push_screen(PathDialog("Add a document (.txt .md .pdf .html .epub)", "", self._check_doc),
                             self._doc_added)

    def _check_doc(self, path: Path) -> str | None:
        try:
            documents.kind_of(path)
        except documents.DocumentError as exc:
            return str(exc)
        if not path.is_file():
            return f"{path}: no such file"
        return None

    def _doc_added(self, path: Path | None) -> None:
        if path is None:
            return
        if str(path) not in self.docs:
            self.docs.append(str(path))
        if not self.out:
            self.out = str(path.with_suffix(".jsonl"))
        self.read_documents(list(self.docs))

    @work(thread=True, exclusive=True, group="create-read")
    def read_documents(self, paths: list[str]) -> None:
        self.app.call_from_thread(self.status, f"reading {len(paths)} document(s)…")
        found, info = [], {}
        for path in paths:
            try:
                doc = documents.read(path)
                cut = passages.passages(doc)
            except (documents.DocumentError, ValueError) as exc:
                self.app.call_from_thread(self.status, str(exc), True)
                return
            pages = f", {doc.pages} pages" if doc.pages else ""
            info[path] = f"{doc.name} ({len(cut)} passages{pages})"
            found += [(p, quality.boilerplate(p.text, p.heading)) for p in cut]
        self.app.call_from_thread(self.show_passages, found, info)

    def show_passages(self, found: list, info: dict[str, str]) -> None:
        self.passages = found
        self.doc_info = info
        options = []
        for p, kind in found:
            page = f"p.{p.page} " if p.page else ""
            head = f"{p.heading.split(' > ')[-1][:18]} " if p.heading else ""
            words = " ".join(p.text.split())[:40]
            line = Text(f"[{kind}] " if kind else "", style="italic")
            line.append(f"{p.document[:12]} #{p.index} {page}{head}· {len(p.text)} ch · {words}")
            if kind:
                line.stylize("dim")
            line.truncate(76, overflow="ellipsis")
            options.append(Option(line))
        listing = self.query_one("#cr-list", OptionList)
        listing.clear_options()
        listing.add_options(options)
        if options:
            listing.highlighted = 0
        skipped = sum(1 for _, kind in found if kind)
        self.show_head()
        self.status(f"{len(found)} passages, {skipped} boilerplate (no question asked) · g generates")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id != "cr-list" or event.option_index is None:
            return
        if not 0 <= event.option_index < len(self.passages):
            return
        p, kind = self.passages[event.option_index]
        where = [f"{p.document} passage {p.index}", f"characters {p.start:,}-{p.end:,}"]
        if p.page:
            where.append(f"page {p.page}" + (f"-{p.page_end}" if p.page_end and p.page_end != p.page else ""))
        if p.heading:
            where.append(p.heading)
        text = Text(" · ".join(where) + "\n", style="bold")
        if kind:
            text.append(f"boilerplate ({kind}): no question is asked of it\n", style="italic")
        text.append(p.text)
        self.query_one("#cr-detail", Static).update(text)

    def action_writer(self) -> None:
        if self.proc is not None:
            return
        values = {"out": self.out, "base_url": self.base_url, "model": self.model}
        self.app.push_screen(WriterDialog(values), self._writer_set)

    def _writer_set(self, values: dict | None) -> None:
        if values:
            self.out, self.base_url, self.model = values["out"], values["base_url"], values["model"]
            self.show_head()

    # ------------------------------------------------------------------ generation

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "finetui.engine.cli", "data", "create", *self.docs, "--out", self.out,
                "--progress", "jsonl", "--json"]
        if self.base_url:
            argv += ["--base-url", self.base_url, "--model", self.model]
        else:
            argv += ["--model", self.model]
        return argv

    def action_generate(self) -> None:
        if self.proc is not None:
            self.show_view("cr-progress")
            return
        if not self.docs:
            self.status("add a document first (a)", True)
            return
        if not self.out:
            self.status("set the output file first (w)", True)
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                         env=env, start_new_session=True)
        except OSError as exc:
            self.status(f"cannot start finetui data create: {exc}", True)
            return
        self.counts.clear()
        self.total = 0
        self.report = None
        self.log_tail.clear()
        self.query_one("#cr-bar", ProgressBar).update(total=None, progress=0)
        self.show_view("cr-progress")
        self.show_progress()
        proc = self.proc
        threading.Thread(target=self._read_events, args=(proc,), name="create-events", daemon=True).start()

    def _read_events(self, proc: subprocess.Popen) -> None:
        """Thread: the subprocess's JSON lines (stderr) to the UI; its report at the end."""
        for line in proc.stderr:
            line = line.rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self.app.call_from_thread(self.got_event, event)
            elif line.strip():
                self.app.call_from_thread(self.got_log, line)
        out = proc.stdout.read()
        code = proc.wait()
        self.app.call_from_thread(self.generation_done, proc, code, out)

    def got_event(self, event: dict[str, Any]) -> None:
        if not self.is_attached:  # the screen was left; the process was stopped
            return
        if event["event"] == "passage":
            self.total = event["total"]
            self.counts[event["status"]] += 1
            if event.get("question") and event["status"] == "written":
                self.last_question = event["question"]
            self.query_one("#cr-bar", ProgressBar).update(total=self.total, progress=event["done"])
        elif event["event"] == "note":
            self.log_tail.append(event["message"])
        self.show_progress()

    def got_log(self, line: str) -> None:
        if not self.is_attached:  # the screen was left; the process was stopped
            return
        self.log_tail.append(line[-200:])
        self.show_progress()

    def show_progress(self) -> None:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items())) or "starting…"
        self.query_one("#cr-counts", Static).update(Text(f"{sum(self.counts.values())} of {self.total or '?'}: {counts}"))
        self.query_one("#cr-last", Static).update(Text(f"last question: {self.last_question}" if self.last_question
                                                       else ""))
        self.query_one("#cr-log", Static).update(Text("\n".join(self.log_tail), style="dim"))

    def generation_done(self, proc: subprocess.Popen, code: int, out: str) -> None:
        if not self.is_attached:  # the screen was left; the process was stopped
            return
        if self.proc is proc:
            self.proc = None
        self.refresh_bindings()
        try:
            self.report = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        except ValueError:
            self.report = None
        failure = self.report.get("error") if isinstance(self.report, dict) and self.report.get("ok") is False else None
        if failure is not None:  # --json failures are engine.json_errors' object on stdout
            self.report = None
            self.status(f"finetui data create failed: {failure.get('message')}", True)
        elif self.report is not None:
            rejected = sum(self.report.get("rejected", {}).values())
            message = (f"done: {self.report['written']} pairs written, {rejected} rejected by the gates, "
                       f"{self.report.get('failed', 0)} failed · v review")
            self.status(message, error=code != 0)
        elif code < 0 or code == 143:
            self.status("stopped · g continues where it stopped · v reviews what is written")
        else:
            tail = self.log_tail[-1] if self.log_tail else f"exit status {code}"
            self.status(f"finetui data create failed: {tail}", True)
        self.show_progress()

    def action_stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        self.status("stopping…")

    def on_unmount(self) -> None:
        self.action_stop()

    # ------------------------------------------------------------------ review

    def action_review(self) -> None:
        out = Path(self.out) if self.out else None
        if out is None or not out.exists():
            self.status("nothing written yet: g generates", True)
            return
        self.pairs = []
        for path, status in ((out, "pending"), (side_paths(out)[1], "rejected")):
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                self.pairs.append({"record": record, "status": status, "reason": record.pop("reason", None)})
        self.pairs.sort(key=lambda p: (str(p["record"]["source"].get("document")), p["record"]["source"].get("passage", 0)))
        if not self.pairs:
            self.status("no pairs yet", True)
            return
        self.pair_index = 0
        self.show_view("cr-review")
        self.show_pair()

    def _question_message(self, record: dict[str, Any]) -> dict[str, Any]:
        return next(m for m in record["messages"] if m["role"] == "user")

    def show_pair(self) -> None:
        if not self.pairs:
            return
        pair = self.pairs[self.pair_index]
        record = pair["record"]
        source = record["source"]
        counts = Counter(p["status"] for p in self.pairs)
        state = pair["status"] + (f" ({pair['reason']})" if pair["reason"] and pair["status"] == "rejected" else "")
        head = (f"pair {self.pair_index + 1}/{len(self.pairs)} · {state} · accepted {counts['accepted']} · "
                f"rejected {counts['rejected']} · pending {counts['pending']}")
        self.query_one("#cr-review-head", Static).update(Text(head, no_wrap=True, overflow="ellipsis"))
        self.query_one("#cr-question", QuestionInput).value = self._question_message(record)["content"]
        self.query_one("#cr-qtext", Static).update(Text("Q: " + self._question_message(record)["content"]))
        answer = next(m for m in record["messages"] if m["role"] == "assistant")["content"]
        where = f"{source.get('document')} passage {source.get('passage')}"
        if source.get("page"):
            where += f" · page {source['page']}"
        text = Text(where + "\n", style="bold")
        text.append(answer)
        self.query_one("#cr-pair", Static).update(text)

    def action_decide(self, status: str) -> None:
        if self.view != "cr-review" or not self.pairs:
            return
        self.pairs[self.pair_index]["status"] = status
        if self.pair_index < len(self.pairs) - 1:
            self.pair_index += 1
        self.show_pair()

    def action_move(self, step: int) -> None:
        if self.view == "cr-review" and self.pairs:
            self.pair_index = max(0, min(len(self.pairs) - 1, self.pair_index + step))
            self.show_pair()

    def action_edit(self) -> None:
        if self.view != "cr-review" or not self.pairs:
            return
        question = self.query_one("#cr-question", QuestionInput)
        question.add_class("-editing")
        self.query_one("#cr-qtext").add_class("-editing")
        self.editing = True
        self.refresh_bindings()
        question.focus()
        question.cursor_position = len(question.value)
        self.status("enter keeps the question and accepts the pair · esc leaves it as it was")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "cr-question":
            event.stop()
            self.leave_edit(keep=True)

    def leave_edit(self, keep: bool) -> None:
        question = self.query_one("#cr-question", QuestionInput)
        pair = self.pairs[self.pair_index]
        if keep:
            value = question.value.strip()
            if not value:
                self.status("the question is empty: write one, or esc", True)
                return
            self._question_message(pair["record"])["content"] = value
            pair["status"] = "accepted"
        question.remove_class("-editing")
        self.query_one("#cr-qtext").remove_class("-editing")
        self.editing = False
        self.refresh_bindings()
        self.set_focus(None)
        self.status(HINTS["cr-review"])
        self.show_pair()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        review_only = {"decide", "edit", "move", "save", "browse"}
        if action in review_only and (self.view != "cr-review" or self.editing):
            return False
        if action in {"add", "writer"} and self.view != "cr-passages":
            return False
        if action in {"generate", "review"} and self.view == "cr-review":
            return False
        if action == "stop" and self.proc is None:
            return False
        return True

    def save(self) -> Path | None:
        if not self.pairs:
            return None
        target = reviewed_path(Path(self.out))
        kept = [p["record"] for p in self.pairs if p["status"] != "rejected"]
        from finetui.engine import atomic

        text = "".join(json.dumps({k: v for k, v in r.items() if k not in ("reply", "duplicate_of")},
                                  ensure_ascii=False) + "\n" for r in kept)
        atomic.write_text(target, text)
        self.status(f"saved {len(kept)} pairs to {target} · b opens it in the browser")
        return target

    def action_save(self) -> None:
        self.save()

    def action_browse(self) -> None:
        target = self.save()
        if target is None:
            return
        self.app.pop_screen()
        browser = self.app.screen
        check, opened = getattr(browser, "_check_open", None), getattr(browser, "_after_open", None)
        if check is None or opened is None:
            return
        problem = check(target)
        if problem:
            browser.status(problem, True)
        else:
            opened(target)

    def action_back(self) -> None:
        if self.view != "cr-passages":
            self.show_view("cr-passages")
            return
        self.app.pop_screen()
