"""The Chat screen's dialogs: what to load, the generation settings, saving a conversation
as a training record.

Like the other dialogs (tui.widgets.dialogs) they never do the work: they check what was
typed, say what is wrong and stay open, and hand a clean value back to the screen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, RadioButton, RadioSet, Static
from textual.widgets.option_list import Option

from finetui.tui.chatstate import FIELDS, parse_params
from finetui.tui.widgets.dialogs import DIALOG_CSS
from finetui.tui.widgets.fieldform import show_value
from finetui.tui.widgets.pathinput import PathInput

UNLOAD = "\x00unload"  # LoadDialog's answer for "unload what is loaded"


def model_path_problem(raw: str) -> str | None:
    """A model given by path that cannot be one (hub ids and ``tiny`` are left to the
    worker, which knows the local cache)."""
    value = raw.strip()
    if not value:
        return "enter a model folder, a hub id or tiny"
    if value == "tiny":
        return None
    path = Path(os.path.expanduser(value))
    if path.exists():
        if not path.is_dir():
            return f"{value}: a file, not a model folder (config.json or adapter_config.json inside)"
        if not any((path / name).exists() for name in ("config.json", "adapter_config.json", "config.yaml")):
            return f"{value}: no config.json or adapter_config.json in this folder: not a model"
        return None
    looks_local = value.startswith(("/", ".", "~")) or value.count("/") != 1
    if looks_local:
        return f"{value}: no such folder"
    return None  # org/name: a hub id, loaded from the local cache by the worker


class LoadDialog(ModalScreen[str | None]):
    """Pick a run's result, the demo model, or type a folder / hub id."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = ("LoadDialog { align: center middle; }\n"
                   "LoadDialog OptionList, LoadDialog OptionList:focus { height: auto; max-height: 12; border: none; padding: 0; }\n"
                   "LoadDialog #load-path-row { height: 1; }\n"
                   "LoadDialog #load-path-row Label { width: auto; padding: 0 1 0 0; }\n" + DIALOG_CSS)

    def __init__(self, items: list[tuple[str, str, str]], current: str | None = None, problems: str = "") -> None:
        """items: (target, title, description)."""
        super().__init__()
        self.items = items
        self.current = current
        self.problems = problems

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static("Load a model to chat with", classes="dialog-title")
            options = []
            if self.current:
                prompt = Text("Unload", style="bold")
                prompt.append(f"  {self.current}: end its worker, free its memory", style="dim")
                options.append(Option(prompt, id=UNLOAD))
            for target, title, description in self.items:
                prompt = Text(title, style="bold", no_wrap=True, overflow="ellipsis")
                if description:
                    prompt.append(f"  {description}", style="dim")
                options.append(Option(prompt, id=target))
            yield OptionList(*options, id="load-options")
            with Horizontal(id="load-path-row"):
                yield Label("or a folder / hub id:")
                yield PathInput("", id="load-path", compact=True, placeholder="path/to/model or org/name")
            yield Static(Text(self.problems), classes="dialog-error", id="error")
            yield Static("↑/↓ choose · enter load · tab to the path · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#error", Static).update(Text(message))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.show_error("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        problem = model_path_problem(event.value)
        if problem:
            self.show_error(problem)
            return
        value = event.value.strip()
        self.dismiss(value if value == "tiny" or not Path(os.path.expanduser(value)).exists()
                     else str(Path(os.path.expanduser(value)).resolve()))

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------------------- parameters

class ParamsDialog(ModalScreen[dict | None]):
    """System prompt and sampling settings; enter applies, esc keeps the old ones."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("down", "app.focus_next", "Next field", show=False, id="params.next"),
        Binding("up", "app.focus_previous", "Previous field", show=False, id="params.previous"),
    ]
    DEFAULT_CSS = ("ParamsDialog { align: center middle; }\n"
                   "ParamsDialog .params-row { height: 1; }\n"
                   "ParamsDialog .params-row Label { width: 20; color: $text-muted; }\n"
                   "ParamsDialog .params-row Input { width: 1fr; }\n" + DIALOG_CSS)

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__()
        self.values = values

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static("Generation settings", classes="dialog-title")
            for key, label, _rule in FIELDS:
                with Horizontal(classes="params-row"):
                    yield Label(label)
                    value = self.values.get(key)
                    yield Input(value if key == "system" else show_value(value), id=f"param-{key}", compact=True,
                                placeholder="(none)" if key in ("system", "seed") else "")
            yield Static("", classes="dialog-error", id="error")
            yield Static("↑/↓ field · enter apply · esc cancel · temperature 0 = greedy", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#param-system", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        raw = {key: self.query_one(f"#param-{key}", Input).value for key, _l, _r in FIELDS}
        params, problem = parse_params(raw)
        if problem:
            self.query_one("#error", Static).update(Text(problem))
            return
        self.dismiss(params)

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------------------- save as a record


class SaveRecordDialog(ModalScreen[Path | None]):
    """Where to append the conversation (JSONL, OpenAI messages format) and, side by side,
    whose replies. ``check(path, side)`` appends and returns a problem, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = ("SaveRecordDialog { align: center middle; }\n"
                   "SaveRecordDialog RadioSet { height: auto; border: none; padding: 0; }\n" + DIALOG_CSS)

    def __init__(self, value: str, sides: list[tuple[str, str]], summary: str,
                 check: Callable[[Path, str], str | None]) -> None:
        """sides: (side id, label); the first is the default."""
        super().__init__()
        self.initial = value
        self.sides = sides
        self.summary = summary
        self.check = check

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static("Append this conversation as a training record (JSONL, messages format)",
                         classes="dialog-title")
            yield Static(Text(self.summary, style="dim"))
            if len(self.sides) > 1:
                with RadioSet(id="save-side"):
                    for n, (_side, label) in enumerate(self.sides):
                        yield RadioButton(label, value=n == 0)
            yield PathInput(self.initial, suffixes=(".jsonl",), id="path", compact=True)
            yield Static("", classes="dialog-error", id="error")
            yield Static("enter append · tab complete / next · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        field = self.query_one(PathInput)
        field.focus()
        field.cursor_position = len(field.value)

    @property
    def side(self) -> str:
        if len(self.sides) < 2:
            return self.sides[0][0]
        index = self.query_one(RadioSet).pressed_index
        return self.sides[max(index, 0)][0]

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        raw = event.value.strip()
        if not raw:
            self.query_one("#error", Static).update("enter a .jsonl file to append to")
            return
        path = Path(os.path.expanduser(raw))
        problem = self.check(path, self.side)
        if problem:
            self.query_one("#error", Static).update(Text(problem))
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
