"""The last lines of something (the run's log/error events, the tail of stdout.log, the
checkpoints), as many as fit, newest at the bottom. A render of the lines it is handed;
it never reads files itself."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from finetui.tui.safetext import safe, visible


class LogView(Widget):
    DEFAULT_CSS = """
    LogView { height: 1fr; min-height: 3; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = ""
        self.lines: list[Text] = []
        self.empty = "nothing yet"

    def show(self, title: str, lines: list[Text], empty: str = "nothing yet") -> None:
        # log and error events, stdout.log, checkpoint paths: control characters made visible
        title, lines = visible(title), [safe(line) for line in lines]
        plain = (title, [line.plain for line in lines], empty)
        if plain != (self.title, [line.plain for line in self.lines], self.empty):
            self.title, self.lines, self.empty = title, lines, empty
            self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, max(self.size.height, 1)
        out = Text(no_wrap=True, overflow="ellipsis")
        head = Text(self.title, style="bold", no_wrap=True, overflow="ellipsis")
        body = self.lines[-(height - 1):] if height > 1 else []
        rows = [head] + (list(body) if body else [Text(self.empty, style="dim")])
        for i, line in enumerate(rows):
            line = line.copy()
            line.no_wrap = True
            line.truncate(width, overflow="ellipsis")
            if i:
                out.append("\n")
            out.append_text(line)
        return out
