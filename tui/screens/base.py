"""What every finetui screen shares: the screen bar on top, the footer at the bottom, and
a hook for the command palette.

A new screen subclasses :class:`FinetuiScreen`, sets ``MODE`` to its row in the app's
screen table (``tui.app.SCREEN_TABLE``), yields its widgets from :meth:`compose_body`,
gives every ``Binding`` an id (``<mode>.<action>``), and lists what the palette should
offer on it in :meth:`palette_commands`.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.screen import Screen
from textual.widgets import Footer

from finetui.tui.widgets.screenbar import ScreenBar

PaletteCommand = tuple[str, str, Callable[[], object]]  # (name, help, callback)


class FinetuiScreen(Screen):
    MODE = ""

    def compose(self):
        yield ScreenBar(self.MODE)
        yield from self.compose_body()
        yield Footer(compact=True, show_command_palette=False)

    def compose_body(self):
        return iter(())

    def palette_commands(self) -> list[PaletteCommand]:
        """Commands that fit this screen, offered first in the command palette."""
        return []

    def refresh_keys(self) -> None:
        """Called when the keymap changes: the screen bar shows keys too."""
        for bar in self.query(ScreenBar):
            bar.refresh()
