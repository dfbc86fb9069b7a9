"""Past one box, when things change or break: a checkpoint saved by FSDP over two processes
resumes on one (and one saved by one process resumes under FSDP on two), continuing the
step count, the optimizer state and the learning-rate schedule; a DeepSpeed checkpoint on
another world size is refused, naming it; and when one rank is killed mid-run, every
process of the job ends, the run says which rank failed and why, and --resume continues
from the last complete checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from finetui.engine import checkpoint_kind, run_summary, runs
from finetui.engine import events as ev
from finetui.engine import torchrun as agent
from tests.train_helpers import finish, new_run, of_type, stdout_log

# one process takes the whole global batch of 8, two processes 4 each: the same curve
TRAIN = {"max_steps": 4, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 2, "logging_steps": 1,
         "learning_rate": 1e-3, "save_total_limit": 3}


def steps(events) -> list[tuple[int, float, float]]:
    return [(s["step"], s["loss"], s["learning_rate"]) for s in of_type(events, "step")]


def resume_with(run_dir, nproc: int, batch_size: int, step: int):
    """`finetui train --resume RUN --checkpoint STEP --nproc N --set train.batch_size=B`, as the CLI
    prepares it (the run completed, so --checkpoint picks where it goes on from)."""
    from finetui.engine import config as cfg

    config = cfg.load(run_dir / "config.yaml", [f"train.batch_size={batch_size}"])
    cfg.save(config, run_dir / "config.yaml")
    return finish(runs.launch(run_dir, resume=True, nproc=nproc, checkpoint=step), timeout=400)


def assert_continues(resumed, whole, saved_by: int, now: int, run_dir=None) -> None:
    """Steps 3 and 4 of the resumed session are those of the run that never stopped: the
    weights (step 3's loss), Adam's moments (step 4's loss: a fresh optimizer moves the
    weights otherwise at step 3) and the schedule (the learning rates)."""
    rc, events = resumed
    assert rc == 0, stdout_log(run_dir) if run_dir else events[-3:]
    (started,) = of_type(events, "run_started")
    assert started["resumed_from"] == "checkpoints/checkpoint-2" and started["world_size"] == now
    said = [e["message"] for e in of_type(events, "log") if e["message"].startswith("resuming checkpoint-2")]
    assert said and f"saved by {saved_by} process" in said[0], said
    got, want = steps(events), [s for s in whole if s[0] > 2]
    assert [s[0] for s in got] == [3, 4]
    for (_, loss, lr), (_, want_loss, want_lr) in zip(got, want):
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=0)
        assert lr == pytest.approx(want_lr, rel=1e-9)
    assert events[-1]["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("method,state_dict", [("full", "full"), ("lora", "sharded")])
def test_fsdp_checkpoint_resumes_on_one_process(tmp_path, finetui_cache, method, state_dict):
    run_dir = new_run(tmp_path, "fsdp2", method={"type": method}, train={**TRAIN, "batch_size": 4},
                      distributed={"strategy": "fsdp", "fsdp_state_dict": state_dict})
    rc, events = finish(runs.launch(run_dir, nproc=2), timeout=400)
    assert rc == 0, stdout_log(run_dir)
    assert (run_dir / "adapter" / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).exists()
    whole = steps(events)
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    assert checkpoint_kind.kind(checkpoint) == (checkpoint_kind.FSDP_FULL if state_dict == "full"
                                                else checkpoint_kind.FSDP_SHARDED)
    assert checkpoint_kind.saved_world_size(checkpoint) == 2
    assert_continues(resume_with(run_dir, 1, 8, 2), whole, saved_by=2, now=1, run_dir=run_dir)


@pytest.mark.slow
def test_one_process_lora_checkpoint_resumes_under_fsdp_on_two(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "one", method={"type": "lora"}, train={**TRAIN, "batch_size": 8},
                      distributed={"strategy": "fsdp"})
    rc, events = finish(runs.launch(run_dir), timeout=400)
    assert rc == 0, stdout_log(run_dir)
    assert checkpoint_kind.kind(run_dir / "checkpoints" / "checkpoint-2") == checkpoint_kind.PLAIN
    assert_continues(resume_with(run_dir, 2, 4, 2), steps(events), saved_by=1, now=2, run_dir=run_dir)


def fake_checkpoint(path, files=(), folders=()):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"x")
    for name in folders:
        (path / name).mkdir()
    return path


def test_checkpoint_kinds_and_the_deepspeed_refusal(tmp_path):
    ds = fake_checkpoint(tmp_path / "checkpoint-8", ["rng_state_0.pth", "rng_state_1.pth", "latest"],
                         ["global_step8"])
    assert checkpoint_kind.kind(ds) == checkpoint_kind.DEEPSPEED
    assert checkpoint_kind.refusal(ds, "deepspeed", 2) is None
    for strategy, n in (("deepspeed", 4), ("fsdp", 2), ("ddp", 1)):
        why = checkpoint_kind.refusal(ds, strategy, n)
        assert why and str(ds) in why and "ds_to_universal" in why and "--nproc 2" in why, why
    plain = fake_checkpoint(tmp_path / "p" / "checkpoint-2", ["model.safetensors", "optimizer.pt", "rng_state.pth"])
    sharded = fake_checkpoint(tmp_path / "s" / "checkpoint-2", ["rng_state_0.pth", "rng_state_1.pth"],
                              ["pytorch_model_fsdp_0", "optimizer_0"])
    assert (checkpoint_kind.kind(plain), checkpoint_kind.saved_world_size(plain)) == (checkpoint_kind.PLAIN, 1)
    assert checkpoint_kind.kind(sharded) == checkpoint_kind.FSDP_SHARDED
    for path in (plain, sharded):
        for strategy, n in (("fsdp", 2), ("fsdp", 4), ("ddp", 1), ("ddp", 2)):
            assert checkpoint_kind.refusal(path, strategy, n) is None
        why = checkpoint_kind.refusal(path, "deepspeed", 2)
        assert why and str(path) in why and "distributed.strategy=fsdp" in why


def failure(local_rank: int, exitcode: int):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    return ProcessFailure(local_rank=local_rank, pid=1000 + local_rank, exitcode=exitcode, error_file="<N/A>")


def test_the_rank_that_failed_first_is_named(tmp_path):
    """A rank killed by a signal is the cause, not the peer that lost its connection to it;
    an error of a rank's own beats a lost peer; torchrun's SIGTERM to the others is no cause."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rank0 = ev.EventWriter("run", run_dir / "events.jsonl", stream=None)
    rank0.emit("error", kind="internal", message="RuntimeError: Connection reset by peer", hint="")
    rank0.close()
    rank, _, _ = agent.root_cause({0: failure(0, 1), 1: failure(1, -signal.SIGKILL)}, run_dir)
    assert rank == 1
    rank1 = ev.EventWriter("run", run_dir / "events.rank1.jsonl", stream=None)
    rank1.emit("error", kind="data", message="DataError: record 7 has no text", hint="fix record 7")
    rank1.close()
    rank, _, error = agent.root_cause({0: failure(0, 1), 1: failure(1, 1)}, run_dir)
    assert rank == 1 and error["kind"] == "data"
    rank, _, _ = agent.root_cause({0: failure(0, -signal.SIGTERM), 1: failure(1, 1)}, run_dir)
    assert rank == 1
    fields = agent.report(run_dir, {0: failure(0, 1), 1: failure(1, 1)}, node_rank=0)
    assert fields["failed_rank"] == 1 and "rank 1" in fields["message"] and "record 7" in fields["message"]
    assert fields["hint"] == "fix record 7"
    # rank 0 failed with an error of its own: its events say it, nothing is added
    other = tmp_path / "other"
    other.mkdir()
    w = ev.EventWriter("other", other / "events.jsonl", stream=None)
    w.emit("error", kind="oom", message="CUDA out of memory", hint="lower train.batch_size")
    w.close()
    assert agent.report(other, {0: failure(0, 1), 1: failure(1, -signal.SIGTERM)}, node_rank=0) is None


def rank_pid(torchrun_pid: int, rank: int, timeout: float = 60) -> int:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(torchrun_pid).children():
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.Error:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under torchrun {torchrun_pid}")


ALL_GONE_S = 30


def end_job(proc) -> None:
    """A job that outlived its bound is ended before the test fails: torchrun and its workers
    (each worker leads a process group of its own)."""
    import psutil

    try:
        left = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        left = []
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def killed_one_rank(proc, run_dir) -> None:
    """SIGKILL rank 1 once checkpoint-2 is complete: the whole job ends within ALL_GONE_S,
    and the run's record names rank 1 and the signal."""
    import psutil

    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "checkpoint-2" / runs.COMPLETE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, stdout_log(run_dir)
        time.sleep(0.1)
    workers = psutil.Process(proc.pid).children()
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    out, _ = proc.communicate(timeout=ALL_GONE_S)
    _, alive = psutil.wait_procs(workers, timeout=max(0.1, ALL_GONE_S - (time.monotonic() - killed_at)))
    took = time.monotonic() - killed_at
    assert not alive and took < ALL_GONE_S, (alive, took)
    assert proc.returncode == 1
    piped = [e for e in (ev.decode(line) for line in out.splitlines()) if e is not None]
    error, finished = piped[-2:]  # the pipe carries the account too (finetui train prints it)
    assert error["type"] == "error" and finished["type"] == "finished"
    assert error["failed_rank"] == 1 and error["signal"] == "SIGKILL" and error["exit_code"] == -9
    assert "rank 1" in error["message"] and "SIGKILL" in error["message"]
    assert finished["status"] == "failed" and finished["failed_rank"] == 1
    # the record: events.jsonl, summary.json, `finetui runs show`, and rank 1's own stream
    assert [e["type"] for e in ev.read_file(run_dir / "events.jsonl")][-2:] == ["error", "finished"]
    assert ev.read_file(run_dir / "events.jsonl")[-2]["failed_rank"] == 1
    assert run_summary.load(run_dir).error == error["message"]
    show = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "show", str(run_dir)],
                          capture_output=True, text=True, timeout=60)
    assert "failed" in show.stdout and "rank 1 (node 0, local rank 1" in show.stdout, show.stdout
    assert [e["type"] for e in ev.read_file(run_dir / "events.rank1.jsonl")][-2:] == ["error", "finished"]


