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

import signal
import threading
from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Input, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from finetui.engine import spawn
from finetui.engine.data.create import documents
from finetui.tui import jobs
from finetui.tui.createstate import (DEFAULT_MODEL, Plan, Progress, Review, answer_of, document_problem,
                                     passage_line, passage_where, passages_summary, question_of, read_passages)
from finetui.tui.screens.base import FinetuiScreen
from finetui.tui.widgets.createdialogs import QuestionInput, WriterDialog
from finetui.tui.widgets.dialogs import PathDialog

HINTS = {
    "cr-passages": "a add document · w output & writer · g generate · v review · esc back",
    "cr-progress": "x stop · v review · esc passages (leaving the screen stops it)",
    "cr-review": "y accept · n reject · i edit · ←/→ move · ctrl+s save · b save & browse",
}


class CreateScreen(FinetuiScreen):
    MODE = "datasets"
    BINDINGS = [
        Binding("a", "add", "Add", id="datasets.create_add"),
        Binding("w", "writer", "Writer", id="datasets.create_writer"),
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
        self.plan = Plan(list(documents_ or []), out or "", model, base_url)
        self.passages: list = []  # (passage, boilerplate kind)
        self.proc = None  # the running `finetui data create`
        self.progress = Progress()
        self.review = Review()
        self.editing = False

    @property
    def out(self) -> str:
        return self.plan.out

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    @property
    def report(self):
        return self.progress.report

    @property
    def counts(self):
        return self.progress.counts

    @property
    def pairs(self) -> list[dict]:
        return self.review.pairs

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
        if not self.plan.out and self.plan.docs:
            self.plan.out = str(Path(self.plan.docs[0]).with_suffix(".jsonl"))
        self.show_view("cr-passages")
        self.show_head()
        if self.plan.docs:
            self.read_documents(list(self.plan.docs))
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
        self.query_one("#cr-head", Static).update(Text(self.plan.heading(), no_wrap=True, overflow="ellipsis"))

    # ------------------------------------------------------------------ documents and passages

    def action_add(self) -> None:
        if self.proc is not None:
            return
        self.app.push_screen(PathDialog("Add a document (.txt .md .pdf .html .epub)", "", document_problem),
                             self._doc_added)

    def _doc_added(self, path: Path | None) -> None:
        if path is not None:
            self.plan.add(path)
            self.read_documents(list(self.plan.docs))

    @work(thread=True, exclusive=True, group="create-read")
    def read_documents(self, paths: list[str]) -> None:
        self.app.call_from_thread(self.status, f"reading {len(paths)} document(s)…")
        try:
            found, info = read_passages(paths)
        except (documents.DocumentError, ValueError) as exc:
            self.app.call_from_thread(self.status, str(exc), True)
            return
        self.app.call_from_thread(self.show_passages, found, info)

    def show_passages(self, found: list, info: dict[str, str]) -> None:
        self.passages = found
        self.plan.doc_info = info
        options = []
        for p, kind in found:
            line = Text(f"[{kind}] " if kind else "", style="italic")
            line.append(passage_line(p, kind))
            if kind:
                line.stylize("dim")
            line.truncate(76, overflow="ellipsis")
            options.append(Option(line))
        listing = self.query_one("#cr-list", OptionList)
        listing.clear_options()
        listing.add_options(options)
        if options:
            listing.highlighted = 0
        self.show_head()
        self.status(passages_summary(found))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id != "cr-list" or event.option_index is None:
            return
        if not 0 <= event.option_index < len(self.passages):
            return
        p, kind = self.passages[event.option_index]
        text = Text(passage_where(p) + "\n", style="bold")
        if kind:
            text.append(f"boilerplate ({kind}): no question is asked of it\n", style="italic")
        text.append(p.text)
        self.query_one("#cr-detail", Static).update(text)

    def action_writer(self) -> None:
        if self.proc is not None:
            return
        values = {"out": self.plan.out, "base_url": self.plan.base_url, "model": self.plan.model}
        self.app.push_screen(WriterDialog(values), self._writer_set)

    def _writer_set(self, values: dict | None) -> None:
        if values:
            self.plan.out, self.plan.base_url, self.plan.model = values["out"], values["base_url"], values["model"]
            self.show_head()

    # ------------------------------------------------------------------ generation

    def command(self) -> list[str]:
        return self.plan.command()

    def action_generate(self) -> None:
        if self.proc is not None:
            self.show_view("cr-progress")
            return
        problem = self.plan.problem()
        if problem:
            self.status(problem, True)
            return
        try:
            self.proc = spawn.start(self.command(), text=True, encoding="utf-8", errors="replace")
        except OSError as exc:
            self.status(f"cannot start finetui data create: {exc}", True)
            return
        self.progress.reset()
        self.query_one("#cr-bar", ProgressBar).update(total=None, progress=0)
        self.show_view("cr-progress")
        self.show_progress()
        threading.Thread(target=self._read_events, args=(self.proc,), name="create-events", daemon=True).start()

    def _read_events(self, proc) -> None:
        """Thread: the subprocess's JSON lines (stderr) to the UI; its report at the end."""
        for line in proc.stderr:
            self.app.call_from_thread(self.got_line, line)
        out = proc.stdout.read()
        code = proc.wait()
        self.app.call_from_thread(self.generation_done, proc, code, out)

    def got_line(self, line: str) -> None:
        if not self.is_attached:  # the screen was left; the process was stopped
            return
        if self.progress.take(line):
            self.query_one("#cr-bar", ProgressBar).update(total=self.progress.total, progress=self.progress.done)
        self.show_progress()

    def show_progress(self) -> None:
        self.query_one("#cr-counts", Static).update(Text(self.progress.counts_line()))
        self.query_one("#cr-last", Static).update(Text(self.progress.last_line()))
        self.query_one("#cr-log", Static).update(Text("\n".join(self.progress.log_tail), style="dim"))

    def generation_done(self, proc, code: int, out: str) -> None:
        if not self.is_attached:  # the screen was left; the process was stopped
            return
        if self.proc is proc:
            self.proc = None
        self.refresh_bindings()
        message, error = self.progress.finish(code, out)
        self.status(message, error)
        self.show_progress()

    def action_stop(self) -> None:
        if self.proc is not None:
            jobs.signal_process(self.proc, signal.SIGTERM)
            self.status("stopping…")

    def on_unmount(self) -> None:
        self.action_stop()

    # ------------------------------------------------------------------ review

    def action_review(self) -> None:
        problem = self.review.load(Path(self.plan.out)) if self.plan.out else "nothing written yet: g generates"
        if problem:
            self.status(problem, True)
            return
        self.show_view("cr-review")
        self.show_pair()

    def show_pair(self) -> None:
        if not self.review.pairs:
            return
        record = self.review.pair["record"]
        self.query_one("#cr-review-head", Static).update(Text(self.review.heading(), no_wrap=True,
                                                              overflow="ellipsis"))
        self.query_one("#cr-question", QuestionInput).value = question_of(record)["content"]
        self.query_one("#cr-qtext", Static).update(Text("Q: " + question_of(record)["content"]))
        text = Text(self.review.where() + "\n", style="bold")
        text.append(answer_of(record))
        self.query_one("#cr-pair", Static).update(text)

    def action_decide(self, status: str) -> None:
        if self.view == "cr-review" and self.review.pairs:
            self.review.decide(status)
            self.show_pair()

    def action_move(self, step: int) -> None:
        if self.view == "cr-review" and self.review.pairs:
            self.review.move(step)
            self.show_pair()

    def action_edit(self) -> None:
        if self.view != "cr-review" or not self.review.pairs:
            return
        question = self.query_one("#cr-question", QuestionInput)
        self._editing(True)
        question.focus()
        question.cursor_position = len(question.value)
        self.status("enter keeps the question and accepts the pair · esc leaves it as it was")

    def _editing(self, on: bool) -> None:
        self.query_one("#cr-question", QuestionInput).set_class(on, "-editing")
        self.query_one("#cr-qtext").set_class(on, "-editing")
        self.editing = on
        self.refresh_bindings()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "cr-question":
            event.stop()
            self.leave_edit(keep=True)

    def leave_edit(self, keep: bool) -> None:
        if keep:
            problem = self.review.edit(self.query_one("#cr-question", QuestionInput).value)
            if problem:
                self.status(problem, True)
                return
        self._editing(False)
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
        saved = self.review.save(Path(self.plan.out))
        if saved is None:
            return None
        target, kept = saved
        self.status(f"saved {kept} pairs to {target} · b opens it in the browser")
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
