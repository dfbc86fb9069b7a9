"""Text from outside shown on a terminal, made unable to drive it.

Records, model output, file and run names, log lines and error messages can hold control
characters: ``ESC[2J`` clears the screen, ``ESC]0;...BEL`` retitles the terminal,
``ESC]52;...`` writes the clipboard, a C1 ``CSI`` (U+009B) starts a sequence on its own.
:func:`visible` shows every C0 control other than newline and tab as its Unicode control
picture (ESC -> ``␛``, BEL -> ``␇``, CR -> ``␍``), DEL as ``␡`` and each C1 control as a
``\\x9b``-style escape, so the text reads the same and nothing in it reaches the terminal
as a command. Pure and stdlib only: the CLI and the TUI (through its widgets) both use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["visible", "has_controls", "json_text"]

_TABLE: dict[int, str] = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_TABLE[0x7F] = "\u2421"  # ␡
_TABLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_JSON_RAW = re.compile("[\x7f-\x9f]")  # what json.dumps(ensure_ascii=False) leaves raw


def has_controls(text: str) -> bool:
    """Whether ``text`` holds a character :func:`visible` would change."""
    return _CONTROL.search(text) is not None


def visible(text: object) -> str:
    """``text`` (``str()`` of anything else) with C0 controls but newline and tab, DEL and
    C1 controls made visible; text without them comes back as it is."""
    text = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_picture, text)


def _picture(match: re.Match) -> str:
    return _TABLE[ord(match.group())]


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **kwargs)`` with DEL and the C1 controls
    written as ``\\u`` escapes too (JSON escapes only U+0000-U+001F itself): the same JSON
    value, and printed raw on a terminal it cannot drive it."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
