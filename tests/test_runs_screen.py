"""The Runs screen at 80x24, by keyboard: the list, open, mark two and compare, delete
with confirmation, resume, new run; and the key table (ids, help)."""

from __future__ import annotations

from test_dashboard_helpers import (  # noqa: F401
    SIZE, dash_env, fake_launch, live_trainer, screen_text, synthetic_run, wait_for, widget_text,
)

from finetui.engine import events as ev
from finetui.engine import runs
from finetui.tui.app import FinetuiApp
from finetui.tui.runsstate import column_widths
from finetui.tui.screens.compare import CompareScreen, config_diff
from finetui.tui.screens.dashboard import DashboardScreen
from finetui.tui.screens.runs import RunsScreen
from finetui.tui.widgets.dialogs import ConfirmDialog
from finetui.tui.widgets.lossplot import LossPlot


async def goto_runs(pilot, app, count: int) -> RunsScreen:
    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded
                   and len(app.screen.infos) == count)
    await pilot.pause(0.1)
    return app.screen


async def select(pilot, screen: RunsScreen, run_id: str) -> None:
    ids = [i.id for i in screen.infos]
    while screen.current_info().id != run_id:
        await pilot.press("j" if ids.index(run_id) > ids.index(screen.current_info().id) else "k")


def test_columns_fit_80_cells_and_narrower():
    for width in (79, 100, 60, 50):
        cols = column_widths(width)
        assert sum(w for _k, _l, w in cols) <= width
        assert {"status", "run", "steps"} <= {k for k, _l, _w in cols}
    assert [k for k, _l, _w in column_widths(79)] == ["mark", "status", "run", "started", "time", "steps", "eval",
                                                     "method", "model"]


def test_config_diff_names_every_changed_key():
    diff = config_diff({"train": {"batch_size": 16, "lr": 1}, "model": {"x": 1}},
                       {"train": {"batch_size": 8, "lr": 1}, "data": {"y": 2}})
    assert diff == [("data.y", None, 2), ("model.x", 1, None), ("train.batch_size", 16, 8)]


async def test_list_shows_every_run_with_status_steps_eval_method_and_model(dash_env):
    done = synthetic_run(name="done", steps=40, every=10)
    stopped = synthetic_run(name="halted", steps=20, total=40, status="stopped", every=10)
    failed = synthetic_run(name="broken", error={"kind": "data", "message": "data.path: no such file x.jsonl",
                                                 "hint": "check data.path"})
    live = synthetic_run(name="live", steps=3, total=40, status=None)
    with live_trainer(live):
        app = FinetuiApp()
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto_runs(pilot, app, 4)
            text = screen_text(app)
            rows = {line.split()[2]: line for line in text.splitlines() if line.strip() and line.strip()[0] in "✔■✖●"}
            assert "completed" in rows["done"] and "40/40" in rows["done"] and "full" in rows["done"]
            assert "tiny" in rows["done"] and "2.907" in rows["done"]  # best eval loss (step 40)
            assert "stopped" in rows["halted"] and "20/40" in rows["halted"]
            assert "failed" in rows["broken"]
            assert "running" in rows["live"] and "3/40" in rows["live"]
            assert all(len(line) <= 80 for line in text.splitlines())
            assert "1 running" in text and "1 failed" in text
            await select(pilot, screen, failed.name)
            await pilot.pause(0.1)
            text = screen_text(app)
            assert failed.name in text and "data.path: no such file x.jsonl" in text and "hint: check data.path" in text
            await select(pilot, screen, stopped.name)
            await pilot.pause(0.1)
            assert "R: resume from the last checkpoint" in screen_text(app)
            # enter opens the dashboard; escape comes back to the list
            await select(pilot, screen, done.name)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            assert app.screen.run_id == done.name
            await pilot.press("escape")
            assert app.screen is screen
            # a running run cannot be deleted
            await select(pilot, screen, live.name)
            await pilot.press("x")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, ConfirmDialog)
            assert any("stop it first" in n.message for n in app._notifications)


