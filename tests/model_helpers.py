"""Small random models for the tests of the fused training paths (fused_layers, fused_lora,
fused_loss): LoRA on them, two fixed batches for a vocabulary of 96 (one padded, one packed),
and one forward + backward."""

from __future__ import annotations


def with_lora(model, lora: bool):
    """``model`` in training mode, under LoRA r4 on every linear when ``lora``, with B != 0
    (``init_lora_weights=False``), so the adapters change the output and get gradients."""
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    model.train()
    return model


def padded_batch():
    """Three rows of 12 tokens, two of them padded (attention_mask 0, labels -100)."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_batch():
    """One row of 20 tokens holding three sequences (7, 9 and 4 tokens: position_ids restart)."""
    import torch

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 96, (1, 20), generator=g)
    positions = torch.tensor([list(range(7)) + list(range(9)) + list(range(4))])
    return {"input_ids": ids, "position_ids": positions, "labels": ids.clone()}


def loss_and_grads(model, batch):
    """(the output of ``model(**batch)``, {name: gradient} of every trained parameter)."""
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
