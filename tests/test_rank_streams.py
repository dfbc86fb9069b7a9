"""Every rank's stream (engine.ranks): a real 2-process CPU/gloo run writes node/rank on
every event, per-rank step timing and its node's hardware; the reader follows the rank
files and adds them up; synthetic streams drive the slowest-rank and silent-rank rules."""

from __future__ import annotations

import json
import subprocess
import sys

from finetui.engine import events as ev
from finetui.engine import ranks
from finetui.tui.runfeed import RunFeed
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
    assert all(board.ranks[r].step_time is not None for r in (0, 1))
    assert board.slowest() is not None
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


class Clock:
    """engine.events' clock, set by the test: events written at chosen times."""

    monotonic = staticmethod(__import__("time").monotonic)

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
