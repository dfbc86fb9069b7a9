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

import threading
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from finetui.engine import runs
from finetui.engine.units import format_duration
from finetui.tui.runfeed import feeds
from finetui.tui.safetext import safe, visible
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.screens.compare import CompareScreen
from finetui.tui.screens.dashboard import STATUS_MARK, DashboardScreen, app_key, resume_run, show_config
from finetui.tui.screens.export import ExportScreen
from finetui.tui.widgets.dialogs import ConfirmDialog
from finetui.tui.widgets.lossplot import theme_colors
from finetui.tui.widgets.runprogress import fmt_num

RELOAD_S = 2.0
# (key, label, width incl. one space of gap); run and model share what is left
FIXED_COLUMNS = (("mark", "", 2), ("status", "status", 12), ("run", "run", 0), ("started", "started", 12),
                 ("time", "time", 8), ("steps", "steps", 10), ("eval", "best ev", 8), ("method", "method", 7),
                 ("model", "model", 0))


def column_widths(width: int) -> list[tuple[str, str, int]]:
    """Columns that fit ``width`` cells. Run and model share what the fixed ones leave
    (run 60%); when that is too little, model, started, method, time and eval are dropped
    in that order."""
    cols = list(FIXED_COLUMNS)
    for drop in ("model", "started", "method", "time", "eval"):
        free = width - sum(w for _k, _l, w in cols)
        needed = 20 if any(k == "model" for k, _l, _w in cols) else 12
        if free >= needed:
            break
        cols = [c for c in cols if c[0] != drop]
    free = max(width - sum(w for _k, _l, w in cols), 12)
    if any(k == "model" for k, _l, _w in cols):
        run_w = max(12, int(free * 0.6))
        model_w = free - run_w
    else:
        run_w, model_w = free, 0
    return [(k, label, w or (run_w if k == "run" else model_w)) for k, label, w in cols]


def run_name(run_id: str) -> str:
    """The name part of ``20250101-120000-name`` (the time is its own column)."""
    parts = run_id.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return parts[2]
    return run_id


def started_text(info: runs.RunInfo) -> str:
    when = info.started
    if when is None:
        parts = info.id.split("-", 2)
        if len(parts) >= 2 and len(parts[0]) == 8 and parts[0].isdigit():
            return f"{parts[0][4:6]}-{parts[0][6:8]} {parts[1][:2]}:{parts[1][2:4]}"
        return "-"
    return time.strftime("%m-%d %H:%M", time.localtime(when))


