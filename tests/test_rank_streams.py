"""Every rank's stream (engine.ranks): a real 2-process CPU/gloo run writes node/rank on
every event, per-rank step timing and its node's hardware; the reader follows the rank
files and adds them up; synthetic streams drive the slowest-rank and silent-rank rules."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from test_dashboard import open_dashboard
from test_dashboard_helpers import SIZE, config, dash_env, live_trainer, screen_text, wait_for, widget_text  # noqa: F401

from finetui.engine import events as ev
from finetui.engine import ranks, runs
from finetui.tui.app import FinetuiApp
from finetui.tui.runfeed import RunFeed
from finetui.tui.widgets.gpupanel import GpuPanel
from finetui.tui.widgets.logview import LogView
from tests.train_helpers import make_config, of_type, stdout_log

FAKE_GPUS = [{"name": "NVIDIA H100 80GB HBM3", "util_percent": 90, "memory_used_bytes": 2 << 30,
              "memory_total_bytes": 80 << 30},
             {"name": "NVIDIA H100 80GB HBM3", "util_percent": 40, "memory_used_bytes": 1 << 30,
              "memory_total_bytes": 80 << 30}]


def test_two_process_run_writes_every_rank_and_the_reader_adds_them_up(tmp_path, finetui_cache, monkeypatch):
    """`finetui train CONFIG --nproc 2` (DDP on gloo): both streams carry rank/node/host,
    every rank times its steps, the node's local rank 0 reports the node's GPUs (fake NVML
    readings here) and CPU/RAM; the run feed reads both streams into one board."""
    monkeypatch.setenv("FINETUI_FAKE_GPUS", json.dumps(FAKE_GPUS))
    config = tmp_path / "ranks.yaml"
    config.write_text(make_config(train={"max_steps": 2, "batch_size": 4, "eval_strategy": "no",
                                         "save_strategy": "no", "logging_steps": 1}).to_yaml())
    root = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(root), "train", str(config),
                           "--nproc", "2", "--name", "ranks"], capture_output=True, text=True, timeout=400)
    (run_dir,) = root.iterdir()
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:], stdout_log(run_dir))

    streams = {0: ev.read_file(run_dir / "events.jsonl"), 1: ev.read_file(run_dir / "events.rank1.jsonl")}
    for rank, events in streams.items():
        assert events and all(e["rank"] == rank and e["local_rank"] == rank and e["node_rank"] == 0
                              and isinstance(e["hostname"], str) for e in events), rank
        timed = of_type(events, "rank_step")
        assert [e["step"] for e in timed] == [1, 2]
        assert all(e["step_s"] > 0 and e["own_s"] > 0 and e["tokens_per_s"] > 0 for e in timed)
    # one node: only its local rank 0 (global rank 0) samples the hardware
    assert not of_type(streams[1], "hardware")
    sample = of_type(streams[0], "hardware")[0]
    assert [g["name"] for g in sample["gpus"]] == [g["name"] for g in FAKE_GPUS]
    assert sample["host"]["ram_total_bytes"] > 0

    feed = RunFeed(run_dir)
    for _ in range(5):
        feed.pump()
    board = feed.state.ranks
    assert sorted(board.ranks) == [0, 1] and board.world_size == 2
    times = {r: board.ranks[r].step_time for r in (0, 1)}
    assert all(t > 0 for t in times.values())
    slow = board.slowest()  # None when the two keep pace (within 5 %)
    assert slow is None or times[slow.rank] == max(times.values())
    total = board.global_tokens_per_s()
    assert total == sum(board.ranks[r].last_step["tokens_per_s"] for r in (0, 1))
    rows = board.hw_rows()
    assert [(row.gpu["index"], [i.rank for i in row.ranks]) for row in rows] == [(0, [0]), (1, [1])]
    assert board.silent(after_s=600) == []  # both ranks finished
    assert feed.state.status == "completed"


def _identity(rank: int, node: int = 0, local: int | None = None) -> dict:
    return {"rank": rank, "local_rank": rank if local is None else local, "node_rank": node, "hostname": f"h{node}"}


def _streams(tmp_path, world: int = 3):
    """A run folder with rank 0's events.jsonl and rank R's events.rank<R>.jsonl, written
    as the trainer writes them (engine.events.EventWriter with the rank's identity)."""
    writers = {r: ev.EventWriter("run", tmp_path / ("events.jsonl" if r == 0 else f"events.rank{r}.jsonl"),
                                 stream=None, identity=_identity(r, node=r // 2, local=r % 2))
               for r in range(world)}
    writers[0].emit("run_started", config={"train": {"hang_after_s": 30}}, footprint={}, datasets={},
                    devices=["cpu"] * world, world_size=world)
    return writers


def _pump(feed: RunFeed) -> None:
    for _ in range(3):
        feed.pump()


def test_slowest_rank_and_global_throughput_from_synthetic_streams(tmp_path):
    writers = _streams(tmp_path)
    own = {0: 0.20, 1: 0.55, 2: 0.31}
    for r, w in writers.items():
        w.emit("rank_step", step=1, step_s=0.6, own_s=own[r], tokens_per_s=1000.0 + r, device="cpu")
    writers[0].sample("hardware", gpus=[], host={"cpu_percent": 50.0, "ram_used_bytes": 1, "ram_total_bytes": 2})
    writers[2].sample("hardware", gpus=[], host={"cpu_percent": 10.0, "ram_used_bytes": 1, "ram_total_bytes": 2})
    feed = RunFeed(tmp_path)
    _pump(feed)
    board = feed.state.ranks
    assert board.slowest().rank == 1
    assert board.global_tokens_per_s() == 3003.0
    # CPU-only nodes: one row per node, each with its ranks
    assert [(row.node.node_rank, row.gpu, [i.rank for i in row.ranks]) for row in board.hw_rows()] == \
        [(0, None, [0, 1]), (1, None, [2])]
    # rank 2 speeds up, rank 0 slows down: the new figures decide
    writers[2].emit("rank_step", step=2, step_s=0.6, own_s=0.1, tokens_per_s=900.0, device="cpu")
    writers[0].emit("rank_step", step=2, step_s=0.6, own_s=0.9, tokens_per_s=800.0, device="cpu")
    _pump(feed)
    assert board.slowest().rank == 0
    assert board.global_tokens_per_s() == 800.0 + 1001.0 + 900.0
    # within 5 % of each other: no rank is called the slowest
    for r, w in writers.items():
        w.emit("rank_step", step=3, step_s=0.6, own_s=0.30 + 0.005 * r, tokens_per_s=900.0, device="cpu")
    _pump(feed)
    assert board.slowest() is None


class Clock:
    """engine.events' clock, set by the test: events written at chosen times."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


def test_a_rank_whose_stream_stops_is_named_after_hang_after_s(tmp_path, monkeypatch):
    clock = Clock(1000.0)
    monkeypatch.setattr(ev, "time", clock)
    writers = _streams(tmp_path)  # train.hang_after_s: 30
    feed = RunFeed(tmp_path)
    for r, w in writers.items():
        w.emit("rank_step", step=1, step_s=0.5, own_s=0.2, tokens_per_s=100.0, device="cpu")
    _pump(feed)
    state = feed.state
    state.process_alive = True  # rank 0's trainer lives
    assert state.silent_ranks(now=1029) == []
    # ranks 0 and 2 go on (heartbeats), rank 1 stops; its node's hardware readings go on
    # (a thread of their own), but a reading is no sign of life
    clock.t = 1020.0
    for w in (writers[0], writers[2]):
        w.emit("heartbeat", phase="training")
    writers[1].sample("hardware", gpus=[], host={})
    _pump(feed)
    assert state.silent_ranks(now=1029) == []
    assert state.silent_ranks(now=1035) == [(1, 35.0)]
    assert state.ranks.ranks[1].where() == "rank 1 (node 0, h0)"
    # two silent: the longest first
    assert [r for r, _s in state.silent_ranks(now=1051)] == [1, 0, 2]
    # a rank that finished is not silent, nor is a run that is not running
    clock.t = 1040.0
    writers[1].emit("finished", status="completed", metrics={}, outputs={})
    _pump(feed)
    assert state.silent_ranks(now=1045) == []
    state.process_alive = False
    assert state.silent_ranks(now=5000) == []


def test_the_gpu_panel_keeps_the_slowest_ranks_row_when_rows_are_many():
    from finetui.tui.dashstate import node_line, panel_rows

    board = ranks.RankBoard()
    board.new_session(8, 1.0)
    gpus = [{"index": i, "name": "NVIDIA H100", "util_percent": 90} for i in range(8)]
    board.apply({"type": "hardware", "time": 1.0, "rank": 0, "local_rank": 0, "node_rank": 0,
                 "hostname": "a", "gpus": gpus, "host": {}})
    for r in range(8):
        board.apply({"type": "rank_step", "time": 2.0, "rank": r, "local_rank": r, "node_rank": 0, "hostname": "a",
                     "step": 1, "step_s": 1.0, "own_s": 0.5 + (0.3 if r == 6 else 0.0), "device": f"cuda:{r}"})
    rows = board.hw_rows()
    assert [[i.rank for i in row.ranks] for row in rows] == [[r] for r in range(8)]
    shown = panel_rows(rows, board.slowest().rank, 4)
    assert [row.gpu["index"] for row in shown] == [0, 1, 2, 6]
    assert "◀ slowest" in node_line(shown[-1], 6).plain and "◀ slowest" not in node_line(shown[0], 6).plain


def test_a_resume_on_fewer_processes_forgets_the_ranks_it_no_longer_has(tmp_path, monkeypatch):
    clock = Clock(1000.0)
    monkeypatch.setattr(ev, "time", clock)
    writers = _streams(tmp_path, world=3)  # the first session: 3 ranks on 2 nodes
    for r, w in writers.items():
        w.sample("hardware", gpus=[], host={"cpu_percent": 1.0})
        w.emit("finished", status="stopped", metrics={}, outputs={})
    clock.t = 2000.0  # resumed on one node with 2 processes
    writers[0].emit("run_started", config={"train": {"hang_after_s": 30}}, footprint={}, datasets={},
                    devices=["cpu"] * 2, world_size=2)
    for r in (0, 1):
        writers[r].emit("rank_step", step=5, step_s=0.5, own_s=0.2, tokens_per_s=100.0, device="cpu")
    feed = RunFeed(tmp_path)
    _pump(feed)
    state = feed.state
    state.process_alive = True
    assert sorted(state.ranks.ranks) == [0, 1] and state.ranks.expected() == [0, 1]
    assert [row.node.node_rank for row in state.ranks.hw_rows()] == [0]  # node 1 ran rank 2 only
    assert state.silent_ranks(now=2020) == []
    assert state.ranks.global_tokens_per_s() == 200.0


def test_rank_follower_reads_whole_lines_and_new_files_as_they_appear(tmp_path):
    follower = ranks.RankFollower(tmp_path)
    assert follower.read() == []
    w1 = ev.EventWriter("run", tmp_path / "events.rank1.jsonl", stream=None, identity=_identity(1))
    w1.emit("heartbeat", phase="loading")
    with open(tmp_path / "events.rank1.jsonl", "ab") as fh:
        fh.write(b'{"v":1,"type":"log"')  # a line still being written
    (tmp_path / "events.rank3.jsonl").write_text("not json\n")
    got = follower.read()
    assert [(e["rank"], e["type"]) for e in got] == [(1, "heartbeat")] and follower.skipped == 1
    with open(tmp_path / "events.rank1.jsonl", "ab") as fh:
        fh.write(b',"time":1,"run_id":"run","level":"info","message":"x"}\n')
    assert [(e["rank"], e["type"]) for e in follower.read()] == [(1, "log")]


def test_identity_is_none_for_one_process_and_read_from_torchrun_for_several():
    assert ranks.identity({"WORLD_SIZE": "1"}) is None
    assert ranks.identity({}) is None
    me = ranks.identity({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"})
    assert {k: me[k] for k in ("rank", "local_rank", "node_rank")} == {"rank": 3, "local_rank": 1, "node_rank": 1}
    assert ranks.start_sampler(None, {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) is None


# --------------------------------------------------------------------------- the dashboard


async def test_dashboard_shows_every_node_the_slowest_rank_and_names_a_silent_one(dash_env):
    """80x24, keyboard only: two nodes (one rank each, one GPU each, as their hardware
    events say); rank 1 is the slowest and has been silent past train.hang_after_s while
    rank 0 goes on: the GPU rows mark it, the banner names it, w opens the ranks view."""
    c = config(train__hang_after_s=30)
    run = runs.new_run(c, name="ranks")
    now = time.time()
    clock = Clock(now - 90)
    with pytest.MonkeyPatch.context() as patch:  # events written 90 s ago and since
        patch.setattr(ev, "time", clock)
        writers = {r: ev.EventWriter(run.name, run / ("events.jsonl" if r == 0 else f"events.rank{r}.jsonl"),
                                     stream=None, identity={"rank": r, "local_rank": 0, "node_rank": r,
                                                            "hostname": f"gpu-{'ab'[r]}"}) for r in (0, 1)}
        writers[0].emit("run_started", config=c.to_dict(), footprint={}, datasets={}, devices=["cuda:0", "cuda:0"],
                        world_size=2)
        for r, w in writers.items():
            w.sample("hardware", gpus=[{"index": 0, "name": "NVIDIA H100 80GB HBM3", "util_percent": 50 + 40 * r,
                                        "memory_used_bytes": (10 + r) << 30, "memory_total_bytes": 80 << 30}],
                     host={"cpu_percent": 20.0, "ram_used_bytes": 1 << 30, "ram_total_bytes": 8 << 30})
            w.emit("rank_step", step=1, step_s=0.8, own_s=0.3 + 0.4 * r, tokens_per_s=1500.0 - 500 * r,
                   device="cuda:0")
        writers[0].emit("step", step=1, total_steps=100, epoch=0.01, loss=2.0, learning_rate=1e-4, grad_norm=1.0,
                        tokens_per_s=3000.0, samples_per_s=4.0, elapsed_s=1.0, eta_s=99.0, memory={})
        clock.t = now - 2  # rank 0 goes on; rank 1 said nothing for 90 s
        writers[0].emit("heartbeat", phase="training")

    with live_trainer(run):
        app = FinetuiApp()
        async with app.run_test(size=SIZE) as pilot:
            dash = await open_dashboard(pilot, app, run.name)
            await wait_for(pilot, lambda: dash.state.ranks.multi and 1 in dash.state.ranks.ranks
                           and dash.state.silent_ranks() and dash._hw is not None)
            await pilot.pause(0.6)
            text = screen_text(app)
            assert "⚠ rank 1 (node 1, gpu-b) silent for 1m 3" in text and "dead or hung" in text
            assert "ranks 2 on 2 nodes  Σ tok/s 2,500  slowest rank 1: 700ms vs 300ms  (w)" in text
            assert "gnorm 1  tok/s 2,500" in text  # the metrics line: the ranks' sum, not rank 0's 3,000
            panel = widget_text(dash.query_one(GpuPanel), 78).splitlines()
            assert panel[0].startswith("n0 gpu-a") and "H100" in panel[0] and "◀ slowest" not in panel[0]
            assert panel[1].startswith("n1 gpu-b") and "90%" in panel[1] and "◀ slowest" in panel[1]
            await pilot.press("w")
            await pilot.pause(0.2)
            log = dash.query_one(LogView)
            assert log.title.startswith("ranks")
            table = widget_text(log, 78)
            row1 = next(line for line in table.splitlines() if line.strip().startswith("1 "))
            assert "gpu-b" in row1 and "silent 1m 3" in row1 and "◀ slowest" in row1
            await pilot.press("w")  # then every GPU of every node
            await pilot.pause(0.2)
            assert log.title.startswith("every GPU of every node")
            gpus = widget_text(log, 78).splitlines()
            assert gpus[1].startswith("n0 gpu-a") and gpus[2].startswith("n1 gpu-b") and "◀ slowest" in gpus[2]
            await pilot.press("w")
            await pilot.pause(0.1)
            assert log.title.startswith("log")
