"""Small random models for the tests of the fused training paths (fused_layers, fused_lora,
fused_loss): LoRA on them, and one forward + backward."""

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


def loss_and_grads(model, batch):
    """(the output of ``model(**batch)``, {name: gradient} of every trained parameter)."""
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
