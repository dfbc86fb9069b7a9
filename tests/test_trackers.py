"""train.report_to: the Trainer's trackers through the lean trainer (a real tiny run with
TensorBoard leaves event files with a loss scalar), the refusal when a tracker's package is
missing (before any run folder is made), and `finetui runs export RUN --tensorboard DIR`
(read back with TensorBoard's own EventAccumulator)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetui.engine import config as cfg
from finetui.engine import startcheck
from train_helpers import of_type, stdout_log, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def accumulate(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(folder).rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    acc = EventAccumulator(str(files[-1].parent))
    acc.Reload()
    return acc


def test_report_to_is_a_list_and_off_by_default():
    assert cfg.Config().train.report_to == []
    assert cfg.validate({"train": {"report_to": "tensorboard"}}).train.report_to == ["tensorboard"]
    assert cfg.validate({"train": {"report_to": "none"}}).train.report_to == []
    with pytest.raises(cfg.ConfigError, match=r"train\.report_to"):
        cfg.validate({"train": {"report_to": ["tensorboard", "neptune"]}})
    with pytest.raises(cfg.ConfigError, match="train.report_to: none cannot be listed with trackers"):
        cfg.validate({"train": {"report_to": ["none", "wandb"]}})
    spec = next(s for s in cfg.field_specs() if s["key"] == "train.report_to")
    assert spec["default"] == [] and "tensorboard" in spec["description"]


def test_tensorboard_run_through_the_lean_trainer_and_export(tmp_path, finetui_cache):
    run_dir, rc, events = train(tmp_path, "tb", method={"type": "lora"},
                                train={"report_to": ["tensorboard"], "max_steps": 4})
    assert rc == 0, stdout_log(run_dir)
    # The Trainer's TensorBoardCallback wrote into the run folder, step by step
    acc = accumulate(run_dir / "tensorboard")
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "eval/loss" in tags
    # finetui's own events are still all there (the dashboard's source)
    assert len(of_type(events, "step")) == 4 and of_type(events, "finished")[0]["status"] == "completed"

    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(tmp_path), "runs", "export",
                           run_dir.name, "--tensorboard", str(out), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["run"] == run_dir.name and answer["scalars"] > 0
    acc = accumulate(out)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s", "eval/loss",
            "eval/perplexity"} <= tags, tags
    steps = of_type(events, "step")
    losses = acc.Scalars("train/loss")
    assert [s.step for s in losses] == [e["step"] for e in steps]
    assert [s.value for s in losses] == pytest.approx([e["loss"] for e in steps], rel=1e-6)
    assert losses[0].wall_time == pytest.approx(steps[0]["time"], abs=1e-3)
    evals = of_type(events, "eval")
    assert [s.value for s in acc.Scalars("eval/loss")] == pytest.approx([e["eval_loss"] for e in evals], rel=1e-6)


def test_export_refuses_without_a_target_and_for_a_run_without_steps(tmp_path):
    run = tmp_path / "20260101-000000-empty"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.Config().to_yaml())
    (run / "events.jsonl").write_text("")

    def export(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(tmp_path), "runs", "export",
                               run.name, *extra], capture_output=True, text=True, timeout=60)

    proc = export()
    assert proc.returncode == 1 and "needs --tensorboard DIR" in proc.stderr
    proc = export("--tensorboard", str(tmp_path / "tb"))
    assert proc.returncode == 1 and "no step or eval events to export" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_tracker_is_refused_before_a_run_folder(tmp_path, finetui_cache):
    """A tracker whose package is absent: one line naming train.report_to and the pip
    command, exit 1, and no run folder left behind."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"train": {"report_to": ["wandb"], "max_steps": 1},
                                      "data": {"max_samples": 20}}))
    problems = startcheck.package_problems(cfg.load(config))
    assert problems == ["train.report_to: wandb needs the wandb package, which is not installed: pip install wandb "
                        "(or pip install 'finetui[trackers]'), or take it out of train.report_to"]
    runs_dir = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(runs_dir), "train", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2  # finetui train's status for a config it refuses
    assert "train.report_to: wandb needs the wandb package" in proc.stderr and "pip install wandb" in proc.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
