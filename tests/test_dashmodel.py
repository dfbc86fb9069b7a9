"""finetui.tui.dashstate.DashModel without an app: the run dashboard's state, driven by
synthetic run folders (engine.events.EventWriter, as the trainer writes them) read through
a real RunFeed and the real hardware poll. When to draw, what each widget is handed, which
keys apply and why an action is refused, the chart's plots and the log area's views."""

from __future__ import annotations

import shutil
import sys

import test_rank_streams as rank_streams
from test_dashboard_helpers import dash_env, synthetic_run  # noqa: F401

from finetui.tui.dashstate import PLOTS, VIEWS, DashModel, HwSnapshot, Look, launch_route
from finetui.tui.runfeed import RunFeed, RunState

COLORS = {"train": "cyan", "eval": "yellow", "second": "yellow", "dim": "grey50", "axis": "grey50",
          "good": "green", "bad": "red"}
LOOK = Look(80, COLORS)


def read(run_dir) -> RunFeed:
    """A feed that has read the whole events file, as the dashboard's registry leaves it."""
    feed = RunFeed(run_dir)
    for _ in range(50):
        feed.pump()
        if not feed.state.loading:
            break
    assert not feed.state.loading
    return feed


def polled(run_dir, feed: RunFeed | None = None) -> DashModel:
    """A model after its first hardware poll (config.yaml, checkpoints on disk, stdout.log)."""
    model = DashModel(run_dir)
    model.poll(feed)
    hw = model.fresh_readings()
    assert hw is not None and model.readings_seen(hw, feed.state if feed else RunState(run_dir.name))
    return model


def test_a_completed_run_frame_progress_metrics_chart_checkpoints_and_log(dash_env):
    run = synthetic_run(steps=40, every=10)
    feed = read(run)
    model = polled(run, feed)
    st = feed.state
    frame = model.frame(st, LOOK)
    assert model.status == "completed" and model.state is st and model.shown_steps[-1][0] == 40
    assert frame.head.plain.startswith("✔ completed  " + run.name)
    assert (frame.progress["step"], frame.progress["total"]) == (40, 40)
    assert frame.progress["eta"] is None and frame.progress["bar_color"] == "green"  # done: no eta, done colour
    assert frame.metrics["loss"] == st.last_step["loss"] and frame.metrics["tokens_per_s"] == st.last_step["tokens_per_s"]
    assert frame.metrics["eval_loss"] == st.last_eval["eval_loss"]
    assert frame.ranks is None and frame.gpus is None  # one process: no ranks line
    assert frame.chart_shown and frame.chart_title == "loss"
    assert [(c.label, len(c.xs), c.markers, c.color) for c in frame.curves] == \
        [("train", 40, False, "cyan"), ("eval", 4, True, "yellow")]
    assert frame.poll.problem[0] is None and model.fix is None
    assert frame.poll.checkpoints.plain == "checkpoints 10 20 30 40  (last on disk: checkpoint-40)"
    title, lines, _empty = frame.poll.log
    assert title == "log  (v: stdout.log, checkpoints)" and "finished: completed" in lines[-1].plain
    # the keys a completed run offers
    assert model.keys_changed() and not model.keys_changed()
    assert [model.allows(a) for a in ("stop", "kill", "resume", "fix", "chat", "ranks", "plot")] == \
        [False, False, False, False, True, False, True]
    assert model.refusal("stop") == "the run is not running" and model.refusal("resume") is None
    assert model.refusal("fix") == "nothing to fix: the run did not fail"


def test_each_plot_has_its_one_curve(dash_env):
    run = synthetic_run(steps=12, every=6)
    feed = read(run)
    model = DashModel(run)
    seen = []
    for _ in PLOTS:
        shown, title, curves = model.chart(feed.state, COLORS)
        seen.append((title, [c.label for c in curves]))
        model.next_plot()
    assert seen == [("loss", ["train", "eval"]), ("learning rate", ["learning rate"]),
                    ("grad norm", ["grad norm"]), ("tokens/s", ["tokens/s"])]
    assert model.chart(feed.state, COLORS)[1] == "loss"  # round again
    train, _eval = model.chart(feed.state, COLORS)[2]
    assert train.ys == list(feed.state.loss)
    model.plot = PLOTS.index("learning rate")
    (curve,) = model.chart(feed.state, COLORS)[2]
    assert curve.ys == list(feed.state.learning_rate) and curve.xs == list(range(1, 13))


