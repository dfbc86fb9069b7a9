"""Key remapping: binding ids, the user's ``keys:`` table, and what each key is now.

Every Binding in finetui has an id (``app.quit``, ``settings.save``, ``form.edit`` ...). The
user config maps ids to keys (``keys: {app.screen_settings: f2}``); we hand that to
Textual's own keymap support (``App.set_keymap``), which rebinds by id everywhere. This
module only checks the table (unknown ids are reported with a close match, not silently
ignored) and answers "which key does this binding have now" for the help screen and the
screen bar.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from textual.binding import Binding, BindingType


def bindings_of(cls: type) -> list[Binding]:
    """A class's own and inherited bindings (Textual's merged map), one per key."""
    merged = getattr(cls, "_merged_bindings", None)
    if merged is None:
        return [b for b in _as_bindings(getattr(cls, "BINDINGS", []))]
    out: list[Binding] = []
    for bindings in merged.key_to_bindings.values():
        out.extend(bindings)
    return out


def _as_bindings(items: Iterable[BindingType]) -> list[Binding]:
    out: list[Binding] = []
    for item in items:
        if isinstance(item, Binding):
            out.extend(Binding.make_bindings([item]))
        else:
            out.extend(Binding.make_bindings([Binding(*item)]))
    return out


def parse(raw: dict[str, Any], known_ids: set[str], source: str) -> tuple[dict[str, str], list[str]]:
    """Check the user's ``keys`` table; return (keymap for App.set_keymap, problems)."""
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in raw.items():
        binding_id = str(binding_id)
        if isinstance(keys, (list, tuple)):
            keys = ",".join(str(k) for k in keys)
        if not isinstance(keys, str) or not keys.strip():
            problems.append(f"{source}: keys.{binding_id}: expected a key such as f2 or ctrl+s")
            continue
        if binding_id not in known_ids:
            close = difflib.get_close_matches(binding_id, sorted(known_ids), n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (see the help screen, ?, for ids)"
            problems.append(f"{source}: keys.{binding_id}: unknown binding id{hint}")
            continue
        keymap[binding_id] = ",".join(k.strip() for k in keys.split(",") if k.strip())
    return keymap, problems


def keys_for(binding: Binding, keymap: dict[str, str]) -> list[str]:
    """The key(s) a binding answers to under ``keymap``."""
    if binding.id and binding.id in keymap:
        return [k.strip() for k in keymap[binding.id].split(",") if k.strip()]
    return [binding.key]
