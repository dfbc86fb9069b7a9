"""finetui.tui.datasetstate without an app, on real files: a dataset opened and read as the
Settings would read it (their format when it is their data.path, else detected), the
columns no field reads, a mapping chosen, whether the Settings read it otherwise and what
``u`` writes to them, a transcript row's conversation, the search and the record steps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from finetui.engine import config as cfg
from finetui.tui import datasetstate, datasource
from finetui.tui.datasetstate import Browser, conversation, open_local, search, step_line
from finetui.tui.session import sample_dir
from finetui.tui.settingsstate import update

DATA = Path(__file__).resolve().parent / "data"
PLAN = DATA / "fidelity" / "question_plan_answer.csv"
PODCAST = DATA / "fidelity" / "podcast_transcript.jsonl"


OPENED: list[datasource.RowSource] = []


@pytest.fixture(autouse=True)
def close_rows():
    """Paged files index in a thread: every source a test opens is closed after it."""
    yield
    while OPENED:
        OPENED.pop().close()


def quickstart(**values) -> cfg.Config:
    return update(cfg.load(sample_dir() / "quickstart.yaml"), values)


def browse(path: Path, config: cfg.Config) -> Browser:
    spec = str(path)
    browser = Browser()
    opened = open_local(spec, datasource.resolve(spec), config.data)
    OPENED.append(opened.rows)
    assert browser.take(opened, dict(config.data.roles)) is None  # nothing open before
    return browser


def test_another_dataset_is_detected_and_u_points_the_settings_at_it():
    config = quickstart()
    alpaca = sample_dir() / "alpaca_sample.json"
    browser = browse(alpaca, config)
    assert (browser.format, browser.format_how) == ("alpaca", "detected")
    assert browser.sample and browser.column_check.ok == browser.column_check.records
    assert not browser.reads_otherwise(config.data)  # another dataset: u is in the hint anyway
    changed, values = browser.use(config, "auto")
    assert (changed.data.path, changed.data.format, changed.data.columns) == (str(alpaca), "alpaca", {})
    # the quickstart's held-out file belongs to its own data: cleared, data.test_size holds out of this one
    assert config.data.test_path and changed.data.test_path is None
    assert values == {"path": str(alpaca), "format": "alpaca", "columns": {}, "template": "auto", "test_path": None}
    again = browse(alpaca, changed)
    assert not again.reads_otherwise(changed.data)


def test_the_settings_format_reads_their_own_data_path():
    config = quickstart(**{"data.path": str(PLAN), "data.format": "qa"})
    browser = browse(PLAN, config)
    assert (browser.format, browser.format_how) == ("qa", "data.format")


def test_an_unread_column_is_named_and_a_chosen_mapping_reads_it():
    config = quickstart(**{"data.path": str(PLAN), "data.format": "auto"})
    browser = browse(PLAN, config)
    assert (browser.format, browser.format_how) == ("qa", "detected")
    assert [name for name, _n in browser.column_check.unused] == ["plan"]
    assert "not trained: plan" in browser.column_check.line()
    assert not browser.reads_otherwise(config.data)
    browser.stats[("old",)] = {}
    assert browser.choose("qa", {"system": "plan"}, {})
    assert browser.columns == {"system": "plan"} and browser.stats == {}
    assert browser.column_check.unused == [] and browser.format_how == "detected"
    assert browser.reads_otherwise(config.data)  # the Settings do not map plan
    assert not browser.choose("qa", {"system": "plan"}, {})  # nothing new
    changed, values = browser.use(config, "auto")
    assert changed.data.columns == {"system": "plan"} and not browse(PLAN, changed).column_check.unused
    assert browser.choose("alpaca", {"system": "plan"}, {}) and browser.format_how == "chosen"


def test_a_transcript_row_renders_with_its_whole_conversation():
    roles = {"Host": "user", "Guest": "assistant"}
    config = quickstart(**{"data.path": str(PODCAST), "data.format": "auto", "data.roles": roles})
    browser = browse(PODCAST, config)
    assert browser.format == "transcript"
    rows = browser.rows.fetch(0, 100)
    second = next(row for row in rows if row.data["episode_id"] == "deep-time-042")
    assert browser.is_transcript_row(second)
    group = conversation(browser.rows, second, browser.merged_columns())
    assert [r["segment"] for r in group] == [r.data["segment"] for r in rows if r.data["episode_id"] == "deep-time-042"]
    assert len(group) == 7 and {r["episode_id"] for r in group} == {"deep-time-042"}


def test_search_finds_every_row_with_the_text_in_any_case():
    faq = sample_dir() / "finetui_faq.jsonl"
    rows = datasource.open_rows(datasource.resolve(str(faq)))
    OPENED.append(rows)
    reports = []
    found = search(rows, "LoRA", threading.Event(), lambda fraction, count: reports.append((fraction, count)))
    every = [row.index for row in rows.fetch(0, 100_000) if "lora" in row.raw.lower()]
    assert found == every and len(found) > 3
    assert reports and all(b[0] - a[0] >= datasetstate.SEARCH_STEP for a, b in zip(reports, reports[1:]))
    stop = threading.Event()
    stop.set()
    assert search(rows, "lora", stop) == []


def test_steps_go_through_the_matches_and_stay_in_the_table():
    assert step_line(5, None, 10, 1) == 6
    assert step_line(9, None, 10, 1) == 9
    assert step_line(0, None, 10, -1) == 0
    assert step_line(7, [3, 7, 9], 3, 1) == 2
    assert step_line(7, [3, 7, 9], 3, -1) == 0
    assert step_line(9, [3, 7, 9], 3, 1) == 2


def test_what_u_says_and_what_the_browser_follows():
    config = quickstart()
    values = {"path": "x.jsonl", "format": "qa", "columns": {"system": "plan"}, "template": "chatml",
              "test_path": None}
    assert datasetstate.use_message("x.jsonl", values, 0.1) == (
        "data.path = x.jsonl\nformat qa · columns system=plan · template chatml\n"
        "data.test_path cleared: data.test_size 0.1 of it is held out")
    roles = quickstart(**{"data.roles": {"Host": "user"}})
    assert datasetstate.settings_key(roles.data) != datasetstate.settings_key(config.data)
    assert datasetstate.render_key(roles) != datasetstate.render_key(config)
    assert datasetstate.configured("sample:finetui_faq", config.data) == ("qa", {})
    assert datasetstate.configured("other.jsonl", config.data) == ("auto", {})


def test_a_dataset_info_entry_keeps_its_own_columns():
    """The dialog answers with the merged mapping; what the entry maps already stays the
    entry's, only the user's own part is kept (and written to data.columns by u)."""
    spec = f"{DATA / 'datasets' / 'llamafactory' / 'dataset_info.json'}:glaive_toolcall_en_demo"
    config = quickstart()
    browser = Browser()
    browser.take(open_local(spec, datasource.resolve(spec), config.data), {})
    OPENED.append(browser.rows)
    assert (browser.format, browser.format_how) == ("sharegpt", "dataset_info.json")
    assert browser.merged_columns() == {"messages": "conversations", "tools": "tools"}
    assert not browser.choose("sharegpt", browser.merged_columns(), {})  # the entry's own: nothing new
    assert browser.choose("sharegpt", {**browser.merged_columns(), "system": "tools"}, {})
    assert browser.columns == {"system": "tools"}


class UiThread:
    """What RenderClient needs of an app: answers handed over from its reader thread (here
    to a queue the test drains, as the UI thread would)."""

    def __init__(self) -> None:
        import queue

        self.calls = queue.Queue()

    def call_from_thread(self, fn, *args, **kwargs) -> None:
        self.calls.put((fn, args, kwargs))

    def drain_until(self, done, timeout: float = 120.0) -> None:
        import queue
        import time

        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the render worker did not answer"
            try:
                fn, args, kwargs = self.calls.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            fn(*args, **kwargs)


def test_render_jobs_keep_one_client_per_settings_and_one_request_in_flight(finetui_cache):
    from finetui.tui.render_client import RenderClient

    ui = UiThread()
    jobs = datasetstate.RenderJobs(lambda key: RenderClient(ui, *key))
    key = datasetstate.render_key(quickstart())
    try:
        first = jobs.client_for(key)
        assert jobs.client_for(key) is first
        answers: dict[str, list] = {"old": [], "new": [], "lengths": []}
        record = {"question": "What is finetui?", "answer": "A TUI."}
        jobs.render(key, answers["old"].append, record=record, format="qa", columns={}, tags={}, group=None)
        jobs.render(key, answers["new"].append, record=record, format="qa", columns={}, tags={}, group=None)
        faq = str(sample_dir() / "finetui_faq.jsonl")
        jobs.lengths(key, answers["lengths"].append, path=faq, format="qa", columns={}, limit=5000)
        ui.drain_until(lambda: answers["new"] and answers["lengths"] and answers["lengths"][-1]["type"] != "progress")
        assert answers["old"] == []  # the first render was cancelled by the second
        assert answers["new"][0]["type"] == "rendered" and answers["new"][0]["format"] == "qa"
        assert answers["lengths"][-1]["type"] == "lengths" and jobs.lengths_id is None
        assert answers["lengths"][-1]["counts"]["ok"] > 100
        other = datasetstate.render_key(quickstart(**{"data.max_length": 64}))
        assert jobs.client_for(other) is not first and first.proc is None  # the old worker is closed
    finally:
        jobs.close()


def test_the_browser_follows_the_settings_until_another_dataset_is_opened():
    config = quickstart()
    following = datasetstate.Following()
    following.saw(config.data)
    assert following.on and not following.changed(config.data)
    moved = quickstart(**{"data.format": "auto"})
    assert following.changed(moved.data)  # the Settings read their data otherwise now: open it again
    following.opened("other.jsonl", config.data)
    assert not following.on and not following.changed(moved.data)
    following.opened(config.data.path, config.data)  # their own data.path again
    assert following.on
    following.used(moved.data)
    assert following.on and not following.changed(moved.data)


def test_a_new_search_stops_the_last_one():
    search = datasetstate.Search()
    first = search.begin("lora")
    assert search.text == "lora" and not first.is_set()
    second = search.begin("qlora")
    assert first.is_set() and not second.is_set() and search.text == "qlora"
    search.end()
    assert second.is_set()
