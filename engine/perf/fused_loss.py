"""The LM head and the cross-entropy as one function, a block of rows at a time.

Heavy module (torch, transformers): the trainer process only.

A causal LM's training loss projects the hidden states to the vocabulary (N x V logits),
takes ``log_softmax`` and picks the targets; autograd then keeps the N x V log-probabilities,
fills an N x V zero tensor for the gradient of the pick, runs ``log_softmax``'s backward
over N x V, and multiplies by the head's weight. Here (the idea of Liger-Kernel's and
Apple's cut-cross-entropy fused linear cross-entropy, whose kernels are CUDA/Triton only),
for each block of rows::

    logits = h @ W^T (+ b)         log_p = log_softmax(logits)
    loss  += -sum(log_p[target])   dlogits = exp(log_p) - onehot(target)
    dh     = dlogits @ W           dW += dlogits^T @ h (only if the head trains)

so the gradient is computed in the forward and backward only scales it by the incoming
gradient. No N x V tensor outlives its block: on a large vocabulary the logits, the largest
activation, never exist whole (Qwen2.5-0.5B's head, 2,048 trained tokens, forward and
backward on the CPU: 4.5 s and no memory above the inputs, against 6.6 s and 3.1 GB
unfused; on the tiny model it is as fast as unfused, 1.01x a step; ``python
benchmarks/fused_loss.py``, ``benchmarks/step_levers.py``). Same loss and
gradients as transformers' ``ForCausalLMLoss`` (tests/test_fused_loss.py): a sum over the
targets that are not -100, divided by ``num_items_in_batch`` when the Trainer passes it,
otherwise by their count; logits in float32 as there.

Applied per model instance, only where the causal-LM forward is transformers'
``LlamaForCausalLM.forward`` code (Llama, Qwen2/3, Mistral and others generated from it),
the head a plain ``nn.Linear`` without hooks and the loss ``ForCausalLMLoss``; and per call
only in training mode with gradients on and labels: evaluation and generation, which want
the logits, run the model's own forward. When the head trains (full fine-tuning) its
gradient is kept in float32 from forward to backward. Used only with ``train.kernels: auto``
on float32 weights without autocast (engine.perf.plan).
"""

from __future__ import annotations

import inspect
import types

import torch

IGNORE_INDEX = -100
# Logits kept at once, in elements (rows x vocabulary): 16 MB of float32. A small
# vocabulary goes in one block (tiny model, 1,490 x 1,024 logits, forward + backward:
# 2.6 ms in one block, 3.0 in blocks of 512 rows, 2.9 unfused); a large one in blocks of
# at least MIN_ROWS rows, as every block reads the whole weight twice (151,936 x 896:
# 1,024 rows in blocks of 128 take 109 ms, of 256 100 ms, unfused 106 ms).
BLOCK_ELEMENTS = 1 << 22
MIN_ROWS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows with target != -100 of -log_softmax(h @ W^T + b)[target].
    Arguments: hidden (N, d), weight (V, d), bias (V,) or None, targets, rows per block, and
    rows: None (every row of hidden, N targets) or the indices of the rows that have a
    target (gathered here, and their gradients scattered back: cheaper than the backward of
    a boolean index, which accumulates into a zero tensor one row at a time)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, block_rows: int, rows):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = None
        if need_h:
            grad_h = torch.empty_like(hidden) if rows is None else torch.zeros_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        trained = 0
        for start in range(0, targets.shape[0], block_rows):
            if rows is None:
                h = hidden[start:start + block_rows]
            else:
                index = rows[start:start + block_rows]
                h = hidden.index_select(0, index)
            target = targets[start:start + block_rows]
            logits = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())
            log_p = torch.log_softmax(logits.float(), -1)
            ignored = target == IGNORE_INDEX
            safe = target.masked_fill(ignored, 0).unsqueeze(1)
            picked = log_p.gather(1, safe).squeeze(1)
            total -= picked.masked_fill(ignored, 0.0).sum()
            if not (need_h or need_w or need_b):
                continue
            d_logits = log_p.exp_()  # softmax, in the log-probabilities' memory
            d_logits.scatter_add_(1, safe, torch.full_like(picked, -1.0).unsqueeze(1))
            n_ignored = int(ignored.sum())
            trained += target.shape[0] - n_ignored
            if n_ignored:
                d_logits[ignored] = 0.0
            d_logits = d_logits.to(weight.dtype)
            if need_h and rows is None:
                torch.mm(d_logits, weight, out=grad_h[start:start + block_rows])
            elif need_h:
                grad_h.index_copy_(0, index, d_logits @ weight)
            if need_w:
                grad_w.addmm_(d_logits.t().float(), h.float())
            if need_b:
                grad_b += d_logits.float().sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.trained = trained > 0
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        saved = list(ctx.saved_tensors)
        if not ctx.trained:
            # no target: zero gradients, as torch's cross-entropy gives, even though the
            # loss (0 / 0) and so the incoming gradient are NaN
            grad = torch.zeros_like(grad)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        grad_h = grad_w = grad_b = None
        if need_h:
            grad_h = saved.pop(0)
            grad_h = grad_h * grad.to(grad_h.dtype)
        if need_w:
            grad_w = (saved.pop(0) * grad).to(ctx.weight_dtype)
        if need_b:
            grad_b = (saved.pop(0) * grad).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b, None, None, None


