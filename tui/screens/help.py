"""`?`: every key binding, grouped (global, this screen, the other screens, widgets).

Keys are shown as they are *now*, after the user's keymap, next to the binding id to use
in ``keys:`` of the user config file to remap them.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (group title, [(keys shown, description, binding id)])
BindingGroups = list[tuple[str, list[tuple[str, str, str]]]]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 78; max-width: 100%; height: 100%; max-height: 100%;
                            border: round $primary; background: $surface; }
    HelpScreen .help-title { text-style: bold; color: $primary; padding: 0 1; }
    HelpScreen VerticalScroll { padding: 0 1; }
    HelpScreen .help-hint { color: $text-muted; padding: 0 1; }
    """

    def __init__(self, groups: BindingGroups, config_file: str) -> None:
        super().__init__()
        self.groups = groups
        self.config_file = config_file

    def compose(self):
        with Vertical():
            yield Static("Keys", classes="help-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(self.table(), id="help-table")
            yield Static(f"↑/↓ scroll · esc close · remap in {self.config_file} (keys: {{ID: KEY}})",
                         classes="help-hint")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()

    def table(self) -> Table:
        table = Table(box=None, expand=True, show_header=True, pad_edge=False, header_style="bold")
        table.add_column("key", no_wrap=True, style="bold", min_width=9)
        table.add_column("does", ratio=1)
        table.add_column("id (for keys:)", no_wrap=True, style="dim")
        for title, rows in self.groups:
            table.add_row(Text(title, style="bold underline"), "", "")
            for keys, description, ident in rows:
                table.add_row(keys, description, ident)
            table.add_row("", "", "")
        return table

    def action_close(self) -> None:
        self.dismiss(None)