def test_a_run_that_failed_before_its_first_step_offers_its_fix_and_no_chart(dash_env):
    run = synthetic_run(error={"kind": "oom", "message": "CUDA out of memory", "hint": "smaller batch"},
                        train__batch_size=16, train__gradient_accumulation_steps=1)
    feed = read(run)
    model = polled(run, feed)  # the run's config.yaml (no run_started event) decides the fix
    frame = model.frame(feed.state, LOOK)
    assert not frame.chart_shown  # no curve: the room goes to the log
    kind, text = frame.poll.problem
    assert kind == "-failed" and "✖ failed: oom error: CUDA out of memory" in text.plain
    assert model.fix is not None and model.fix.overrides == {"train.batch_size": 8,
                                                             "train.gradient_accumulation_steps": 2}
    assert model.fix.note == "fix: train.batch_size 8, train.gradient_accumulation_steps 2"
    assert "f: Settings with train.batch_size 8" in text.plain
    assert model.allows("fix") and model.allows("resume") and not model.allows("stop")
    assert model.allows("chat") is None  # greyed: no adapter to chat with
    assert model.refusal("fix") is None and model.refusal("kill") == "the run is not running"


def test_a_live_run_refuses_resume_and_shows_its_eta(dash_env):
    run = synthetic_run(steps=12, total=60, status=None, every=10)
    feed = read(run)
    st = feed.state
    st.process_alive = True  # as a feed following a live trainer sees it
    model = DashModel(run)
    frame = model.frame(st, LOOK)
    assert model.status == "running" and frame.progress["eta"] == st.last_step["eta_s"]
    assert frame.progress["bar_color"] == "cyan" and frame.chart_shown
    assert model.refusal("resume") == "the run is still running" and model.refusal("stop") is None
    assert model.allows("stop") and model.allows("kill") and not model.allows("resume")


def test_draws_are_planned_only_for_changes_and_at_most_twice_a_second():
    st = RunState("r")
    model = DashModel("/nowhere/r")
    assert model.draw_wait(100.0) <= 0  # never drawn: now
    assert model.draw_plan(st, 100.0) == "all" and model.draws == 1
    assert abs(model.draw_wait(100.2) - 0.3) < 1e-9  # drawn 0.2 s ago: in 0.3 s
    assert model.draw_plan(st, 100.6) is None and model.draws == 1  # nothing new: nothing drawn
    st.apply({"type": "step", "step": 1, "total_steps": 2, "loss": 1.0, "time": 1})
    assert model.draw_plan(st, 101.2) == "all" and model.draws == 2
    assert list(model.draw_times) == [100.0, 101.2]
    # a poll whose readings changed: only what depends on it
    hw = HwSnapshot(stdout_lines=["a"])
    model.hw = hw
    assert model.fresh_readings() is hw
    assert model.readings_seen(hw, st) and model.version == -1  # the first poll: everything once more
    assert model.fresh_readings() is None  # on screen now
    assert model.draw_plan(st, 102.0) == "all"
    model.hw = HwSnapshot(stdout_lines=["a"])  # the same readings again
    assert not model.readings_seen(model.hw, st) and model.draw_plan(st, 103.0) is None
    model.hw = HwSnapshot(stdout_lines=["a", "b"])  # stdout.log grew
    assert model.readings_seen(model.hw, st) and model.draw_plan(st, 104.0) == "poll"
    assert model.draw_plan(st, 105.0) is None and model.draws == 4
    model.feed_switched()  # a new feed: everything again
    assert model.draw_plan(st, 106.0) == "all"


