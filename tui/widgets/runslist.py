"""How the Runs screen draws its list: the table (one row a run, the columns that fit), the
title line (counts by status, marks, the folder) and the detail of the selected run (pid,
last loss, checkpoints, the error and its hint, the resume key). Rich text from
:mod:`finetui.tui.runsstate`; ``colors`` are :func:`tui.widgets.lossplot.theme_colors`.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from finetui.engine import runs
from finetui.tui import runsstate
from finetui.tui.dashstate import STATUS_MARK
from finetui.tui.safetext import visible
from finetui.tui.widgets.runprogress import fmt_num


class RunsTable(DataTable):
    """The runs list; enter opens the highlighted run (its binding, so the footer says so)."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", id="runs.open")]

    def show(self, infos: list[runs.RunInfo], marked: list[str], colors: dict[str, str], width: int) -> None:
        """Every run in the columns that fit ``width`` cells; the cursor stays on its run."""
        current = self.current_id()
        self.clear(columns=True)
        columns = runsstate.column_widths(width)
        for key, label, w in columns:
            self.add_column(fit(Text(label, style="bold"), w), key=key, width=w)
        for info in infos:
            self.add_row(*(fit(cell(info, key, w, marked, colors), w) for key, _l, w in columns), key=info.id)
        if current is not None and current in {i.id for i in infos}:
            self.move_cursor(row=self.get_row_index(current), animate=False)

    def current_id(self) -> str | None:
        """The run id of the cursor's row (None in an empty table)."""
        if self.row_count == 0:
            return None
        row = min(max(self.cursor_row, 0), self.row_count - 1)
        try:
            return self.coordinate_to_cell_key((row, 0)).row_key.value
        except Exception:
            return None


def cell(info: runs.RunInfo, key: str, width: int, marked: list[str], colors: dict[str, str]) -> Text:
    if key == "mark":
        return Text("◆" if info.id in marked else "", style=f"bold {colors['eval']}")
    if key == "status":
        mark, color = STATUS_MARK.get(info.status, ("?", "dim"))
        return Text(f"{mark} {info.status}", style=colors.get(color, color))
    # run names, model paths: never control codes
    return Text(visible(runsstate.cell_value(info, key, width, fmt_num)))


def fit(text: Text, width: int) -> Text:
    """A cell's text cut to ``width - 1`` cells plus one space: the gap between columns
    (the table has no cell padding, to leave the run and model columns room at 80 cells)."""
    text = text.copy()
    text.no_wrap = True
    text.truncate(max(width - 1, 1), overflow="ellipsis")
    text.append(" ")
    return text


def title(infos: list[runs.RunInfo], marked: list[str], root: str) -> Text:
    """``4 runs: 1 running · 2 completed · 1 failed  ◆ 2 marked  in runs/``."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{len(infos)} run{'s' if len(infos) != 1 else ''}", style="bold")
    if infos:
        text.append(": " + " · ".join(f"{n} {s}" for s, n in runsstate.status_counts(infos).items()))
    if marked:
        text.append(f"  ◆ {len(marked)} marked", style="bold")
    text.append(f"  in {root}/", style="dim")
    return text


def detail(info: runs.RunInfo, started_here: bool, resume_key: str, colors: dict[str, str]) -> Text:
    """The selected run: id, pid, last loss, checkpoints, the error and its hint, resume."""
    text = Text(no_wrap=False)
    text.append(info.id, style="bold")
    if info.status == "running" and info.pid:
        text.append(f"  pid {info.pid}" + (" (started here)" if started_here else ""), style="dim")
    if info.last_loss is not None:
        text.append(f"  loss {fmt_num(info.last_loss)}", style="dim")
    if info.checkpoints:
        text.append(f"  {len(info.checkpoints)} checkpoints, last step {runsstate.last_checkpoint_step(info)}",
                    style="dim")
    if info.status == "failed" and info.error:
        text.append("\n✖ ", style=colors["bad"])
        text.append(info.error.splitlines()[0][:300], style=colors["bad"])
        if info.hint:
            text.append(f"\nhint: {info.hint.splitlines()[0][:300]}", style="dim")
    if info.status in ("stopped", "killed", "failed"):
        text.append(f"\n{resume_key}: resume from the last checkpoint", style="dim")
    return text
