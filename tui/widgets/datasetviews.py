"""How the Datasets screen draws a record and the token lengths: the rendered training
text with its trained tokens highlighted (and the windows of a long text), the record's
header and raw text, the counts and histogram of the lengths pass, and the two lines over
the table (what is open and how it is read; the column mapping). Rich text only, from the
render worker's answers and :mod:`finetui.tui.datasetstate`; ``color(name)`` gives a theme
colour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text

MAX_WINDOWS = 20  # windows of a long text shown in the record view
RAW_MAX_CHARS = 20_000  # of a raw record shown
BAR_WIDTH = 40

Color = Callable[[str], str]


def short_place(place: str) -> str:
    """file:line with the file relative to the working directory when inside it."""
    from finetui.tui.session import display_path

    path, sep, line = place.rpartition(":")
    if not sep or not line.isdigit():
        return place
    return f"{display_path(path)}:{line}"


def marked(answer: dict[str, Any], color: Color) -> Text:
    """The rendered text: trained tokens highlighted, the rest dim, the cut-off struck."""
    text, end = answer["text"], answer.get("kept_chars", len(answer["text"]))
    trained = f"bold {color('success')}"
    out = Text()
    pos = 0
    for a, b in answer["trained_spans"]:
        a, b = min(a, end), min(b, end)
        if a > pos:
            out.append(text[pos:a], style="dim")
        if b > a:
            out.append(text[a:b], style=trained)
        pos = max(pos, b)
    if pos < end:
        out.append(text[pos:end], style="dim")
    if end < len(text):
        out.append("\n✂ max_length: the rest is not trained\n", style=f"bold {color('warning')}")
        out.append(text[end:], style="dim strike")
    return out


def rendered_view(answer: dict[str, Any], info: dict[str, Any], place: str, color: Color) -> Text:
    """A record as it trains: tokens and trained tokens, format, template and model
    (``info``: the render worker's), truncation, notes, unused columns, a transcript's
    turns, then the text (each window of a long text under its ``place#chunkN``)."""
    head = Text(f"{answer['n_tokens']} tokens, {answer['n_trained']} trained", style="bold")
    head.append(" (highlighted)", style=f"bold {color('success')}")
    head.append(f" · format {answer['format']} · template {info.get('template', '?')} · "
                f"model {info.get('model', '?')}", style="dim")
    windows = answer.get("windows") or []
    if windows:
        head = Text(f"{answer['full_tokens']} tokens split into {len(windows)} windows of ≤ max_length "
                    f"(data.long_text chunk), {sum(w['n_trained'] for w in windows)} trained", style="bold")
        head.append(f" · format {answer['format']} · template {info.get('template', '?')}", style="dim")
    if answer.get("truncated"):
        why = " (data.long_text truncate: the rest is not trained)" if answer.get("format") == "text" else ""
        head.append(f"\ntruncated: {answer['full_tokens']} tokens > max_length{why}", style=f"bold {color('warning')}")
    for note in answer.get("notes") or []:
        head.append(f"\nnote: {note}", style=color("warning"))
    if answer.get("unused"):
        head.append(f"\nnot trained: column{'s' if len(answer['unused']) > 1 else ''} "
                    f"{', '.join(answer['unused'])} (m: map columns)", style=f"bold {color('warning')}")
    if answer.get("format") == "transcript" and answer.get("messages"):
        roles = ", ".join(f"{m['role']}" for m in answer["messages"][:12])
        more = len(answer["messages"]) - 12
        head.append(f"\nconversation: {len(answer['messages'])} turns ({roles}{', …' if more > 0 else ''})",
                    style="dim")
    head.append("\n\n")
    if windows:
        for k, window in enumerate(windows[:MAX_WINDOWS]):
            head.append(f"── {short_place(place)}#chunk{k + 1} · {window['n_tokens']} tokens, "
                        f"{window['n_trained']} trained ──\n", style=f"bold {color('primary')}")
            head.append_text(marked(window, color))
            head.append("\n")
        if len(windows) > MAX_WINDOWS:
            head.append(f"… {len(windows) - MAX_WINDOWS} more windows", style="dim")
    else:
        head.append_text(marked(answer, color))
    return head


def lengths_view(result: dict[str, Any], color: Color) -> Text:
    """The lengths pass: record counts, windows, token lengths, the trained share, a
    histogram (▒ over max_length), notes and the first issues."""
    c = result["counts"]
    text = Text()
    text.append("records   ", style="bold")
    mild = "".join(f"{c[k]:,} {k}, " for k in ("skipped", "repaired") if c.get(k))
    text.append(f"{c['records']:,}: {c['ok']:,} ok, {c['invalid']:,} invalid, {mild}{c['truncated']:,} truncated, "
                f"{c['no_trained']:,} with nothing to train")
    if c.get("chunked"):
        text.append("\nwindows   ", style="bold")
        text.append(f"{c['chunked']:,} long texts split into windows: {c['examples']:,} training examples "
                    f"(data.long_text chunk, overlap {result.get('text_overlap', 0)})")
    if result.get("limited"):
        text.append(f"  (first {result['limit']:,} records)", style="dim")
    stats = result.get("stats") or {}
    if stats:
        text.append("\ntokens    ", style="bold")
        text.append(f"min {stats['min']}  median {stats['median']:g}  p95 {stats['p95']}  max {stats['max']}  "
                    f"(max_length {result['max_length']})")
    if result.get("total_tokens"):
        share = 100 * result["trained_tokens"] / result["total_tokens"]
        text.append("\ntrained   ", style="bold")
        text.append(f"{result['trained_tokens']:,} of {result['total_tokens']:,} tokens ({share:.0f}%)")
    hist = result.get("histogram") or []
    if hist:
        text.append("\n\ntoken length histogram", style="bold")
        text.append(" (per record, before truncation or chunking; ▒ = over max_length)\n", style="dim")
        top = max(b["count"] for b in hist) or 1
        width = len(str(hist[-1]["hi"]))
        for b in hist:
            bar_len = max(1 if b["count"] else 0, round(BAR_WIDTH * b["count"] / top))
            over = b["lo"] > result["max_length"]
            text.append(f"  {b['lo']:>{width}}-{b['hi']:<{width}} ")
            text.append(("▒" if over else "█") * bar_len, style=color("warning" if over else "primary"))
            text.append(f" {b['count']:,}\n")
    for note in result.get("notes") or []:
        text.append(f"\n{note}", style=color("warning"))
    for issue in result.get("issues", [])[:10]:
        text.append(f"\n{issue}", style="red")
    return text


# ---------------------------------------------------------------------------- the lines above the table


def source_line(spec: str | None, rows: Any, fmt: str | None, how: str, matches: int | None) -> Text:
    """``spec · jsonl 1.2 MB · qa (detected) · 1,000 rows · 12 match``: what is open, how
    it is read, how many rows (counting while a big file is indexed) and the search's matches."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(spec or "", style="bold")
    if rows is not None:
        line.append(f" · {rows.description}")
        if fmt:
            line.append(f" · {fmt} ({how})")
        else:
            line.append(" · format unknown", style="bold red")
        total = rows.total
        if total is None:
            line.append(f" · ≈{rows.estimated_total:,} rows, indexing {rows.progress:.0%}")
        else:
            line.append(f" · {total:,} rows" + (" (first ones only)" if rows.limited else ""))
        if matches is not None:
            line.append(f" · {matches:,} match", style="bold")
    return line


def columns_line(columns: dict[str, str], check: Any, differs: bool, color: Color) -> Text:
    """One line under the source: the mapping, the columns not trained (``check``: a
    datasource.ColumnCheck), what m / u do; empty when there is nothing to say."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if columns:
        line.append("columns " + ", ".join(f"{k}={v}" for k, v in columns.items()), style="bold")
    if check is not None and check.line():
        if line:
            line.append(" · ")
        line.append(check.line(), style=f"bold {color('warning')}")
    if line:
        line.append(" · m map", style="dim")
    if differs:
        line.append(" · " if line else "")
        line.append("Settings read it otherwise: u", style=f"bold {color('warning')}")
    return line


# ---------------------------------------------------------------------------- the record view


def record_head(row: Any) -> Text:
    """``record 12  data.jsonl:12``."""
    head = Text(f"record {row.index + 1}", style="bold")
    head.append(f"  {short_place(row.place)}", style="dim")
    return head


def raw_view(row: Any) -> Text:
    """The record as read: pretty JSON (the first RAW_MAX_CHARS), or the raw line and why it
    cannot be read."""
    import json

    if row.error:
        raw = Text(row.raw[:RAW_MAX_CHARS])
        raw.append(f"\n{row.place}: {row.error}", style="bold red")
        return raw
    pretty = json.dumps(row.data, ensure_ascii=False, indent=2, default=str)
    raw = Text(pretty[:RAW_MAX_CHARS])
    if len(pretty) > RAW_MAX_CHARS:
        raw.append(f"\n… {len(pretty) - RAW_MAX_CHARS:,} more characters", style="dim")
    return raw
