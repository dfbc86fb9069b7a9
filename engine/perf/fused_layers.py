"""Rotary embedding and RMSNorm of Llama-family models as one autograd function each.

Heavy module (torch, transformers): the trainer process only.

transformers writes both as a chain of small tensor ops, and autograd records each:

- ``apply_rotary_pos_emb``: ``q * cos + rotate_half(q) * sin``, where ``rotate_half``
  slices the head dimension in two, negates one half and concatenates them: 7 kernels a
  tensor forward and more backward, most of them striding over half a head at a time,
  with cos/sin broadcast over the heads.
- ``LlamaRMSNorm``: ``weight * (x * rsqrt(mean(x**2) + eps))``: 6 kernels forward, 10
  backward.

Here the rotary embedding is ``roll(q, d/2) * sin' + q * cos``, with ``sin'`` the sine
with its first half negated: a roll, a multiply and a fused multiply-add over the whole
tensor, and its backward is the same three kernels on the gradient (a roll by half the
head is its own inverse). cos and sin' are expanded over the heads once per forward and
shared by every layer, so the kernels run over contiguous memory. RMSNorm computes
``rstd`` once, saves it, and its backward is written out (4 kernels; the weight's gradient
only when the weight trains).

Same maths, so the same results to float rounding (tests/test_fused_layers.py). Used only
where the model's own code is transformers' Llama code: the model module's
``apply_rotary_pos_emb`` must be byte-code identical to Llama's (Qwen2, Mistral, Qwen3 and
most others copy it) and an RMSNorm class's ``forward`` identical to ``LlamaRMSNorm``'s
(Gemma's ``1 + weight``, for one, is not). The fast paths take float32 (RMSNorm) or one
dtype for q, k, cos and sin (rotary) and the usual shapes; anything else goes to the
original code. Used only with ``train.kernels: auto`` on float32 weights without autocast
(engine.perf.plan).
"""

from __future__ import annotations

import sys
import types

import torch

# cos/sin are expanded over the heads (contiguous kernels) up to this many elements;
# beyond, they broadcast (long head dimensions vectorise well enough that way)
EXPAND_LIMIT = 1 << 21


def _reference():
    from transformers.models.llama import modeling_llama

    return modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm.forward


def _same_code(a, b) -> bool:
    """Whether two functions are the same code (docstrings and line numbers aside)."""
    ca, cb = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if ca is None or cb is None:
        return False

    def consts(c):
        return tuple(x for x in c.co_consts if not isinstance(x, str))

    return (ca.co_code == cb.co_code and ca.co_names == cb.co_names and ca.co_varnames == cb.co_varnames
            and consts(ca) == consts(cb))


def hooked(module) -> bool:
    """Whether calling ``module`` would run hooks (its own or every module's), which a fused
    function that computes it without calling it would skip."""
    from torch.nn.modules import module as nn_module

    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks
                or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


# --------------------------------------------------------------------------- rotary


