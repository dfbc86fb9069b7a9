"""The trainer process end to end on the tiny model (CPU): full, LoRA, QLoRA; the event
stream; a closed pipe; SIGTERM; resume equality; two processes under torchrun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from finetui.engine import events as ev
from finetui.engine import runs
from train_helpers import file_events, finish, launch, new_run, of_type, stdout_log, train

pytestmark = pytest.mark.slow


def _assert_valid_stream(pipe_events, run_dir):
    """Every event follows the schema, and the pipe and events.jsonl carry the same events."""
    for event in pipe_events:
        ev.validate(event)
        assert ev.decode(ev.encode(event)) == event
    assert file_events(run_dir) == pipe_events


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_train_end_to_end(tmp_path, finetui_cache, method):
    run_dir, rc, events = train(tmp_path, method, method={"type": method})
    assert rc == 0, stdout_log(run_dir)
    _assert_valid_stream(events, run_dir)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "log" and kinds[-1] == "finished"
    assert kinds.index("run_started") < kinds.index("step")

    started = of_type(events, "run_started")[0]
    fp = started["footprint"]
    assert fp["flops_per_token"] == 6 * fp["params_total"]
    assert (fp["params_trainable"] == fp["params_total"]) == (method == "full")
    assert started["datasets"] == {"train": 32, "test": 8}
    assert started["devices"] == ["cpu"]

    steps = of_type(events, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and steps[-1]["total_steps"] == 4
    for s in steps:
        assert math.isfinite(s["loss"]) and s["learning_rate"] is not None and s["grad_norm"] is not None
        assert s["tokens_per_s"] > 0 and s["samples_per_s"] > 0
        assert s["memory"]["rss_bytes"] > 0
    # 32 examples of 8: every sample counted once, as real (unpadded) tokens.
    assert steps[-1]["tokens"] <= 4 * 8 * 64

    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [2, 4]
    assert all(e["perplexity"] == pytest.approx(math.exp(e["eval_loss"])) for e in evals)
    assert [c["step"] for c in of_type(events, "checkpoint")] == [2, 4]

    finished = events[-1]
    assert finished["status"] == "completed"
    assert finished["metrics"]["train_loss"] > 0 and finished["metrics"]["eval_loss"] == evals[-1]["eval_loss"]
    adapter = run_dir / "adapter"
    assert finished["outputs"]["adapter"] == "adapter"  # relative to the run folder: runs can move
    assert runs.summarize(run_dir).outputs["adapter"] == str(adapter)
    assert (adapter / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).exists()
    assert (adapter / "tokenizer.json").exists()
    meta = json.loads((adapter / "finetui.json").read_text())
    assert meta["base_model"] == "tiny" and meta["method"] == method
    assert runs.summarize(run_dir).status == "completed"
    fused = [e for e in of_type(events, "log") if "run fused" in e["message"]]
    assert len(fused) == (method == "lora")  # LoRA without dropout (the default): engine/perf/fused_lora.py
    layers = [e for e in of_type(events, "log") if e["message"] == "rotary and RMSNorm run as single functions"]
    assert len(layers) == 1  # every method; the tiny model is a Llama (engine/perf/fused_layers.py)


def test_fused_code_trains_as_transformers_and_peft_do(tmp_path, finetui_cache):
    """train.kernels: auto (engine/perf: fused LoRA, layers and loss, packed attention), then
    reference (plain transformers + peft), through a real trainer process: the same losses,
    and the run's log says which."""
    losses = {}
    for kernels in ("auto", "reference"):
        run_dir = new_run(tmp_path, kernels, method={"type": "lora"}, data={"packing": True},
                          train={"eval_strategy": "no", "save_strategy": "no", "kernels": kernels})
        rc, events = finish(runs.launch(run_dir))
        assert rc == 0, stdout_log(run_dir)
        logs = [e["message"] for e in of_type(events, "log")]
        assert any(m.startswith(f"kernels: {kernels}") for m in logs), logs
        for words in ("run fused", "single functions", "LM head and loss", "sdpa_packed"):
            assert any(words in m for m in logs) == (kernels == "auto"), (words, logs)
        # reference: glibc as the process starts and torch's own thread count (engine/perf)
        assert ("CPU memory allocator: glibc" in logs) == (kernels == "reference"), logs
        assert ("CPU thread(s)" in stdout_log(run_dir)) == (kernels == "auto")
        losses[kernels] = [s["loss"] for s in of_type(events, "step")]
    assert losses["auto"] == pytest.approx(losses["reference"], abs=1e-5)


