"""The column dialog of the dataset browser: the format, and which of the file's columns
each of its canonical fields reads (``data.columns``, ``--column FIELD=NAME``).

Keyboard only, one row per line so it fits 80x24: the first row is the format, then one
row per field of that format (:data:`engine.data.formats.FIELDS`). ``↑``/``↓`` (``k``/``j``)
pick a row, ``←``/``→`` (``h``/``l``) step through its choices (the formats; ``auto`` and
the file's columns), ``a`` sets a field back to ``auto`` (the format's own names, e.g.
``system_prompt`` for ``system``). Under the rows the sampled records are normalised with
the mapping as it stands (formats only, no tokenizer): how many convert, the first problem,
and the columns still not trained. ``enter`` returns ``(format, columns)``; ``esc`` nothing.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from finetui.engine.data import formats
from finetui.tui import datasource
from finetui.tui.widgets.dialogs import DIALOG_CSS

AUTO = "auto"
LABEL_WIDTH = 14


class ColumnMapDialog(ModalScreen[tuple[str, dict[str, str]] | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("enter", "apply", "Apply", id="columns.apply"),
        Binding("up,k", "move(-1)", "Previous row", id="columns.up"),
        Binding("down,j", "move(1)", "Next row", id="columns.down"),
        Binding("left,h", "cycle(-1)", "Previous choice", id="columns.previous"),
        Binding("right,l,space", "cycle(1)", "Next choice", id="columns.next"),
        Binding("a,backspace,delete", "auto", "Field: auto", id="columns.auto"),
    ]
    DEFAULT_CSS = ("ColumnMapDialog { align: center middle; }\n"
                   "ColumnMapDialog #cm-rows { height: auto; margin: 1 0; }\n"
                   "ColumnMapDialog #cm-check { height: auto; }\n" + DIALOG_CSS)

    def __init__(self, fmt: str | None, columns: dict[str, str], sample: list[Any],
                 tags: dict[str, str] | None = None, places: list[str] | None = None) -> None:
        super().__init__()
        self.sample = sample
        self.tags = tags or {}
        self.places = places
        self.file_columns = datasource.file_columns(sample)
        if fmt not in formats.FORMATS:
            try:
                fmt = formats.detect(sample, columns, self.tags or None)
            except formats.DataError:
                fmt = "qa"
        self.fmt = fmt
        self.columns = dict(columns)
        self.row = 0

    # ------------------------------------------------------------------ model

    @property
    def fields(self) -> tuple[str, ...]:
        return formats.FIELDS[self.fmt]

    def result(self) -> tuple[str, dict[str, str]]:
        """The format and the mapping of its fields (a mapping of fields no format has, set
        elsewhere, e.g. ``kto_tag``, is kept)."""
        known = {f for fields in formats.FIELDS.values() for f in fields}
        columns = {k: v for k, v in self.columns.items() if k in self.fields or k not in known}
        return self.fmt, columns

    def choices(self, field: str) -> list[str]:
        return [AUTO, *self.file_columns]

    # ------------------------------------------------------------------ view

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static("Map columns: which column each field of the format reads", classes="dialog-title")
            yield Static("", id="cm-rows")
            yield Static("", id="cm-check")
            yield Static("↑/↓ row · ←/→ choose · a auto · enter apply · esc cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        rows = Text(no_wrap=True, overflow="ellipsis")
        entries = [("format", self.fmt, "")] + [
            (field, self.columns.get(field, AUTO), "" if field in self.columns else " (the format's own name)")
            for field in self.fields
        ]
        for i, (label, value, note) in enumerate(entries):
            focused = i == self.row
            rows.append("▶ " if focused else "  ", style="bold")
            rows.append(f"{label:<{LABEL_WIDTH}}", style="bold" if i == 0 else "")
            rows.append(f"◂ {value} ▸", style="reverse bold" if focused else "bold")
            rows.append(note + ("\n" if i < len(entries) - 1 else ""), style="dim")
        self.query_one("#cm-rows", Static).update(rows)

        fmt, columns = self.result()
        check = datasource.check_columns(self.sample, fmt, columns, self.tags, self.places)
        text = Text()
        text.append(f"sample: {check.ok} of {check.records} records read as {fmt}", style="bold")
        if check.problem:
            text.append(f"\nfirst problem: {check.problem}", style="red")
        if check.unused:
            text.append(f"\n{check.line().split(' · ')[-1]}", style="yellow")
        elif check.ok:
            text.append("\nevery column with a value is read")
        for field, name in check.missing:
            text.append(f"\n{field}={name}: no sampled record has {name!r}", style="red")
        self.query_one("#cm-check", Static).update(text)

    # ------------------------------------------------------------------ keys

    def action_move(self, step: int) -> None:
        self.row = (self.row + step) % (len(self.fields) + 1)
        self.redraw()

    def action_cycle(self, step: int) -> None:
        if self.row == 0:
            order = list(formats.FORMATS)
            self.fmt = order[(order.index(self.fmt) + step) % len(order)]
            self.row = min(self.row, len(self.fields))
        else:
            field = self.fields[self.row - 1]
            options = self.choices(field)
            current = self.columns.get(field, AUTO)
            index = options.index(current) if current in options else 0
            value = options[(index + step) % len(options)]
            if value == AUTO:
                self.columns.pop(field, None)
            else:
                self.columns[field] = value
        self.redraw()

    def action_auto(self) -> None:
        if self.row > 0:
            self.columns.pop(self.fields[self.row - 1], None)
            self.redraw()

    def action_apply(self) -> None:
        self.dismiss(self.result())

    def action_cancel(self) -> None:
        self.dismiss(None)