class _Rotary(torch.autograd.Function):
    """x (batch, heads, seq, head_dim) -> x * cos + roll(x, head_dim / 2) * sin', with cos
    and sin' (batch, seq, heads or 1, head_dim) in x's (batch, seq, heads) order."""

    @staticmethod
    def forward(ctx, x, cos, sin_signed):
        xt = x.transpose(1, 2)  # (batch, seq, heads, d): the memory order of a projection's output
        out = torch.roll(xt, xt.shape[-1] // 2, -1).mul_(sin_signed).addcmul_(xt, cos)
        ctx.save_for_backward(cos, sin_signed)
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        cos, sin_signed = ctx.saved_tensors
        gt = grad.transpose(1, 2)
        # the transpose of "roll by half" is "roll by half": the same three kernels
        return torch.roll(gt * sin_signed, gt.shape[-1] // 2, -1).addcmul_(gt, cos).transpose(1, 2), None, None


# [cos and sin of the last forward, {heads: (cos, sin')}]: every layer gets the same cos and sin
_tables: list = [None, None, {}]


def _rotary_tables(cos, sin, heads: int):
    if _tables[0] is not cos or _tables[1] is not sin:
        _tables[:] = [cos, sin, {}]
    tables = _tables[2].get(heads)
    if tables is None:
        half = sin.shape[-1] // 2
        sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        c, s = cos.unsqueeze(2), sin_signed.unsqueeze(2)  # (batch, seq, 1, d)
        if c.numel() * heads <= EXPAND_LIMIT:
            shape = (c.shape[0], c.shape[1], heads, c.shape[3])
            c, s = c.expand(shape).contiguous(), s.expand(shape).contiguous()
        tables = _tables[2][heads] = (c, s)
    return tables


def _rotary_fits(x, cos) -> bool:
    return (x.dim() == 4 and cos.dim() == 3 and x.dtype == cos.dtype and x.shape[-1] % 2 == 0
            and x.shape[-1] == cos.shape[-1] and x.shape[2] == cos.shape[1]
            and cos.shape[0] in (1, x.shape[0]) and x.device == cos.device)


def rotary(original):
    """A drop-in ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)`` that falls back to
    ``original`` for anything but (batch, heads, seq, head_dim) q/k and (batch, seq,
    head_dim) cos/sin of their dtype."""

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1, **kwargs):
        if (kwargs or unsqueeze_dim != 1 or cos.requires_grad or sin.requires_grad
                or not (_rotary_fits(q, cos) and _rotary_fits(k, cos)) or sin.shape != cos.shape
                or sin.dtype != cos.dtype):
            return original(q, k, cos, sin, unsqueeze_dim, **kwargs)
        qc, qs = _rotary_tables(cos, sin, q.shape[1])
        kc, ks = _rotary_tables(cos, sin, k.shape[1])
        return _Rotary.apply(q, qc, qs), _Rotary.apply(k, kc, ks)

    apply_rotary_pos_emb.finetui_original = original
    return apply_rotary_pos_emb


# --------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    """weight * x * rsqrt(mean(x^2) + eps) over the last dimension, float32."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        normed = x * rstd
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * normed).reshape(-1, x.shape[-1]).sum(0)
        if ctx.needs_input_grad[0]:
            # d/dx of x * rstd: rstd * (g - x_hat * mean(g * x_hat)), with g = grad * weight
            g = grad * weight
            dot = (g * normed).mean(-1, keepdim=True)
            grad_x = g.sub_(normed.mul_(dot)).mul_(rstd)
        return grad_x, grad_w, None


def _rms_forward(module, original):
    def forward(hidden_states):
        weight = module.weight
        if (hidden_states.dtype != torch.float32 or weight.dtype != torch.float32
                or weight.shape != hidden_states.shape[-1:] or weight.device != hidden_states.device):
            return original(hidden_states)
        return _RMSNorm.apply(hidden_states, weight, module.variance_epsilon)

    return forward


# --------------------------------------------------------------------------- applying

_replaced: dict = {}  # model module -> its own apply_rotary_pos_emb


def apply(model) -> list[str]:
    """Use the fused rotary embedding and RMSNorm where ``model`` (any wrapper of a
    transformers model) runs Llama's code for them; returns what was replaced ("rotary",
    "RMSNorm"), empty if nothing."""
    reference_rotary, reference_rms = _reference()
    done = []
    modules = {type(m).__module__ for m in model.modules()}
    for name in sorted(modules):
        module = sys.modules.get(name)
        current = getattr(module, "apply_rotary_pos_emb", None)
        if isinstance(current, types.FunctionType) and hasattr(current, "finetui_original"):
            done.append("rotary")  # already replaced (an earlier model of this class)
        elif isinstance(current, types.FunctionType) and _same_code(current, reference_rotary):
            module.apply_rotary_pos_emb = rotary(current)
            _replaced[module] = current
            done.append("rotary")
    norms = 0
    for m in model.modules():
        forward = getattr(type(m), "forward", None)
        if (isinstance(getattr(m, "weight", None), torch.Tensor) and hasattr(m, "variance_epsilon")
                and "forward" not in vars(m) and _same_code(forward, reference_rms)):
            m.forward = _rms_forward(m, types.MethodType(forward, m))
            norms += 1
    if norms:
        done.append("RMSNorm")
    return sorted(set(done), key=done.index)


def restore() -> None:
    """Give every model module its own rotary embedding back (RMSNorm is replaced per
    module instance, so it goes with the model)."""
    while _replaced:
        module, original = _replaced.popitem()
        module.apply_rotary_pos_emb = original