def test_training_survives_a_closed_pipe(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "pipe", train={"max_steps": 30, "eval_strategy": "no", "save_strategy": "no"})
    proc = launch(run_dir)
    first = ev.decode(proc.stdout.readline())
    assert first is not None and first["type"] == "log"
    proc.stdout.close()  # the UI died / SSH dropped
    assert proc.wait(timeout=300) == 0, stdout_log(run_dir)
    events = file_events(run_dir)
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "completed"
    assert of_type(events, "step")[-1]["step"] == 30


def _stop_after_step(proc, run_dir, step: int) -> list[dict]:
    """Read the pipe until a step event >= ``step``, then SIGTERM (engine.runs.stop)."""
    seen = []
    for line in iter(proc.stdout.readline, b""):
        event = ev.decode(line)
        if event is None:
            continue
        seen.append(event)
        if event["type"] == "step" and event["step"] >= step:
            assert runs.stop(run_dir)
            break
    return seen


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "stop", train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    proc = launch(run_dir)
    seen = _stop_after_step(proc, run_dir, 2)
    rc, rest = finish(proc)
    events = seen + rest
    assert rc == 0, stdout_log(run_dir)
    _assert_valid_stream(events, run_dir)
    finished = events[-1]
    assert finished["type"] == "finished" and finished["status"] == "stopped"
    last_step = of_type(events, "step")[-1]["step"]
    (checkpoint,) = of_type(events, "checkpoint")
    assert checkpoint["step"] == last_step < 100000
    assert runs.last_checkpoint(run_dir).name == f"checkpoint-{last_step}"
    assert (run_dir / "adapter" / "model.safetensors").exists()
    assert runs.summarize(run_dir).status == "stopped"


