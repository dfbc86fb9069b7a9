"""LoRA linears that read the same input, computed as one: fewer, larger matmuls.

Heavy module (torch, peft): the trainer process only.

peft computes every LoRA linear on its own, ``base(x) + B(A(dropout(x))) * scaling``: three
matmuls forward and five backward per layer, each with its autograd nodes (views,
transposes, a scaling multiply, an add). In a Llama block q/k/v read the same tensor, and
so do gate/up. Here such a group is one autograd function::

    out = x @ [W_q; W_k; W_v]^T + (x @ [A_q; A_k; A_v]^T) @ blockdiag(s_q B_q, s_k B_k, s_v B_v)^T

and the output is cut back into one tensor per linear: 3 matmuls forward and 5 backward
for the whole group (24 -> 8 for q/k/v), with no other autograd nodes. The LoRA product is
added into the (float32) weight first, ``x @ (W + BD @ A)^T``: one matmul over the tokens
forward instead of three (``x @ A^T`` is recomputed in backward, where it is needed). Only
float32 (and float64) weights are fused: in a 16-bit dtype W + BD @ A would round the small
LoRA term away, and 16-bit training runs under autocast, where this module is off anyway
(engine.perf.plan); such layers keep peft's forward.
Linears outside a group (o_proj, down_proj, any other target) get the same function for
one, which saves the nodes. A Llama-style MLP (transformers' ``LlamaMLP`` code: Llama,
Qwen2/3, Mistral, ...) whose gate/up group and down linear are all fused runs as one
function, ``down(silu(gate(x)) * up(x))`` (``_LoraSwiGLU``): no per-linear copies of the
gate/up output, no concatenation of their gradients, one activation fewer kept for
backward (``+fused-mlp`` in benchmarks/step_levers.py).
Same maths, same parameters: the gradients match peft's to float rounding
(tests/test_fused_lora.py), the adapter saves as before, and the frozen base weights are
re-pointed into the concatenated matrix, so no memory is duplicated.

Whichever linear of a group is called first computes the group and keeps the others'
outputs, which they take only if they are called with that very tensor (same object, not
modified since); anything else (another input, adapters disabled or merged, a mixed-adapter
batch, a dtype change) runs peft's own forward. A group whose members turn out not to
share their input falls apart into single linears for good.

Used for plain LoRA without dropout on an unquantised model in one dtype (no autocast):
dropout draws a separate mask per linear, and the quantised and DoRA variants have their
own forwards. Used only with ``train.kernels: auto`` on float32 weights without autocast
(engine.perf.plan).
"""

from __future__ import annotations

import torch

# Llama-style MLPs as one function (benchmarks/step_levers.py measures it off)
FUSE_MLP = True
# Sibling linears that read one tensor, by name (Llama, Qwen, Mistral, Gemma, Phi-3's
# MLP, OLMo, ...). Whether they really do is checked on every call.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("gate_up_proj",), ("w1", "w3"))
ADAPTER = "default"
# dtypes precise enough to add the LoRA product into the weight: the only ones fused
DTYPES = (torch.float32, torch.float64)


def _lora_matrices(a, b, scalings) -> tuple:
    """A = [A_1; ...; A_k] and BD = blockdiag(s_1 B_1, ..., s_k B_k)."""
    lora_a = a[0] if len(a) == 1 else torch.cat(a, 0)
    lora_bd = b[0] * scalings[0] if len(b) == 1 else torch.block_diag(*(w * s for w, s in zip(b, scalings)))
    return lora_a, lora_bd


def _lora_forward(x2, weight, bias, lora_a, lora_bd):
    """x2 @ W^T + bias + (x2 @ A^T) @ BD^T, as x2 @ (W + BD @ A)^T + bias: the input meets
    one matrix (one matmul instead of three; BD @ A is out x in x r, nothing next to tokens x
    out x in)."""
    weight = torch.addmm(weight, lora_bd, lora_a)
    return x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())


