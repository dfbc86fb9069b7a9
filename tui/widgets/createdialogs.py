"""The dialogs of the "dataset from documents" screen (``tui.screens.create``): the output
file and question writer, and the question being edited in review."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from finetui.tui.createstate import DEFAULT_MODEL, writer_problem
from finetui.tui.widgets.dialogs import DIALOG_CSS


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
        problem = writer_problem(out, url, model)
        if problem:
            self.query_one("#wr-error", Static).update(problem)
            return
        self.dismiss({"out": out, "base_url": url, "model": model or DEFAULT_MODEL})

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuestionInput(Input):
    BINDINGS = [Binding("escape", "leave", "Leave the question", id="datasets.create_question_leave")]

    def action_leave(self) -> None:
        self.screen.leave_edit(keep=False)
