"""Fused LoRA linears (engine/perf/fused_lora.py) compute what peft computes.

The model is a small random Qwen2 (grouped-query attention, so k/v are narrower than q, and
biases on q/k/v only), wrapped twice by peft with the same non-zero LoRA weights; one copy
is fused. Outputs, losses, gradients and a few optimizer steps must agree with peft's to
float rounding. A wrong block of the block-diagonal B, a missing scaling or a dropped bias
moves them by orders of magnitude more than the tolerance.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetui.engine import config as cfg  # noqa: E402
from finetui.engine.perf import fused_lora  # noqa: E402
from model_helpers import loss_and_grads, packed_batch, padded_batch  # noqa: E402

TOLERANCE = 1e-5


def make_model(seed: int = 0, **lora_options):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()  # initialised to zero: a dropped bias would go unnoticed
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False,
                      **lora_options)
    model = get_peft_model(model, lora)  # init_lora_weights=False: B != 0, LoRA changes the output
    model.train()
    return model


@pytest.fixture
def pair():
    return make_model(), make_model()


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_same_outputs_and_gradients(pair, make_batch):
    """The LoRA product added into the float32 weight gives peft's outputs and gradients."""
    peft_model, fused_model = pair
    assert fused_lora.apply(fused_model) == 2 * 7  # every LoRA linear of both layers
    assert fused_lora.fused_mlps(fused_model) == 2  # and each MLP as one function
    batch = make_batch()
    expected, expected_grads = loss_and_grads(peft_model, batch)
    got, grads = loss_and_grads(fused_model, batch)
    assert torch.allclose(got.logits, expected.logits, atol=TOLERANCE)
    assert abs(float(got.loss) - float(expected.loss)) < TOLERANCE
    assert largest_difference(grads, expected_grads) < TOLERANCE
    assert max(float(g.abs().max()) for g in grads.values()) > 100 * TOLERANCE  # the check has teeth


def test_training_steps_and_saved_adapter_match(pair, tmp_path):
    from peft import get_peft_model_state_dict

    peft_model, fused_model = pair
    fused_lora.apply(fused_model)
    for model in pair:
        assert model.base_model.model.model.layers[0].self_attn.k_proj.base_layer.bias is not None
        # SGD: Adam would blow float rounding in near-zero gradients up to whole steps
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for batch in (packed_batch(), padded_batch(), packed_batch()):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    expected, got = get_peft_model_state_dict(peft_model), get_peft_model_state_dict(fused_model)
    assert largest_difference(got, expected) < TOLERANCE
    fused_model.save_pretrained(tmp_path / "adapter")  # saves like any peft model
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_group_is_one_computation_and_shares_base_weights(pair, monkeypatch):
    _, model = pair
    fused_lora.apply(model)
    attention = model.base_model.model.model.layers[0].self_attn
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    # the base weights are rows of one matrix: nothing duplicated
    assert k.base_layer.weight.data_ptr() == q.base_layer.weight.data_ptr() + q.base_layer.weight.numel() * 4
    calls = []
    original = fused_lora.Group.compute
    monkeypatch.setattr(fused_lora.Group, "compute", lambda self, x: calls.append(len(self.layers)) or original(self, x))
    model(**packed_batch())
    # per layer: q/k/v once, o once; the MLP (gate/up and down) is one _LoraSwiGLU
    assert calls == [3, 1] * 2


def first_layer_modules(pair, name: str):
    """(peft's, fused) ``name`` module of the first layer, the second model fused."""
    peft_model, model = pair
    fused_lora.apply(model)
    return (getattr(m.base_model.model.model.layers[0], name) for m in (peft_model, model))


def test_member_called_with_another_input_gets_its_own_result(pair):
    peft_attn, fused_attn = first_layer_modules(pair, "self_attn")
    x, y = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    assert torch.allclose(fused_attn.q_proj(x), peft_attn.q_proj(x), atol=TOLERANCE)
    assert torch.allclose(fused_attn.k_proj(y), peft_attn.k_proj(y), atol=TOLERANCE)  # not q's input
    # the group fell apart into single linears, which stay correct
    assert torch.allclose(fused_attn.v_proj(x), peft_attn.v_proj(x), atol=TOLERANCE)
    assert torch.allclose(fused_attn.k_proj(x), peft_attn.k_proj(x), atol=TOLERANCE)
    # an input modified in place after q read it is not taken for the same input
    z = torch.randn(1, 5, 32)
    fused_attn.q_proj(z)
    z.add_(1.0)
    assert torch.allclose(fused_attn.k_proj(z), peft_attn.k_proj(z), atol=TOLERANCE)


def test_disabled_adapter_gives_the_base_model(pair):
    peft_model, model = pair
    fused_lora.apply(model)
    batch = packed_batch()
    with torch.no_grad():
        with peft_model.disable_adapter():
            base = peft_model(**batch).logits
        with model.disable_adapter():
            got = model(**batch).logits
        tuned = model(**batch).logits
    assert torch.allclose(got, base, atol=TOLERANCE)
    assert not torch.allclose(tuned, base, atol=1e-3)


