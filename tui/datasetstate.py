"""What the Datasets screen knows and decides, without Textual: the open dataset (its rows,
the format and how it was decided, the user's column mapping, a sample and what the
mapping makes of it), whether the Settings would read it otherwise, what ``u`` writes to
them, a transcript row's conversation, the search and the record steps. Plain Python (the
blocking parts are for a worker thread), so tests drive it without an app; the screen only
shows it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetui.engine.data import formats, readers, transcripts
from finetui.tui import datasource

GROUP_SCAN = 20_000  # rows read for a transcript row's conversation
GROUP_PAGE = 500
SEARCH_STEP = 0.05  # search progress is reported every 5% of the rows


def settings_key(data: Any) -> tuple:
    """What of the Settings' data section (``data``) the browser follows: path, format,
    columns and roles."""
    return data.path, data.format, tuple(sorted(data.columns.items())), tuple(sorted(data.roles.items()))


def render_key(config: Any) -> tuple:
    """What the render worker renders with: model, template, max_length, train_on,
    long_text, text_overlap, roles (a new worker when any of it changes)."""
    data = config.data
    return (config.model.name_or_path, data.template, data.max_length, data.train_on, data.long_text,
            data.text_overlap, tuple(sorted(data.roles.items())))


def configured(spec: str, data: Any) -> tuple[str, dict[str, str]]:
    """The format and columns the Settings give ``spec``: theirs when it is their data.path."""
    if spec == data.path:
        return data.format, dict(data.columns)
    return "auto", {}


@dataclass
class Opened:
    """A dataset read far enough to show: its rows, format (None: the reason is ``how``),
    the mapping it is read with and the first records."""

    spec: str
    source: readers.Source
    rows: datasource.RowSource
    format: str | None
    how: str
    columns: dict[str, str] = field(default_factory=dict)
    sample: list[datasource.Row] = field(default_factory=list)


def examine(spec: str, source: readers.Source, rows: datasource.RowSource, data: Any) -> Opened:
    """Blocking (reads the first records): the format of ``rows`` as the Settings'
    ``data`` section would have it read, and a sample."""
    fmt_configured, columns = configured(spec, data)
    fmt, how = datasource.detect_format(rows, source, fmt_configured, columns, dict(data.roles))
    sample = [row for row in rows.fetch(0, formats.DETECT_SAMPLE) if row.error is None]
    return Opened(spec, source, rows, fmt, how, columns, sample)


def open_local(spec: str, source: readers.Source, data: Any) -> Opened:
    """Blocking: open a resolved local source and inspect it (DataError, OSError)."""
    return examine(spec, source, datasource.open_rows(source), data)


def conversation(rows: datasource.RowSource, row: datasource.Row, columns: dict[str, str],
                 limit: int = GROUP_SCAN) -> list[Any]:
    """Blocking: the records of a transcript row's conversation (the rows with its id, in
    the order of the file, as the readers group them), among the first ``limit`` rows."""
    keys = transcripts.row_keys(row.data, columns)
    ident = row.data.get(keys[2]) if keys and keys[2] else None
    group: list[Any] = []
    start = 0
    while start < limit:
        page = rows.fetch(start, GROUP_PAGE)
        if not page:
            break
        for other in page:
            if other.error is None and transcripts.is_row(other.data, columns):
                other_keys = transcripts.row_keys(other.data, columns)
                if (other.data.get(other_keys[2]) if other_keys[2] else None) == ident:
                    group.append(other.data)
        start += len(page)
    return group or [row.data]


def search(rows: datasource.RowSource, query: str, stop: threading.Event,
           report: Callable[[float, int], None] | None = None) -> list[int]:
    """Blocking: the indexes of the rows that contain ``query`` (any case); ``report``
    (fraction done, matches so far) is called every :data:`SEARCH_STEP` of the rows."""
    last = [0.0]

    def progress(fraction: float, count: int) -> None:
        if report is not None and fraction - last[0] >= SEARCH_STEP:
            last[0] = fraction
            report(fraction, count)

    return list(rows.search(query, progress=progress, stop=stop))


def step_line(record: int, filter: list[int] | None, count: int, step: int) -> int:
    """The table line ``step`` records on from ``record`` (a source index), within the
    filter's matches when there is one, kept inside the table's ``count`` lines."""
    line = filter.index(record) if filter is not None and record in filter else record
    return max(0, min(line + step, count - 1))


def use_message(spec: str, values: dict[str, Any], test_size: float) -> str:
    """What ``u`` tells the user it set."""
    columns = ", ".join(f"{k}={v}" for k, v in values["columns"].items()) or "none"
    cleared = (f"\ndata.test_path cleared: data.test_size {test_size:g} of it is held out"
               if "test_path" in values else "")
    return (f"data.path = {spec}\nformat {values['format']} · columns {columns} · "
            f"template {values['template']}{cleared}")


class Following:
    """Whether the browser shows the Settings' data.path (until the user opens another
    dataset) and the data settings it last read them with: when those change, the browser
    opens the dataset again."""

    def __init__(self) -> None:
        self.on = True
        self.seen: tuple | None = None  # settings_key of the Settings last followed

    def saw(self, data: Any) -> None:
        self.seen = settings_key(data)

    def changed(self, data: Any) -> bool:
        """Whether the Settings' data section (``data``) moved since it was last read while following."""
        return self.on and settings_key(data) != self.seen

    def opened(self, spec: str, data: Any) -> None:
        """The user opened ``spec``: followed again when it is the Settings' data.path."""
        self.on = spec == data.path

    def used(self, data: Any) -> None:
        """``u`` pointed the Settings at the open dataset: follow them again."""
        self.on = True
        self.saw(data)


