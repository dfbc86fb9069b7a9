"""A settings form generated from ``engine.config.field_specs()``.

One :class:`FieldRow` per setting, grouped by section. Rows, not inputs, take focus, so
the app's one-letter keys keep working while the user moves around (↑/↓, j/k, [ ]):

* text / number / YAML fields: ``enter`` opens an inline editor under the row; ``enter``
  again proposes the value, ``esc`` cancels;
* choices and booleans: ``←/→`` (``h/l``, ``space``) cycle through the values;
* ``x`` puts the default back.

A row never decides whether a value is acceptable: it posts :class:`FieldRow.Proposed`
and the screen validates the *whole* config (engine.config.validate, as the CLI does),
then calls :meth:`FieldRow.accept` or :meth:`FieldRow.refuse` with the ConfigError text,
which is shown right under the field.
"""

from __future__ import annotations

from typing import Any

import yaml
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Static

FIRST_FRAME_ROWS = 40  # rows composed for the first frame; the rest follow it
NAME_WIDTH = 28
DEFAULT_WIDTH = 16


def show_value(value: Any) -> str:
    """A value as the form shows it and as the inline editor starts with."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def parse_value(spec: dict[str, Any], text: str) -> Any:
    """The typed value the user meant by ``text``; validation proper is the config's job.

    Numbers and YAML values are read as YAML scalars, like ``--set key=value`` on the
    command line, so the form and the CLI refuse a value with the same message."""
    kind = spec["kind"]
    stripped = text.strip()
    if spec.get("optional") and stripped in ("", "null", "none", "None", "~"):
        return None
    if kind == "str":
        return text
    if kind == "bool":
        return stripped.lower() in ("true", "yes", "on", "1")
    if kind == "choice":
        return stripped
    try:
        return yaml.safe_load(text) if stripped else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{spec['key']}: not valid YAML: {problem}") from None


def describe(spec: dict[str, Any]) -> str:
    """Type, bounds and choices, e.g. 'int, >= 1, <= 65536' or 'one of: full, lora'."""
    if spec["kind"] == "choice":
        return "one of: " + ", ".join(str(c) for c in spec["choices"])
    parts = [{"yaml": "YAML value", "str": "text"}.get(spec["kind"], spec["kind"])]
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts += [f"{names[k]} {show_value(v)}" for k, v in spec.get("bounds", {}).items()]
    if spec.get("optional"):
        parts.append("empty = none")
    return ", ".join(parts)


class RowEditor(Input):
    """The inline editor under a row (mounted only while editing)."""

    BINDINGS = [
        Binding("enter", "submit", "Apply", id="form.apply"),
        Binding("escape", "cancel", "Cancel", id="form.cancel"),
    ]

    def __init__(self, row: "FieldRow", value: str) -> None:
        super().__init__(value=value, compact=True, classes="row-editor", placeholder=describe(row.spec))
        self.row = row

    def action_cancel(self) -> None:
        self.row.action_cancel()


class RowError(Static):
    """The refusal under a row, in the config's own words."""


