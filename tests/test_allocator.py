"""CPU training runs under mimalloc (engine/perf/allocator.py): the launcher preloads it for a
CPU trainer and only then; the trainer says which allocator it got; the opt-outs work."""

from __future__ import annotations

import os
import sys

import pytest

from finetui.engine.perf import allocator
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
    # auto with every GPU hidden is a CPU run too; a model of unknown or >= MIN_HIDDEN width gets it
    assert "LD_PRELOAD" in allocator.trainer_env("auto", {"CUDA_VISIBLE_DEVICES": ""})
    assert "LD_PRELOAD" in allocator.trainer_env("cpu", {}, hidden_size=allocator.MIN_HIDDEN)
    # asked for twice (a resumed run inherits the env): listed once
    twice = allocator.trainer_env("cpu", {**env, allocator.MARKER: "mimalloc"})
    assert twice["LD_PRELOAD"].split() == env["LD_PRELOAD"].split()


def test_narrow_models_keep_glibc_keeping_freed_memory(tmp_path):
    from train_helpers import new_run

    from finetui.engine import runs

    env = {"PATH": "/bin"}
    heap = {**env, "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864",
            allocator.MARKER: "heap"}
    assert allocator.trainer_env("cpu", env, hidden_size=allocator.MIN_HIDDEN - 1) == heap
    assert allocator.trainer_env("auto", {**env, "CUDA_VISIBLE_DEVICES": ""}, hidden_size=64)[allocator.MARKER] == "heap"
    assert allocator.trainer_env("cuda", env, hidden_size=64) == env  # a GPU run: as it is
    # a threshold the user set is theirs; asked for explicitly, any model gets it
    mine = allocator.trainer_env("cpu", {**env, "MALLOC_TRIM_THRESHOLD_": "1"}, hidden_size=64)
    assert mine["MALLOC_TRIM_THRESHOLD_"] == "1" and mine["MALLOC_MMAP_THRESHOLD_"] == "33554432"
    assert allocator.trainer_env("cuda", {**env, allocator.MARKER: "heap"}) == heap
    run_dir = new_run(tmp_path, model={"device": "cpu"})
    assert runs._model(run_dir) == ("cpu", 64, "auto")  # the tiny model: glibc
    assert allocator.hidden_size("/nonexistent/model") is None


def test_gpu_runs_and_opt_outs_keep_the_environment():
    env = {"PATH": "/bin"}
    assert allocator.trainer_env("cuda", env) == env
    for choice in ("system", "lean"):
        assert allocator.trainer_env("cpu", {**env, allocator.MARKER: choice}) == {**env, allocator.MARKER: choice}
    # train.kernels: reference: glibc as the process starts, whatever the model or the marker
    for hidden in (64, allocator.MIN_HIDDEN, None):
        assert allocator.trainer_env("cpu", env, hidden_size=hidden, kernels="reference") == env
    assert allocator.trainer_env("cpu", {**env, allocator.MARKER: "mimalloc"}, kernels="reference") == env


def test_auto_with_a_visible_gpu_is_not_a_cpu_run(monkeypatch):
    monkeypatch.setattr("finetui.engine.hardware.NvmlBackend.__init__", lambda self, env=None: setattr(self, "problem", None))
    assert not allocator.trains_on_cpu("auto", {})
    monkeypatch.setattr("finetui.engine.hardware.NvmlBackend.__init__",
                        lambda self, env=None: setattr(self, "problem", "no NVIDIA GPU found"))
    assert allocator.trains_on_cpu("auto", {})


def allocator_message(events) -> str:
    logs = [e["message"] for e in of_type(events, "log") if e["message"].startswith("CPU memory allocator:")]
    assert len(logs) == 1, logs
    return logs[0]


SHORT = {"max_steps": 2, "eval_strategy": "no", "save_strategy": "no"}


@linux_wheel
def test_a_cpu_run_trains_under_mimalloc(tmp_path, finetui_cache, monkeypatch):
    monkeypatch.setenv(allocator.MARKER, "mimalloc")  # the tiny model would keep glibc
    run_dir, rc, events = train(tmp_path, model={"device": "cpu"}, train=SHORT)
    assert rc == 0, stdout_log(run_dir)
    assert allocator_message(events) == "CPU memory allocator: mimalloc (preloaded)"
    assert of_type(events, "finished")[-1]["status"] == "completed"


@pytest.mark.parametrize("choice, message", [
    ("auto", "glibc keeping freed memory (mmap threshold 33554432, trim threshold 67108864 bytes)"),
    ("system", "glibc"),
])
def test_the_tiny_model_and_opting_out_keep_glibc(tmp_path, finetui_cache, monkeypatch, choice, message):
    for key in allocator.HEAP:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(allocator.MARKER, choice)
    run_dir, rc, events = train(tmp_path, model={"device": "cpu"}, train=SHORT)
    assert rc == 0, stdout_log(run_dir)
    assert allocator_message(events) == f"CPU memory allocator: {message}"


def test_without_the_library_a_wide_cpu_run_gets_lean_glibc(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: None)
    env = {"PATH": "/bin"}
    assert allocator.trainer_env("cpu", env, hidden_size=allocator.MIN_HIDDEN) == {**env, allocator.MARKER: "lean"}
    assert allocator.trainer_env("cpu", env, hidden_size=allocator.MIN_HIDDEN - 1)[allocator.MARKER] == "heap"
    assert allocator.trainer_env("cuda", env) == env
    assert allocator.trainer_env("cpu", {**env, allocator.MARKER: "mimalloc"}) == {**env, allocator.MARKER: "mimalloc"}


def test_the_trainer_goes_lean_only_when_told(monkeypatch):
    from finetui.engine.train import _lean_cpu_memory

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.setenv(allocator.MARKER, "auto")
    assert not _lean_cpu_memory()
    monkeypatch.setenv(allocator.MARKER, "lean")
    assert _lean_cpu_memory() and os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
