"""Small modal dialogs: a path prompt, a preset picker, the start-run confirmation.

Dialogs never do the work themselves: the path prompt calls back ``check(path)`` (which
loads or saves and returns the problem, if any) and stays open showing the problem, so a
bad path or a broken file costs the user nothing but a retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from finetui.tui.widgets.pathinput import PathInput

DIALOG_CSS = """
.dialog { width: 76; max-width: 100%; height: auto; max-height: 100%; padding: 0 1;
          border: round $primary; background: $surface; }
.dialog .dialog-title { text-style: bold; color: $primary; }
.dialog .dialog-error { color: $text-error; height: auto; }
.dialog .dialog-hint { color: $text-muted; }
"""


class PathDialog(ModalScreen[Path | None]):
    """Ask for a path; ``check(path)`` returns a problem to show, or None to close."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = "PathDialog { align: center middle; }\n" + DIALOG_CSS

    def __init__(self, title: str, value: str, check: Callable[[Path], str | None],
                 confirm_overwrite: bool = False, suffixes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.title_text = title
        self.initial = value
        self.check = check
        self.confirm_overwrite = confirm_overwrite
        self.suffixes = suffixes
        self._confirmed: Path | None = None

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield PathInput(self.initial, suffixes=self.suffixes, id="path", compact=True)
            yield Static("", classes="dialog-error", id="error")
            yield Static("enter ok · tab complete · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        field = self.query_one(PathInput)
        field.focus()
        field.cursor_position = len(field.value)

    def show_error(self, message: str) -> None:
        self.query_one("#error", Static).update(Text(message))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._confirmed = None
        self.show_error("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        raw = event.value.strip()
        if not raw:
            self.show_error("enter a path")
            return
        path = Path(os.path.expanduser(raw))
        if self.confirm_overwrite and path.is_file() and self._confirmed != path:
            self._confirmed = path
            self.show_error(f"{raw} exists: press enter again to overwrite it")
            return
        problem = self.check(path)
        if problem:
            self._confirmed = None
            self.show_error(problem)
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PickDialog(ModalScreen[str | None]):
    """Pick one of a few named things (presets, ...): title and a dim description each."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = ("PickDialog { align: center middle; }\n"
                   "PickDialog OptionList { height: auto; max-height: 18; border: none; padding: 0; }\n"
                   + DIALOG_CSS)

    def __init__(self, title: str, items: list[tuple[str, str, str]], empty: str = "nothing to pick") -> None:
        """items: (id, title, description)."""
        super().__init__()
        self.title_text = title
        self.items = items
        self.empty = empty

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            if self.items:
                options = []
                for ident, title, description in self.items:
                    prompt = Text(title, style="bold")
                    if description:
                        prompt.append("\n" + description, style="dim")
                    options.append(Option(prompt, id=ident))
                yield OptionList(*options)
            else:
                yield Static(self.empty, classes="dialog-error")
            yield Static("↑/↓ choose · enter load · esc cancel", classes="dialog-hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Show a summary and ask before doing something that costs (a training run)."""

    BINDINGS = [
        Binding("enter,y", "confirm", "Start", id="dialog.confirm"),
        Binding("escape,n", "cancel", "Cancel", id="dialog.cancel"),
    ]
    DEFAULT_CSS = ("ConfirmDialog { align: center middle; }\n"
                   "ConfirmDialog VerticalScroll { height: auto; max-height: 16; }\n" + DIALOG_CSS)

    def __init__(self, title: str, body: Text, blocking: str | None = None, verb: str = "start") -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.blocking = blocking
        self.verb = verb

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            with VerticalScroll():
                yield Static(self.body)
            if self.blocking:
                yield Static(Text(self.blocking), classes="dialog-error")
                yield Static("esc back (fix the setting first)", classes="dialog-hint")
            else:
                yield Static(f"enter {self.verb} · esc cancel", classes="dialog-hint")

    def action_confirm(self) -> None:
        if self.blocking:
            self.app.bell()
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