class FieldRow(Widget, can_focus=True):
    """One setting on one line: change marker, name, value, default.

    A leaf widget (it renders itself) so that sixty of them cost little at start-up; the
    editor and the refusal are mounted as its next siblings only when needed.
    """

    BINDINGS = [
        Binding("enter", "edit", "Edit", id="form.edit"),
        Binding("right,l,space", "cycle(1)", "Next value", show=False, id="form.next_value"),
        Binding("left,h", "cycle(-1)", "Previous value", show=False, id="form.prev_value"),
        Binding("x", "reset", "Reset", id="form.reset"),
    ]

    DEFAULT_CSS = """
    FieldRow { height: 1; }
    RowEditor { margin-left: 2; background: $panel; }
    RowError { color: $text-error; padding-left: 2; height: auto; }
    """

    class Proposed(Message):
        """The user wants ``row.key`` set to ``value`` (already typed, not validated)."""

        def __init__(self, row: "FieldRow", value: Any) -> None:
            super().__init__()
            # Sent by the row whatever handler we are called from: Textual stops a message
            # at its sender's level, and the screen above the form must receive it.
            self._sender = row
            self.row = row
            self.value = value

    def __init__(self, spec: dict[str, Any], value: Any, changed: bool = False) -> None:
        super().__init__(classes="field-row")
        self.spec = spec
        self.key: str = spec["key"]
        self.value = value
        self.changed = changed  # differs from the loaded file (shows up as --set)
        self.error: str | None = None
        self.editor: RowEditor | None = None
        self.error_widget: RowError | None = None
        self._cycle_to: Any = None  # last choice proposed, refused or not

    @property
    def editable_text(self) -> bool:
        return self.spec["kind"] not in ("choice", "bool")

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------------ display

    def render(self) -> Text:
        width = max(self.size.width, 40)
        default = show_value(self.spec["default"])
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        text.append("●" if self.changed else " ", style=self._accent_style())
        text.append(self.spec["name"].ljust(NAME_WIDTH - 1)[: NAME_WIDTH - 1] + " ")
        shown = show_value(self.value)
        is_default = self.value == self.spec["default"]
        value_width = width - NAME_WIDTH - DEFAULT_WIDTH - 2
        if self.spec["kind"] in ("choice", "bool"):
            shown = f"{shown}  ◂ ▸" if self.has_focus else shown
        elif self.value is None:
            shown = "(none)"
        if len(shown) > value_width:
            shown = shown[: max(value_width - 1, 1)] + "…"
        text.append(shown.ljust(value_width), style="" if is_default else "bold")
        if len(default) > DEFAULT_WIDTH - 1:
            default = default[: DEFAULT_WIDTH - 2] + "…"
        text.append(" " + default.rjust(DEFAULT_WIDTH - 1) if default else " " * DEFAULT_WIDTH, style="dim")
        return text

    def _accent_style(self) -> str:
        try:
            return f"bold {self.app.theme_variables.get('accent', 'yellow')}"
        except Exception:
            return "bold"

    def set_value(self, value: Any, changed: bool) -> None:
        if value != self.value or changed != self.changed:
            self.value, self.changed = value, changed
            if self.editor is not None and self.error is None:
                self.editor.value = show_value(value)
            self.refresh()

    # ------------------------------------------------------------------ outcome

    def accept(self) -> None:
        self.clear_error()
        self._cycle_to = None
        if self.editor is not None:
            had_focus = self.editor.has_focus
            self.editor.remove()
            self.editor = None
            self.remove_class("-editing")
            if had_focus:
                self.focus()

    def refuse(self, message: str) -> None:
        self.error = message
        self.add_class("-invalid")
        if self.error_widget is None:
            self.error_widget = RowError(Text(message))
            self.parent.mount(self.error_widget, after=self.editor or self)
        else:
            self.error_widget.update(Text(message))
        self.error_widget.scroll_visible()

    def clear_error(self) -> None:
        self.error = None
        self.remove_class("-invalid")
        if self.error_widget is not None:
            self.error_widget.remove()
            self.error_widget = None

    # ------------------------------------------------------------------ actions

    def action_edit(self) -> None:
        if not self.editable_text:
            self.action_cycle(1)
            return
        if self.editor is None:
            self.editor = RowEditor(self, show_value(self.value))
            self.parent.mount(self.editor, after=self)
            self.add_class("-editing")
            self.call_after_refresh(lambda: self.editor and self.editor.scroll_visible(animate=False))
        self.editor.focus()
        self.editor.cursor_position = len(self.editor.value)

    def action_cycle(self, step: int) -> None:
        kind = self.spec["kind"]
        if kind == "bool":
            self.post_message(self.Proposed(self, not bool(self.value)))
        elif kind == "choice":
            choices = list(self.spec["choices"])
            # Step from the last proposal even when it was refused, so one impossible
            # value (full + 4bit) does not block the way to the others.
            current = self._cycle_to if self._cycle_to in choices else self.value
            index = choices.index(current) if current in choices else -1
            self._cycle_to = choices[(index + step) % len(choices)]
            self.post_message(self.Proposed(self, self._cycle_to))

    def action_reset(self) -> None:
        if self.editor is not None:
            self.editor.value = show_value(self.spec["default"])
        self.post_message(self.Proposed(self, self.spec["default"]))

    def action_cancel(self) -> None:
        if self.editor is not None:
            self.editor.remove()
            self.editor = None
            self.remove_class("-editing")
            self.clear_error()
            self.focus()

    def submit(self) -> None:
        """Propose what is in the editor (enter, or moving away from the row)."""
        if self.editor is None:
            return
        try:
            value = parse_value(self.spec, self.editor.value)
        except ValueError as exc:
            self.refuse(str(exc))
            return
        self.post_message(self.Proposed(self, value))


class SectionTitle(Static):
    DEFAULT_CSS = """
    SectionTitle { height: 1; color: $primary; text-style: bold; margin-top: 1; }
    SectionTitle.-first { margin-top: 0; }
    """


