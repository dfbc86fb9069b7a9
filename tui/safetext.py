"""finetui.engine.visible for Rich text: what the TUI shows of records, model output, file and run
names, logs and errors, with control characters made visible (ESC as ␛), styles kept.

Widgets that show such text pass it through :func:`safe` (ChatMessage, LogView, TextLine,
RowTable, the Datasets record view, the Evaluate log, notifications)."""

from __future__ import annotations

from rich.text import Text

from finetui.engine.visible import has_controls, visible

__all__ = ["safe", "visible"]


def safe(text: Text | str) -> Text | str:
    """``text`` with its control characters made visible; a Text keeps its styles (each run
    of one style is converted on its own, so a ``\\x9b`` growing to four characters keeps
    its style), and text without control characters comes back as it is."""
    if isinstance(text, str):
        return visible(text)
    plain = text.plain
    if not has_controls(plain):
        return text
    cuts = sorted({0, len(plain), *(s.start for s in text.spans), *(s.end for s in text.spans)})
    out = Text(style=text.style, justify=text.justify, overflow=text.overflow, no_wrap=text.no_wrap,
               end=text.end, tab_size=text.tab_size)
    for piece in text.divide(cuts[1:-1]):
        shown = Text(visible(piece.plain))
        for span in piece.spans:  # each span covers the whole piece
            shown.stylize(span.style)
        out.append_text(shown)
    return out
