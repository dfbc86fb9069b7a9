"""Rich consoles for the command line, honouring NO_COLOR (https://no-color.org).

Rich alone drops only the colours under NO_COLOR and keeps bold, dim and underline, which
are escape sequences too. Here NO_COLOR (set and not empty) means no styling at all
(``color_system=None``: text is written plain). A progress bar on a terminal still moves
the cursor to redraw its one line; off a terminal nothing is drawn. Every Console the
engine builds comes from :func:`console`.
"""

from __future__ import annotations

import os
from typing import Any


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def console(**kwargs: Any):
    from rich.console import Console

    if no_color():
        kwargs["color_system"] = None
        kwargs["no_color"] = True
    return Console(**kwargs)
