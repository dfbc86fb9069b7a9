"""Logits only at trained positions (engine.data.dataset.TrainedLogitsOnly) give the same
loss and gradients as the full logits, for padded and packed batches, with the Trainer's
num_items_in_batch normalisation; and the logits tensor really shrinks.

If the mask were off by one (labels not shifted), a position's logits would be scored
against the wrong token and the loss would differ by far more than the tolerance; the last
test shows that.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetui.engine.data import dataset  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def setup(tiny_model_dir, mixed_length_batch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config, tokenizer, batch = mixed_length_batch
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                             init_lora_weights=False))  # B != 0: LoRA changes the output
    model.train()
    return config, tokenizer, model, batch


def collate(config, tokenizer, batch, packing: bool, trained_only: bool):
    config = config.model_copy(deep=True)
    config.data.packing = packing
    inner = dataset.collator(config, tokenizer)
    return (dataset.TrainedLogitsOnly(inner) if trained_only else inner)(batch)


def items(b) -> torch.Tensor:
    """What the Trainer passes as num_items_in_batch (its _get_num_items_in_batch rule)."""
    return (b["shift_labels"] if "shift_labels" in b else b["labels"][..., 1:]).ne(-100).sum()


def loss_and_grads(model, b):
    model.zero_grad(set_to_none=True)
    out = model(**b, num_items_in_batch=items(b))
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_same_loss_and_gradients(setup, packing):
    config, tokenizer, model, batch = setup
    assert dataset.trained_logits_supported(model)
    full = collate(config, tokenizer, batch, packing, trained_only=False)
    trained = collate(config, tokenizer, batch, packing, trained_only=True)
    assert items(full) == items(trained) == trained["logits_to_keep"].sum()

    out_full, grads_full = loss_and_grads(model, full)
    out_trained, grads_trained = loss_and_grads(model, trained)
    assert abs(out_full.loss.item() - out_trained.loss.item()) < TOLERANCE
    assert grads_full.keys() == grads_trained.keys() and grads_full
    for name, g in grads_full.items():
        assert torch.allclose(g, grads_trained[name], atol=TOLERANCE, rtol=1e-4), name
    # logits only where a label is trained: fewer rows than positions
    positions = full["input_ids"].numel()
    assert out_full.logits.shape[:-1].numel() == positions
    assert out_trained.logits.shape[0] == int(items(trained)) < positions


def test_check_is_sensitive_to_a_shifted_mask(setup):
    """The same comparison fails when the kept positions are off by one."""
    config, tokenizer, model, batch = setup
    full = collate(config, tokenizer, batch, packing=True, trained_only=False)
    wrong = collate(config, tokenizer, batch, packing=True, trained_only=True)
    labels = wrong["labels"]
    keep = labels != -100  # unshifted: each position scored against its own token
    wrong["logits_to_keep"], wrong["shift_labels"] = keep, labels[keep]
    with torch.no_grad():
        a = model(**full, num_items_in_batch=items(full)).loss.item()
        b = model(**wrong, num_items_in_batch=items(wrong)).loss.item()
    assert abs(a - b) > 100 * TOLERANCE


def test_not_used_where_the_loss_is_not_the_causal_lm_loss(setup):
    *_, model = setup[:3]
    base = model.get_base_model()
    base.loss_function = lambda **kw: None  # a custom loss would get flattened logits it does not expect
    try:
        assert not dataset.trained_logits_supported(model)
    finally:
        del base._loss_function
    assert dataset.trained_logits_supported(model)
