"""Dropout is on in every training step and off in every evaluation, on the real training
path: the trainer process started as the CLI starts it (engine.runs.launch), on a model whose
own config sets dropout (a 2-layer GPT-2 with the tiny tokenizer: embedding, residual and
MLP dropout are nn.Dropout modules, which Llama's functional attention dropout is not), with
LoRA (lora_dropout > 0) and with full fine-tuning.

The trainer process is watched from inside by a ``sitecustomize`` on its PYTHONPATH: a
global forward hook that counts, for every nn.Dropout with p > 0, its calls with grad
enabled (training steps) and without (evaluation), by the module's ``training`` flag. And
dropout must really act: with a near-zero learning rate, one step over the whole training
set and an evaluation over the same records, the step's loss (dropout on) differs from the
evaluation loss (dropout off); with every dropout at 0 the two are equal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from finetui.engine import runs
from train_helpers import file_events, finish, make_config, of_type, stdout_log

pytestmark = pytest.mark.slow

PROBE = r'''
import atexit, json, os
import torch

_calls = {}
_modules = set()


def _count(module, args, output):
    if isinstance(module, torch.nn.Dropout) and module.p > 0:
        phase = "train" if torch.is_grad_enabled() else "eval"
        key = f"{phase}:{'on' if module.training else 'off'}"
        _calls[key] = _calls.get(key, 0) + 1
        _modules.add((phase, module.training, id(module)))


def _dump():
    counts = {f"{phase}:{'on' if on else 'off'}:modules": 0 for phase in ("train", "eval") for on in (True, False)}
    for phase, on, _ in _modules:
        counts[f"{phase}:{'on' if on else 'off'}:modules"] += 1
    with open(os.environ["DROPOUT_PROBE_OUT"], "w") as f:
        json.dump({**_calls, **counts}, f)


torch.nn.modules.module.register_module_forward_hook(_count)
atexit.register(_dump)
'''

REPO = Path(__file__).resolve().parents[1]
RECORDS = 16


def dropout_model(folder: Path, tiny_dir: Path, p: float) -> Path:
    """A 2-layer GPT-2 with the tiny tokenizer and every dropout of its config at ``p``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, initializer_range=0.2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def train_watched(tmp_path: Path, model: Path, method: str, lora_dropout: float):
    """One step over the whole training set, then an evaluation of the same records."""
    data = tmp_path / "faq.jsonl"
    lines = (REPO / "sample_data" / "finetui_faq.jsonl").read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:RECORDS]))
    config = make_config(
        model={"name_or_path": str(model)},
        method={"type": method, "lora_dropout": lora_dropout},
        data={"path": str(data), "test_path": str(data), "test_size": 0, "max_samples": None},
        train={"max_steps": 1, "batch_size": RECORDS, "learning_rate": 1e-12, "eval_strategy": "steps",
               "eval_steps": 1, "save_strategy": "no"},
    )
    run_dir = runs.new_run(config, name=f"{method}-{lora_dropout}", root=tmp_path / "runs")
    probe = tmp_path / f"probe-{method}-{lora_dropout}"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    out = probe / "counts.json"
    rc, _ = finish(runs.launch(run_dir, env={"PYTHONPATH": str(probe), "DROPOUT_PROBE_OUT": str(out)}))
    assert rc == 0, stdout_log(run_dir)
    events = file_events(run_dir)
    step, = of_type(events, "step")
    evaluation, = of_type(events, "eval")
    return json.loads(out.read_text()), step["loss"], evaluation["eval_loss"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dropout_trains_in_steps_and_rests_in_evaluation(tmp_path, finetui_cache, tiny_model_dir, method):
    model = dropout_model(tmp_path / "gpt2-dropout", tiny_model_dir, 0.3)
    counts, train_loss, eval_loss = train_watched(tmp_path, model, method, lora_dropout=0.3)
    # every configured dropout: the model's own (embedding, 2 x residual, 2 x MLP), LoRA's
    # on each adapted linear (2 layers x c_attn, c_proj, c_fc, mlp c_proj)
    expected = 5 + (8 if method == "lora" else 0)
    assert counts["train:on:modules"] == expected and counts["train:off:modules"] == 0, counts
    assert counts["eval:off:modules"] == expected and counts["eval:on:modules"] == 0, counts
    assert "train:off" not in counts and "eval:on" not in counts, counts
    assert math.isfinite(train_loss) and math.isfinite(eval_loss)
    assert abs(train_loss - eval_loss) > 1e-2, (train_loss, eval_loss)  # dropout really acted


def test_without_dropout_the_step_and_evaluation_losses_agree(tmp_path, finetui_cache, tiny_model_dir):
    """The control for the test above: the same step and evaluation, no dropout anywhere."""
    model = dropout_model(tmp_path / "gpt2-no-dropout", tiny_model_dir, 0.0)
    counts, train_loss, eval_loss = train_watched(tmp_path, model, "full", lora_dropout=0.0)
    assert counts["train:on:modules"] == 0 and counts["eval:off:modules"] == 0  # p == 0 is not counted
    assert train_loss == pytest.approx(eval_loss, abs=1e-4)
