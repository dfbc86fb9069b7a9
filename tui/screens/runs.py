"""Runs screen (placeholder until the live dashboard lands).

It lists the runs in the registry (engine.runs, read in a worker thread) and marks the
ones this UI started. The dashboard issue replaces the body; what it needs is already on
the app: ``app.run_processes[run_id]`` is the trainer's ``Popen`` (its stdout is the event
pipe), and ``app.run_dirs[run_id]`` the run folder. :class:`RunsScreen.RunStarted` is posted
to this screen when Start launches a run.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from tui.screens.base import FinetuiScreen


class RunsScreen(FinetuiScreen):
    MODE = "runs"
    BINDINGS = [Binding("f5,ctrl+l", "reload", "Reload", id="runs.reload")]
    DEFAULT_CSS = """
    RunsScreen #runs-note { color: $text-muted; height: auto; padding: 0 1; }
    RunsScreen #runs-list { padding: 0 1; }
    """

    class RunStarted(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def compose_body(self):
        yield Static("The live dashboard (loss, lr, tokens/s, memory) comes here. "
                     "Meanwhile: `finetui runs attach ID` in another pane.", id="runs-note")
        with VerticalScroll(id="runs-scroll"):
            yield Static("reading runs…", id="runs-list")

    def on_screen_resume(self) -> None:
        self.action_reload()

    def on_runs_screen_run_started(self, message: RunStarted) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.read_runs()

    @work(thread=True, exclusive=True, group="runs")
    def read_runs(self) -> None:
        from engine import runs

        try:
            infos = runs.list_runs()
            problem = None
        except Exception as exc:  # an unreadable runs folder must not take the UI down
            infos, problem = [], f"cannot list runs: {exc}"
        self.app.call_from_thread(self.show_runs, infos, problem, str(runs.runs_dir()))

    def show_runs(self, infos, problem: str | None, root: str) -> None:
        mine = getattr(self.app, "run_processes", {})
        if problem:
            self.query_one("#runs-list", Static).update(Text(problem, style="red"))
            return
        if not infos:
            self.query_one("#runs-list", Static).update(
                Text(f"No runs in {root}/ yet. Start one from Settings (s, then g)."))
            return
        table = Table(box=None, expand=True, pad_edge=False, title=f"runs in {root}/", title_justify="left")
        for column in ("run", "status", "step", "loss", "method"):
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for info in infos[:200]:
            step = f"{info.step}/{info.total_steps}" if info.total_steps else str(info.step or "")
            loss = f"{info.last_loss:.4f}" if info.last_loss is not None else ""
            name = Text(info.id, style="bold" if info.id in mine else "")
            if info.id in mine:
                name.append(" ←", style="bold")
            table.add_row(name, info.status, step, loss, info.method or "")
        self.query_one("#runs-list", Static).update(table)
