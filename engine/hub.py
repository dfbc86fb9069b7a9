"""Whether a Hugging Face hub id can be had here, without a long retry loop: one place.

Light module (standard library; ``huggingface_hub`` only inside the functions that need it).

- ``is_hub_id(name)``: ``org/name`` or a legacy single name (``gpt2``); ``./``, ``~``, ``..``
  or more slashes mean a path.
- ``offline()``: the user said offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, or
  huggingface_hub's own setting); ``env_offline(*names)`` reads just those variables.
- ``reachable()``: one TCP connect to the hub's host (``HF_ENDPOINT``), in a thread, because
  the DNS lookup itself has no timeout and can hang on a box without a resolver.
- ``cached_file(repo_id, filename)`` / ``cached_snapshot(repo_id)``: what the HF cache holds,
  never the network.
- ``probe(repo_id)``: the three answers together: ``"cached"`` (its snapshot folder is
  ``cached_snapshot``), ``"download"`` (not cached, the hub answers) or ``"offline"``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

HUB_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def env_offline(*names: str) -> bool:
    """Any of these environment variables set to 1 / true / yes / on (any case)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def offline() -> bool:
    """Models: the environment is read here too, as huggingface_hub reads it once, at its import."""
    if env_offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> tuple[str, int]:
    """The hub's host and port (``HF_ENDPOINT``, else huggingface.co:443)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """One TCP connect to the hub's host within about ``timeout`` seconds."""
    address = endpoint()
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """``filename`` of ``repo_id`` in the HF cache; None when absent or the id is malformed."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return None
    return Path(found) if isinstance(found, str) else None


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a model (the one holding its config.json), or None."""
    found = cached_file(repo_id, "config.json", revision)
    return found.parent if found is not None else None


def probe(repo_id: str, revision: str | None = None) -> Literal["cached", "download", "offline"]:
    if cached_snapshot(repo_id, revision) is not None:
        return "cached"
    if offline() or not reachable():
        return "offline"
    return "download"