async def test_mark_two_and_compare_overlays_curves_and_diffs_configs(dash_env):
    a = synthetic_run(name="big", steps=30, every=10, train__batch_size=16)
    b = synthetic_run(name="small", steps=20, every=10, train__batch_size=8, train__learning_rate=1e-3)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await goto_runs(pilot, app, 2)
        await pilot.press("v")
        await pilot.pause(0.1)
        assert any("mark two runs" in n.message for n in app._notifications)
        await select(pilot, screen, a.name)
        await pilot.press("space")
        await select(pilot, screen, b.name)
        await pilot.press("space")
        await pilot.pause(0.1)
        assert screen.marked == [a.name, b.name]
        assert "◆ 2 marked" in screen_text(app)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.states is not None)
        await pilot.pause(0.3)
        cmp = app.screen
        chart = cmp.query_one(LossPlot)
        assert [s.label for s in chart.series] == ["A train", "A eval", "B train", "B eval"]
        assert len(chart.series[0].xs) == 30 and len(chart.series[2].xs) == 20
        text = screen_text(app)
        assert a.name in text and b.name in text
        assert "2 settings differ" in text
        assert "train.batch_size" in text and "16 → 8" in text
        assert "train.learning_rate" in text and "0.003 → 0.001" in text
        await pilot.press("l", "m", "p")
        assert chart.log_scale and chart.smoothing == 0.6 and chart.title == "learning rate"
        await pilot.press("escape")
        assert app.screen is screen


async def test_delete_asks_first(dash_env):
    keep = synthetic_run(name="keep", steps=5, every=5)
    drop = synthetic_run(name="drop", steps=5, every=5)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await goto_runs(pilot, app, 2)
        await select(pilot, screen, drop.name)
        await pilot.press("x")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmDialog)
        assert str(drop) in widget_text(app.screen.query_one("VerticalScroll Static"), width=300)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert drop.exists() and app.screen is screen
        await pilot.press("delete")
        await pilot.pause(0.1)
        await pilot.press("y")
        await wait_for(pilot, lambda: not drop.exists() and len(screen.infos) == 1)
        assert keep.exists() and screen.infos[0].id == keep.name


async def test_resume_from_the_list_opens_the_live_dashboard(dash_env, monkeypatch):
    monkeypatch.setattr(runs, "launch", fake_launch(dash_env, steps=20, interval=0.02))
    stopped = synthetic_run(name="halted", steps=12, total=20, status="stopped", every=5)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await goto_runs(pilot, app, 1)
        await select(pilot, screen, stopped.name)
        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.feed is not None
                       and app.screen.feed.source == "pipe")
        dash = app.screen
        await wait_for(pilot, lambda: dash._status == "completed", timeout=10)
        assert dash.state.steps == list(range(1, 21)) and dash.state.sessions == 2
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.infos and screen.infos[0].status == "completed")


async def test_new_goes_to_settings_and_asks_to_start(dash_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await goto_runs(pilot, app, 0)
        assert "No runs in" in screen_text(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert app.current_mode == "settings"
        assert "finetui train" in widget_text(app.screen.query_one("VerticalScroll Static"))
        await pilot.press("escape")


def test_every_binding_has_an_id_and_is_known_to_help():
    from finetui.tui.keymap import bindings_of
    from finetui.tui.screens.runs import RunsTable

    app = FinetuiApp()
    known = app.known_binding_ids()
    for cls, prefix in ((RunsScreen, "runs."), (RunsTable, "runs."), (DashboardScreen, "dashboard."),
                        (CompareScreen, "compare.")):
        own = [b for b in bindings_of(cls) if b.action not in ("command_palette",)]
        ids = [b.id for b in cls.BINDINGS]
        assert all(ids) and all(i.startswith(prefix) for i in ids), ids
        assert set(ids) <= known
        assert own


def test_summary_reads_increments_and_a_resumed_run_is_running_again(dash_env):
    from test_dashboard_helpers import step_event, writer

    from finetui.engine import run_summary

    run = synthetic_run(name="again", steps=12, total=20, status="stopped", every=5)
    assert runs.summarize(run).status == "stopped"
    run_summary.save(run, run_summary.load(run))  # as the trainer leaves it
    assert runs.summarize(run) == runs.summarize(run, events=ev.read_file(run / "events.jsonl"))
    with live_trainer(run):
        w = writer(run)
        w.emit("log", level="info", message="resuming")
        step_event(w, 11, 20)
        info = runs.summarize(run)  # summary.json + the lines written since
        assert info.status == "running" and info.step == 11 and len(info.checkpoints) == 2