def test_resume_continues_with_the_same_losses(tmp_path, finetui_cache):
    # LoRA with dropout: the resumed run must restore optimizer, scheduler, data order
    # (4 steps per epoch, so 12 steps cross epoch boundaries) and the RNG.
    setup = dict(method={"type": "lora", "lora_dropout": 0.1},
                 train={"max_steps": 12, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 4,
                        "learning_rate": 5e-3, "lr_scheduler": "cosine", "warmup_steps": 2})
    whole_dir, rc, whole = train(tmp_path, "whole", **setup)
    assert rc == 0, stdout_log(whole_dir)
    expected = {s["step"]: s["loss"] for s in of_type(whole, "step")}

    run_dir = new_run(tmp_path, "cut", **setup)
    proc = launch(run_dir)
    seen = _stop_after_step(proc, run_dir, 2)
    rc, rest = finish(proc)
    assert rc == 0 and (seen + rest)[-1]["status"] == "stopped", stdout_log(run_dir)
    stopped_at = of_type(seen + rest, "step")[-1]["step"]
    assert stopped_at < 12, "the run finished before SIGTERM landed"

    rc, resumed = finish(launch(run_dir, resume=True))
    assert rc == 0, stdout_log(run_dir)
    started = of_type(resumed, "run_started")[0]
    assert started["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    steps = of_type(resumed, "step")
    assert [s["step"] for s in steps] == list(range(stopped_at + 1, 13))
    for s in steps:
        assert s["loss"] == pytest.approx(expected[s["step"]], abs=1e-5), s["step"]
    assert resumed[-1]["status"] == "completed"
    # One file for the whole life of the run: both sessions appended to it.
    assert len(of_type(file_events(run_dir), "run_started")) == 2


def test_torchrun_two_processes_one_stream(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "ddp", train={"max_steps": 3, "eval_steps": 3, "save_steps": 3})
    rc, events = finish(launch(run_dir, nproc=2), timeout=400)
    assert rc == 0, stdout_log(run_dir)
    _assert_valid_stream(events, run_dir)  # rank 1 wrote nothing to the pipe or the file
    (started,) = of_type(events, "run_started")
    assert started["world_size"] == 2 and len(started["devices"]) == 2
    assert [s["step"] for s in of_type(events, "step")] == [1, 2, 3]
    assert len(of_type(events, "finished")) == 1 and events[-1]["status"] == "completed"
    assert (run_dir / "adapter" / "model.safetensors").exists()


def test_training_options(tmp_path, finetui_cache):
    """Epochs instead of max_steps, gradient accumulation, gradient checkpointing,
    group_by_length, a constant schedule with warm-up, eval and save each epoch, SIGHUP."""
    run_dir = new_run(tmp_path, "opts", method={"type": "lora"}, train={
        "max_steps": -1, "epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2,
        "gradient_checkpointing": True, "group_by_length": True, "lr_scheduler": "constant",
        "warmup_steps": 2, "eval_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 1,
        "weight_decay": 0.01, "max_grad_norm": 0.5})
    proc = launch(run_dir)
    first = ev.decode(proc.stdout.readline())
    assert first is not None
    import os
    import signal

    os.kill(proc.pid, signal.SIGHUP)  # a closed terminal must not end the run
    rc, events = finish(proc)
    assert rc == 0, stdout_log(run_dir)
    steps = of_type(events, "step")
    assert [s["step"] for s in steps] == list(range(1, 9))  # 32 examples / (4 x 2) x 2 epochs
    lrs = [s["learning_rate"] for s in steps]
    assert lrs[0] < lrs[1] < lrs[2] == lrs[-1] == 1e-3  # 2 warm-up steps, then constant
    assert [e["step"] for e in of_type(events, "eval")] == [4, 8]
    assert [c["step"] for c in of_type(events, "checkpoint")] == [4, 8]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["checkpoint-8"]  # save_total_limit
    assert events[-1]["status"] == "completed"


def test_token_counts_packed_padded_and_from_workers(tmp_path, finetui_cache):
    """The same examples count the same real tokens at the same step: padded, packed, or
    built ahead by dataloader workers (evaluation's batches too), across epochs (32
    examples: 4 steps per epoch)."""
    counts = {}
    for name, data, train_cfg in (
        ("padded", {}, {"eval_strategy": "no"}),
        ("packed", {"packing": True}, {"eval_strategy": "no"}),
        ("workers", {}, {"eval_steps": 1, "dataloader_num_workers": 2}),
    ):
        run_dir, rc, events = train(tmp_path, name, data=data,
                                    train={"max_steps": 6, "save_strategy": "no", **train_cfg})
        assert rc == 0, stdout_log(run_dir)
        counts[name] = [s["tokens"] for s in of_type(events, "step")]
    assert counts["packed"] == counts["padded"] == counts["workers"]
    assert len(set(counts["padded"])) == 6


def test_out_of_memory_is_reported_with_a_hint(tmp_path, finetui_cache):
    import subprocess
    import sys

    run_dir = new_run(tmp_path, "oom")
    code = (
        "import sys, torch, engine.train as t\n"
        "def boom(*a, **k): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
        "t.train = boom\n"
        f"sys.exit(t.main(['--run-dir', {str(run_dir)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == 1
    events = file_events(run_dir)
    error, finished = events[-2], events[-1]
    assert error["type"] == "error" and error["kind"] == "oom" and "out of memory" in error["message"]
    assert "batch_size" in error["hint"] and "gradient_checkpointing" in error["hint"]
    assert finished["status"] == "failed"
    assert [ev.decode(line) for line in proc.stdout.splitlines()] == events  # the pipe saw the same


def test_cuda_only_optimizer_is_a_config_error_in_the_trainer(tmp_path, finetui_cache):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run_dir = new_run(tmp_path, "opt", train={"optimizer": "adamw_8bit"})
    rc, events = finish(launch(run_dir))
    assert rc == 1
    assert events[-2]["kind"] == "config" and events[-2]["message"].startswith("train.optimizer: adamw_8bit needs a CUDA GPU")


@pytest.mark.gpu
def test_qlora_on_a_gpu_with_bf16_and_a_paged_optimizer(tmp_path, finetui_cache):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    run_dir, rc, events = train(tmp_path, "gpu", method={"type": "qlora"},
                                train={"optimizer": "paged_adamw_32bit", "eval_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    started = of_type(events, "run_started")[0]
    assert started["devices"][0].startswith("cuda:0")
    assert started["precision"]["bf16"] == torch.cuda.is_bf16_supported()
    memory = of_type(events, "step")[-1]["memory"]
    assert 0 < memory["allocated_bytes"] <= memory["peak_bytes"]
    assert events[-1]["status"] == "completed"


def test_torchrun_stop_checkpoints_and_exits_cleanly(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, "ddpstop", train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    proc = launch(run_dir, nproc=2)
    seen = _stop_after_step(proc, run_dir, 2)  # SIGTERM goes to both ranks, which agree on the step
    rc, rest = finish(proc, timeout=400)
    events = seen + rest
    assert rc == 0, stdout_log(run_dir)  # torchrun saw its workers end on their own
    (checkpoint,) = of_type(events, "checkpoint")
    assert checkpoint["step"] == of_type(events, "step")[-1]["step"]
    assert events[-1]["status"] == "stopped" and runs.last_checkpoint(run_dir) is not None
