"""How the Eval screen draws what ``tui.evalstate`` computes: the metrics table (tuned
against base), a row of the examples table, one example in full. Rich renderables only;
``colors`` are the theme's variables (``app.theme_variables``).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from finetui.tui import evalstate, jobs
from finetui.tui.safetext import visible  # prompts, targets, model outputs: never control codes

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
NO_RESULT = ("g evaluates the run on its held-out split (`finetui eval`, tuned and base); "
             "x exports it as a merged model folder.")


def metrics_view(result: dict[str, Any] | None) -> RenderableType:
    """The heading and the metrics table, one column per model and the delta."""
    if not result:
        text = Text("No evaluation yet. ", style="bold")
        text.append(NO_RESULT, style="dim")
        return text
    names = evalstate.models_in(result)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, expand=False, pad_edge=False)
    table.add_column("metric", style="bold")
    for n in names:
        table.add_column(n, justify="right")
    if len(names) == 2:
        table.add_column("tuned − base", justify="right", style="dim")
    for row in evalstate.metric_rows(result):
        table.add_row(row.label, *row.values, *([row.delta] if len(names) == 2 else []))
    head = Text(evalstate.result_heading(result), style="dim", no_wrap=True, overflow="ellipsis")
    return Group(head, table)


def column_width(width: int, models: int) -> int:
    """The width of each text column of the examples table (prompt, target, one per model)."""
    cols = 2 + models
    return max(8, (width - 1 - 5 - cols * 2) // cols)


def table_cells(i: int, row: dict[str, Any], names: list[str], colors: dict[str, str]) -> list[Any]:
    """One example as a row of the table: its index, prompt, target, each model's output
    marked ✓ (exact match) or ✗."""
    good, bad = colors.get("success", ""), colors.get("error", "")
    cells: list[Any] = [Text(str(row.get("index", i)), style="dim")]
    for key in ("prompt", "target"):
        cells.append(_cell(row.get(key) or ""))
    for n in names:
        out = row.get(n)
        mark = Text("✓ " if row.get(f"{n}_match") else "✗ ", style=good if row.get(f"{n}_match") else bad)
        cell = _cell(out if out is not None else "—")
        cells.append(mark + cell if out is not None else cell)
    return cells


def example_view(rows: list[dict[str, Any]], index: int, colors: dict[str, str]) -> Text:
    """One example in full: prompt, target, each model's output with its match and loss,
    and the prompt as the chat template rendered it."""
    row = rows[index]
    names = [n for n in evalstate.MODELS if n in row]
    head, good, bad = colors.get("primary", ""), colors.get("success", ""), colors.get("error", "")
    text = Text()
    text.append(f"example {row.get('index', index)}", style="bold")
    text.append(f"  ({index + 1} of {len(rows)} · ←/→ previous/next · esc back)\n", style="dim")

    def section(title: str, body: str, extra: Text | None = None) -> None:
        text.append(f"\n{title}", style=f"bold {head}")
        if extra is not None:
            text.append("  ")
            text.append_text(extra)
        text.append("\n")
        text.append(visible(body) if body else "(empty)", style="" if body else "dim italic")
        text.append("\n")

    section("prompt", row.get("prompt") or "")
    section("target", row.get("target") or "")
    for n in names:
        extra = Text()
        match = row.get(f"{n}_match")
        if match is not None:
            extra.append("✓ exact match" if match else "✗ differs", style=good if match else bad)
        loss = row.get(f"{n}_loss")
        if loss is not None:
            extra.append(f"  loss {loss:.4f}", style="dim")
        out = row.get(n)
        section(f"{n} output", out if out is not None else "(not generated: no prompt before the target)", extra)
    if row.get("prompt_text"):
        section("prompt as the model saw it (chat template)", row["prompt_text"])
    return text


def _cell(text: str) -> Text:
    return Text(visible(" ".join(text.split())), no_wrap=True, overflow="ellipsis")


def run_line(run_dir, info) -> Text:
    """The run on screen: ``20260101-a · finished · lora · tiny``."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if run_dir is None:
        line.append("no run", style="bold")
        return line
    line.append(run_dir.name, style="bold")
    if info is not None:
        line.append(f" · {info.status} · {info.method or '?'} · {info.model or '?'}", style="dim")
    return line


def status_line(job: jobs.Job | None, tick: int, message: Text | None, hint: str, colors: dict[str, str]) -> Text:
    """The status line: a running job (spinner, bar, elapsed, stage), else the last outcome,
    else the keys."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if job is not None:
        line.append(f"{SPINNER[tick % len(SPINNER)]} {'evaluating' if job.kind == 'eval' else 'merging'} ", style="bold")
        if job.fraction is not None:
            filled = round(10 * job.fraction)
            line.append("█" * filled + "░" * (10 - filled) + f" {job.fraction:.0%} ", style=colors.get("accent", ""))
        line.append(job.status())
        line.append(" · S stops", style="dim")
    elif message is not None:
        line.append_text(message)
    else:
        line.append(hint, style="dim")
    return line


def fill_table(table: Any, result: dict[str, Any] | None, rows: list[dict[str, Any]], width: int,
               colors: dict[str, str]) -> None:
    """The examples table (a DataTable): #, prompt, target and each model's output, columns
    sized to ``width``."""
    table.clear(columns=True)
    if not rows:
        return
    names = evalstate.models_in(result)
    column = column_width(width, len(names))
    table.add_column("#", width=3, key="index")
    for key in ("prompt", "target", *names):
        table.add_column(key if key in ("prompt", "target") else f"{key} out", width=column, key=key)
    for i, row in enumerate(rows):
        table.add_row(*table_cells(i, row, names, colors), key=str(i))
