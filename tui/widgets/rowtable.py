"""A virtual list of dataset rows: renders only the lines on screen, whatever the size.

Rows come from a ``tui.datasource.RowSource`` in pages read by worker threads; a line
whose row is not read yet shows ``…`` and asks for its page. A filter (the matches of a
search) maps the lines shown to source rows.
"""

from __future__ import annotations

from collections import OrderedDict

from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from finetui.tui.datasource import Row, RowSource, preview
from finetui.tui.safetext import visible

PAGE_ROWS = 100
CACHED_PAGES = 64


class RowTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("down,j", "move(1)", "Down", show=False, id="table.down"),
        Binding("up,k", "move(-1)", "Up", show=False, id="table.up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("home", "jump(0)", "First row", show=False, id="table.first"),
        Binding("end", "jump(-1)", "Last row", show=False, id="table.last"),
        Binding("enter", "select", "View", id="table.view"),
    ]
    COMPONENT_CLASSES = {"rowtable--cursor", "rowtable--number", "rowtable--error"}
    DEFAULT_CSS = """
    RowTable { height: 1fr; overflow-x: hidden; scrollbar-size-vertical: 1; }
    RowTable > .rowtable--cursor { background: $primary 40%; }
    RowTable:focus > .rowtable--cursor { background: $primary 60%; text-style: bold; }
    RowTable > .rowtable--number { color: $text-muted; }
    RowTable > .rowtable--error { color: $text-error; }
    """

    cursor = reactive(0, always_update=True)

    class Selected(Message):
        """Enter on a row: ``index`` is the row in the source."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source: RowSource | None = None
        self.filter: list[int] | None = None
        self.empty_text = ""
        self._pages: OrderedDict[int, list[Row]] = OrderedDict()
        self._rows: dict[int, Row] = {}
        self._inflight: set[int] = set()
        self._generation = 0  # bumps on a new source: late pages of the old one are dropped

    # ------------------------------------------------------------------ state

    def set_source(self, source: RowSource | None, empty_text: str = "") -> None:
        self.source = source
        self.filter = None
        self.empty_text = empty_text
        self._pages.clear()
        self._rows.clear()
        self._inflight.clear()
        self._generation += 1
        self.cursor = 0
        self.scroll_to(y=0, animate=False)
        self.update_count()

    def set_filter(self, indexes: list[int] | None) -> None:
        self.filter = indexes
        self.cursor = 0
        self.scroll_to(y=0, animate=False)
        self.update_count()

    @property
    def count(self) -> int:
        if self.filter is not None:
            return len(self.filter)
        return self.source.estimated_total if self.source is not None else 0

    def update_count(self) -> None:
        self.virtual_size = Size(self.size.width, self.count)
        self.refresh()

    def source_index(self, line: int | None = None) -> int | None:
        line = self.cursor if line is None else line
        if line < 0 or line >= self.count:
            return None
        return self.filter[line] if self.filter is not None else line

    def row(self, index: int) -> Row | None:
        return self._rows.get(index)

    # ------------------------------------------------------------------ pages

    def _want(self, index: int) -> None:
        page = index // PAGE_ROWS
        if page in self._inflight or page in self._pages or self.source is None:
            return
        self._inflight.add(page)
        source, generation = self.source, self._generation

        def fetch() -> None:
            try:
                rows = source.fetch(page * PAGE_ROWS, PAGE_ROWS)
            except Exception as exc:  # a file that vanished: show it, do not crash
                rows = [Row(page * PAGE_ROWS, "", "", None, f"cannot read: {exc}")]
            self.app.call_from_thread(self._store, generation, page, rows)

        self.run_worker(fetch, thread=True, group="rows")

    def _store(self, generation: int, page: int, rows: list[Row]) -> None:
        if generation != self._generation:
            return
        self._inflight.discard(page)
        self._pages[page] = rows
        for row in rows:
            self._rows[row.index] = row
        while len(self._pages) > CACHED_PAGES:
            _, old = self._pages.popitem(last=False)
            for row in old:
                self._rows.pop(row.index, None)
        self.refresh()

    def ensure_row(self, index: int) -> None:
        if index not in self._rows:
            self._want(index)

    # ------------------------------------------------------------------ rendering

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        line = self.scroll_offset.y + y
        if line >= self.count:
            if line == 0 and self.empty_text:
                return self._strip(Text(self.empty_text, style="italic"), width)
            return Strip.blank(width, self.rich_style)
        index = self.source_index(line)
        row = self._rows.get(index)
        number_style = self.get_component_rich_style("rowtable--number")
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        text.append(f"{index + 1:>7} ", style=number_style)
        if row is None:
            self._want(index)
            text.append("…", style=number_style)
        elif row.error:
            text.append(visible(f"{row.place}: {row.error}"), style=self.get_component_rich_style("rowtable--error"))
        else:
            text.append(visible(preview(row, width)))  # a record's text never drives the terminal
        strip = self._strip(text, width)
        if line == self.cursor:
            strip = strip.apply_style(self.get_component_rich_style("rowtable--cursor"))
        return strip

    def _strip(self, text: Text, width: int) -> Strip:
        text.truncate(width, overflow="ellipsis", pad=True)
        segments = list(text.render(self.app.console, end=""))
        return Strip(segments, width).apply_style(self.rich_style) if segments else Strip([Segment(" " * width)], width)

    # ------------------------------------------------------------------ keys

    def watch_cursor(self, cursor: int) -> None:
        height = max(self.size.height, 1)
        top = self.scroll_offset.y
        if cursor < top:
            self.scroll_to(y=cursor, animate=False)
        elif cursor >= top + height:
            self.scroll_to(y=cursor - height + 1, animate=False)
        self.refresh()

    def on_resize(self) -> None:
        self.update_count()

    def action_move(self, step: int) -> None:
        if self.count:
            self.cursor = max(0, min(self.cursor + step, self.count - 1))

    def action_page(self, step: int) -> None:
        self.action_move(step * max(self.size.height - 1, 1))

    def action_jump(self, where: int) -> None:
        if self.count:
            self.cursor = self.count - 1 if where < 0 else 0

    def on_click(self, event) -> None:
        # Mouse is optional: a click puts the cursor on the row, a double click opens it.
        line = self.scroll_offset.y + event.y
        if 0 <= line < self.count:
            self.cursor = line
            if event.chain >= 2:
                self.action_select()

    def action_select(self) -> None:
        index = self.source_index()
        if index is not None:
            self.post_message(self.Selected(index))