def _lora_backward(g2, x2, weight, lora_a, lora_bd, need_x: bool, sizes, ranks, scalings) -> tuple:
    """Gradients of :func:`_lora_forward` for the output gradient g2: (grad_x2 or None,
    [grad A_i], [grad B_i])."""
    grad_h = g2 @ lora_bd
    grad_x = g2 @ torch.addmm(weight, lora_bd, lora_a) if need_x else None
    grad_a = (grad_h.t() @ x2).split(ranks, 0)
    h = x2 @ lora_a.t()  # recomputed here, where it is needed
    grad_bd = g2.t() @ h  # only its diagonal blocks are wanted: k x the FLOPs of k small matmuls, in one
    grad_b, row, col = [], 0, 0
    for size, rank, scaling in zip(sizes, ranks, scalings):
        grad_b.append(grad_bd[row:row + size, col:col + rank] * scaling)
        row, col = row + size, col + rank
    return grad_x, grad_a, grad_b


class _LoraLinears(torch.autograd.Function):
    """x @ W^T + bias + (x @ A^T) @ BD^T for k linears at once, W and bias frozen, where
    A = [A_1; ...; A_k] and BD = blockdiag(s_1 B_1, ..., s_k B_k). Arguments: x, W, bias,
    scalings, A_1..A_k, B_1..B_k; the gradients of the A's and B's are cut from the
    gradients of A and BD, so concatenating them costs no autograd nodes."""

    @staticmethod
    def forward(ctx, x, weight, bias, scalings, *lora):
        k = len(lora) // 2
        a, b = lora[:k], lora[k:]
        lora_a, lora_bd = _lora_matrices(a, b, scalings)
        x2 = x.reshape(-1, x.shape[-1])
        out = _lora_forward(x2, weight, bias, lora_a, lora_bd)
        ctx.save_for_backward(x2, weight, lora_a, lora_bd)
        ctx.x_shape, ctx.scalings = x.shape, scalings
        ctx.ranks, ctx.sizes = [w.shape[0] for w in a], [w.shape[0] for w in b]
        out = out.view(*x.shape[:-1], out.shape[-1])
        if k == 1:
            return out
        # One tensor per linear, not views of the group's: a view that the model keeps for
        # its backward (v, by attention) would keep the whole q/k/v output alive
        # (20M model, cutoff 1024, 20 steps: 2,161 MB peak RSS with views, 2,038 without).
        return tuple(part.contiguous() for part in out.split(ctx.sizes, -1))

    @staticmethod
    def backward(ctx, *grads):
        x2, weight, lora_a, lora_bd = ctx.saved_tensors
        if len(grads) == 1:
            grad = grads[0]
        else:  # an output nobody used has no gradient
            grad = torch.cat([g if g is not None else x2.new_zeros(*ctx.x_shape[:-1], n)
                              for g, n in zip(grads, ctx.sizes)], -1)
        grad_x, grad_a, grad_b = _lora_backward(
            grad.reshape(-1, grad.shape[-1]), x2, weight, lora_a, lora_bd, ctx.needs_input_grad[0],
            ctx.sizes, ctx.ranks, ctx.scalings)
        if grad_x is not None:
            grad_x = grad_x.view(ctx.x_shape)
        return (grad_x, None, None, None, *grad_a, *grad_b)


