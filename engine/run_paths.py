"""Paths in a run's records (events, summary.json, trainer_state.json), relative to the run
folder, so a run folder can be moved or copied: a copy's records name the copy's own
checkpoints and adapter, never the original's.

Light module (stdlib only). Records from before this (absolute paths) are still read: an
absolute path inside a run folder (``.../<run id>/checkpoints/checkpoint-4``, or the part
from ``checkpoints``, ``adapter``, ``merged`` or ``eval`` on) is taken from the folder the
record is in now.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

RUN_PARTS = ("checkpoints", "adapter", "merged", "eval")  # what a run folder holds


def stored(run_dir: str | Path, path: str | Path) -> str:
    """How a record names ``path``: relative to ``run_dir`` (POSIX separators) when inside
    it, as given otherwise (a file of the user's, outside any run)."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(run_dir))
    except ValueError:
        return str(path)
    return rel.as_posix() or "."


def resolve(run_dir: str | Path, recorded: str | None, run_id: str | None = None) -> Path | None:
    """The path a record names, in the run folder as it is now. Relative: under
    ``run_dir``. Absolute (an older record): re-anchored on ``run_dir`` when it names a
    place in a run folder (after the ``run_id`` part when given and present, else from the
    last of RUN_PARTS); any other absolute path as it is."""
    if not recorded:
        return None
    path = PurePath(recorded)
    run_dir = Path(run_dir)
    if not path.is_absolute():
        return run_dir / path
    parts = path.parts
    names = [run_id, run_dir.name] if run_id else [run_dir.name]
    for name in names:
        if name and name in parts[1:]:
            at = len(parts) - 1 - parts[::-1].index(name)
            return run_dir.joinpath(*parts[at + 1:])
    for at in range(len(parts) - 1, 0, -1):
        if parts[at] in RUN_PARTS:
            return run_dir.joinpath(*parts[at:])
    return Path(recorded)
