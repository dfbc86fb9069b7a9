"""An Input for file system paths with shell-like completion (tab or right arrow)."""

from __future__ import annotations

import os

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input

MAX_ENTRIES = 5000  # a huge folder must not stall the UI thread


class PathSuggester(Suggester):
    """Completes the last path component from the directory listing (dirs get a '/')."""

    def __init__(self, suffixes: tuple[str, ...] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes

    async def get_suggestion(self, value: str) -> str | None:
        return complete(value, self.suffixes)


def complete(value: str, suffixes: tuple[str, ...] = ()) -> str | None:
    if not value:
        return None
    expanded = os.path.expanduser(value)
    folder, stem = os.path.split(expanded)
    try:
        with os.scandir(folder or ".") as entries:
            names = []
            for n, entry in enumerate(entries):
                if n >= MAX_ENTRIES:
                    break
                if entry.name.startswith(stem) and entry.name != stem and (stem.startswith(".") or not entry.name.startswith(".")):
                    is_dir = entry.is_dir()
                    if is_dir or not suffixes or entry.name.endswith(suffixes):
                        names.append(entry.name + ("/" if is_dir else ""))
    except OSError:
        return None
    if not names:
        return None
    names.sort()
    # Complete to the longest common prefix when several match, like a shell.
    prefix = os.path.commonprefix(names)
    completion = prefix if len(prefix) > len(stem) else names[0]
    head = value[: len(value) - len(stem)] if stem else value
    return head + completion


class PathInput(Input):
    BINDINGS = [
        Binding("tab", "complete", "Complete path", show=False, id="path.complete"),
    ]

    def __init__(self, value: str = "", suffixes: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(value=value, suggester=PathSuggester(suffixes), **kwargs)

    def action_complete(self) -> None:
        if self._suggestion and self._suggestion != self.value:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()
