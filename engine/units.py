"""Sizes and durations as the CLI, the messages and the screens write them: one place.

Light module (standard library only): the UI imports it.

- Memory (weights, estimates, GPU and RAM use) is in binary multiples with their own names,
  as torch and nvidia-smi count it: ``format_bytes(n)`` -> ``'61.2 GiB'``.
- Files, downloads and data limits are in decimal multiples, as pip, the Hugging Face hub
  and ``ls --si`` count them: ``format_bytes(n, si=True)`` -> ``'92.9 MB'``.

One decimal below 100 of a unit, none from 100 (``'1.5 KiB'``, ``'512 MiB'``); bytes are
whole (``'900 B'``). Durations read like a clock: ``'4:05'``, ``'1:02:03'``. A value that is
not a number (None, a missing field) or cannot be one (a negative duration) is ``missing``.
"""

from __future__ import annotations

SI = (("B", 1), ("kB", 1000), ("MB", 1000 ** 2), ("GB", 1000 ** 3), ("TB", 1000 ** 4))
IEC = (("B", 1), ("KiB", 1024), ("MiB", 1024 ** 2), ("GiB", 1024 ** 3), ("TiB", 1024 ** 4))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _shown(value: float, scale: int) -> float:
    """``value`` bytes in units of ``scale``, as written (whole bytes, else one decimal
    below 100, none from 100)."""
    if scale == 1:
        return float(int(value))
    value = value / scale
    return round(value, 1) if abs(value) < 99.95 else float(round(value))


def _unit(n: float, units) -> tuple[str, int]:
    """The first unit in which ``n``, as written, is under the next unit."""
    for (name, scale), (_, following) in zip(units, units[1:]):
        if abs(_shown(n, scale)) < following / scale:
            return name, scale
    return units[-1]


def _amount(value: float, scale: int) -> str:
    shown = _shown(value, scale)
    return f"{int(shown)}" if scale == 1 or abs(value / scale) >= 99.95 else f"{shown:.1f}"


def format_bytes(n, si: bool = False, missing: str = "-") -> str:
    """``'1.5 KiB'``, ``'61.2 GiB'``; with ``si``: ``'50.0 kB'``, ``'92.9 MB'``."""
    if not _number(n):
        return missing
    name, scale = _unit(n, SI if si else IEC)
    return f"{_amount(n, scale)} {name}"


def format_bytes_pair(used, total, si: bool = False, missing: str = "-") -> str:
    """Used of total in the total's unit: ``'40.0/80.0 GiB'``, ``'512/981 MiB'``; used
    alone when the total is missing, ``missing`` when used is."""
    if not _number(total):
        return format_bytes(used, si, missing)
    if not _number(used):
        return missing
    name, scale = _unit(total, SI if si else IEC)
    return f"{_amount(used, scale)}/{_amount(total, scale)} {name}"


def format_duration(seconds, missing: str = "-") -> str:
    """``'0:07'``, ``'4:05'``, ``'1:02:03'`` (whole seconds, rounded down)."""
    if not _number(seconds) or seconds < 0 or seconds == float("inf"):
        return missing
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