class RunsTable(DataTable):
    """The runs list; enter opens the highlighted run (its binding, so the footer says so)."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", id="runs.open")]


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
        self.infos: list[runs.RunInfo] = []
        self.marked: list[str] = []  # at most two run ids, oldest first
        self.problem: str | None = None
        self.root = str(runs.runs_dir())
        self.loaded = False
        self._cache: dict[str, tuple[tuple, runs.RunInfo]] = {}  # worker thread only
        self._reading = threading.Lock()  # one reader at a time: workers are threads that cannot be cancelled
        self._last_read = 0.0

    def compose_body(self):
        yield Static("reading runs…", id="runs-title")
        yield RunsTable(cursor_type="row", cell_padding=0, zebra_stripes=False, id="runs-table")
        yield Static("", id="runs-detail")

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
        running = any(i.status == "running" for i in self.infos)
        if running and time.monotonic() - self._last_read >= RELOAD_S:
            self.action_reload()

    def on_runs_screen_run_started(self, message: RunStarted) -> None:
        self.action_reload()
        self.tick()

    def action_reload(self) -> None:
        self._last_read = time.monotonic()
        self.read_runs()

    @work(thread=True, exclusive=True, group="runs")
    def read_runs(self) -> None:
        root = runs.runs_dir()
        try:
            with self._reading:
                infos = self._list(root)
            problem = None
        except Exception as exc:  # an unreadable runs folder must not take the UI down
            infos, problem = [], f"cannot list runs in {root}/: {exc}"
        self.app.call_from_thread(self.show_runs, infos, problem, str(root))

    def _list(self, root: Path) -> list[runs.RunInfo]:
        if not root.exists():
            return []
        out = []
        seen = set()
        for path in sorted((p for p in root.iterdir() if (p / "config.yaml").exists()),
                           key=lambda p: p.name, reverse=True):
            seen.add(path.name)
            key = tuple(_stat(path / name) for name in ("events.jsonl", runs.PID_FILE))
            cached = self._cache.get(path.name)
            if cached is not None and cached[0] == key and cached[1].status not in ("running", "created"):
                out.append(cached[1])
                continue
            try:
                info = runs.summarize(path)
            except Exception as exc:  # noqa: BLE001 - one broken run never hides the others
                info = runs.unreadable(path, exc)
            self._cache[path.name] = (key, info)
            out.append(info)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return out

    # ------------------------------------------------------------------ widgets

    def show_runs(self, infos: list[runs.RunInfo], problem: str | None, root: str) -> None:
        self.infos, self.problem, self.root, self.loaded = infos, problem, root, True
        ids = {i.id for i in infos}
        self.marked = [m for m in self.marked if m in ids]
        self.fill_table()

    def fill_table(self) -> None:
        table = self.query_one(DataTable)
        current = self.current_info()
        width = max(table.size.width or self.size.width, 40) - 1  # the scrollbar
        colors = theme_colors(self.app)
        table.clear(columns=True)
        for key, label, w in column_widths(width):
            table.add_column(_fit(Text(label, style="bold"), w), key=key, width=w)
        keys = [k for k, _l, _w in column_widths(width)]
        widths = dict((k, w) for k, _l, w in column_widths(width))
        for info in self.infos:
            cells = []
            for key in keys:
                cells.append(_fit(self._cell(info, key, widths[key], colors), widths[key]))
            table.add_row(*cells, key=info.id)
        if current is not None and current.id in {i.id for i in self.infos}:
            table.move_cursor(row=table.get_row_index(current.id), animate=False)
        self._show_title()
        self.show_detail()

    def _cell(self, info: runs.RunInfo, key: str, width: int, colors: dict[str, str]) -> Text:
        if key == "mark":
            return Text("◆" if info.id in self.marked else "", style=f"bold {colors['eval']}")
        if key == "status":
            mark, color = STATUS_MARK.get(info.status, ("?", "dim"))
            return Text(f"{mark} {info.status}", style=colors.get(color, color))
        if key == "run":
            value = run_name(info.id)
        elif key == "started":
            value = started_text(info)
        elif key == "time":
            value = format_duration(info.duration_s)
        elif key == "steps":
            value = f"{info.step}/{info.total_steps}" if info.total_steps else (str(info.step) if info.step else "-")
        elif key == "eval":
            value = fmt_num(info.best_eval_loss) if info.best_eval_loss is not None else "-"
        elif key == "method":
            value = info.method or "-"
        else:
            value = (info.model or "-")
            if len(value) > width - 1:
                value = "…" + value[-(width - 2):]  # the end of a path or hub id says most
        return Text(visible(value))  # run names, model paths: never control codes

    def _show_title(self) -> None:
        from finetui.tui.session import display_path

        title = Text(no_wrap=True, overflow="ellipsis")
        counts: dict[str, int] = {}
        for info in self.infos:
            counts[info.status] = counts.get(info.status, 0) + 1
        title.append(f"{len(self.infos)} run{'s' if len(self.infos) != 1 else ''}", style="bold")
        if self.infos:
            title.append(": " + " · ".join(f"{n} {s}" for s, n in counts.items()))
        if self.marked:
            title.append(f"  ◆ {len(self.marked)} marked", style="bold")
        title.append(f"  in {display_path(self.root)}/", style="dim")
        self.query_one("#runs-title", Static).update(title)

    def current_info(self) -> runs.RunInfo | None:
        table = self.query_one(DataTable)
        if not self.infos or table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), table.row_count - 1)
        try:
            key = table.coordinate_to_cell_key((row, 0)).row_key.value
        except Exception:
            return None
        return next((i for i in self.infos if i.id == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:  # noqa: D102
        self.show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def show_detail(self) -> None:
        detail = self.query_one("#runs-detail", Static)
        colors = theme_colors(self.app)
        if self.problem:
            detail.update(safe(Text(self.problem, style=colors["bad"])))
            return
        info = self.current_info()
        if info is None:
            new_key = app_key(self.app, "runs.new", "n")
            detail.update(Text(f"No runs in {self.root}/ yet. {new_key}: start one from Settings "
                               f"(or `finetui train CONFIG --detach`; it shows up here)."))
            return
        text = Text(no_wrap=False)
        text.append(info.id, style="bold")
        if info.status == "running" and info.pid:
            mine = info.id in getattr(self.app, "run_processes", {})
            text.append(f"  pid {info.pid}" + (" (started here)" if mine else ""), style="dim")
        if info.last_loss is not None:
            text.append(f"  loss {fmt_num(info.last_loss)}", style="dim")
        if info.checkpoints:
            text.append(f"  {len(info.checkpoints)} checkpoints, last step "
                        f"{Path(info.checkpoints[-1]).name.split('-')[-1]}", style="dim")
        if info.status == "failed" and info.error:
            text.append("\n✖ ", style=colors["bad"])
            text.append(info.error.splitlines()[0][:300], style=colors["bad"])
            if info.hint:
                text.append(f"\nhint: {info.hint.splitlines()[0][:300]}", style="dim")
        if info.status in ("stopped", "killed", "failed"):
            text.append(f"\n{app_key(self.app, 'runs.resume', 'R')}: resume from the last checkpoint",
                        style="dim")
        detail.update(safe(text))

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
        table = self.query_one(DataTable)
        table.action_cursor_down() if direction == "down" else table.action_cursor_up()

    def action_mark(self) -> None:
        info = self._need_run("Mark")
        if info is None:
            return
        if info.id in self.marked:
            self.marked.remove(info.id)
        else:
            self.marked.append(info.id)
            del self.marked[:-2]
        row = self.query_one(DataTable).cursor_row
        self.fill_table()
        self.query_one(DataTable).move_cursor(row=min(row + 1, len(self.infos) - 1), animate=False)
        if len(self.marked) == 2:
            self.notify(f"{app_key(self.app, 'runs.compare', 'v')}: compare the two marked runs",
                        title="Compare", timeout=4)

    def action_compare(self) -> None:
        pair = list(self.marked)
        info = self.current_info()
        if len(pair) == 1 and info is not None and info.id not in pair:
            pair.append(info.id)
        if len(pair) != 2:
            mark = app_key(self.app, "runs.mark", "space")
            self.notify(f"mark two runs with {mark} first", title="Compare", severity="warning")
            return
        root = Path(self.root)
        paths = {i.id: Path(i.path) for i in self.infos}
        self.app.push_screen(CompareScreen(paths.get(pair[0], root / pair[0]), paths.get(pair[1], root / pair[1])))

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
        run_dir = Path(info.path)
        if not (run_dir / "adapter").is_dir():
            self.notify(f"{info.id} has no adapter/ yet (saved when training ends or is stopped)", title="Export",
                        severity="warning")
            return
        from finetui.tui.session import display_path

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


def _fit(text: Text, width: int) -> Text:
    """A cell's text cut to ``width - 1`` cells plus one space: the gap between columns
    (the table has no cell padding, to leave the run and model columns room at 80 cells)."""
    text = text.copy()
    text.no_wrap = True
    text.truncate(max(width - 1, 1), overflow="ellipsis")
    text.append(" ")
    return text


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0
