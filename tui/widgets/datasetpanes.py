"""The Datasets screen's panes besides the table: the record view (what trains first, the raw
record under it), the token lengths view and the search box. They show what
:mod:`finetui.tui.widgets.datasetviews` draws.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Static

from finetui.tui.safetext import safe
from finetui.tui.widgets import datasetviews


class SearchInput(Input):
    BINDINGS = [Binding("escape", "close", "Close search", id="datasets.search_close")]

    def action_close(self) -> None:
        self.screen.close_search()


class RecordView(VerticalScroll):
    """One record: its header, the rendered training text, the raw record."""

    def compose(self):
        # What trains comes first; the raw record under it.
        yield Static("", id="ds-record-head", classes="ds-heading")
        yield Static("", id="ds-rendered")
        yield Static("raw record", id="ds-raw-head", classes="ds-heading")
        yield Static("", id="ds-raw")

    def reading(self) -> None:
        self.query_one("#ds-raw", Static).update("reading…")

    def show_row(self, row: Any) -> bool:
        """The header and the raw record; False (and why) when the record cannot be read."""
        self.query_one("#ds-record-head", Static).update(safe(datasetviews.record_head(row)))
        self.query_one("#ds-raw", Static).update(safe(datasetviews.raw_view(row)))
        if row.error:
            self.rendered(Text("not rendered: the record cannot be read", style="red"))
            return False
        return True

    def rendered(self, text: Text) -> None:
        self.query_one("#ds-rendered", Static).update(safe(text))


class LengthsView(VerticalScroll):
    """The token lengths pass: its progress, then the counts and the histogram."""

    def compose(self):
        yield Static("", id="ds-stats-text")

    def say(self, text: Text) -> None:
        self.query_one("#ds-stats-text", Static).update(safe(text))
