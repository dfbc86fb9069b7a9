"""CPU training runs under mimalloc (engine/allocator.py): the launcher preloads it for a
CPU trainer and only then; the trainer says which allocator it got; the opt-outs work."""

from __future__ import annotations

import os
import sys

import pytest

from engine import allocator
from train_helpers import of_type, stdout_log, train

linux_wheel = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "aarch64"),
    reason="cmeel-mimalloc ships wheels for Linux x86_64/aarch64 only",
)


@linux_wheel
def test_the_library_is_installed_with_finetui():
    lib = allocator.mimalloc_library()
    assert lib is not None and lib.is_file() and lib.name == "libmimalloc.so"


@linux_wheel
def test_cpu_trainer_env_preloads_mimalloc_without_losing_a_preload():
    env = allocator.trainer_env("cpu", {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"].split() == [str(allocator.mimalloc_library()), "/opt/other.so"]
    assert env["MIMALLOC_PURGE_DELAY"] == "-1" and env[allocator.MARKER] == "mimalloc"
    assert env["PATH"] == "/bin"
    # auto with every GPU hidden is a CPU run too
    assert "LD_PRELOAD" in allocator.trainer_env("auto", {"CUDA_VISIBLE_DEVICES": ""})


def test_gpu_runs_and_opt_outs_keep_the_environment():
    env = {"PATH": "/bin"}
    assert allocator.trainer_env("cuda", env) == env
    for choice in ("system", "lean"):
        assert allocator.trainer_env("cpu", {**env, allocator.MARKER: choice}) == {**env, allocator.MARKER: choice}


def test_auto_with_a_visible_gpu_is_not_a_cpu_run(monkeypatch):
    monkeypatch.setattr("engine.hardware.NvmlBackend.__init__", lambda self: setattr(self, "problem", None))
    assert not allocator.trains_on_cpu("auto", {})
    monkeypatch.setattr("engine.hardware.NvmlBackend.__init__",
                        lambda self: setattr(self, "problem", "no NVIDIA GPU found"))
    assert allocator.trains_on_cpu("auto", {})


def allocator_message(events) -> str:
    logs = [e["message"] for e in of_type(events, "log") if e["message"].startswith("CPU memory allocator:")]
    assert len(logs) == 1, logs
    return logs[0]


@linux_wheel
def test_a_cpu_run_trains_under_mimalloc(tmp_path, finetui_cache, monkeypatch):
    monkeypatch.delenv(allocator.MARKER, raising=False)
    run_dir, rc, events = train(tmp_path, model={"device": "cpu"}, train={"max_steps": 2, "eval_strategy": "no",
                                                                          "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    assert allocator_message(events) == "CPU memory allocator: mimalloc (preloaded)"
    assert of_type(events, "finished")[-1]["status"] == "completed"


def test_opting_out_keeps_glibc(tmp_path, finetui_cache, monkeypatch):
    monkeypatch.setenv(allocator.MARKER, "system")
    run_dir, rc, events = train(tmp_path, model={"device": "cpu"}, train={"max_steps": 1, "eval_strategy": "no",
                                                                          "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    assert allocator_message(events) == "CPU memory allocator: glibc"
