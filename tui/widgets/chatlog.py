"""A conversation on screen: one widget per message in a scrolling column that follows the
bottom while the user is there.

Streaming text arrives in :meth:`ChatMessage.append` from the screen's flush timer (about
every 50 ms, whatever the token rate), never once per token, and never from a thread.
Following the bottom is Textual's anchor: the log stays scrolled to the end as replies
grow until the user scrolls up, and picks up again once they scroll back down. (Anchored,
a short conversation sits at the bottom, next to the prompt, as in a messaging app.)
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from finetui.tui.safetext import visible

ROLE_STYLES = {"user": "accent", "assistant": "primary", "note": "warning", "error": "error"}
CURSOR = "▍"


class ChatMessage(Static):
    """One message: a header line (who, and the reply's numbers once done) and its text."""

    DEFAULT_CSS = """
    ChatMessage { height: auto; padding: 0 1 0 1; }
    ChatMessage.-user { background: $boost; margin-top: 1; }
    ChatMessage.-note { color: $text-warning; }
    ChatMessage.-error { color: $text-error; }
    ChatMessage.-rule { color: $text-muted; text-align: center; margin-top: 1; }
    """

    def __init__(self, role: str, label: str, text: str = "", streaming: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.role = role  # user | assistant | note | error | rule
        self.label = label
        self.text = text
        self.streaming = streaming
        self.stats = ""  # "12 tok · 300 tok/s · eos" once a reply is done
        self.problem = ""  # why a reply ended early (worker crashed, ...)
        self.done: dict | None = None  # the worker's done message, for a reply
        self.updates = 0  # widget refreshes (the tests check tokens are batched)
        self.add_class(f"-{role}")

    def on_mount(self) -> None:
        self._show()

    def append(self, text: str) -> None:
        if text:
            self.text += text
            self._show()

    def finish(self, text: str | None = None, stats: str = "", problem: str = "") -> None:
        if text is not None:
            self.text = text
        self.streaming = False
        self.stats = stats
        self.problem = problem
        self._show()

    def _show(self) -> None:
        self.updates += 1
        self.update(self.body())

    def body(self) -> Text:
        colors = self.app.theme_variables if self.is_attached else {}
        out = Text()
        if self.role in ("user", "assistant"):
            out.append(visible(self.label), style=f"bold {colors.get(ROLE_STYLES[self.role], '')}")
            if self.stats:
                out.append(f"  {self.stats}", style="dim")
            out.append("\n")
        out.append(visible(self.text))  # model output and prompts: shown, never obeyed by the terminal
        if self.streaming:
            out.append(CURSOR, style="blink")
        elif self.role == "assistant" and not self.text and not self.problem:
            out.append("(empty reply)", style="dim italic")
        if self.problem:
            out.append(("\n" if self.text else "") + visible(self.problem), style=f"bold {colors.get('error', 'red')}")
        return out


class ChatLog(VerticalScroll, can_focus=True):
    """The messages of one conversation (one model)."""

    BINDINGS = [
        Binding("up,k", "scroll_up", "Scroll up", show=False, id="chatlog.up"),
        Binding("down,j", "scroll_down", "Scroll down", show=False, id="chatlog.down"),
        Binding("pageup", "page_up", "Page up", show=False, id="chatlog.page_up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="chatlog.page_down"),
        Binding("home", "scroll_home", "Top", show=False, id="chatlog.top"),
        Binding("end", "scroll_end", "Bottom", show=False, id="chatlog.bottom"),
    ]
    DEFAULT_CSS = """
    ChatLog { height: 1fr; scrollbar-size-vertical: 1; }
    ChatLog:focus { background: $boost; }
    ChatLog .chatlog--empty { color: $text-muted; padding: 0 1; }
    """

    def __init__(self, empty: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.empty = empty

    def compose(self):
        yield Static(self.empty, classes="chatlog--empty")

    def on_mount(self) -> None:
        self.anchor()

    def set_empty(self, text: str) -> None:
        self.empty = text
        self.query_one(".chatlog--empty", Static).update(Text(text))

    def add(self, role: str, label: str, text: str = "", streaming: bool = False) -> ChatMessage:
        message = ChatMessage(role, label, text, streaming)
        self.query_one(".chatlog--empty").display = False
        self.mount(message)
        return message

    def note(self, text: str, error: bool = False) -> ChatMessage:
        """A line for the reader that is not part of the conversation."""
        return self.add("error" if error else "note", "", text)

    def rule(self, text: str) -> ChatMessage:
        """A separator line: what is above it is not part of what the model sees next."""
        return self.add("rule", "", f"── {text} ──")

    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))

    def clear_messages(self) -> None:
        for message in self.query(ChatMessage):
            message.remove()
        self.query_one(".chatlog--empty").display = True
        self.scroll_home(animate=False)
        self.anchor()

    @property
    def following(self) -> bool:
        """True while new content keeps the log scrolled to the end."""
        return self.is_anchored and not self._anchor_released