def test_the_poll_reads_checkpoints_on_disk_and_the_log_marks_removed_ones(dash_env):
    run = synthetic_run(steps=20, every=10)
    feed = read(run)
    model = polled(run, feed)
    assert model.hw.last_checkpoint.name == "checkpoint-20" and model.config["train"]
    assert model.hw.thread and model.hw.problem  # no NVML here: the panel says why
    call = model.gpus(model.hw, LOOK)
    assert call[0] == "show" and call[1][:3] == (model.hw.gpus, model.hw.problem, model.hw.host)
    shutil.rmtree(run / "checkpoints" / "checkpoint-10")  # save_total_limit at work
    model.poll(feed)
    assert model.readings_seen(model.fresh_readings(), feed.state)
    model.view = VIEWS.index("checkpoints")
    title, lines, _ = model.log(feed.state, model.hw, LOOK)
    assert title == "checkpoints  (v: log)"
    assert [line.plain.endswith("removed (save_total_limit)") for line in lines] == [True, False]


def test_views_skip_ranks_and_gpus_for_one_process(dash_env):
    run = synthetic_run(steps=4, every=2)
    model = DashModel(run)
    model.frame(read(run).state, LOOK)
    seen = []
    for _ in range(4):
        model.next_view()
        seen.append(VIEWS[model.view])
    assert seen == ["stdout.log", "checkpoints", "log", "stdout.log"]
    model.ranks_view()  # w on one process: back to the log
    assert VIEWS[model.view] == "log"
    model.stdout_view()
    assert VIEWS[model.view] == "stdout.log"


def test_several_processes_ranks_line_nodes_panel_and_views(tmp_path):
    writers = rank_streams._streams(tmp_path)
    for r, w in writers.items():
        w.emit("rank_step", step=1, step_s=0.6, own_s={0: 0.2, 1: 0.55, 2: 0.3}[r], tokens_per_s=1000.0, device="cpu")
    writers[0].sample("hardware", gpus=[], host={"cpu_percent": 50.0, "ram_used_bytes": 1, "ram_total_bytes": 2})
    feed = RunFeed(tmp_path)
    rank_streams._pump(feed)
    model = DashModel(tmp_path)
    frame = model.frame(feed.state, Look(80, COLORS, key=lambda _id, default: {"dashboard.ranks": "W"}.get(_id, default)))
    assert frame.ranks is not None and frame.ranks.plain.startswith("ranks 3 on 2 nodes")
    assert "slowest rank 1" in frame.ranks.plain and frame.ranks.plain.endswith("(W)")
    method, (rows, slowest), kwargs = frame.gpus
    assert method == "show_nodes" and slowest == 1 and kwargs == {"more_hint": " (W W: every GPU)"}
    assert [row.node.node_rank for row in rows] == [0]
    assert model.allows("ranks")
    model.ranks_view()
    assert VIEWS[model.view] == "ranks"
    title, lines, _ = model.log(feed.state, None, LOOK)
    assert title.startswith("ranks  Σ 3,000 tok/s") and len(lines) == 4 and "◀ slowest" in lines[2].plain
    model.ranks_view()
    assert VIEWS[model.view] == "gpus"
    model.ranks_view()
    assert VIEWS[model.view] == "log"  # w: ranks, GPUs, then the log again
    seen = []
    for _ in range(5):
        model.next_view()
        seen.append(VIEWS[model.view])
    assert seen == ["stdout.log", "checkpoints", "ranks", "gpus", "log"]


def test_launches_route_our_resume_and_a_run_started_meanwhile():
    assert launch_route([], "a") == (False, None)
    assert launch_route(["a"], "a") == (True, None)
    assert launch_route(["a", "b", "c"], "a") == (True, "b")
    assert launch_route(["b", "a"], "a") == (False, "b")  # the other run's dashboard takes over first


def test_the_model_is_plain_python():
    """The dashboard's state imports no Textual (the import-linter contract, at runtime)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import sys, finetui.tui.dashstate; "
                          "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
