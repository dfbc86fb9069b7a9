"""Several trainer processes on the CPU (gloo) with the tiny model: DDP and FSDP2 give the
loss curve of one process with the same global batch; two "nodes" on localhost meet at a
c10d rendezvous, train and checkpoint."""

from __future__ import annotations

import socket

import pytest

from finetui.engine import events as ev
from finetui.engine import runs
from tests.train_helpers import finish, new_run, of_type, stdout_log

STEPS = 3
GLOBAL_BATCH = 8
# one process with the whole global batch; the others with half each
ONE = {"max_steps": STEPS, "batch_size": GLOBAL_BATCH, "eval_strategy": "no", "save_strategy": "no",
       "logging_steps": 1, "learning_rate": 1e-3}
HALF = {**ONE, "batch_size": GLOBAL_BATCH // 2}


def losses(events) -> list[float]:
    return [s["loss"] for s in of_type(events, "step")]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, finetui_cache_dir):
    root = tmp_path_factory.mktemp("one")
    curves = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUI_CACHE", str(finetui_cache_dir))
        for method in ("full", "lora"):
            run_dir = new_run(root, method, method={"type": method}, train=ONE)
            rc, events = finish(runs.launch(run_dir), timeout=400)
            assert rc == 0, stdout_log(run_dir)
            curves[method] = losses(events)
            assert len(curves[method]) == STEPS
    return curves


@pytest.mark.parametrize("strategy,method", [("ddp", "full"), ("fsdp", "full"), ("fsdp", "lora")])
def test_two_processes_follow_one(tmp_path, finetui_cache, one_process, strategy, method):
    run_dir = new_run(tmp_path, strategy, method={"type": method}, train=HALF,
                      distributed={"strategy": strategy})
    rc, events = finish(runs.launch(run_dir, nproc=2), timeout=400)
    assert rc == 0, stdout_log(run_dir)
    (started,) = of_type(events, "run_started")
    assert started["world_size"] == 2
    said = [e["message"] for e in of_type(events, "log") if e["message"].startswith("distributed.strategy")]
    if strategy == "fsdp":
        assert said and "FSDP2 full_shard" in said[0], said
    assert losses(events) == pytest.approx(one_process[method], rel=2e-3), (strategy, method)
    assert events[-1]["status"] == "completed"
    assert (run_dir / "adapter").is_dir()
    # rank 1 kept its own stream, beside rank 0's events.jsonl
    rank1 = ev.read_file(run_dir / "events.rank1.jsonl")
    assert [e["type"] for e in rank1][-1] == "finished"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_and_checkpoint(tmp_path, finetui_cache):
    """Two `finetui train --nnodes 2` commands, one process each, meet at a c10d rendezvous."""
    import subprocess
    import sys

    from tests.train_helpers import make_config

    config = tmp_path / "two.yaml"
    config.write_text(make_config(train={**HALF, "max_steps": 2, "save_strategy": "steps", "save_steps": 2}).to_yaml())
    rdzv = f"127.0.0.1:{free_port()}"
    root = tmp_path / "shared-runs"

    def node(rank: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(root), "train", str(config),
                                 "--nnodes", "2", "--node-rank", str(rank), "--rdzv", rdzv, "--rdzv-id", "job7",
                                 "--verbose"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    nodes = [node(0), node(1)]
    outs = [p.communicate(timeout=400) for p in nodes]
    run_dir = root / "two-job7"
    assert [p.returncode for p in nodes] == [0, 0], (outs, stdout_log(run_dir))
    assert outs[0][0].splitlines()[0] == outs[1][0].splitlines()[0] == "two-job7"
    events = ev.read_file(run_dir / "events.jsonl")
    (started,) = of_type(events, "run_started")
    assert started["world_size"] == 2
    assert [s["step"] for s in of_type(events, "step")] == [1, 2]
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "completed"
    assert (run_dir / "checkpoints" / "checkpoint-2" / "model.safetensors").exists()
    assert (run_dir / "adapter" / "model.safetensors").exists()
    # node 1 (global rank 1) kept its own stream and log; node 0 alone the run record
    assert [e["type"] for e in ev.read_file(run_dir / "events.rank1.jsonl")][-1] == "finished"
    assert (run_dir / "stdout.node1.log").exists()
    assert sorted(p.name for p in run_dir.glob("events*.jsonl")) == ["events.jsonl", "events.rank1.jsonl"]


@pytest.mark.gpu
def test_fsdp_lora_on_two_gpus_follows_one(tmp_path, finetui_cache):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    curves = {}
    for nproc, train in ((1, ONE), (2, HALF)):
        run_dir = new_run(tmp_path, f"gpu{nproc}", method={"type": "lora"}, train=train,
                          distributed={"strategy": "fsdp"})
        rc, events = finish(runs.launch(run_dir, nproc=nproc), timeout=600)
        assert rc == 0, stdout_log(run_dir)
        curves[nproc] = losses(events)
    assert curves[2] == pytest.approx(curves[1], rel=2e-2)  # bf16 on GPUs: a looser tolerance
