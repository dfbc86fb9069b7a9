"""Held-out evaluation (engine/evaluate.py): the split, the metrics, the files, the CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finetui.engine import evaluate as E

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- units


def test_split_example_takes_the_last_trained_span():
    I = E.IGNORE  # noqa: E741
    assert E.split_example([1, 2, 3, 4, 5], [I, I, 3, 4, I]) == ([1, 2], [3, 4])
    # two assistant turns: the earlier one is part of the prompt (teacher forcing)
    assert E.split_example([1, 2, 3, 4, 5, 6], [I, 2, I, I, 5, 6]) == ([1, 2, 3, 4], [5, 6])
    assert E.split_example([1, 2, 3], [1, 2, 3]) is None  # train_on: all / text: no prompt
    assert E.split_example([1, 2], [I, I]) is None


def test_label_detection():
    assert E.label_set(["positive", "negative", "Positive.", "negative"]) == ["negative", "positive"]
    assert E.label_set(["0", "1", "1", "0", "1"]) == ["0", "1"]
    assert E.label_set(["Paris", "Berlin", "Rome"]) is None  # short but all different: answers
    assert E.label_set(["positive", "a long sentence that is certainly not a class label"]) is None
    assert E.label_set(["yes"]) is None


def test_scores_count_exact_matches_and_label_accuracy(monkeypatch):
    class Stub:
        info = {"source": "full", "load_s": 0.1}
        tokenizer = type("T", (), {"pad_token_id": 0})()
        eos_token_ids = [2]
        model = None

    items = [E.Item(i, [1, 2, 3], [E.IGNORE, 2, 3], [1], [2, 3], prompt=f"q{i}", target=t)
             for i, t in enumerate(["positive", "negative", "positive", "negative"])]
    monkeypatch.setattr(E, "token_losses", lambda model, items, pad, bs: [(2.0, 2)] * len(items))
    replies = {0: "positive", 1: "Negative.", 2: "negative", 3: " negative "}
    monkeypatch.setattr(E, "generate_greedy", lambda chat, items, n, bs: {i: replies[i].strip() for i in range(4)})
    s = E.score(Stub(), "tuned", items, 8, 4, ["negative", "positive"], lambda m: None)
    assert s.eval_loss == 1.0 and math.isclose(s.perplexity, math.e)
    assert s.n_exact == 2 and s.exact_match == 0.5  # "Negative." is not an exact match...
    assert s.accuracy == 0.75  # ...but it is the right label


# ---------------------------------------------------------------------------- a run


def _labels_data(path: Path, n: int = 24) -> Path:
    rows = [{"question": f"Review {i}: {'I loved it' if i % 2 else 'it was dull'}",
             "answer": "positive" if i % 2 else "negative"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fake_run(root: Path, data: Path, *, test_size: float = 0.25) -> Path:
    """A run whose 'fine-tuned' full model is an untouched copy of tiny."""
    from finetui.engine import config as cfg
    from finetui.engine import runs, tiny

    c = cfg.validate({
        "model": {"name_or_path": "tiny"}, "method": {"type": "full"},
        "data": {"path": str(data), "format": "qa", "max_length": 64, "test_size": test_size},
        "output": {"runs_dir": str(root)},
    })
    run_dir = runs.new_run(c, name="evaltest", root=root)
    shutil.copytree(tiny.path(), run_dir / "adapter")
    return run_dir


def test_evaluate_a_run(finetui_cache, tmp_path):
    import torch

    run_dir = _fake_run(tmp_path / "runs", _labels_data(tmp_path / "reviews.jsonl"))
    result = E.evaluate(str(run_dir), compare_base=True, max_new_tokens=4, batch_size=4)
    assert result["examples"] == result["split_size"] == 6
    assert result["labels"] == ["negative", "positive"]
    tuned, base = result["metrics"]["tuned"], result["metrics"]["base"]
    assert tuned["source"] == "full" and base["source"] == "base"
    # same weights, same ids: same numbers
    assert math.isclose(tuned["eval_loss"], base["eval_loss"], rel_tol=1e-5)
    assert math.isclose(tuned["perplexity"], math.exp(tuned["eval_loss"]), rel_tol=1e-9)
    assert tuned["n_generated"] == 6 and tuned["accuracy"] is not None
    rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"prompt", "target", "base", "tuned", "tuned_match"} <= set(rows[0])
    assert rows[0]["prompt"].startswith("Review ") and rows[0]["target"] in ("positive", "negative")
    assert json.loads((run_dir / "eval" / "results.json").read_text())["metrics"]["tuned"]["eval_loss"] == tuned["eval_loss"]

    # The split is the one training used: rebuild it by hand and compare per-example loss
    # with transformers' own loss, and batched generation with one-at-a-time generation.
    from finetui.engine import chat, config as cfg
    from finetui.engine.data import dataset

    loaded = chat.load(str(run_dir))
    built = dataset.build(cfg.load(run_dir / "config.yaml"), loaded.tokenizer)
    first = built.test[0]
    with torch.inference_mode():
        hf = loaded.model(input_ids=torch.tensor([first["input_ids"]]), labels=torch.tensor([first["labels"]])).loss
    assert math.isclose(rows[0]["tuned_loss"], hf.item(), rel_tol=1e-4)
    items = E.make_items(loaded.tokenizer, list(zip(built.test["input_ids"], built.test["labels"])))
    assert E.generate_greedy(loaded, items, 6, batch_size=6) == E.generate_greedy(loaded, items, 6, batch_size=1)


def test_no_held_out_split_is_a_clear_error(finetui_cache, tmp_path):
    run_dir = _fake_run(tmp_path / "runs", _labels_data(tmp_path / "r.jsonl", 8), test_size=0.0)
    with pytest.raises(E.EvalError, match="has no held-out split.*--split train"):
        E.evaluate(str(run_dir))
    result = E.evaluate(str(run_dir), split="train", limit=3, max_new_tokens=2, save=False)
    assert result["examples"] == 3 and result["split_size"] == 8
    with pytest.raises(E.EvalError, match="no run"):
        E.evaluate(str(tmp_path / "nowhere"))


def test_cli_json_and_table(finetui_cache, tmp_path, monkeypatch, capsys):
    from finetui.engine import cli

    run_dir = _fake_run(tmp_path / "runs", _labels_data(tmp_path / "reviews.jsonl"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    assert cli.main(["eval", "last", "--json", "--limit", "2", "--max-new-tokens", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == run_dir.name and len(out["rows"]) == 2 and "tuned" in out["metrics"]
    assert cli.main(["eval", run_dir.name, "--limit", "2", "--max-new-tokens", "2", "--compare-base"]) == 0
    text = capsys.readouterr().out
    assert "exact match" in text and "accuracy (labels: negative, positive)" in text and "tuned output" in text


# ---------------------------------------------------------------------------- a trained run


@pytest.mark.slow
def test_split_matches_the_trainers_eval(finetui_cache, tmp_path):
    """Train a small run with the real trainer; the eval split must be the trainer's: the
    trainer's final eval_loss (mean of per-batch means) comes out of our split again."""
    pytest.importorskip("finetui.engine.train")
    from finetui.engine import config as cfg
    from finetui.engine import events, runs

    c = cfg.validate({
        "model": {"name_or_path": "tiny"}, "method": {"type": "full"},
        "data": {"path": "sample:finetui_faq", "format": "qa", "max_length": 96, "max_samples": 48,
                 "test_size": 0.25},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "eval_strategy": "epoch",
                  "save_strategy": "no", "logging_steps": 5},
        "output": {"runs_dir": str(tmp_path)},
    })
    run_dir = runs.new_run(c, name="evaltrain", root=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.train", "--run-dir", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    evs = events.read_file(run_dir / "events.jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trainer_loss = [e for e in evs if e["type"] == "eval"][-1]["eval_loss"]

    from finetui.engine import chat
    from finetui.engine.data import dataset

    loaded = chat.load(str(run_dir))
    built = dataset.build(cfg.load(run_dir / "config.yaml"), loaded.tokenizer)
    items = E.make_items(loaded.tokenizer, list(zip(built.test["input_ids"], built.test["labels"])))
    assert len(items) == 12
    weighted = 0.0
    for k in range(0, len(items), 8):  # the Trainer: per-batch token means, weighted by batch size
        chunk = items[k:k + 8]
        losses = E.token_losses(loaded.model, chunk, loaded.tokenizer.pad_token_id, 8)
        weighted += sum(s for s, _ in losses) / sum(n for _, n in losses) * len(chunk)
    assert math.isclose(weighted / len(items), trainer_loss, rel_tol=1e-4)

    result = E.evaluate(str(run_dir), max_new_tokens=8)
    assert result["examples"] == 12 and result["metrics"]["tuned"]["source"] == "full"


@pytest.mark.slow
def test_lora_run_compares_with_its_base_by_switching_the_adapter_off(finetui_cache, tmp_path):
    pytest.importorskip("finetui.engine.train")
    from finetui.engine import config as cfg
    from finetui.engine import runs

    c = cfg.validate({
        "model": {"name_or_path": "tiny"}, "method": {"type": "lora", "lora_r": 8},
        "data": {"path": "sample:finetui_faq", "format": "qa", "max_length": 96, "max_samples": 32,
                 "test_size": 0.25},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "eval_strategy": "no", "save_strategy": "no"},
        "output": {"runs_dir": str(tmp_path)},
    })
    run_dir = runs.new_run(c, name="evallora", root=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.train", "--run-dir", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    result = E.evaluate(str(run_dir), compare_base=True, max_new_tokens=4)
    base, tuned = result["metrics"]["base"], result["metrics"]["tuned"]
    assert tuned["source"] == "adapter" and base["source"] == "base (adapter off)"
    assert tuned["eval_loss"] != base["eval_loss"]

    # The adapter switched off is the untouched base: same loss as tiny loaded on its own.
    from finetui.engine import chat
    from finetui.engine.data import dataset

    plain = chat.load("tiny")
    built = dataset.build(cfg.load(run_dir / "config.yaml"), plain.tokenizer)
    items = E.make_items(plain.tokenizer, list(zip(built.test["input_ids"], built.test["labels"])))
    losses = E.token_losses(plain.model, items, plain.tokenizer.pad_token_id)
    assert math.isclose(sum(s for s, _ in losses) / sum(n for _, n in losses), base["eval_loss"], rel_tol=1e-5)