class _LoraSwiGLU(torch.autograd.Function):
    """A Llama MLP whose three linears carry LoRA: down(silu(gate(x)) * up(x)), with gate
    and up as one group. Arguments: x, the gate/up group's W (gate rows, then up), down's
    W, the two groups' scalings, then A_gate, A_up, B_gate, B_up, A_down, B_down.

    gate and up come out of two matmuls against row blocks of the group's weight (each
    contiguous, so SiLU runs over contiguous memory); saved are x, gate, up and silu(gate)
    (3 activations of the MLP's width per token, where the modules' own autograd keeps 4:
    gate, silu(gate), up and their product, which backward recomputes with one multiply),
    and the gate/up gradient is written as one tensor (no per-linear copies forward, no
    concatenation backward)."""

    @staticmethod
    def forward(ctx, x, gu_weight, down_weight, gu_scalings, down_scalings, *lora):
        gu_a, gu_bd = _lora_matrices(lora[0:2], lora[2:4], gu_scalings)
        down_a, down_bd = _lora_matrices(lora[4:5], lora[5:6], down_scalings)
        x2 = x.reshape(-1, x.shape[-1])
        inter = lora[2].shape[0]  # gate's width
        weight = torch.addmm(gu_weight, gu_bd, gu_a)
        gate, up = x2 @ weight[:inter].t(), x2 @ weight[inter:].t()
        silu = torch.nn.functional.silu(gate)
        out = _lora_forward(silu * up, down_weight, None, down_a, down_bd)
        ctx.save_for_backward(x2, gate, up, silu, gu_weight, gu_a, gu_bd, down_weight, down_a, down_bd)
        ctx.x_shape, ctx.scalings = x.shape, (gu_scalings, down_scalings)
        ctx.gu_sizes, ctx.gu_ranks = [lora[2].shape[0], lora[3].shape[0]], [lora[0].shape[0], lora[1].shape[0]]
        ctx.down_sizes, ctx.down_ranks = [lora[5].shape[0]], [lora[4].shape[0]]
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, gate, up, silu, gu_weight, gu_a, gu_bd, down_weight, down_a, down_bd = ctx.saved_tensors
        gu_scalings, down_scalings = ctx.scalings
        grad_act, grad_down_a, grad_down_b = _lora_backward(
            grad.reshape(-1, grad.shape[-1]), silu * up, down_weight, down_a, down_bd, True,
            ctx.down_sizes, ctx.down_ranks, down_scalings)
        inter = ctx.gu_sizes[0]
        grad_gu = gate.new_empty(gate.shape[0], 2 * inter)
        torch.mul(grad_act, silu, out=grad_gu[:, inter:])
        torch.ops.aten.silu_backward.grad_input(grad_act.mul_(up), gate, grad_input=grad_gu[:, :inter])
        grad_x, grad_gu_a, grad_gu_b = _lora_backward(
            grad_gu, x2, gu_weight, gu_a, gu_bd, ctx.needs_input_grad[0],
            ctx.gu_sizes, ctx.gu_ranks, gu_scalings)
        if grad_x is not None:
            grad_x = grad_x.view(ctx.x_shape)
        return (grad_x, None, None, None, None, *grad_gu_a, *grad_gu_b, *grad_down_a, *grad_down_b)


def fusable(layer) -> bool:
    """A peft LoRA Linear this module can compute: plain LoRA on an unquantised float32 (or
    float64) nn.Linear."""
    from peft.tuners.lora import Linear

    if type(layer) is not Linear or type(layer.base_layer) is not torch.nn.Linear:
        return False
    if list(layer.lora_A.keys()) != [ADAPTER] or ADAPTER in getattr(layer, "lora_variant", {}):
        return False
    if layer.fan_in_fan_out or getattr(layer, "lora_bias", {}).get(ADAPTER, False):
        return False
    dropout = layer.lora_dropout[ADAPTER]
    if not isinstance(dropout, torch.nn.Identity):
        return False
    dtypes = {layer.base_layer.weight.dtype, layer.lora_A[ADAPTER].weight.dtype, layer.lora_B[ADAPTER].weight.dtype}
    return len(dtypes) == 1 and layer.base_layer.weight.dtype in DTYPES


class Group:
    """LoRA linears computed together (see the module docstring)."""

    def __init__(self, layers: list):
        self.layers = layers
        self.sizes = [layer.base_layer.out_features for layer in layers]
        self.scalings = [float(layer.scaling[ADAPTER]) for layer in layers]
        self.pending: tuple | None = None  # (input, its version, grad mode, outputs not yet taken)
        self.split = False  # fell apart into single linears (see _split_up)
        weights = [layer.base_layer.weight for layer in layers]
        if len(layers) == 1:
            self.weight = weights[0].detach()
        else:
            # One matrix; each base layer's weight becomes a view of its rows (no copy kept).
            self.weight = torch.cat([w.detach() for w in weights], 0)
            start = 0
            for w, n in zip(weights, self.sizes):
                w.data = self.weight[start:start + n]
                start += n
        biases = [layer.base_layer.bias for layer in layers]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat([b.detach() if b is not None else self.weight.new_zeros(n)
                                   for b, n in zip(biases, self.sizes)])
        for i, layer in enumerate(layers):
            layer.forward = self._forward_of(i, layer)

    def _usable(self, layer, x, args, kwargs) -> bool:
        return (not args and not kwargs and not layer.disable_adapters and not layer.merged
                and layer.active_adapters == [ADAPTER] and x.dtype == self.weight.dtype
                and x.device == self.weight.device)  # a model moved or cast later: peft's path

    def compute(self, x) -> list:
        a, b = self.lora()
        out = _LoraLinears.apply(x, self.weight, self.bias, self.scalings, *a, *b)
        return [out] if len(self.layers) == 1 else list(out)

    def _forward_of(self, i: int, layer):
        peft_forward = type(layer).forward

        def forward(x, *args, **kwargs):
            if not self._usable(layer, x, args, kwargs):
                return peft_forward(layer, x, *args, **kwargs)
            pending = self.pending
            if pending is not None:
                px, version, grad_mode, outs = pending
                if px is x and version == x._version and grad_mode == torch.is_grad_enabled() and outs[i] is not None:
                    out, outs[i] = outs[i], None
                    if all(o is None for o in outs):
                        self.pending = None
                    return out
                self.pending = None
                if any(o is not None for j, o in enumerate(outs) if j != i):
                    self._split_up()  # a member was called with another input: not a group
                    return layer.forward(x)
            outs = self.compute(x)
            out, outs[i] = outs[i], None
            if len(outs) > 1:
                self.pending = (x, x._version, torch.is_grad_enabled(), outs)
            return out

        return forward

    def _split_up(self) -> None:
        self.split = True
        for layer in self.layers:
            Group([layer])

    def lora(self) -> tuple[list, list]:
        return ([layer.lora_A[ADAPTER].weight for layer in self.layers],
                [layer.lora_B[ADAPTER].weight for layer in self.layers])


