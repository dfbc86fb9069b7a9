"""The Eval screen's dialogs: evaluation options, and Export (merge an adapter into its
base with a chosen output folder and shard size).

They check what was typed and hand back a clean value; the screen runs the subprocess.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Static

from finetui.tui.widgets.dialogs import DIALOG_CSS
from finetui.tui.widgets.pathinput import PathInput

# transformers.utils.hub.convert_file_size_to_int: whole numbers; KB/MB/GB or KiB/MiB/GiB
SHARD_SIZE = re.compile(r"^\s*(\d+)\s*(KB|MB|GB|KIB|MIB|GIB)\s*$", re.IGNORECASE)
ROW_CSS = (".field-row { height: 1; }\n"
           ".field-row Label { width: 16; color: $text-muted; }\n"
           ".field-row Input { width: 1fr; }\n")


def shard_size_problem(value: str) -> str | None:
    """transformers' max_shard_size: a whole number and a unit (500MB, 2GB, 4GiB)."""
    if not SHARD_SIZE.match(value):
        return f"shard size {value.strip() or '(empty)'}: a whole number and a unit, e.g. 500MB, 2GB, 4GiB"
    if int(SHARD_SIZE.match(value).group(1)) <= 0:
        return "shard size must be more than 0"
    return None


def normal_shard_size(value: str) -> str:
    number, unit = SHARD_SIZE.match(value).groups()
    unit = unit.upper().replace("IB", "iB")
    return f"{number}{unit}"


@dataclass
class EvalOptions:
    compare_base: bool = True
    limit: int | None = None
    max_new_tokens: int = 64


class EvalDialog(ModalScreen[EvalOptions | None]):
    """Options for ``finetui eval RUN --json [--compare-base] [--limit N]``."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = "EvalDialog { align: center middle; }\n" + ROW_CSS + DIALOG_CSS

    def __init__(self, run_id: str, options: EvalOptions) -> None:
        super().__init__()
        self.run_id = run_id
        self.options = options

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(Text(f"Evaluate {self.run_id} on its held-out split"), classes="dialog-title")
            yield Checkbox("also evaluate the base model (--compare-base)", self.options.compare_base,
                           id="compare", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("examples")
                yield Input("" if self.options.limit is None else str(self.options.limit), id="limit",
                            placeholder="all", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("max new tokens")
                yield Input(str(self.options.max_new_tokens), id="max-new", compact=True)
            yield Static("", classes="dialog-error", id="error")
            yield Static("enter start · tab next field · space toggles · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#limit", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        limit_text = self.query_one("#limit", Input).value.strip()
        new_text = self.query_one("#max-new", Input).value.strip()
        error = self.query_one("#error", Static)
        limit = None
        if limit_text:
            if not limit_text.isdigit() or int(limit_text) < 1:
                error.update(f"examples: {limit_text} is not a whole number >= 1 (empty: all)")
                return
            limit = int(limit_text)
        if not new_text.isdigit() or int(new_text) < 1:
            error.update(f"max new tokens: {new_text or '(empty)'} is not a whole number >= 1")
            return
        self.dismiss(EvalOptions(self.query_one(Checkbox).value, limit, int(new_text)))

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass
class ExportOptions:
    out: Path
    shard_size: str


class ExportDialog(ModalScreen[ExportOptions | None]):
    """Where the merged model goes and how big its safetensors shards may be."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = "ExportDialog { align: center middle; }\n" + ROW_CSS + DIALOG_CSS

    def __init__(self, title: str, out: str, shard_size: str = "2GB", note: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.initial_out = out
        self.initial_size = shard_size
        self.note = note
        self._confirmed: Path | None = None

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(Text(self.title_text), classes="dialog-title")
            if self.note:
                yield Static(Text(self.note, style="dim"))
            with Horizontal(classes="field-row"):
                yield Label("output folder")
                yield PathInput(self.initial_out, id="out", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("shard size")
                yield Input(self.initial_size, id="shard", compact=True, placeholder="2GB")
            yield Static("", classes="dialog-error", id="error")
            yield Static("enter merge · tab complete / next field · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        field = self.query_one("#out", PathInput)
        field.focus()
        field.cursor_position = len(field.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._confirmed = None
        self.query_one("#error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.query_one("#error", Static)
        raw = self.query_one("#out", PathInput).value.strip()
        size = self.query_one("#shard", Input).value
        if not raw:
            error.update("enter an output folder")
            return
        out = Path(os.path.expanduser(raw))
        if out.exists() and not out.is_dir():
            error.update(Text(f"{raw}: a file; the output is a folder"))
            return
        problem = shard_size_problem(size)
        if problem:
            error.update(Text(problem))
            return
        if out.is_dir() and any(out.iterdir()) and self._confirmed != out:
            self._confirmed = out
            error.update(Text(f"{raw} is not empty: its model files are replaced; enter again to merge"))
            return
        self.dismiss(ExportOptions(out, normal_shard_size(size)))

    def action_cancel(self) -> None:
        self.dismiss(None)
