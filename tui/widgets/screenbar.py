"""The one-line bar at the top of every screen: app name, the screens and their keys."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class ScreenBar(Widget):
    """Renders the app's screen table with the current screen highlighted.

    Keys come from the app (after the user's keymap), so a remap shows up here too.
    """

    DEFAULT_CSS = """
    ScreenBar { height: 1; width: 1fr; background: $panel; color: $foreground; }
    """

    def __init__(self, current: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current

    def render(self) -> Text:
        app = self.app
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" finetui ", style=f"bold {app.theme_variables.get('primary', '')}")
        for mode, title, key in getattr(app, "screen_entries", lambda: [])():
            style = "reverse bold" if mode == self.current else ""
            text.append(f" {key} ", style=f"bold {app.theme_variables.get('accent', '')}")
            text.append(f"{title} ", style=style)
        key_for = getattr(app, "key_for", lambda _id: "?")
        help_tail = f"{key_for('app.help')} help "
        # the command palette's key is not in the footer (its room goes to the screen's keys)
        palette = key_for("app.command_palette")
        for tail in (f"{palette} palette  {help_tail}", help_tail):
            pad = self.size.width - text.cell_len - len(tail)
            if pad > 0:
                text.append(" " * pad)
                text.append(tail, style="dim")
                break
        return text
