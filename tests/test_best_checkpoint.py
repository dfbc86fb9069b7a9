"""The best checkpoint (lowest eval loss) is kept and becomes the run's result; early
stopping ends a run whose eval loss stops falling.

The job overfits on purpose: the tiny model is fully fine-tuned at a high learning rate on 40
FAQ answers and evaluated on the same questions with other answers, so the eval loss falls
while the model learns the format and rises once it memorises the training answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from train_helpers import of_type, stdout_log, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _overfitting_data(folder: Path) -> dict:
    rows = [json.loads(line) for line in (REPO / "sample_data" / "finetui_faq.jsonl").read_text().splitlines()[:40]]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(
        json.dumps({"question": r["question"], "answer": "I do not know that yet, sorry."}) + "\n" for r in rows[:16]))
    return {"path": str(folder / "train.jsonl"), "test_path": str(folder / "test.jsonl"), "max_samples": None}


TRAIN = {"max_steps": 40, "learning_rate": 1e-2, "eval_steps": 4, "save_steps": 4, "save_total_limit": 2}


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_the_best_checkpoint_is_kept_and_is_the_result(tmp_path, finetui_cache):
    data = _overfitting_data(tmp_path)
    run_dir, rc, events = train(tmp_path, "best", data=data, train=TRAIN)
    assert rc == 0, stdout_log(run_dir)
    evals = [(e["step"], e["eval_loss"]) for e in of_type(events, "eval")]
    best_step, best_loss = min(evals, key=lambda se: se[1])
    assert best_step < evals[-1][0], f"the job did not overfit: {evals}"

    finished = of_type(events, "finished")[0]
    assert finished["metrics"]["best_step"] == best_step
    assert finished["metrics"]["best_eval_loss"] == pytest.approx(best_loss)
    assert finished["metrics"]["final_is_best"] is True
    best_dir = run_dir / "checkpoints" / f"checkpoint-{best_step}"
    assert finished["outputs"]["best_checkpoint"] == f"checkpoints/checkpoint-{best_step}"  # in the run folder
    # save_total_limit 2 would have rotated it away long ago
    assert best_dir.is_dir()
    result = _weights(run_dir / "adapter")
    assert _same(result, _weights(best_dir))
    assert not _same(result, _weights(run_dir / "checkpoints" / "checkpoint-40"))


def test_keep_best_off_leaves_the_last_weights(tmp_path, finetui_cache):
    data = _overfitting_data(tmp_path)
    run_dir, rc, events = train(tmp_path, "last", data=data, train={**TRAIN, "keep_best": False})
    assert rc == 0, stdout_log(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-36", "checkpoint-40"]
    assert _same(_weights(run_dir / "adapter"), _weights(run_dir / "checkpoints" / "checkpoint-40"))
    assert of_type(events, "finished")[0]["metrics"]["final_is_best"] is False


def test_checkpoints_off_the_eval_rhythm_are_warned_about(tmp_path, finetui_cache):
    data = _overfitting_data(tmp_path)
    run_dir, rc, events = train(tmp_path, "odd", data=data, train={**TRAIN, "max_steps": 8, "save_steps": 3})
    assert rc == 0, stdout_log(run_dir)
    warnings = [e["message"] for e in of_type(events, "log") if e["level"] == "warning"]
    assert any("train.keep_best" in w and "save_steps a multiple of eval_steps" in w for w in warnings)


def test_early_stopping_ends_the_run_after_patience_evaluations(tmp_path, finetui_cache):
    data = _overfitting_data(tmp_path)
    run_dir, rc, events = train(tmp_path, "early", data=data, train={**TRAIN, "early_stopping_patience": 2})
    assert rc == 0, stdout_log(run_dir)
    evals = [(e["step"], e["eval_loss"]) for e in of_type(events, "eval")]
    # stop at the second evaluation in a row that is not lower than the best so far
    best, worse, expected_stop = float("inf"), 0, None
    for step, loss in evals:
        if loss < best:
            best, worse = loss, 0
        else:
            worse += 1
            if worse == 2:
                expected_stop = step
                break
    assert expected_stop is not None and expected_stop < 40, evals
    finished = of_type(events, "finished")[0]
    assert finished["metrics"]["steps"] == expected_stop
    assert any("early" in e["message"] for e in of_type(events, "log")), "the stop is not explained"


def test_early_stopping_without_evaluation_is_a_config_error():
    from finetui.engine import config as cfg

    with pytest.raises(cfg.ConfigError, match="train.early_stopping_patience"):
        cfg.validate({"train": {"early_stopping_patience": 3, "eval_strategy": "no"}})
