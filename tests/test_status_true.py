"""Status is never wrong: a long history reads as loading until it is read (no resume offer
meanwhile), a completed run is resumed only when forced, the runs list reads a small
summary instead of the whole history, and an empty config.yaml is refused (issue 24, item 9)."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from test_dashboard_helpers import SIZE, dash_env, screen_text, step_event, synthetic_run, wait_for, writer  # noqa: F401
from train_helpers import train

from finetui.engine import cli, run_summary, runs
from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.tui.app import FinetuiApp
from finetui.tui.runfeed import MAX_READ, RunFeed
from finetui.tui.runsstate import RunsList
from test_dashboard import open_dashboard

LONG = 40_000  # steps: ~19 MB of events, several pumps of MAX_READ to read


def _long_run(root, name="long"):
    run = synthetic_run(root, name=name, steps=LONG, every=LONG)
    assert (run / "events.jsonl").stat().st_size > 3 * MAX_READ
    return run


def test_a_long_history_reads_as_loading_then_completed(dash_env):
    run = _long_run(dash_env / "runs")
    feed = RunFeed(run)
    seen = []
    while True:
        feed.pump()
        seen.append(feed.state.status)
        if not feed.state.loading:
            break
    assert seen[:-1] and set(seen[:-1]) == {"loading"}, seen  # never "failed" on the way
    assert seen[-1] == "completed" and len(feed.state.steps) == LONG


async def test_the_dashboard_offers_no_resume_while_loading(dash_env):
    run = _long_run(dash_env / "runs")
    size = (run / "events.jsonl").stat().st_size
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run.name)
        assert dash.state.loading
        text = screen_text(app)
        assert "… loading" in text and "failed" not in text, text
        assert "Resume" not in text.splitlines()[-1]
        await pilot.press("R")  # what resumed the run when it read as failed
        await wait_for(pilot, lambda: not dash.state.loading, timeout=60)
        await pilot.pause(0.6)
        assert "✔ completed" in screen_text(app)
        assert runs.read_pid(run) is None and (run / "events.jsonl").stat().st_size == size


def test_resume_of_a_completed_run_needs_force(dash_env, capsys):
    run = synthetic_run(dash_env / "runs", name="done", steps=10, every=5)
    size = (run / "events.jsonl").stat().st_size
    assert cli.main(["train", "--resume", run.name]) == 1
    err = capsys.readouterr().err
    assert f"run {run.name} completed at step 10/10: resuming it would start a new session" in err
    assert f"`finetui train --resume {run.name} --force` resumes it anyway" in err
    assert runs.read_pid(run) is None and (run / "events.jsonl").stat().st_size == size
    # A stopped run is resumed as before; the dashboard's resume asks the same question.
    stopped = synthetic_run(dash_env / "runs", name="stopped", steps=10, every=5, status="stopped")
    assert runs.completed_refusal(stopped) is None and runs.completed_refusal(run) is not None


def test_runs_list_reads_a_summary_not_the_history(dash_env):
    run = runs.new_run(cfg.Config(), name="kept", root=dash_env / "runs")
    w = writer(run)
    w.after_emit = run_summary.Keeper(run, every_s=0)  # as engine.train sets it up
    w.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    for s in range(1, 301):
        step_event(w, s, 300)
    w.emit("finished", status="completed", metrics={}, outputs={})
    events = run / "events.jsonl"
    stored = json.loads((run / run_summary.SUMMARY_FILE).read_text())
    assert stored["offset"] == events.stat().st_size and stored["finished"]["status"] == "completed"
    whole = runs.summarize(run, events=ev.read_file(events))
    assert runs.summarize(run) == whole

    # The history is not read again: its middle scrambled (same size, same start), the
    # list says the same.
    data = bytearray(events.read_bytes())
    data[run_summary.HEAD_BYTES:-1] = b"x" * (len(data) - run_summary.HEAD_BYTES - 1)
    events.write_bytes(bytes(data))
    assert runs.summarize(run) == whole

    # Lines appended after the summary are folded in; a summary that does not match the
    # file (a shorter file, a garbled summary) is rebuilt from events.jsonl.
    shutil.copy(run / run_summary.SUMMARY_FILE, dash_env / "summary.json")
    events.write_bytes(b"")
    w2 = writer(run)
    w2.emit("run_started", config={}, footprint={}, datasets={}, devices=["cpu"])
    step_event(w2, 1, 5)
    info = runs.summarize(run)
    assert info.step == 1 and info.total_steps == 5 and info.status == "failed" and info.problems == []
    step_event(w2, 2, 5)
    assert runs.summarize(run).step == 2
    (run / run_summary.SUMMARY_FILE).write_text("{garbled")
    assert runs.summarize(run).step == 2


@pytest.mark.slow
def test_the_trainer_keeps_the_summary(tmp_path, finetui_cache):
    run, rc, _ = train(tmp_path / "runs", "sum", train={"max_steps": 3, "eval_strategy": "no", "save_steps": 3})
    assert rc == 0
    stored = run_summary.Summary.from_json((run / run_summary.SUMMARY_FILE).read_text())
    assert stored.offset == (run / "events.jsonl").stat().st_size
    fresh = run_summary.Summary()
    run_summary.fold(fresh, run / "events.jsonl")
    assert stored == fresh and stored.step == 3 and stored.finished["status"] == "completed"


def test_overlapping_runs_screen_reads_agree(dash_env):
    """Two reads of the runs folder at once (a reload while the last one still runs: thread
    workers cannot be cancelled) both see every identical completed run as completed."""
    root = dash_env / "runs"
    first = synthetic_run(root, name="same", steps=2000, every=1000)
    for i in range(24):
        shutil.copytree(first, root / f"{first.name}-copy{i:02d}")
    listing = RunsList()  # what the Runs screen reads with
    results, errors = [], []

    def read():
        try:
            results.append(listing.scan(root))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for infos in results:
        assert len(infos) == 25
        assert {(i.status, i.step, i.total_steps) for i in infos} == {("completed", 2000, 2000)}


def test_an_empty_config_is_refused_with_its_name(tmp_path, capsys):
    for text in ("", "# nothing set yet\n"):
        path = tmp_path / "config.yaml"
        path.write_text(text)
        with pytest.raises(cfg.ConfigError) as err:
            cfg.load(path)
        assert err.value.problems == [f"{path}: the config file is empty (no settings in it); write the keys "
                                      "to set (model:, data:, train: ...), e.g. from sample_data/quickstart.yaml"]
    assert cli.main(["train", str(path)]) == 2
    assert f"{path}: the config file is empty" in capsys.readouterr().err
