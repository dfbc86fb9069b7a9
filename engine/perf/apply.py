"""A kernels plan (engine.perf.plan) put to work on a loaded model.

Heavy module (torch, transformers, peft): the trainer process only.
"""

from __future__ import annotations

from typing import Callable

from finetui.engine.perf import Plan


def prepare(model, plan: Plan, say: Callable[[str], None]) -> list[str]:
    """Apply what ``plan`` asks for to ``model`` (a transformers causal LM or a peft model
    around one), saying each thing that took in the run's log; returns their names."""
    done = []
    if plan.attn_implementation:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.set_attn_implementation(plan.attn_implementation)
        if base.config._attn_implementation == plan.attn_implementation:
            done.append(plan.attn_implementation)
            say(f"attention: {plan.attn_implementation} (packed rows as variable-length sequences)")
    if plan.packed_attention:
        from finetui.engine.perf.attention import use_packed_sdpa

        # sdpa on a packed row needs an L x L mask, and with a mask the CPU kernels do the
        # whole row's attention; per example it is ~5x less work (engine/perf/attention.py).
        if use_packed_sdpa(model):
            done.append("sdpa_packed")
            say("packing: attention runs per example, equal lengths as one batch (sdpa_packed)")
    if plan.fused_lora:
        from finetui.engine.perf import fused_lora

        # LoRA linears sharing an input (q/k/v, gate/up) as one autograd function: same
        # gradients, fewer and larger matmuls (engine/perf/fused_lora.py)
        fused = fused_lora.apply(model)
        if fused:
            done.append("fused_lora")
            mlps = fused_lora.fused_mlps(model)
            say(f"LoRA: {fused} linears run fused (q/k/v and gate/up together"
                + (f"; {mlps} MLPs as one function each)" if mlps else ")"))
    if plan.fused_layers:
        from finetui.engine.perf import fused_layers

        # rotary embedding and RMSNorm as one autograd function each where the model runs
        # Llama's code for them: same results, fewer kernels (engine/perf/fused_layers.py)
        replaced = fused_layers.apply(model)
        if replaced:
            done.append("fused_layers")
            say(f"{' and '.join(replaced)} run as single functions")
    if plan.fused_loss:
        from finetui.engine.perf import fused_loss

        # the LM head and the cross-entropy as one function, block by block, the gradient
        # taken in the forward: no vocabulary-wide tensor kept (engine/perf/fused_loss.py)
        if fused_loss.apply(model):
            done.append("fused_loss")
            say("LM head and loss run as one function, in blocks of rows")
    return done