def _fuse_mlp(mlp, gate_up: Group, down: Group) -> bool:
    """Run a Llama-style MLP (transformers' ``LlamaMLP.forward`` code, SiLU, no biases) whose
    gate/up group and down linear are fused as one :class:`_LoraSwiGLU`; anything else on a
    call (arguments, a group that fell apart, a member peft must run) takes its own forward."""
    from transformers.activations import SiLUActivation
    from transformers.models.llama.modeling_llama import LlamaMLP

    from finetui.engine.perf.fused_layers import _same_code, hooked

    if (not _same_code(type(mlp).forward, LlamaMLP.forward)
            or type(getattr(mlp, "act_fn", None)) not in (SiLUActivation, torch.nn.SiLU)
            or "forward" in vars(mlp)  # someone else's forward already (a hook library, a second apply)
            or gate_up.bias is not None or down.bias is not None or len(gate_up.layers) != 2
            or gate_up.layers != [mlp.gate_proj, mlp.up_proj] or down.layers != [mlp.down_proj]):
        return False
    own_forward = mlp.forward
    gate, up, down_layer = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    members = ((gate_up, gate), (gate_up, up), (down, down_layer))

    def forward(x, *args, **kwargs):
        if (args or kwargs or gate_up.split or down.split or gate_up.pending is not None
                # the linears replaced since (peft's unload, another adapter type) or hooked:
                # their own calls must run
                or mlp.gate_proj is not gate or mlp.up_proj is not up or mlp.down_proj is not down_layer
                or any(hooked(layer) for _, layer in members)
                or not all(group._usable(layer, x, (), {}) for group, layer in members)):
            return own_forward(x, *args, **kwargs)
        (a_gate, a_up), (b_gate, b_up) = gate_up.lora()
        (a_down,), (b_down,) = down.lora()
        return _LoraSwiGLU.apply(x, gate_up.weight, down.weight, gate_up.scalings, down.scalings,
                                 a_gate, a_up, b_gate, b_up, a_down, b_down)

    forward.finetui_fused_mlp = True
    mlp.forward = forward
    return True


def fused_mlps(model) -> int:
    """How many MLPs of ``model`` run as one function (see :func:`_fuse_mlp`)."""
    return sum(1 for m in model.modules() if getattr(m.__dict__.get("forward"), "finetui_fused_mlp", False))


def apply(model) -> int:
    """Fuse the model's LoRA linears (a peft model, or the model inside it), and its
    Llama-style MLPs where all three linears carry LoRA; returns how many linears now run
    fused (0: none could; :func:`fused_mlps` counts the MLPs)."""
    layers = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        groups: dict[str, Group] = {}
        for names in GROUPS:
            members = [children.get(n) for n in names]
            if len(members) > 1 and all(m is not None and fusable(m) for m in members):
                same = {(m.in_features, m.base_layer.weight.dtype, m.base_layer.weight.device) for m in members}
                if len(same) == 1:
                    group = Group(members)
                    groups.update(dict.fromkeys(names, group))
                    layers += len(members)
        for name, child in children.items():
            if name not in groups and fusable(child):
                groups[name] = Group([child])
                layers += 1
        if FUSE_MLP and "gate_proj" in groups and "down_proj" in groups:
            _fuse_mlp(parent, groups["gate_proj"], groups["down_proj"])
    return layers