def linear_cross_entropy(hidden, weight, bias, targets, num_items_in_batch=None, block_rows: int | None = None,
                         keep=None):
    """transformers' ``ForCausalLMLoss`` of ``hidden @ weight^T + bias`` against ``targets``
    (already shifted; -100 is not trained), without keeping the logits: the sum of the
    targets' cross-entropies over ``num_items_in_batch``, or their mean when it is None.
    ``keep``: a boolean mask over hidden's rows (all dimensions but the last), the rows
    ``targets`` belong to, as transformers' ``logits_to_keep``; None: every row."""
    rows = None
    if keep is not None:
        if keep.shape != hidden.shape[:-1]:
            raise ValueError(f"a mask of shape {tuple(keep.shape)} for hidden states of shape {tuple(hidden.shape)}")
        rows = keep.reshape(-1).nonzero().squeeze(1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    n = hidden.shape[0] if rows is None else rows.shape[0]
    if targets.shape[0] != n:
        raise ValueError(f"{targets.shape[0]} targets for {n} hidden states")
    if block_rows is None:
        block_rows = max(MIN_ROWS, BLOCK_ELEMENTS // weight.shape[0])
    total = _LinearCrossEntropy.apply(hidden, weight, bias, targets, block_rows, rows)
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def apply(model) -> bool:
    """Compute the training loss of ``model`` (a transformers causal LM, or a peft model
    around one) with :func:`linear_cross_entropy`; returns whether it could (see the module
    docstring for where)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    from finetui.engine.perf.fused_layers import _same_code, hooked

    try:  # where Llama's forward is the code below, these exist
        from transformers.loss.loss_utils import ForCausalLMLoss
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (not _same_code(inspect.unwrap(type(base).forward), inspect.unwrap(LlamaForCausalLM.forward))
            or "forward" in vars(base) or type(getattr(base, "lm_head", None)) is not torch.nn.Linear
            or getattr(base, "loss_function", None) is not ForCausalLMLoss):
        return False

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        head = self.lm_head
        shift_labels = kwargs.get("shift_labels")
        return_dict = kwargs.get("return_dict")  # as transformers' can_return_tuple reads it
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if (labels is None or not self.training or not torch.is_grad_enabled() or not return_dict
                # a head with hooks, or a forward put on it (accelerate's offloading), must be called
                or type(head) is not torch.nn.Linear or hooked(head) or "forward" in vars(head)
                or self.loss_function is not ForCausalLMLoss or "ignore_index" in kwargs
                or (shift_labels is None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0))):
            return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values,
                                      inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                                      logits_to_keep=logits_to_keep, **kwargs)
        kwargs.pop("return_dict", None)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        hidden, keep = outputs.last_hidden_state, None
        if (isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool
                and logits_to_keep.shape == hidden.shape[:-1]):
            keep = logits_to_keep  # the trainer's trained positions: gathered inside
        else:
            hidden = slice_logits_to_keep(hidden, logits_to_keep)
        if shift_labels is None:  # ForCausalLMLoss: position i predicts label i + 1
            shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        loss = linear_cross_entropy(hidden, head.weight, head.bias, shift_labels, kwargs.get("num_items_in_batch"),
                                    keep=keep)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    # bound to the model (a deep copy gets its own), its modules read at each call
    base.forward = types.MethodType(forward, base)
    return True
