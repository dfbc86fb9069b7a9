"""Memory is checked before a run, and named after (engine.startcheck, engine.errors.exit_problem).

Before a run folder is made, `finetui train` refuses a model or data that is not there, a
``data.max_length`` beyond the model's context, and a job whose estimate exceeds the free
RAM/VRAM, naming the setting to turn (``--force`` starts it anyway); a ``--set`` error is
placed at the ``--set``. A trainer killed by SIGKILL (what the kernel's out-of-memory killer
sends) is named in the CLI and on the dashboard. The TUI's Settings screen shows the same
refusal before Start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli_env, finetui
from test_dashboard_helpers import SIZE, dash_env, fake_launch, screen_text, wait_for  # noqa: F401
from tui_helpers import settle, text_of, tui_env  # noqa: F401

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import footprint, runs, startcheck
from finetui.engine.hardware import GpuReading
from finetui.engine.units import format_bytes
from train_helpers import write_config

KILLED = "killed (SIGKILL) — often the out-of-memory killer"


def no_runs(folder: Path) -> bool:
    return not (folder / "runs").exists() or not any((folder / "runs").iterdir())


# ---------------------------------------------------------------------------- before


def test_max_length_beyond_the_context_is_refused_before_a_run_folder(tmp_path):
    path = write_config(tmp_path)
    proc = finetui("train", str(path), "--set", "data.max_length=1048576", cwd=tmp_path)
    print(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert ("data.max_length: 1,048,576 is beyond the context of tiny, 1,024 tokens (max_position_embeddings "
            "in its config.json, no RoPE scaling): set data.max_length to 1024 or less") in proc.stderr
    assert "--force starts it anyway" in proc.stderr
    assert no_runs(tmp_path)


def test_rope_scaling_lifts_the_context_limit():
    config = cfg.validate({"data": {"max_length": 8192}})
    plain = {"max_position_embeddings": 2048, "hidden_size": 64}
    assert "beyond the context" in startcheck.context_problem(config, plain)
    for rope in ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                 {"rope_scaling": {"type": "linear", "factor": 4.0}},
                 {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}):
        assert startcheck.context_problem(config, {**plain, **rope}) is None, rope
    assert "beyond the context" in startcheck.context_problem(
        config, {**plain, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    # Gemma 3-style wrappers keep the language model's numbers in text_config.
    assert "2,048 tokens" in startcheck.context_problem(config, {"text_config": plain})


def test_a_job_beyond_free_memory_is_refused_naming_the_knob_and_force_starts_it(tmp_path, finetui_cache):
    # The case: batch_size 4096 of long rows grew to 12.1 GB in 65 s without swap.
    path = write_config(tmp_path, data={"max_length": 1024, "packing": True},
                        train={"batch_size": 4096, "max_steps": 1, "eval_strategy": "no", "save_strategy": "no"})
    need = footprint.estimate(cfg.load(path), gpu=False).total_bytes
    proc = finetui("train", str(path), cwd=tmp_path)
    print(f"estimate {format_bytes(need)}, free RAM {format_bytes(startcheck.free_ram())}")
    print(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"memory: this run needs about {format_bytes(need)} (activations ")
    assert "train.batch_size 4096 x data.max_length 1024" in first and "of free RAM: lower train.batch_size" in first
    assert "train.gradient_checkpointing" in first
    assert "--force starts it anyway" in proc.stderr
    assert no_runs(tmp_path)
    # The estimate is an upper bound (every row max_length long): 40 short packed rows fit.
    started = time.monotonic()
    proc = finetui("train", str(path), "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    print(f"--force: the run completed in {time.monotonic() - started:.1f} s")


def test_vram_is_checked_on_a_gpu_and_the_knobs_follow_the_biggest_part():
    config = cfg.validate({"model": {"name_or_path": "smollm2"}, "method": {"type": "full"},
                           "train": {"batch_size": 1}, "data": {"max_length": 64}})
    gpu = GpuReading(index=0, name="Small GPU", memory_used_bytes=900 << 20, memory_total_bytes=2 << 30)
    (problem,) = startcheck.limits(config, gpus=[gpu])
    print(problem)
    assert "of free VRAM on GPU 0 (Small GPU)" in problem
    assert "method.type: lora or qlora" in problem and "4-bit" in problem  # weights, not activations, dominate
    roomy = GpuReading(index=0, name="Big GPU", memory_used_bytes=0, memory_total_bytes=80 << 30)
    assert startcheck.limits(config, gpus=[roomy]) == []
    # model.device: cpu trains on the CPU whatever the GPU: RAM is what counts.
    cpu = cfg.set_value(config, "model.device", "cpu")
    assert startcheck.free_memory(cpu, [gpu])[1] == "free RAM"


def test_missing_model_or_data_leaves_no_failed_run_behind(tmp_path):
    cases = {
        ("model.name_or_path", str(tmp_path / "no-model")): f"model.name_or_path: no such folder '{tmp_path / 'no-model'}'",
        ("data.path", str(tmp_path / "no-data.jsonl")): f"data.path: {tmp_path / 'no-data.jsonl'}: no such file or folder",
        ("data.test_path", "./gone.csv"): "data.test_path: ./gone.csv: no such file or folder",
    }
    for (key, value), expected in cases.items():
        section, name = key.split(".")
        path = write_config(tmp_path, **{section: {name: value}})
        proc = finetui("train", str(path), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == expected, proc.stderr
        assert no_runs(tmp_path), key


def test_a_set_error_names_the_set(tmp_path):
    path = write_config(tmp_path)  # train.batch_size: 8 is on a line of job.yaml
    proc = finetui("train", str(path), "--set", "train.batch_size=lots", "--set", "data.max_length=1", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert "--set data.max_length=1: data.max_length: Input should be greater than or equal to 16 (got 1)" in lines
    assert any(line.startswith("--set train.batch_size=lots: train.batch_size: Input should be a valid integer")
               for line in lines), lines
    assert "job.yaml" not in proc.stderr
    # A value from the file still points at its line.
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: lots\n")
    proc = finetui("train", str(bad), "--set", "train.epochs=2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"{bad}:2: train.batch_size")


# ---------------------------------------------------------------------------- after


@pytest.mark.slow
def test_a_sigkilled_trainer_is_named_in_the_cli(tmp_path, finetui_cache):
    path = write_config(tmp_path, train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    env = cli_env()
    cli = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "train", str(path)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = tmp_path / "runs" / cli.stdout.readline().strip()
        deadline = time.monotonic() + 120
        while not any(e["type"] == "step" for e in ev.read_file(run_dir / "events.jsonl")):
            assert time.monotonic() < deadline and cli.poll() is None, "no step"
            time.sleep(0.2)
        os.kill(runs.read_pid(run_dir), signal.SIGKILL)  # as the OOM killer does
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    print(err)
    assert cli.returncode == 1
    assert f"finetui: trainer {KILLED}; see runs/{run_dir.name}/stdout.log" in err.splitlines()
    assert f"`finetui train --resume {run_dir.name}` continues" in err and "hint: when memory runs out" in err


def test_exit_statuses_are_named():
    from finetui.engine import errors

    assert errors.exit_problem(-signal.SIGKILL, "r1")[0] == KILLED
    assert "--resume r1" in errors.exit_problem(-signal.SIGKILL, "r1")[1]
    assert errors.exit_problem(-signal.SIGSEGV)[0] == "killed (SIGSEGV)"
    assert errors.exit_problem(0) is None and errors.exit_problem(1) is None and errors.exit_problem(None) is None


async def test_the_dashboard_names_a_sigkill_but_not_its_own_kill(dash_env, monkeypatch):
    from finetui.engine import runs
    from finetui.tui.app import FinetuiApp

    from test_dashboard_helpers import config, launch_on_dashboard

    monkeypatch.setattr(runs, "launch", fake_launch(dash_env, steps=400, interval=0.05))
    run_dir = runs.new_run(config(), name="oomkilled")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        proc, dash = await launch_on_dashboard(pilot, app, run_dir)
        await wait_for(pilot, lambda: dash.state is not None and len(dash.state.steps) >= 3, timeout=15)
        os.kill(proc.pid, signal.SIGKILL)  # from outside, as the kernel's OOM killer does
        await wait_for(pilot, lambda: dash._status == "failed", timeout=10)
        await pilot.pause(0.6)
        text = screen_text(app)
        print(text)
        assert f"✖ failed: the trainer was {KILLED}" in text
        assert "hint: when memory runs out the kernel ends the biggest process with SIGKILL" in text
        assert "R: resume" in text


async def test_settings_show_the_refusal_before_start(tui_env, monkeypatch):
    from finetui.engine import runs
    from finetui.tui.app import FinetuiApp
    from finetui.tui.widgets.dialogs import ConfirmDialog

    from test_tui_settings import edit, open_settings

    monkeypatch.setattr(runs, "launch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("launched")))
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await settle(pilot, app)
        assert "✖" not in text_of(app.screen.query_one("#footprint"))
        await edit(pilot, app, "data.max_length", "4096")
        await settle(pilot, app)
        line = text_of(app.screen.query_one("#footprint"))
        assert "✖ data.max_length: 4,096 is beyond the context of tiny, 1,024 tokens" in line
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert app.screen.title_text == "Beyond the model's context or the free memory: start anyway?"
        assert app.screen.verb == "start anyway"
        body = text_of(app.screen.query_one("VerticalScroll Static"))
        expected = startcheck.limits(app.settings_state.config)
        assert expected and expected[0].split(":")[0] == "data.max_length"
        assert "data.max_length: 4,096 is beyond the context of tiny" in body and "start anyway" in body
        await pilot.press("escape")
        await pilot.pause()
        assert not app.run_processes
