"""`finetui train` as a user types it: config errors name the key (exit 2), model errors
are one clear line (exit 1), --detach returns at once, --resume continues a run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetui.engine import events as ev
from cli_helpers import cli_env, finetui
from train_helpers import write_config


def the_run(folder: Path) -> Path:
    (run,) = [p for p in (folder / "runs").iterdir() if (p / "config.yaml").exists()]
    return run


def test_invalid_configs_name_the_key(tmp_path):
    path = write_config(tmp_path)
    cases = {
        "train.lr=3": "train.lr: unknown key",
        "train.batch_size=0": "train.batch_size",
        "method.type=adapterz": "method.type",
        "train.lr_scheduler=exp": "train.lr_scheduler",
    }
    for override, key in cases.items():
        proc = finetui("train", str(path), "--set", override, cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr)
        assert key in proc.stderr, (override, proc.stderr)
        assert not (tmp_path / "runs").exists()  # nothing was started
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    proc = finetui("train", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and f"{bad}:2: train.epochs" in proc.stderr
    proc = finetui("train", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such config file" in proc.stderr


def test_cuda_only_optimizer_on_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the optimizer is allowed")
    proc = finetui("train", str(write_config(tmp_path)), "--set", "train.optimizer=paged_adamw_32bit", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("train.optimizer: paged_adamw_32bit needs a CUDA GPU")


@pytest.mark.slow
def test_missing_model_folder_is_one_clear_line(tmp_path, finetui_cache):
    # Checked before the run folder is made (engine.startcheck): no failed run is left behind.
    path = write_config(tmp_path, model={"name_or_path": str(tmp_path / "no-model")})
    proc = finetui("train", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"model.name_or_path: no such folder '{tmp_path / 'no-model'}'"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_offline_hub_id_is_one_clear_line(tmp_path, finetui_cache):
    path = write_config(tmp_path, model={"name_or_path": "some-org/some-model-not-cached"})
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    started = time.time()
    proc = finetui("train", str(path), cwd=tmp_path, env=env)
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()
    assert proc.stderr.strip() == (
        "model 'some-org/some-model-not-cached' is not in the Hugging Face cache and the "
        "hub cannot be reached (offline): download it on a connected machine or set model.name_or_path to a "
        "local folder"
    )
    assert time.time() - started < 120


@pytest.mark.slow
def test_plain_output_then_resume(tmp_path, finetui_cache):
    path = write_config(tmp_path, train={"max_steps": 2, "eval_strategy": "no", "save_steps": 2})
    proc = finetui("train", str(path), "--name", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    run = the_run(tmp_path)
    assert lines[0] == run.name and run.name.endswith("-demo")
    assert any(line.startswith("step 2/2") for line in lines)
    assert lines[-1].startswith("finished: completed")

    # A completed run is resumed only when forced, and the refusal says how.
    proc = finetui("train", "--resume", run.name, "--set", "train.max_steps=4", cwd=tmp_path)
    assert proc.returncode == 1 and f"run {run.name} completed at step 2/2" in proc.stderr
    assert "--force" in proc.stderr
    assert [e["type"] for e in ev.read_file(run / "events.jsonl")].count("run_started") == 1
    # More steps for the same run: continues from checkpoint-2 in the same events file.
    proc = finetui("train", "--resume", run.name, "--set", "train.max_steps=4", "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    steps = [e["step"] for e in ev.read_file(run / "events.jsonl") if e["type"] == "step"]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_detach_returns_at_once_and_the_run_goes_on(tmp_path, finetui_cache):
    path = write_config(tmp_path, train={"max_steps": 3, "eval_strategy": "no", "save_strategy": "no"})
    started = time.time()
    proc = finetui("train", str(path), "--detach", cwd=tmp_path)
    assert proc.returncode == 0 and time.time() - started < 15
    run = the_run(tmp_path)
    assert proc.stdout.strip() == run.name and "finetui runs attach" in proc.stderr
    deadline = time.time() + 300
    while time.time() < deadline:
        events = ev.read_file(run / "events.jsonl")
        if events and events[-1]["type"] == "finished":
            break
        time.sleep(0.5)
    assert events[-1]["status"] == "completed"


@pytest.mark.slow
def test_ctrl_c_detaches_and_the_run_goes_on(tmp_path, finetui_cache):
    import signal

    from finetui.engine import runs

    path = write_config(tmp_path, train={"max_steps": 100000, "eval_strategy": "no", "save_strategy": "no"})
    env = cli_env()
    # Ctrl-C as a terminal delivers it, whatever the test runner's own SIGINT disposition
    # (a runner started in the background of a script ignores SIGINT, and children inherit it)
    proc = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "train", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the terminal that follows the run
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for run in (tmp_path / "runs").glob("*"):
            if runs.summarize(run).status == "running" and proc.returncode != 0:
                runs.stop(run, kill=True)  # never leave a 100,000-step trainer behind
    run = the_run(tmp_path)
    assert proc.returncode == 0 and f"detached; the run continues — `finetui runs attach {run.name}`" in err
    assert runs.summarize(run).status == "running"
    assert runs.stop(run)
    deadline = time.time() + 120
    while runs.summarize(run).status == "running" and time.time() < deadline:
        time.sleep(0.3)
    assert runs.summarize(run).status == "stopped"