class Search:
    """The last search: its text (the search box starts with it) and the stop of its pass
    (a new search or leaving the screen stops the old one)."""

    def __init__(self) -> None:
        self.text = ""
        self.stop: threading.Event | None = None

    def begin(self, query: str) -> threading.Event:
        self.end()
        self.stop = threading.Event()
        self.text = query
        return self.stop

    def end(self) -> None:
        if self.stop is not None:
            self.stop.set()


class Browser:
    """The open dataset and what the browser reads it as."""

    def __init__(self) -> None:
        self.spec: str | None = None
        self.source: readers.Source | None = None
        self.rows: datasource.RowSource | None = None
        self.format: str | None = None
        self.format_how = ""
        self.columns: dict[str, str] = {}  # the column mapping the browser reads with (data.columns)
        self.sample: list[Any] = []  # the first records, for the column check and the column dialog
        self.sample_places: list[str] = []
        self.column_check: datasource.ColumnCheck | None = None
        self.stats: dict[tuple, dict[str, Any]] = {}  # token lengths answers, by stats_key

    def take(self, opened: Opened, roles: dict[str, str]) -> datasource.RowSource | None:
        """Show ``opened`` from now on; returns the rows it replaces (to close), if any."""
        old, self.rows = self.rows, opened.rows
        self.spec, self.source, self.format, self.format_how = opened.spec, opened.source, opened.format, opened.how
        self.columns = dict(opened.columns or {})
        self.sample = [row.data for row in opened.sample]
        self.sample_places = [row.place for row in opened.sample]
        self.check_columns(roles)
        return old if old is not None and old is not opened.rows else None

    @property
    def tags(self) -> dict[str, str]:
        return self.source.tags if self.source is not None else {}

    def merged_columns(self) -> dict[str, str]:
        """What the readers use: a dataset_info entry's columns, then the user's mapping."""
        return datasource.merged_columns(self.source, self.columns)

    def check_columns(self, roles: dict[str, str]) -> None:
        """Normalise the sample with the browser's format and mapping (formats only, cheap)."""
        if self.format is None or not self.sample:
            self.column_check = None
        else:
            self.column_check = datasource.check_columns(self.sample, self.format, self.merged_columns(), self.tags,
                                                         self.sample_places, roles)

    def choose(self, fmt: str, columns: dict[str, str], roles: dict[str, str]) -> bool:
        """The column dialog's answer; False when it changes nothing."""
        columns = datasource.own_columns(self.source, columns)
        if fmt == self.format and columns == self.columns:
            return False
        if fmt != self.format:
            self.format, self.format_how = fmt, "chosen"
        self.columns = columns
        self.stats.clear()
        self.check_columns(roles)
        return True

    def reads_otherwise(self, data: Any) -> bool:
        """Whether the Settings (``data``) would read the open dataset otherwise than the browser."""
        return datasource.reads_otherwise(data, self.spec, self.format, self.format_how, self.columns)

    def use_values(self, data: Any, template: str) -> dict[str, Any]:
        """The data settings that read the open dataset as the browser shows it."""
        return datasource.use_values(data, self.spec, self.format, self.format_how, self.source, self.columns,
                                     template)

    def use(self, config: Any, template: str) -> tuple[Any, dict[str, Any]]:
        """(the config with the open dataset as the browser reads it, the values set);
        ConfigError when the config refuses them."""
        from finetui.tui import settingsstate

        values = self.use_values(config.data, template)
        return settingsstate.update(config, {f"data.{k}": v for k, v in values.items()}), values

    def stats_key(self, render_key: tuple) -> tuple:
        """What a token lengths answer depends on."""
        return self.spec, render_key, self.format, tuple(sorted(self.columns.items()))

    def is_transcript_row(self, row: datasource.Row) -> bool:
        """A row that is one turn of a transcript: it renders with its conversation."""
        return self.format == "transcript" and transcripts.is_row(row.data, self.merged_columns())


class RenderJobs:
    """The browser's requests to the render worker (:class:`tui.render_client.RenderClient`):
    one client for the current render settings (:func:`render_key`; a new one, the old one
    closed, when they change) and at most one record render and one lengths pass in flight
    (a new one cancels the last)."""

    def __init__(self, new_client: Callable[[tuple], Any]) -> None:
        self.new_client = new_client  # render key -> a RenderClient
        self.client: Any = None
        self.render_id: int | None = None
        self.lengths_id: int | None = None

    def client_for(self, key: tuple) -> Any:
        if self.client is None or self.client.key != key:
            if self.client is not None:
                self.client.close()
            self.client = self.new_client(key)
        return self.client

    def cancel_render(self) -> None:
        if self.render_id is not None and self.client is not None:
            self.client.cancel(self.render_id)
        self.render_id = None

    def render(self, key: tuple, callback: Callable[[dict[str, Any]], None], **fields: Any) -> None:
        """Render one record (``fields``: the worker's render request); ``callback`` gets the answer."""
        self.cancel_render()
        self.render_id = self.client_for(key).request("render", callback, **fields)

    def lengths(self, key: tuple, callback: Callable[[dict[str, Any]], None], **fields: Any) -> None:
        """The lengths pass over a dataset; ``callback`` gets its progress, then the answer."""
        client = self.client_for(key)
        if self.lengths_id is not None:
            client.cancel(self.lengths_id)

        def answered(message: dict[str, Any]) -> None:
            if message.get("type") != "progress":
                self.lengths_id = None
            callback(message)

        self.lengths_id = client.request("lengths", answered, **fields)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
