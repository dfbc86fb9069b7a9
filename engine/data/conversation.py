"""The canonical record every format normalises to.

Light module (stdlib only). Readers produce raw records; ``engine.data.formats`` turns
each into a :class:`Conversation`; ``engine.data.render`` turns a Conversation into token
ids and labels through the tokenizer's chat template.

Roles are the OpenAI ones: ``system``, ``user``, ``assistant``, ``tool``. ShareGPT's
``function_call`` becomes an assistant message carrying ``tool_calls``; ``observation``
becomes ``tool``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("chat", "text", "preference")


@dataclass
class Message:
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None  # [{"type": "function", "function": {name, arguments}}]
    # An assistant turn with ``train=False`` is context only: rendered, never trained
    # (LLaMA-Factory's ``loss_weight: 0``, Axolotl's ``training: false``).
    train: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The message as a chat template takes it (no ``train`` key)."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        return d


@dataclass
class Conversation:
    """One training example.

    kind "chat": ``messages`` (no system message inside; it lives in ``system``).
    kind "text": raw pretraining text in ``text``; ``messages`` is empty; every token trains.
    kind "preference": ``messages`` holds the prompt and the *chosen* reply (so SFT on
    chosen works unchanged); ``rejected`` holds the rejected reply, never trained.

    ``repairs``: what normalisation changed to keep the record, as (field, message) pairs
    (an empty turn dropped with its exchange); readers report each one with the record's
    place.
    """

    messages: list[Message] = field(default_factory=list)
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    kind: str = "chat"
    text: str | None = None
    rejected: Message | None = None
    repairs: list[tuple[str, str]] = field(default_factory=list)

    def to_messages(self) -> list[dict[str, Any]]:
        """OpenAI-style message list with the system prompt first (what
        ``tokenizer.apply_chat_template`` takes)."""
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out.extend(m.to_dict() for m in self.messages)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Conversation":
        rejected = d.get("rejected")
        return cls(
            messages=[Message(**m) for m in d.get("messages", [])],
            system=d.get("system"),
            tools=d.get("tools"),
            kind=d.get("kind", "chat"),
            text=d.get("text"),
            rejected=Message(**rejected) if rejected else None,
            repairs=[tuple(r) for r in d.get("repairs") or ()],
        )
