"""Stand-in screens for modes whose real screen another issue builds (Chat, Eval).

They keep the key plan whole (every reserved key goes somewhere and says what will be
there) until the real screen replaces the entry in ``tui.app.SCREEN_TABLE``.
"""

from __future__ import annotations

from textual.containers import Center, Middle
from textual.widgets import Static

from tui.screens.base import FinetuiScreen


class PlaceholderScreen(FinetuiScreen):
    TITLE_TEXT = ""
    BODY = ""
    DEFAULT_CSS = """
    PlaceholderScreen .placeholder { width: 60; max-width: 100%; padding: 1 2;
                                     border: round $panel; color: $text-muted; }
    """

    def compose_body(self):
        with Middle():
            with Center():
                yield Static(f"[b]{self.TITLE_TEXT}[/b]\n\n{self.BODY}", classes="placeholder")


class ChatScreen(PlaceholderScreen):
    MODE = "chat"
    TITLE_TEXT = "Chat"
    BODY = ("Talk to a model or a finished run's result.\n"
            "Not built into the TUI yet: use `finetui chat MODEL_OR_RUN`.")


class EvalScreen(PlaceholderScreen):
    MODE = "eval"
    TITLE_TEXT = "Eval"
    BODY = ("Held-out evaluation of a run, with the base model for comparison.\n"
            "Not built into the TUI yet: use `finetui eval RUN_ID --compare-base`.")
