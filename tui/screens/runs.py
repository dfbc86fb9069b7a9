"""Runs: every run in the runs folder with its status, start time, duration, steps, best
eval loss, method and model. Open one (its live dashboard), start a new one (Settings),
resume a stopped or failed one, delete one (asked first), mark two and compare them.

The list is read in a worker thread, one at a time (``engine.runs``: each run's
summary.json, brought up to date from the end of its events file, + the process table) and
re-read every 2 s while a run is running. Finished runs whose files did not change are not
summarised again, and a long run's history is never re-read: a folder of long runs costs
little even on the first read. A run that cannot be read is listed as unreadable.

Trainers this UI starts (Settings' Start, resume here or on a dashboard) arrive through
``app.run_launched``; the app-wide feed registry (``tui.runfeed``) drains their pipes, and
this screen opens the new run's dashboard.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

from finetui.engine import runs
from finetui.tui.runfeed import feeds
from finetui.tui.runsstate import RELOAD_S, RunsList, export_problem
from finetui.tui.safetext import safe
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.screens.compare import CompareScreen
from finetui.tui.screens.dashboard import DashboardScreen
from finetui.tui.screens.export import ExportScreen
from finetui.tui.widgets import runslist
from finetui.tui.widgets.dialogs import ConfirmDialog
from finetui.tui.widgets.lossplot import theme_colors
from finetui.tui.widgets.runcontrol import app_key, resume_run, show_config
from finetui.tui.widgets.runslist import RunsTable


class RunsScreen(FinetuiScreen):
    MODE = "runs"
    AUTO_FOCUS = "#runs-table"
    HELP_CLASSES = [RunsTable, DashboardScreen, CompareScreen, ConfirmDialog, ExportScreen]
    BINDINGS = [
        Binding("space", "mark", "Mark", id="runs.mark"),
        Binding("v", "compare", "Compare", id="runs.compare"),
        Binding("n", "new", "New", id="runs.new"),
        Binding("R", "resume", "Resume", id="runs.resume"),
        Binding("e", "export", "Export", id="runs.export"),
        Binding("x,delete", "delete", "Delete", id="runs.delete"),
        Binding("o", "config", "Config", show=False, id="runs.config"),
        Binding("j", "cursor('down')", "Down", show=False, id="runs.down"),
        Binding("k", "cursor('up')", "Up", show=False, id="runs.up"),
        Binding("f5,ctrl+l", "reload", "Reload", show=False, id="runs.reload"),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-title { height: 1; padding: 0 1; background: $surface; }
    RunsScreen #runs-table { height: 1fr; scrollbar-size-vertical: 1; }
    RunsScreen #runs-detail { height: auto; max-height: 4; min-height: 2; padding: 0 1; background: $surface; }
    """

    class RunStarted(Message):
        """Posted by the app when this UI launched a trainer (``app.run_launched``)."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self) -> None:
        super().__init__()
        self.listing = RunsList()
        self._last_read = 0.0

    # The list's state, under the names the screen has always had.
    infos = property(lambda self: self.listing.infos)
    marked = property(lambda self: self.listing.marked)
    loaded = property(lambda self: self.listing.loaded)
    root = property(lambda self: self.listing.root)

    def compose_body(self):
        yield Static("reading runs…", id="runs-title")
        yield RunsTable(cursor_type="row", cell_padding=0, zebra_stripes=False, id="runs-table")
        yield Static("", id="runs-detail")

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def on_mount(self) -> None:
        feeds(self.app)  # pipes of runs started here are drained from now on
        self._timer = self.set_interval(0.5, self.tick, name="runs tick")
        self.action_reload()

    def on_screen_resume(self) -> None:
        self._timer.resume()
        self.action_reload()

    def on_screen_suspend(self) -> None:
        self._timer.pause()  # no wake-ups while a dashboard (or another mode) is shown

    def on_resize(self) -> None:
        if self.loaded:
            self.fill_table()

    # ------------------------------------------------------------------ reading

    def tick(self) -> None:
        if not self.is_active:  # a dashboard or dialog on top takes launches itself
            return
        launched = feeds(self.app).take_new_launches()
        if launched:
            self.open_run(launched[-1])
            return
        if self.listing.running and time.monotonic() - self._last_read >= RELOAD_S:
            self.action_reload()

    def on_runs_screen_run_started(self, message: RunStarted) -> None:
        self.action_reload()
        self.tick()

    def action_reload(self) -> None:
        self._last_read = time.monotonic()
        self.read_runs()

    @work(thread=True, exclusive=True, group="runs")
    def read_runs(self) -> None:
        self.app.call_from_thread(self.show_runs, *self.listing.read())

    # ------------------------------------------------------------------ widgets

    def show_runs(self, infos: list[runs.RunInfo], problem: str | None, root: str) -> None:
        self.listing.take(infos, problem, root)
        self.fill_table()

    def fill_table(self) -> None:
        table = self.table
        width = max(table.size.width or self.size.width, 40) - 1  # the scrollbar
        table.show(self.infos, self.marked, theme_colors(self.app), width)
        from finetui.tui.session import display_path

        self.query_one("#runs-title", Static).update(runslist.title(self.infos, self.marked, display_path(self.root)))
        self.show_detail()

    def current_info(self) -> runs.RunInfo | None:
        return self.listing.find(self.table.current_id()) if self.infos else None

    def on_data_table_row_highlighted(self, event: RunsTable.RowHighlighted) -> None:  # noqa: D102
        self.show_detail()

    def on_data_table_row_selected(self, event: RunsTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def show_detail(self) -> None:
        detail = self.query_one("#runs-detail", Static)
        colors = theme_colors(self.app)
        info = self.current_info()
        if self.listing.problem:
            detail.update(safe(Text(self.listing.problem, style=colors["bad"])))
        elif info is None:
            new_key = app_key(self.app, "runs.new", "n")
            detail.update(Text(f"No runs in {self.root}/ yet. {new_key}: start one from Settings "
                               f"(or `finetui train CONFIG --detach`; it shows up here)."))
        else:
            mine = info.id in getattr(self.app, "run_processes", {})
            detail.update(safe(runslist.detail(info, mine, app_key(self.app, "runs.resume", "R"), colors)))

    # ------------------------------------------------------------------ actions

    def _need_run(self, action: str) -> runs.RunInfo | None:
        info = self.current_info()
        if info is None:
            self.notify("no run selected", title=action, severity="warning")
        return info

    def open_run(self, run_id: str) -> None:
        run_dir = getattr(self.app, "run_dirs", {}).get(run_id) or Path(self.root) / run_id
        self.app.push_screen(DashboardScreen(run_dir))

    def action_open(self) -> None:
        info = self._need_run("Open")
        if info is not None:
            self.app.push_screen(DashboardScreen(Path(info.path)))

    def action_cursor(self, direction: str) -> None:
        self.table.action_cursor_down() if direction == "down" else self.table.action_cursor_up()

    def action_mark(self) -> None:
        info = self._need_run("Mark")
        if info is None:
            return
        self.listing.toggle_mark(info.id)
        row = self.table.cursor_row
        self.fill_table()
        self.table.move_cursor(row=min(row + 1, len(self.infos) - 1), animate=False)
        if len(self.marked) == 2:
            self.notify(f"{app_key(self.app, 'runs.compare', 'v')}: compare the two marked runs",
                        title="Compare", timeout=4)

    def action_compare(self) -> None:
        info = self.current_info()
        pair = self.listing.compare_pair(info.id if info is not None else None)
        if pair is None:
            mark = app_key(self.app, "runs.mark", "space")
            self.notify(f"mark two runs with {mark} first", title="Compare", severity="warning")
            return
        self.app.push_screen(CompareScreen(*pair))

    def action_new(self) -> None:
        app = self.app
        app.action_goto("settings")

        def start() -> None:
            screen = app.screen
            if getattr(screen, "MODE", "") == "settings" and hasattr(screen, "action_start"):
                screen.action_start()

        app.call_after_refresh(start)

    def action_resume(self) -> None:
        info = self._need_run("Resume")
        if info is None:
            return
        if info.status == "running":
            self.notify(f"{info.id} is running; open it with enter", title="Resume", severity="warning")
            return
        resume_run(self, Path(info.path))

    def action_config(self) -> None:
        info = self._need_run("Config")
        if info is not None:
            show_config(self, Path(info.path))

    def action_export(self) -> None:
        """The selected run's model + model card into a folder (and the Hub): ExportScreen."""
        info = self._need_run("Export")
        if info is None:
            return
        problem = export_problem(info)
        if problem:
            self.notify(problem, title="Export", severity="warning")
            return
        from finetui.tui.session import display_path

        run_dir = Path(info.path)
        self.app.push_screen(ExportScreen(run_dir, display_path(run_dir / "export")))

    def action_delete(self) -> None:
        info = self._need_run("Delete")
        if info is None:
            return
        if info.status == "running":
            self.notify(f"{info.id} is running: stop it first (open it, then "
                        f"{app_key(self.app, 'dashboard.stop', 'S')})", title="Delete", severity="warning")
            return
        body = Text()
        body.append(f"{info.path}/\n\n", style="bold")
        body.append("Its config, events, checkpoints, adapter and merged model are removed for good.")
        self.app.push_screen(ConfirmDialog(f"Delete run {info.id}?", body, verb="delete"),
                             lambda ok: self.delete_run(Path(info.path)) if ok else None)

    @work(thread=True, group="runs-delete")
    def delete_run(self, run_dir: Path) -> None:
        try:
            runs.delete(run_dir)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"not deleted: {exc}", title="Delete", severity="error")
            return
        self.app.call_from_thread(feeds(self.app).forget, run_dir.name)
        self.app.call_from_thread(self.notify, f"deleted {run_dir.name}", title="Delete")
        self.app.call_from_thread(self.action_reload)

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Runs: open the selected run", "Its live dashboard", self.action_open),
            ("Runs: new run", "Settings, then Start", self.action_new),
            ("Runs: resume the selected run", "From its last checkpoint", self.action_resume),
            ("Runs: compare the two marked runs", "Loss curves and config diff", self.action_compare),
            ("Runs: export the selected run…", "finetui export: merged model + model card, optionally to the Hub",
             self.action_export),
            ("Runs: delete the selected run", "Asks first", self.action_delete),
            ("Runs: reload", "Read the runs folder again", self.action_reload),
        ]
