"""finetui.engine.lean_trainer.LeanTrainer: the Hugging Face Trainer's per-step module walks, done once or
over the trained parameters only, must leave training exactly as it was: the same clipped
gradients and norm, the same FLOs, gradients cleared, and modes that really switch between
training and evaluation (dropout on in training, off in evaluation)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetui.engine.lean_trainer import LeanTrainer  # noqa: E402


def make_model(dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout,
                                            init_lora_weights=False))


def make_trainer(tmp_path, model, **args):
    from transformers import TrainingArguments

    rows = [{"input_ids": list(range(i, i + 10)), "labels": list(range(i, i + 10))} for i in range(8)]
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                                  use_cpu=True, disable_tqdm=True, max_grad_norm=0.01, **args)
    from transformers import default_data_collator

    return LeanTrainer(model=model, args=arguments, train_dataset=rows, eval_dataset=rows,
                   data_collator=default_data_collator)


def batch():
    ids = torch.arange(20).reshape(2, 10)
    return {"input_ids": ids, "labels": ids}


def test_clipping_matches_all_parameters(tmp_path):
    model = make_model()
    trainer = make_trainer(tmp_path, model)
    model(**batch()).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    expected_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    reference = {n: g * (0.01 / (expected_norm + 1e-6)) for n, g in grads.items()}  # torch's clip rule
    norm = trainer._clip_grad_norm(model)
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-6)
    assert float(norm) > 0.01  # the clip really scaled the gradients down
    for name, p in model.named_parameters():
        if name in reference:
            assert torch.allclose(p.grad, reference[name], atol=1e-8), name


def test_zero_grad_and_flos(tmp_path):
    from transformers import Trainer as HFTrainer

    model = make_model()
    trainer = make_trainer(tmp_path, model)
    model(**batch()).loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert trainer.floating_point_ops(batch()) == HFTrainer.floating_point_ops(trainer, batch()) > 0


def test_modes_switch_between_training_and_evaluation(tmp_path):
    model = make_model(dropout=0.5)
    trainer = make_trainer(tmp_path, model, max_steps=2, eval_strategy="steps", eval_steps=1, logging_steps=1)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    seen = []
    original = trainer.compute_loss

    def compute_loss(model_, inputs, *args, **kwargs):
        seen.append((model_.training, all(d.training for d in dropouts)))
        return original(model_, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    # steps and evaluations alternate: training (dropout on), eval (off), training, eval
    assert seen[0] == (True, True)
    assert (False, False) in seen
    assert seen.count((True, True)) == 2 and seen.count((False, False)) >= 2
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_adamw_runs_fused(tmp_path):
    from finetui.engine import config as cfg
    from finetui.engine.train import training_arguments

    config = cfg.Config.model_validate({"model": {"name_or_path": "tiny"}, "data": {"path": "x.jsonl"}})
    args = training_arguments(config, tmp_path, "cpu", has_eval=False, world_size=1)
    assert args.optim == "adamw_torch_fused"  # one kernel for every tensor, same update
    config.train.optimizer = "adamw_8bit"
    assert training_arguments(config, tmp_path, "cuda", has_eval=False, world_size=1).optim == "adamw_8bit"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_steps_train_whatever_switched_part_of_the_model_to_eval(tmp_path, method):
    """A callback that puts part of the model in eval between steps (to sample from the base
    model, say) must not leave that part's dropout off for the steps that follow."""
    from transformers import TrainerCallback

    if method == "lora":
        model = make_model(dropout=0.5)
    else:  # GPT-2's dropouts are nn.Dropout modules (Qwen2's attention dropout is functional)
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                           resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    trainer = make_trainer(tmp_path, model, max_steps=3, logging_steps=1)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    part = model.get_base_model() if method == "lora" else model.transformer

    class PartToEval(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            part.eval()

    trainer.add_callback(PartToEval())
    seen = []
    original = trainer.compute_loss

    def compute_loss(model_, inputs, *args, **kwargs):
        seen.append((sum(d.training for d in dropouts), all(m.training for m in model_.modules())))
        return original(model_, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    assert dropouts and seen == [(len(dropouts), True)] * 3, seen