@pytest.mark.slow
def test_killing_one_rank_ends_the_job_names_the_rank_and_resume_goes_on(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "kill", method={"type": "full"},
                      train={**TRAIN, "max_steps": 500, "batch_size": 4}, distributed={"strategy": "fsdp"})
    proc = runs.launch(run_dir, nproc=2)
    try:
        killed_one_rank(proc, run_dir)
    finally:
        end_job(proc)
    # resume, on one process this time: from the newest complete checkpoint, two more steps
    last = runs.last_checkpoint(run_dir)
    step = int(last.name.split("-")[-1])
    resumed = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "train", "--resume", str(run_dir),
                              "--nproc", "1", "--set", f"train.max_steps={step + 2}", "--verbose"],
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr + stdout_log(run_dir)
    events = ev.read_file(run_dir / "events.jsonl")
    started = of_type(events, "run_started")[-1]
    assert started["resumed_from"] == f"checkpoints/{last.name}" and started["world_size"] == 1
    session = events[events.index(started):]
    assert [s["step"] for s in of_type(session, "step")] == [step + 1, step + 2]
    assert session[-1]["type"] == "finished" and session[-1]["status"] == "completed"


HUNG_TIMEOUT_S = 10


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path, finetui_cache):
    """A rank that stops answering (SIGSTOP: alive, silent) holds the others in a gloo
    collective only for distributed.timeout_s; then rank 0 gives up, torchrun ends the job,
    and the run names the hung rank."""
    import psutil

    run_dir = new_run(tmp_path, "hung", method={"type": "full"}, distributed={"strategy": "ddp",
                                                                              "timeout_s": HUNG_TIMEOUT_S},
                      train={**TRAIN, "max_steps": 500, "batch_size": 4, "save_strategy": "no"})
    proc = runs.launch(run_dir, nproc=2)
    try:
        deadline = time.monotonic() + 300
        while not any(e["type"] == "step" for e in ev.read_file(run_dir / "events.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, stdout_log(run_dir)
            time.sleep(0.1)
        workers = psutil.Process(proc.pid).children()
        os.kill(rank_pid(proc.pid, 1), signal.SIGSTOP)
        stopped_at = time.monotonic()
        # torch's default would be 30 minutes; here the timeout, then torchrun's 30 s grace to SIGKILL
        bound = HUNG_TIMEOUT_S + 30 + 30
        proc.communicate(timeout=bound)
        _, alive = psutil.wait_procs(workers, timeout=max(0.1, bound - (time.monotonic() - stopped_at)))
        assert not alive
    finally:
        end_job(proc)
    error = [e for e in ev.read_file(run_dir / "events.jsonl") if e["type"] == "error"][-1]
    assert error["failed_rank"] == 1 and "rank 1 (node 0" in error["message"], error
    assert "stopped answering" in error["message"] and "distributed.timeout_s" in error["message"]
