"""One Chat pane on screen: a model's header line over its conversation
(``tui.widgets.chatlog``). The model itself, its worker and its side of the history are
``tui.chatstate.ModelPane``; :class:`Pane` adds the widgets that show them.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from finetui.tui.chatstate import ChatSession, ModelPane, params_summary
from finetui.tui.chathistory import HistorySize, Side
from finetui.tui.safetext import safe
from finetui.tui.widgets.chatlog import ChatLog, ChatMessage

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class PaneView(Vertical):
    """A model's header line over its conversation."""

    DEFAULT_CSS = """
    PaneView { width: 1fr; height: 1fr; }
    PaneView .pane-top { height: 1; background: $surface; }
    PaneView .pane-header { width: 1fr; height: 1; padding: 0 1; }
    PaneView .pane-history { width: auto; height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, side: str, empty: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.side = side
        self.empty = empty

    def compose(self):
        with Horizontal(classes="pane-top"):
            yield Static("", classes="pane-header")
            yield Static("", classes="pane-history")
        yield ChatLog(self.empty, id=f"log-{self.side}")


class Pane(ModelPane):
    """A pane's model and the widgets that show its conversation: the user's messages and
    the replies by turn."""

    def __init__(self, side: str, history: Side) -> None:
        super().__init__(side, history)
        self.users: dict[int, ChatMessage] = {}
        self.reply_widgets: dict[int, ChatMessage] = {}
        self.view: PaneView | None = None

    @property
    def log(self) -> ChatLog:
        assert self.view is not None
        return self.view.query_one(ChatLog)

    @property
    def shown(self) -> bool:
        return self.view is not None and self.view.is_mounted

    def show_top(self, who: str, colors: dict[str, str], tick: int, history: HistorySize) -> None:
        """The header line (``who`` speaks in a loaded model's replies) and how much earlier
        conversation the next request carries (shorter in a narrow pane)."""
        assert self.view is not None
        self.view.query_one(".pane-header", Static).update(safe(header(self, who, colors, tick)))
        narrow = self.view.size.width < 60
        self.view.query_one(".pane-history", Static).update(Text(history.describe(narrow), no_wrap=True))

    def add_reply(self, turn: int, who: str) -> ChatMessage:
        """The (streaming) widget of ``turn``'s reply."""
        self.reply_widgets[turn] = widget = self.log.add("assistant", who, streaming=True)
        return widget

    def drop(self, widgets: dict[int, ChatMessage], turn: int) -> None:
        """Take one of ``users`` / ``reply_widgets`` off the screen."""
        widget = widgets.pop(turn, None)
        if widget is not None:
            widget.remove()

    def forget_widgets(self, turn: int) -> None:
        """Take a turn's message and reply off the screen."""
        for widget in (self.users.pop(turn, None), self.reply_widgets.pop(turn, None)):
            if widget is not None:
                widget.remove()

    def clear(self) -> None:
        self.log.clear_messages()
        self.users, self.reply_widgets = {}, {}


def header(pane: ModelPane, who: str, colors: dict[str, str], tick: int) -> Text:
    """A pane's header line: what is loaded (●), loading (a spinner and the worker's stage),
    failed (✖), or nothing."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if pane.state == "ready":
        text.append("● ", style=f"bold {colors.get('success', 'green')}")
        text.append(who, style="bold")
        text.append(" · " + " · ".join(pane.details()), style="dim")
    elif pane.state == "loading":
        text.append(SPINNER[tick % len(SPINNER)] + " ", style=f"bold {colors.get('accent', '')}")
        text.append(f"loading {pane.title}", style="bold")
        if pane.stage:
            text.append(f" · {pane.stage}", style="dim")
    elif pane.state in ("failed", "crashed"):
        text.append("✖ ", style=f"bold {colors.get('error', 'red')}")
        text.append(f"{pane.title}: " + ("could not load" if pane.state == "failed" else "worker stopped"),
                    style="bold")
        text.append(" · ctrl+o loads again", style="dim")
    else:
        text.append("no model · ctrl+o loads one", style="dim")
    return text


def status_line(chat: ChatSession, flash: Text | None, tick: int) -> Text:
    """The status line under the prompt: a refusal or hint (``flash``), else the replies
    coming (who, how long), else the generation settings and the system prompt."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if flash is not None:
        line.append_text(flash)
    elif chat.busy:
        jobs = [p for p in chat.panes if p.job is not None]
        elapsed = max(time.monotonic() - p.job.started for p in jobs)
        who = " + ".join(chat.label(p) for p in jobs)
        line.append(f"{SPINNER[tick % len(SPINNER)]} {who} replying {elapsed:.1f}s", style="bold")
        line.append(" · esc stops", style="dim")
    else:
        settings, system = params_summary(chat.params)
        line.append(settings)
        line.append(" · system: ", style="dim")
        line.append(system or "(none)", style="" if system else "dim")
        line.append("  ^t edit", style="dim")
    return line