def test_dropout_is_left_to_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1))
    assert fused_lora.apply(model) == 0  # a dropout mask per linear: not one computation


def test_which_runs_use_it():
    from finetui.engine import perf

    assert cfg.Config.model_validate({"model": {"name_or_path": "tiny"}, "data": {"path": "x.jsonl"}}).method.lora_dropout == 0.0
    assert perf.plan("auto", "cpu", False).fused_lora
    assert not perf.plan("auto", "cpu", True).fused_lora  # autocast: peft's path
    assert not perf.plan("auto", "cpu", False, dtype="bfloat16").fused_lora  # 16-bit weights: peft's path
    assert not perf.plan("auto", "cpu", False, lora_dropout=0.05).fused_lora
    assert not perf.plan("auto", "cpu", False, method="qlora").fused_lora
    assert not perf.plan("auto", "cpu", False, method="full").fused_lora
    assert not perf.plan("reference", "cpu", False).fused_lora


def test_16_bit_layers_keep_peft_forward():
    """Only float32 weights are fused (the LoRA product would round away in W + BD @ A)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert fused_lora.apply(model) == 0


def test_model_cast_after_fusing_falls_back_to_peft(pair):
    peft_model, model = pair
    fused_lora.apply(model)
    peft_model.double()
    model.double()  # the group's concatenated matrix stays float32: peft's own forward runs
    batch = packed_batch()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, peft_model(**batch).logits, atol=1e-9)


def test_mlp_whose_group_fell_apart_runs_its_own_forward(pair, monkeypatch):
    peft_mlp, fused_mlp = first_layer_modules(pair, "mlp")
    x, y = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    assert torch.allclose(fused_mlp(x), peft_mlp(x), atol=TOLERANCE)
    fused_mlp.gate_proj(x)
    fused_mlp.gate_proj(y)  # up never took its output for x: gate/up fall apart into single linears
    assert torch.allclose(fused_mlp(x), peft_mlp(x), atol=TOLERANCE)
    calls = []
    original = fused_lora._LoraSwiGLU.apply
    monkeypatch.setattr(fused_lora._LoraSwiGLU, "apply", lambda *a: calls.append(1) or original(*a))
    x.requires_grad_(True)
    fused_mlp(x).sum().backward()
    assert calls == []  # the MLP's own forward ran
    assert all(p.grad is not None for n, p in fused_mlp.named_parameters() if "lora_" in n)


def test_mlp_with_a_hooked_linear_runs_its_own_forward(pair, monkeypatch):
    """A backward hook on one of its linears (or a global hook): the MLP function would
    skip it, so the modules run and the hook fires."""
    _, fused_mlp = first_layer_modules(pair, "mlp")
    calls, fired = [], []
    original = fused_lora._LoraSwiGLU.apply
    monkeypatch.setattr(fused_lora._LoraSwiGLU, "apply", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(1, 5, 32, requires_grad=True)
    fused_mlp(x).sum().backward()
    assert calls == [1]
    handle = fused_mlp.down_proj.register_full_backward_hook(lambda *a: fired.append(1))
    fused_mlp(x).sum().backward()
    assert calls == [1] and fired == [1]
    handle.remove()
    with torch.nn.modules.module.register_module_forward_hook(lambda *a: fired.append(2)):
        fused_mlp(x)
    assert calls == [1] and 2 in fired


def test_ranks_and_scalings_per_linear():
    """gate, up and down with their own ranks and alphas (a swapped rank, scaling or width
    inside the MLP function would show)."""
    options = {"rank_pattern": {"up_proj": 2, "down_proj": 3}, "alpha_pattern": {"gate_proj": 4, "v_proj": 2}}
    peft_model, fused_model = make_model(**options), make_model(**options)
    fused_lora.apply(fused_model)
    assert fused_lora.fused_mlps(fused_model) == 2
    mlp = fused_model.base_model.model.model.layers[0].mlp
    assert (mlp.up_proj.lora_A["default"].weight.shape[0], mlp.gate_proj.scaling["default"]) == (2, 1.0)
    for batch in (packed_batch(), padded_batch()):
        expected, expected_grads = loss_and_grads(peft_model, batch)
        got, grads = loss_and_grads(fused_model, batch)
        assert torch.allclose(got.logits, expected.logits, atol=TOLERANCE)
        assert largest_difference(grads, expected_grads) < TOLERANCE


def test_unloaded_adapter_gives_the_base_model():
    """After peft's unload() the MLP's linears are plain again: no LoRA may be added."""
    peft_model, fused_model = make_model(), make_model()
    fused_lora.apply(fused_model)
    batch = packed_batch()
    with torch.no_grad():
        expected = peft_model.unload()(**batch).logits
        got = fused_model.unload()(**batch).logits
    assert torch.allclose(got, expected, atol=TOLERANCE)
