"""A few lines of rich text that repaint only when they change.

``Static.update`` always asks for a new layout (its size might change), and a layout pass
re-renders the whole screen: at two updates a second on a busy dashboard that is most of
the UI's CPU. :class:`TextLine` repaints just itself, and asks for a layout only when its
number of lines (its height, with ``height: auto``) changes.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from finetui.tui.safetext import safe


class TextLine(Widget):
    DEFAULT_CSS = """
    TextLine { height: auto; }
    """

    def __init__(self, text: Text | str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = safe(Text(text) if isinstance(text, str) else text)

    def show(self, text: Text | str) -> None:
        text = safe(Text(text) if isinstance(text, str) else text)  # names, messages: never control codes
        if text == self.text and text.spans == self.text.spans:
            return
        relayout = text.plain.count("\n") != self.text.plain.count("\n")
        self.text = text
        self.refresh(layout=relayout)

    def show_or_hide(self, text: Text | str | None) -> bool:
        """``text``, or the line hidden for None; True when it appeared or disappeared."""
        shown = text is not None
        changed = self.display != shown
        if changed:
            self.display = shown
        if text is not None:
            self.show(text)
        return changed

    def show_classed(self, text: Text | str, kind: str | None, kinds: tuple[str, ...]) -> None:
        """``text`` with ``kind``, one of ``kinds`` (the CSS gives each its look), or none of them."""
        for name in kinds:  # class changes restyle the screen: only real ones
            if self.has_class(name) != (kind == name):
                self.set_class(kind == name, name)
        self.show(text)

    def render(self) -> Text:
        return self.text