class SettingsForm(VerticalScroll, can_focus=False):
    """The rows, with keyboard movement between them."""

    BINDINGS = [
        Binding("down,j", "move(1)", "Next", show=False, id="form.next"),
        Binding("up,k", "move(-1)", "Previous", show=False, id="form.prev"),
        Binding("pagedown", "move(10)", "Page down", show=False, id="form.page_down"),
        Binding("pageup", "move(-10)", "Page up", show=False, id="form.page_up"),
        Binding("home", "move(-1000)", "First setting", show=False, id="form.first"),
        Binding("end", "move(1000)", "Last setting", show=False, id="form.last"),
        Binding("right_square_bracket", "section(1)", "Next section", show=False, id="form.next_section"),
        Binding("left_square_bracket", "section(-1)", "Previous section", show=False, id="form.prev_section"),
    ]

    def __init__(self, specs: list[dict[str, Any]], values: dict[str, Any], changed: set[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.specs = specs
        self.rows: list[FieldRow] = [FieldRow(s, values.get(s["key"]), s["key"] in changed) for s in specs]
        self.by_key = {row.key: row for row in self.rows}
        self.by_row = {row: i for i, row in enumerate(self.rows)}
        self._cursor = -1  # index of the row the keyboard is on
        self._requested: FieldRow | None = None  # focus asked for, not yet arrived
        self.titles: dict[str, SectionTitle] = {}
        self._later: list[Widget] = []

    def _widgets(self) -> list[Widget]:
        widgets: list[Widget] = []
        section = None
        for row in self.rows:
            if row.spec["section"] != section:
                section = row.spec["section"]
                title = SectionTitle(f"── {section} " + "─" * 60, classes="-first" if row is self.rows[0] else "")
                self.titles[section] = title
                widgets.append(title)
            widgets.append(row)
        return widgets

    def compose(self):
        # Only what a tall terminal shows goes into the first frame; the rest is mounted
        # right after it (start-up time grows with the number of widgets).
        widgets = self._widgets()
        self._later = widgets[FIRST_FRAME_ROWS:]
        yield from widgets[:FIRST_FRAME_ROWS]

    def on_mount(self) -> None:
        if self._later:
            self.call_after_refresh(self._mount_later)

    def _mount_later(self) -> None:
        later, self._later = self._later, []
        self.mount_all(later)

    def on_descendant_focus(self, event) -> None:
        widget = event.widget.row if isinstance(event.widget, RowEditor) else event.widget
        if widget not in self.by_row:
            return
        index = self.by_row[widget]
        if self._requested is not None:
            # Focus arrives after the key that asked for it; keys typed faster than that
            # (key repeat, tmux send-keys) already moved the cursor further: keep it.
            if widget is self._requested:
                self._requested = None
        else:
            self._cursor = index  # focused some other way (tab, mouse)
        # The first row of a section brings its title into view too.
        if index == 0 or self.rows[index - 1].spec["section"] != self.rows[index].spec["section"]:
            title = self.titles.get(self.rows[index].spec["section"])
            if title is not None:
                self.call_after_refresh(title.scroll_visible, animate=False)

    def update_values(self, values: dict[str, Any], changed: set[str]) -> None:
        for row in self.rows:
            row.set_value(values.get(row.key), row.key in changed)

    def current_index(self) -> int:
        """The row the keyboard is on (ahead of focus, which follows a moment later)."""
        if self._requested is not None or self._cursor >= 0:
            return self._cursor
        focused = self.screen.focused
        if isinstance(focused, RowEditor):
            focused = focused.row
        return self.by_row.get(focused, -1)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, RowEditor):
            event.stop()
            event.input.row.submit()

    def focus_row(self, index: int) -> None:
        index = max(0, min(index, len(self.rows) - 1))
        self._cursor = index
        self._requested = self.rows[index]
        self.rows[index].focus()

    def action_move(self, step: int) -> None:
        index = self.current_index()
        if index >= 0 and self.rows[index].editor is not None and self.rows[index].editor.has_focus:
            self.rows[index].submit()  # moving away proposes what was typed
        self.focus_row(index + step if index >= 0 else 0)

    def action_section(self, step: int) -> None:
        index = max(self.current_index(), 0)
        sections = [r.spec["section"] for r in self.rows]
        current = sections[index]
        if step > 0:
            for i in range(index, len(self.rows)):
                if sections[i] != current:
                    self.focus_row(i)
                    return
        else:
            start = sections.index(current)
            if start == 0:
                self.focus_row(0)
                return
            prev = sections[start - 1]
            self.focus_row(sections.index(prev))
