"""Datasets: open a dataset, page through it, see each record as it will be trained.

* open (``o``): a file, folder, ``sample:NAME``, ``DIR/dataset_info.json:NAME`` or a Hugging
  Face id, with path completion; starts on the config's ``data.path`` (the sample FAQ);
* the table pages through any size (``engine.data.paged`` for JSONL/JSON/text, the
  readers for CSV/parquet/folders, the render worker for hub datasets);
* a record (``enter``): the raw record and the rendered training text with the trained
  tokens highlighted. Rendering needs the tokenizer, so it happens in the render worker
  subprocess (``engine.data.render_worker``, the same ``render`` as training) with the
  model/template/max_length/train_on/long_text/text_overlap/roles of the Settings: a raw
  text longer than max_length shows the windows it is split into (``#chunkN``), a
  transcript row the conversation of its rows;
* token lengths (``i``): counts and a histogram, computed by the same worker;
* search (``/``): filters the table to the matching rows, with the match count;
* columns (``m``): the format and which column each of its fields reads
  (:class:`tui.widgets.columnmap.ColumnMapDialog`); a line under the source names the
  columns with values that no field reads (nothing in them is trained), on a sample;
* use (``u``): the dataset goes to the Settings as the browser shows it: ``data.path``,
  ``data.format``, ``data.columns`` and ``data.template`` (what renders here trains there).

File reading and searching run in worker threads; the tokenizer never enters this process.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widgets import ContentSwitcher, Input, Static

from finetui.engine.data import formats
from finetui.tui import datasetstate, datasource
from finetui.tui.datasetstate import Browser, Following, Opened, RenderJobs, Search
from finetui.tui.render_client import RenderClient
from finetui.tui.safetext import safe
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.screens.create import CreateScreen, QuestionInput, WriterDialog
from finetui.tui.widgets import datasetviews
from finetui.tui.widgets.columnmap import ColumnMapDialog
from finetui.tui.widgets.datasetpanes import LengthsView, RecordView, SearchInput
from finetui.tui.widgets.dialogs import PathDialog
from finetui.tui.widgets.pathinput import PathInput
from finetui.tui.widgets.rowtable import RowTable

HINT = "⏎ view record · / search · i lengths · m columns · u use in Settings · o open"


class DatasetsScreen(FinetuiScreen):
    MODE = "datasets"
    AUTO_FOCUS = "RowTable"
    HELP_CLASSES = [RowTable, SearchInput, PathDialog, PathInput, ColumnMapDialog, CreateScreen, QuestionInput,
                    WriterDialog]
    BINDINGS = [
        Binding("o", "open", "Open", id="datasets.open"),
        Binding("slash", "search", "Search", id="datasets.search"),
        Binding("i", "stats", "Lengths", id="datasets.stats"),
        Binding("m", "columns", "Columns", id="datasets.columns"),
        Binding("u", "use", "Use", id="datasets.use"),
        Binding("n", "create", "Docs", id="datasets.create"),
        Binding("escape", "back", "Back", id="datasets.back"),
        Binding("left,h", "step(-1)", "Previous record", show=False, id="datasets.prev"),
        Binding("right,l", "step(1)", "Next record", show=False, id="datasets.next"),
    ]
    DEFAULT_CSS = """
    DatasetsScreen #ds-source { height: 1; padding: 0 1; background: $surface; color: $text-muted; }
    DatasetsScreen #ds-columns { height: 1; padding: 0 1; background: $surface; display: none; }
    DatasetsScreen #ds-columns.-shown { display: block; }
    DatasetsScreen #ds-switcher { height: 1fr; }
    DatasetsScreen #ds-record, DatasetsScreen #ds-stats { padding: 0 1; }
    DatasetsScreen .ds-heading { text-style: bold; color: $primary; margin-top: 1; }
    DatasetsScreen #ds-record-head { margin-top: 0; }
    DatasetsScreen #ds-search { dock: bottom; display: none; }
    DatasetsScreen #ds-search.-open { display: block; }
    DatasetsScreen #ds-status { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.browser = Browser()  # the open dataset and how it is read
        self.following = Following()  # the Settings' data.path, until the user opens another
        self.jobs = RenderJobs(lambda key: RenderClient(self.app, *key, on_state=self.worker_state))
        self.record_index: int | None = None
        self.search = Search()
        self._timer = None

    # The open dataset, under the names the screen has always had.
    spec = property(lambda self: self.browser.spec)
    rows = property(lambda self: self.browser.rows)
    format = property(lambda self: self.browser.format)
    columns = property(lambda self: self.browser.columns)

    def compose_body(self):
        yield Static("opening…", id="ds-source")
        yield Static("", id="ds-columns")
        with ContentSwitcher(initial="ds-table", id="ds-switcher"):
            yield RowTable(id="ds-table")
            yield RecordView(id="ds-record")
            yield LengthsView(id="ds-stats")
        yield SearchInput(placeholder="search the records (enter: filter, esc: close)", id="ds-search", compact=True)
        yield Static(HINT, id="ds-status")

    @property
    def table(self) -> RowTable:
        return self.query_one(RowTable)

    @property
    def record(self) -> RecordView:
        return self.query_one(RecordView)

    @property
    def lengths(self) -> LengthsView:
        return self.query_one(LengthsView)

    @property
    def view(self) -> str:
        return self.query_one(ContentSwitcher).current or "ds-table"

    @property
    def data(self):
        """The Settings' data section (the first use imports engine.config)."""
        return self.app.settings_state.config.data

    def on_mount(self) -> None:
        # Reading the config (pydantic) and the file happen after the first frame.
        self.call_after_refresh(self.open_from_settings)

    def on_screen_resume(self) -> None:
        if self.following.on and self.spec is not None:
            if self.following.changed(self.data):
                self.open_from_settings()
        elif self.spec is not None:
            self.show_columns_line()  # the Settings may have changed: does "u" still differ?

    @property
    def client(self) -> RenderClient | None:
        return self.jobs.client

    def on_unmount(self) -> None:
        self.jobs.close()
        self.search.end()

    def status(self, message: str | Text, error: bool = False) -> None:
        text = message if isinstance(message, Text) else Text(message, style="bold red" if error else "")
        text.no_wrap, text.overflow = True, "ellipsis"
        self.query_one("#ds-status", Static).update(safe(text))

    # ------------------------------------------------------------------ opening

    @work(thread=True, exclusive=True, group="open")
    def open_from_settings(self) -> None:
        data = self.data  # first use imports engine.config: off the UI thread
        self.following.saw(data)
        try:
            source = datasource.resolve(data.path, data.split, data.subset)
        except formats.DataError as exc:
            self.app.call_from_thread(self.open_failed, data.path, str(exc))
            return
        self._open(data.path, source)

    @work(thread=True, exclusive=True, group="open")
    def open_resolved(self, spec: str, source) -> None:
        self._open(spec, source)

    def _open(self, spec: str, source) -> None:
        """Thread: build the row source, detect the format, hand both to the UI."""
        if source.hub_id:
            self.app.call_from_thread(self.open_hub, spec, source)
            return
        try:
            opened = datasetstate.open_local(spec, source, self.data)
        except (formats.DataError, OSError) as exc:
            self.app.call_from_thread(self.open_failed, spec, str(exc))
            return
        self.app.call_from_thread(self.opened, opened)

    def open_failed(self, spec: str, message: str) -> None:
        if self.rows is None:
            self.query_one("#ds-source", Static).update(safe(Text(f"{spec}: not opened", style="bold red")))
            self.table.set_source(None, empty_text="o: open a dataset (file, folder, sample:NAME, org/name)")
        self.status(message, error=True)
        self.notify(message, title="dataset", severity="error", timeout=10)

    def opened(self, opened: Opened) -> None:
        old = self.browser.take(opened, dict(self.data.roles))
        if old is not None:
            threading.Thread(target=old.close, daemon=True).start()
        self.show_columns_line()
        self.record_index = None
        self.search.text = ""
        self.table.set_source(opened.rows, empty_text="no records")
        self.switch_to("ds-table")
        self.table.focus()
        self.show_source_line()
        if opened.format is None:
            self.status(f"format: {opened.how}", error=True)
        else:
            self.status(HINT)
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(0.25, self.tick)
        if not self.app.is_headless:
            self.set_timer(1.5, self.warm_worker)  # the tokenizer loads while the user looks

    def open_hub(self, spec: str, source) -> None:
        self.status(f"{spec}: reading through the render worker (Hugging Face datasets)…")
        data = self.data

        def answered(message: dict[str, Any]) -> None:
            if message.get("type") != "records":
                self.open_failed(spec, f"{spec}: {message.get('message', 'cannot read')}")
                return
            rows = datasource.ListSource.from_worker(message["records"], f"hub {source.hub_id}[{source.split}]",
                                                     message.get("limited", False), message.get("issues", []))
            self.opened(datasetstate.examine(spec, source, rows, data))

        self.render_client().request("records", answered, path=spec, split=source.split, subset=source.subset,
                                     limit=5000)

    def tick(self) -> None:
        if self.rows is None:
            return
        self.table.update_count()
        self.show_source_line()
        if self.rows.total is not None and self._timer is not None:
            self._timer.stop()
            self._timer = None

    def show_source_line(self) -> None:
        b, matches = self.browser, self.table.filter
        line = datasetviews.source_line(b.spec, b.rows, b.format, b.format_how,
                                        len(matches) if matches is not None else None)
        self.query_one("#ds-source", Static).update(safe(line))

    # ------------------------------------------------------------------ columns

    def show_columns_line(self) -> None:
        """One line under the source: the mapping, the columns not trained, what m / u do."""
        b = self.browser
        line = datasetviews.columns_line(b.columns, b.column_check, b.reads_otherwise(self.data), self._color)
        widget = self.query_one("#ds-columns", Static)
        widget.update(safe(line))
        widget.set_class(bool(line), "-shown")

    def action_columns(self) -> None:
        b = self.browser
        if self.rows is None or not b.sample:
            self.status("m: open a dataset with records first", error=True)
            return
        self.app.push_screen(ColumnMapDialog(b.format, b.merged_columns(), b.sample, b.tags, b.sample_places),
                             self.columns_chosen)

    def columns_chosen(self, result: tuple[str, dict[str, str]] | None) -> None:
        if result is None or not self.browser.choose(*result, dict(self.data.roles)):
            return
        self.show_columns_line()
        self.show_source_line()
        if self.view == "ds-record" and self.record_index is not None:
            self.show_record(self.record_index)
        elif self.view == "ds-stats":
            self.switch_to("ds-table")
            self.action_stats()
        self.status(Text.assemble(("columns set", "bold"), " · u uses this dataset, format and columns in Settings"))

    def action_create(self) -> None:
        """A new dataset from documents (tui.screens.create)."""
        self.app.push_screen(CreateScreen())

    def action_open(self) -> None:
        self.app.push_screen(
            PathDialog("Open dataset: file, folder, sample:NAME, DIR/dataset_info.json:NAME or org/name",
                       self.spec or "", self._check_open),
            self._after_open)

    def _check_open(self, path) -> str | None:
        spec, data = str(path), self.data
        try:
            self._pending = (spec, datasource.resolve(spec, data.split, data.subset))
        except formats.DataError as exc:
            return str(exc)
        return None

    def _after_open(self, path) -> None:
        if path is None:
            return
        spec, source = self._pending
        self.following.opened(spec, self.data)
        self.status(f"opening {spec}…")
        self.open_resolved(spec, source)

    def action_use(self) -> None:
        """Point the Settings at the open dataset: its path, format, columns and template."""
        if not self.spec:
            return
        from finetui.engine import config as cfg

        state = self.app.settings_state
        template = self.client.key[1] if self.client is not None else state.config.data.template
        try:
            state.config, values = self.browser.use(state.config, template)
        except cfg.ConfigError as exc:
            self.notify(str(exc), title="Use dataset", severity="error")
            return
        self.following.used(self.data)
        self.show_columns_line()
        self.notify(datasetstate.use_message(self.spec, values, state.config.data.test_size), title="Settings")

    # ------------------------------------------------------------------ rendering worker

    def render_key(self) -> tuple:
        return datasetstate.render_key(self.app.settings_state.config)

    def render_client(self) -> RenderClient:
        return self.jobs.client_for(self.render_key())

    def warm_worker(self) -> None:
        self.render_client().start()

    def worker_state(self, state: str, message: str) -> None:
        if state == "failed":
            self.status(f"render worker: {message}", error=True)
            if self.view == "ds-record":
                self.record.rendered(Text(message, style="bold red"))

    # ------------------------------------------------------------------ record view

    def on_row_table_selected(self, message: RowTable.Selected) -> None:
        self.show_record(message.index)

    def show_record(self, index: int) -> None:
        self.record_index = index
        self.switch_to("ds-record")
        self.status(f"record {index + 1} · ←/→ (h/l) previous/next · ↑/↓ scroll · esc back to the table")
        self.record.focus()
        self.record.scroll_home(animate=False)
        row = self.table.row(index)
        if row is None:
            self.record.reading()
            self.read_row(index)
            return
        self.fill_record(row)

    @work(thread=True, exclusive=True, group="row")
    def read_row(self, index: int) -> None:
        rows = self.rows.fetch(index, 1) if self.rows is not None else []
        if rows:
            self.app.call_from_thread(self.fill_record, rows[0])

    def fill_record(self, row: datasource.Row) -> None:
        if row.index != self.record_index:
            return
        if not self.record.show_row(row):
            return
        client = self.render_client()
        waiting = "rendering…" if client.state == "ready" else f"{client.message or 'starting the render worker…'}"
        self.record.rendered(Text(waiting, style="dim"))
        self.jobs.cancel_render()
        if self.browser.is_transcript_row(row) and self.rows is not None:
            self.read_group(self.rows, row, self.browser.merged_columns())  # its conversation: the rows with its id
            return
        self.request_render(row, None)

    @work(thread=True, exclusive=True, group="group")
    def read_group(self, rows: datasource.RowSource, row: datasource.Row, columns: dict[str, str]) -> None:
        """Thread: the rows of a transcript row's conversation."""
        self.app.call_from_thread(self.request_render, row, datasetstate.conversation(rows, row, columns))

    def request_render(self, row: datasource.Row, group: list[Any] | None) -> None:
        if row.index != self.record_index:
            return
        self.jobs.render(
            self.render_key(), lambda answer, index=row.index: self.show_rendered(index, answer),
            record=row.data, format=self.format or "auto", columns=self.browser.merged_columns(),
            tags=self.browser.tags, group=group)

    def show_rendered(self, index: int, answer: dict[str, Any]) -> None:
        if index != self.record_index:
            return
        row = self.table.row(index)
        place = row.place if row else f"record {index + 1}"
        if answer.get("type") == "error":
            self.record.rendered(Text(f"{place}: {answer.get('message')}", style="bold red"))
            return
        info = self.client.info if self.client else {}
        self.record.rendered(datasetviews.rendered_view(answer, info, place, self._color))

    def _color(self, name: str) -> str:
        return self.app.theme_variables.get(name, "green")

    def action_step(self, step: int) -> None:
        if self.view != "ds-record" or self.record_index is None:
            return
        line = datasetstate.step_line(self.record_index, self.table.filter, self.table.count, step)
        self.table.cursor = line
        index = self.table.source_index(line)
        if index is not None:
            self.table.ensure_row(index)
            self.show_record(index)

    def action_back(self) -> None:
        if self.view != "ds-table":
            self.switch_to("ds-table")
            self.table.focus()
            if self.table.filter is None:
                self.status(HINT)
            return
        if self.table.filter is not None:
            self.table.set_filter(None)
            self.refresh_bindings()
            self.search.text = ""
            self.status(HINT)
            self.show_source_line()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "step":
            return self.view == "ds-record"
        if action == "back":
            return self.view != "ds-table" or self.table.filter is not None
        return True

    def switch_to(self, view: str) -> None:
        self.query_one(ContentSwitcher).current = view
        self.refresh_bindings()

    # ------------------------------------------------------------------ token lengths

    def action_stats(self) -> None:
        if self.view == "ds-stats":
            self.action_back()
            return
        self.switch_to("ds-stats")
        self.lengths.focus()
        if not self.spec:
            return
        client = self.render_client()
        key = self.browser.stats_key(client.key)
        if key in self.browser.stats:
            self.show_stats(self.browser.stats[key])
            return
        self.lengths.say(Text(f"rendering every record with the tokenizer of {client.key[0]} (in the render worker)…",
                              style="dim"))

        def answered(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "progress":
                self.lengths.say(Text(f"rendered {message['done']:,} records…", style="dim"))
            elif kind == "lengths":
                self.browser.stats[key] = message
                self.show_stats(message)
            else:
                self.lengths.say(Text(str(message.get("message")), style="bold red"))

        data = self.data
        self.jobs.lengths(
            client.key, answered, path=self.spec, format=self.format or "auto", columns=self.columns,
            split=data.split, subset=data.subset, limit=5000)

    def show_stats(self, result: dict[str, Any]) -> None:
        self.lengths.say(datasetviews.lengths_view(result, self._color))

    # ------------------------------------------------------------------ search

    def action_search(self) -> None:
        box = self.query_one(SearchInput)
        box.add_class("-open")
        box.value = self.search.text
        box.focus()

    def close_search(self) -> None:
        box = self.query_one(SearchInput)
        box.remove_class("-open")
        self.switch_to("ds-table")
        self.table.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not isinstance(event.input, SearchInput):
            return
        event.stop()
        query = event.value.strip()
        self.close_search()
        if not query:
            self.action_back()
            return
        if self.rows is None:
            return
        stop = self.search.begin(query)
        self.status(f"searching for {query!r}…")
        self.run_search(self.rows, query, stop)

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, rows: datasource.RowSource, query: str, stop: threading.Event) -> None:
        def progress(fraction: float, count: int) -> None:
            self.app.call_from_thread(self.status, f"searching for {query!r}: {fraction:.0%}, {count:,} matches…")

        try:
            matches = datasetstate.search(rows, query, stop, progress)
        except Exception as exc:
            self.app.call_from_thread(self.status, f"search failed: {exc}", True)
            return
        if not stop.is_set():
            self.app.call_from_thread(self.search_done, rows, query, matches)

    def search_done(self, rows: datasource.RowSource, query: str, matches: list[int]) -> None:
        if rows is not self.rows:
            return
        if not matches:
            self.status(f"no match for {query!r}", error=True)
            return
        self.table.set_filter(matches)
        self.refresh_bindings()
        self.show_source_line()
        self.status(Text.assemble((f"{len(matches):,} matches", "bold"), f" for {query!r} · esc clears · ⏎ view"))

    # ------------------------------------------------------------------ palette

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Open dataset…", "A file, folder, sample:NAME, dataset_info entry or hub id", self.action_open),
            ("Dataset: search…", "Filter the records to those containing a text", self.action_search),
            ("Dataset: token lengths", "Counts and a token length histogram (renders every record)",
             self.action_stats),
            ("Dataset: map columns…", "The format, and which column each of its fields reads",
             self.action_columns),
            ("Dataset: use in Settings", "Set data.path, format, columns and template to this dataset",
             self.action_use),
        ]
