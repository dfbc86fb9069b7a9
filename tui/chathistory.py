"""What the Chat screen sends to its models: the user's turns, each side's replies, where
each side's conversation starts, and single-turn mode. Plain Python (no Textual, no
engine imports), so tests drive it without an app.

A *side* is one pane's model: ``main``, and ``base`` side by side. The user's turns are
shared (one prompt goes to both sides); each side has its own replies and its own start.
Turns before a side's start are not in its context: another model answered them (the pane
loaded a different model, or the base pane joined later) or the conversation was restarted
(single-turn mode toggled). A history written by one model and continued by another turns
good answers into garbage, so a side never carries replies across a model swap.

In single-turn mode a request carries the system prompt and the new message only.

The size of the history shown on screen is counted here too: turns and characters, and
tokens where the worker counted them (``prompt_tokens + new_tokens`` of the last reply,
while the history is still exactly that request plus its reply). The UI process never
has a tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Message = dict[str, str]
SIDES = ("main", "base")


@dataclass
class Side:
    """One side's part of the conversation."""

    start: int = 0  # the first turn of this side's conversation
    replies: dict[int, str | None] = field(default_factory=dict)  # turn -> reply (None: none usable)
    failures: dict[int, str] = field(default_factory=dict)  # turn -> error kind
    tokens: dict[int, tuple[int, str]] = field(default_factory=dict)  # turn -> (request + reply tokens, their key)

    def forget(self, turn: int) -> None:
        self.replies.pop(turn, None)
        self.failures.pop(turn, None)
        self.tokens.pop(turn, None)


@dataclass(frozen=True)
class HistorySize:
    """How much earlier conversation the next request on a side carries."""

    single_turn: bool
    turns: int
    chars: int
    tokens: int | None  # counted by the worker; None where not known

    def __str__(self) -> str:
        return self.describe()

    def describe(self, narrow: bool = False) -> str:
        """``history 3 turns · ~412 tok`` (characters where the tokens are not known), or
        ``single-turn``; ``narrow`` leaves out the word history."""
        if self.single_turn:
            return "single-turn"
        text = ("" if narrow else "history ") + f"{self.turns} turn{'' if self.turns == 1 else 's'}"
        if self.turns:
            text += f" · ~{_short(self.tokens)} tok" if self.tokens is not None else f" · {_short(self.chars)} chars"
        return text


class ChatHistory:
    """The conversation's state; the screen keeps only the widgets that show it."""

    def __init__(self, sides: tuple[str, ...] = SIDES) -> None:
        self.turns: list[str] = []  # the user's messages, by turn
        self.single_turn = False
        self.sides: dict[str, Side] = {name: Side() for name in sides}

    def side(self, name: str) -> Side:
        return self.sides[name]

    # ------------------------------------------------------------------ changes

    def add(self, text: str) -> int:
        """A new user message; returns its turn."""
        self.turns.append(text)
        return len(self.turns) - 1

    def pop(self) -> str:
        """Take the last user message back (and every side's reply to it)."""
        text = self.turns.pop()
        turn = len(self.turns)
        for side in self.sides.values():
            side.forget(turn)
            side.start = min(side.start, turn)
        return text

    def asked(self, name: str, turn: int) -> None:
        """``turn`` is being asked (again) on a side: its old reply no longer counts."""
        self.sides[name].forget(turn)

    def answered(self, name: str, turn: int, reply: str | None, sent: list[Message] | None = None,
                 tokens: int | None = None) -> None:
        """A side's reply to ``turn`` (None: nothing usable). ``sent``: the request's messages
        and ``tokens`` the worker's count of them plus the reply, for the history size."""
        side = self.sides[name]
        side.replies[turn] = reply
        side.tokens.pop(turn, None)
        if reply is not None and sent is not None and tokens:
            side.tokens[turn] = (tokens, _key([*sent, {"role": "assistant", "content": reply}]))

    def failed(self, name: str, turn: int, kind: str) -> None:
        side = self.sides[name]
        side.replies[turn] = None
        side.failures[turn] = kind
        side.tokens.pop(turn, None)

    def restart(self, name: str) -> bool:
        """A new conversation on one side from the next turn on. True when turns of its old
        conversation (answered or not) were left behind."""
        side = self.sides[name]
        left = len(self.turns) > side.start
        side.start = len(self.turns)
        return left

    def set_single_turn(self, on: bool) -> None:
        """Switch mode. Either way every side starts a new conversation: turns asked alone
        were never a conversation, and a multi-turn one is not continued by lone prompts."""
        self.single_turn = on
        for name in self.sides:
            self.restart(name)

    def clear(self) -> None:
        """Everything said goes; the mode stays."""
        self.turns.clear()
        for side in self.sides.values():  # in place: the screen's panes hold these
            side.start = 0
            side.replies.clear()
            side.failures.clear()
            side.tokens.clear()

    # ------------------------------------------------------------------ what is sent

    def context(self, name: str, turn: int | None = None) -> list[int]:
        """The earlier turns a request for ``turn`` (default: the next one) carries on a side:
        those since its start that have a usable reply there; none in single-turn mode."""
        turn = len(self.turns) if turn is None else turn
        if self.single_turn:
            return []
        side = self.sides[name]
        return [i for i in range(side.start, turn) if side.replies.get(i) is not None]

    def messages(self, name: str, turn: int, system: str = "") -> list[Message]:
        """What the model on a side sees for ``turn``: the system prompt, the earlier
        exchanges of its context, the user's message."""
        return [*self._history(name, turn, system), {"role": "user", "content": self.turns[turn]}]

    def record(self, name: str, system: str = "") -> list[Message]:
        """One side's conversation as a training record (OpenAI ``messages``): its answered
        turns since its start; in single-turn mode the last one alone, as it was asked."""
        side = self.sides[name]
        answered = [i for i in range(side.start, len(self.turns)) if side.replies.get(i) is not None]
        if self.single_turn:
            answered = answered[-1:]
        out = _system(system)
        for i in answered:
            out += [{"role": "user", "content": self.turns[i]}, {"role": "assistant", "content": side.replies[i] or ""}]
        return out

    def size(self, name: str, system: str = "") -> HistorySize:
        """The history the next request on a side carries."""
        turns = self.context(name)
        side = self.sides[name]
        chars = sum(len(self.turns[i]) + len(side.replies[i] or "") for i in turns)
        tokens = None
        if turns:
            counted = side.tokens.get(turns[-1])
            if counted is not None and counted[1] == _key(self._history(name, len(self.turns), system)):
                tokens = counted[0]
        return HistorySize(self.single_turn, len(turns), chars, tokens)

    def _history(self, name: str, turn: int, system: str) -> list[Message]:
        side = self.sides[name]
        out = _system(system)
        for i in self.context(name, turn):
            out += [{"role": "user", "content": self.turns[i]}, {"role": "assistant", "content": side.replies[i] or ""}]
        return out


def _system(system: str) -> list[Message]:
    return [{"role": "system", "content": system}] if system.strip() else []


def _key(messages: list[Message]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def _short(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)
