"""finetui.tui.runsstate without an app: the runs folder read as the Runs screen lists it
(newest first, finished runs not summarised again, an unreadable run or folder named), the
marks and the pair to compare, the columns and the text of each cell, the export refusal."""

from __future__ import annotations

import time

from test_dashboard_helpers import dash_env, synthetic_run  # noqa: F401

from finetui.engine import events as ev
from finetui.engine import runs
from finetui.tui import runsstate
from finetui.tui.runsstate import RunsList, cell_value, column_widths, export_problem, run_name, started_text


def read(listing: RunsList) -> list[runs.RunInfo]:
    infos, problem, _root = listing.read()
    assert problem is None
    listing.take(infos, problem, _root)
    return infos


def test_runs_are_listed_newest_first_with_their_cells(dash_env):
    done = synthetic_run(name="done", steps=40, every=10)
    time.sleep(1.1)  # run folders are named by the second they start in
    halted = synthetic_run(name="halted", steps=20, total=40, status="stopped", every=10)
    listing = RunsList()
    infos = read(listing)
    assert [i.id for i in infos] == [halted.name, done.name]
    assert listing.loaded and not listing.running
    by_name = {run_name(i.id): i for i in infos}
    assert set(by_name) == {"done", "halted"}
    assert cell_value(by_name["done"], "steps", 10) == "40/40"
    assert cell_value(by_name["halted"], "steps", 10) == "20/40"
    assert cell_value(by_name["done"], "eval", 8, ev.format_number) == ev.format_number(
        by_name["done"].best_eval_loss)
    assert cell_value(by_name["done"], "method", 7) == "full"
    assert cell_value(by_name["done"], "model", 40) == "tiny"
    assert cell_value(by_name["done"], "run", 20) == "done"
    assert cell_value(by_name["done"], "started", 12) == started_text(by_name["done"])
    assert runsstate.status_counts(infos) == {"stopped": 1, "completed": 1}
    assert runsstate.last_checkpoint_step(by_name["halted"]) == "20"


def test_a_long_model_name_keeps_its_end():
    info = runs.RunInfo(id="20250101-120000-x", path="/nowhere", status="completed",
                        model="/models/organisation/a-very-long-model-name-7b")
    value = cell_value(info, "model", 16)
    assert value.startswith("…") and value.endswith("name-7b") and len(value) == 15


def test_run_name_and_start_from_the_folder_name():
    assert run_name("20250101-120000-my-run") == "my-run"
    assert run_name("not-a-dated-name") == "not-a-dated-name"
    info = runs.RunInfo(id="20250314-093000-x", path="/nowhere", status="created")
    assert started_text(info) == "03-14 09:30"
    assert started_text(runs.RunInfo(id="x", path="/nowhere", status="created")) == "-"
    when = time.mktime((2026, 12, 5, 21, 3, 0, 0, 0, -1))
    assert started_text(runs.RunInfo(id="x", path="/n", status="completed", started=when)) == "12-05 21:03"


def test_columns_fit_the_width_and_drop_in_order():
    for width in (40, 50, 60, 79, 100, 200):
        cols = column_widths(width)
        assert sum(w for _k, _l, w in cols) <= max(width, 12 + 2 + 12 + 10)
    assert "model" not in [k for k, _l, _w in column_widths(60)]
    assert [k for k, _l, _w in column_widths(50)] == ["mark", "status", "run", "steps", "eval"]


def test_finished_runs_are_not_summarised_again_until_their_files_change(dash_env):
    run = synthetic_run(name="done", steps=20, every=10)
    listing = RunsList()
    first = read(listing)[0]
    assert read(listing)[0] is first  # unchanged: the summary kept
    w = ev.EventWriter(run.name, run / "events.jsonl", stream=None)
    w.emit("log", level="info", message="one more line")
    w.close()
    again = read(listing)[0]
    assert again is not first  # re-read: its events changed


def test_an_unreadable_run_or_folder_is_named_not_raised(dash_env):
    good = synthetic_run(name="good", steps=10, every=10)
    broken = good.parent / "20000101-000000-broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("model: [unclosed\n")
    (broken / "events.jsonl").mkdir()  # a folder where the events file should be
    listing = RunsList()
    infos = read(listing)
    statuses = {i.id: i.status for i in infos}
    assert statuses[good.name] == "completed"
    assert statuses[broken.name] == "unreadable"
    not_a_folder = dash_env / "a-file"
    not_a_folder.write_text("")
    infos, problem, root = listing.read(not_a_folder)
    assert infos == [] and problem.startswith(f"cannot list runs in {not_a_folder}/")


def test_marks_keep_the_last_two_and_drop_runs_that_are_gone(dash_env):
    paths = []
    for name in ("a", "b", "c"):
        paths.append(synthetic_run(name=name, steps=10, every=10))
        time.sleep(1.1)
    listing = RunsList()
    read(listing)
    a, b, c = (p.name for p in paths)
    assert listing.compare_pair(a) is None  # nothing marked
    listing.toggle_mark(a)
    assert listing.compare_pair(a) is None  # the marked run with itself
    assert listing.compare_pair(b) == (paths[0], paths[1])  # the marked one and the selected one
    listing.toggle_mark(b)
    listing.toggle_mark(c)
    assert listing.marked == [b, c]
    listing.toggle_mark(c)
    assert listing.marked == [b]
    listing.toggle_mark(a)
    assert listing.compare_pair(None) == (paths[1], paths[0])
    runs.delete(paths[1])
    read(listing)
    assert listing.marked == [a]


def test_export_needs_an_adapter(dash_env):
    run = synthetic_run(name="done", steps=10, every=10)
    info = runs.summarize(run)
    assert export_problem(info) == f"{info.id} has no adapter/ yet (saved when training ends or is stopped)"
    (run / "adapter").mkdir()
    assert export_problem(info) is None
