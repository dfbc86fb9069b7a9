"""Fused rotary embedding and RMSNorm (engine/perf/fused_layers.py) compute what transformers does.

Two copies of a small random model with the same weights; one gets the fused functions.
Logits, loss and every gradient must agree to float rounding, for padded and packed
batches, with LoRA and with full fine-tuning (where the RMSNorm weights train). A wrong
sign in sin', a roll the wrong way or a missing term in RMSNorm's backward moves them by
orders of magnitude more than the tolerance.
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

from finetui.engine.perf import fused_layers  # noqa: E402
from model_helpers import loss_and_grads, packed_batch, padded_batch, with_lora  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def restore_modules():
    """apply() replaces a module-level function of the model's module: put it back."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.apply_rotary_pos_emb
    yield
    fused_layers.restore()
    assert modeling_llama.apply_rotary_pos_emb is original


def make_model(kind: str, lora: bool, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  attn_implementation="sdpa")
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(head_dim=8, **common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)  # initialised to ones: a dropped weight would go unnoticed
    return with_lora(model, lora)


def reference_run(model, batch):
    """The model with transformers' own rotary embedding (apply() replaces it module-wide)."""
    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    replaced = {m: m.apply_rotary_pos_emb for m in modules if hasattr(getattr(m, "apply_rotary_pos_emb", None),
                                                                      "finetui_original")}
    try:
        for m, f in replaced.items():
            m.apply_rotary_pos_emb = f.finetui_original
        return loss_and_grads(model, batch)
    finally:
        for m, f in replaced.items():
            m.apply_rotary_pos_emb = f


def compare(reference, fused, batch):
    expected, expected_grads = reference_run(reference, batch)
    got, grads = loss_and_grads(fused, batch)
    assert torch.allclose(got.logits, expected.logits, atol=TOLERANCE)
    assert abs(float(got.loss) - float(expected.loss)) < TOLERANCE
    assert grads.keys() == expected_grads.keys()
    assert max(float((grads[k] - expected_grads[k]).abs().max()) for k in grads) < TOLERANCE
    assert max(float(g.abs().max()) for g in grads.values()) > 100 * TOLERANCE  # the check has teeth
    return grads


@pytest.mark.parametrize("expand", [True, False], ids=["tables-expanded", "tables-broadcast"])
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,lora", [("llama", True), ("llama", False), ("qwen2", True)])
def test_same_outputs_and_gradients(kind, lora, make_batch, expand, monkeypatch):
    if not expand:
        monkeypatch.setattr(fused_layers, "EXPAND_LIMIT", 0)
    reference, fused = make_model(kind, lora), make_model(kind, lora)
    assert fused_layers.apply(fused) == ["rotary", "RMSNorm"]
    norms = [m for m in fused.modules() if "forward" in vars(m)]
    assert len(norms) == 2 * 2 + 1  # two per layer and the final one
    grads = compare(reference, fused, make_batch())
    if not lora:  # full fine-tuning: the RMSNorm weights get their gradients
        assert any("norm" in name and g.abs().max() > 0 for name, g in grads.items())


def test_reference_itself_differs_from_a_wrong_rotary(monkeypatch):
    """The comparison above can fail: the same models with sin' not negated disagree."""
    reference, fused = make_model("llama", True), make_model("llama", True)
    fused_layers.apply(fused)
    original_tables = fused_layers._rotary_tables

    def wrong(cos, sin, heads):
        c, s = original_tables(cos, sin, heads)
        return c, s.abs()

    monkeypatch.setattr(fused_layers, "_rotary_tables", wrong)
    with pytest.raises(AssertionError):
        compare(reference, fused, packed_batch())


def test_other_code_is_left_alone():
    """Gemma's RMSNorm scales by 1 + weight: not Llama's code, so it keeps its own forward
    (its rotary embedding is Llama's and is replaced); results still agree."""
    reference, fused = make_model("gemma", True), make_model("gemma", True)
    assert fused_layers.apply(fused) == ["rotary"]
    assert not any("forward" in vars(m) for m in fused.modules())
    compare(reference, fused, padded_batch())


def test_unusual_calls_take_the_original_code():
    from transformers.models.llama import modeling_llama

    original = modeling_llama.apply_rotary_pos_emb
    fused = fused_layers.rotary(original)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    cos, sin = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    for args, kwargs in [((q, k, cos, sin), {}),
                         ((q.transpose(1, 2), k.transpose(1, 2), cos, sin), {"unsqueeze_dim": 2}),
                         ((q.double(), k.double(), cos, sin), {})]:
        for got, expected in zip(fused(*args, **kwargs), original(*args, **kwargs)):
            assert torch.allclose(got, expected, atol=1e-6)


def test_same_code_tells_functions_apart():
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    assert fused_layers._same_code(modeling_qwen2.apply_rotary_pos_emb, modeling_llama.apply_rotary_pos_emb)

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        cos = cos.unsqueeze(unsqueeze_dim)
        sin = sin.unsqueeze(unsqueeze_dim)
        q_embed = (q * cos) - (modeling_llama.rotate_half(q) * sin)
        k_embed = (k * cos) + (modeling_llama.rotate_half(k) * sin)
        return q_embed, k_embed

    assert not fused_layers._same_code(apply_rotary_pos_emb, modeling_llama.apply_rotary_pos_emb)


def test_which_runs_use_it():
    from finetui.engine import perf

    assert perf.plan("auto", "cpu", False).fused_layers
    assert not perf.plan("auto", "cpu", True).fused_layers  # autocast
    assert not perf.plan("auto", "cpu", False, dtype="bfloat16").fused_layers
    assert not perf.plan("reference", "cpu", False).fused_layers
