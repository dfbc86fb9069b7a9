"""Several trainer processes on the CPU (gloo) with the tiny model: DDP and FSDP2 give the
loss curve of one process with the same global batch; two "nodes" on localhost meet at a
c10d rendezvous, train and checkpoint."""

from __future__ import annotations

import socket

import pytest

from engine import events as ev
from engine import runs
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
