"""The LM head and cross-entropy as one blocked function (engine/perf/fused_loss.py) give
transformers' loss and gradients.

The function against ``ForCausalLMLoss`` on explicit tensors (blocks of a few rows, ignored
targets in and across blocks, a bias, a head that trains, float32 and bfloat16), then whole
models: two copies with the same weights, one with the fused loss, must agree on the loss
and every gradient (LoRA and full fine-tuning, plain labels and the trainer's trained-logits
batches). A missing -1 at the target, an ignored row left in, a wrong scale or a block
skipped moves them by far more than the tolerance.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from finetui.engine.perf import fused_loss  # noqa: E402
from model_helpers import loss_and_grads, with_lora  # noqa: E402

TOLERANCE = 1e-5


def reference_loss(hidden, weight, bias, targets, num_items_in_batch=None):
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = hidden @ weight.t() if bias is None else hidden @ weight.t() + bias
    return ForCausalLMLoss(logits, None, weight.shape[0], num_items_in_batch=num_items_in_batch,
                           shift_labels=targets)


def tensors(dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(23, 16, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(50, 16, generator=g) * 0.3).to(dtype).requires_grad_()
    b = (torch.randn(50, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, 50, (23,), generator=g)
    targets[[0, 5, 6, 7, 22]] = -100  # ignored: at a block's start, across a block edge, last
    return hidden, weight, b, targets


def grads(loss, *params):
    return torch.autograd.grad(loss, [p for p in params if p is not None])


@pytest.mark.parametrize("block_rows", [1, 4, 7, 23, 100])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_items", [None, 31])
def test_function_matches_transformers_loss(block_rows, bias, num_items):
    hidden, weight, b, targets = tensors(bias=bias)
    ref = reference_loss(hidden, weight, b, targets, num_items)
    ours = fused_loss.linear_cross_entropy(hidden, weight, b, targets, num_items, block_rows=block_rows)
    assert ours.item() == pytest.approx(ref.item(), abs=TOLERANCE)
    for r, o in zip(grads(ref * 3.0, hidden, weight, b), grads(ours * 3.0, hidden, weight, b)):
        assert (r - o).abs().max().item() < TOLERANCE  # times 3: the incoming gradient is used


def test_function_in_bfloat16_matches_transformers_loss():
    """The logits rounded to bfloat16 as the head's matmul would, then float32, as transformers."""
    hidden, weight, _, targets = tensors(dtype=torch.bfloat16)
    ref = reference_loss(hidden, weight, None, targets, torch.tensor(20))
    ours = fused_loss.linear_cross_entropy(hidden, weight, None, targets, torch.tensor(20), block_rows=5)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), abs=1e-3)
    for r, o in zip(grads(ref, hidden, weight), grads(ours, hidden, weight)):
        assert r.dtype == o.dtype == torch.bfloat16
        assert (r.float() - o.float()).abs().max().item() < 2e-3


def test_only_the_wanted_gradients_are_computed():
    """A frozen head (LoRA) gets no gradient; hidden states alone still get theirs."""
    hidden, weight, _, targets = tensors()
    weight.requires_grad_(False)
    ours = fused_loss.linear_cross_entropy(hidden, weight, None, targets, block_rows=6)
    ref = reference_loss(hidden, weight, None, targets)
    (g_ours,), (g_ref,) = grads(ours, hidden), grads(ref, hidden)
    assert (g_ours - g_ref).abs().max().item() < TOLERANCE
    with torch.no_grad():  # evaluation: the loss alone
        assert fused_loss.linear_cross_entropy(hidden, weight, None, targets).item() == pytest.approx(ref.item(), abs=TOLERANCE)


@pytest.mark.parametrize("block_rows", [1, 3, 50])
def test_function_with_a_mask_of_rows_matches_indexing_first(block_rows):
    """keep= (the trainer's trained positions): the same as indexing the hidden states with
    the mask before, and rows left out get a zero gradient."""
    hidden, weight, b, _ = tensors(bias=True)
    batch = hidden.detach().reshape(1, 23, 16).requires_grad_()
    keep = torch.ones(1, 23, dtype=torch.bool)
    keep[0, [0, 1, 9, 10, 11, 22]] = False
    targets = torch.randint(0, 50, (int(keep.sum()),), generator=torch.Generator().manual_seed(4))
    targets[3] = -100
    ref = reference_loss(batch[keep], weight, b, targets, 40)
    ours = fused_loss.linear_cross_entropy(batch, weight, b, targets, 40, block_rows=block_rows, keep=keep)
    assert ours.item() == pytest.approx(ref.item(), abs=TOLERANCE)
    got, want = grads(ours * 2.0, batch, weight, b), grads(ref * 2.0, batch, weight, b)
    for r, o in zip(want, got):
        assert (r - o).abs().max().item() < TOLERANCE
    assert got[0].shape == (1, 23, 16) and got[0][~keep].abs().max().item() == 0.0


@pytest.mark.parametrize("num_items", [None, 0])
def test_no_target_gives_zero_gradients_as_transformers(num_items):
    """Every target ignored: the loss is NaN (0 / 0) in both, the gradients zero in both, so
    one empty batch does not poison the parameters."""
    hidden, weight, _, targets = tensors()
    targets = torch.full_like(targets, -100)
    ref = reference_loss(hidden, weight, None, targets, num_items)
    ours = fused_loss.linear_cross_entropy(hidden, weight, None, targets, num_items, block_rows=5)
    assert torch.isnan(ref) and torch.isnan(ours)
    for r, o in zip(grads(ref, hidden, weight), grads(ours, hidden, weight)):
        assert r.abs().max().item() == 0.0 and o.abs().max().item() == 0.0


def test_targets_must_match_the_rows():
    hidden, weight, _, targets = tensors()
    with pytest.raises(ValueError, match="22 targets for 23 hidden states"):
        fused_loss.linear_cross_entropy(hidden, weight, None, targets[:22])
    with pytest.raises(ValueError, match=r"a mask of shape \(1, 23\) for hidden states of shape \(23, 16\)"):
        fused_loss.linear_cross_entropy(hidden, weight, None, targets, keep=torch.ones(1, 23, dtype=torch.bool))


def make_model(kind: str, lora: bool, tied: bool = False):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  attn_implementation="sdpa", tie_word_embeddings=tied)
    config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                                 "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel)}[kind]
    if kind == "gpt2":
        common = dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = model_class(config_class(**common))
    return with_lora(model, lora)


def batches():
    from finetui.engine.data.dataset import TrainedLogitsOnly

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 96, (2, 14), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[1, 10:] = -100  # padding
    mask = (labels != -100).long()
    mask[0] = 1
    plain = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    trained = TrainedLogitsOnly(lambda features: dict(plain))([])
    trained["num_items_in_batch"] = torch.tensor(19)
    return {"plain labels": plain, "trained logits": trained}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("batch_name", ["plain labels", "trained logits"])
def test_model_loss_and_gradients_match(kind, lora, batch_name, monkeypatch):
    monkeypatch.setattr(fused_loss, "BLOCK_ELEMENTS", 96 * 5)  # several blocks of 5 rows
    monkeypatch.setattr(fused_loss, "MIN_ROWS", 1)
    batch = batches()[batch_name]
    reference, fused = make_model(kind, lora), make_model(kind, lora)
    assert fused_loss.apply(fused)
    ref_out, ref_grads = loss_and_grads(reference, batch)
    out, got = loss_and_grads(fused, batch)
    assert out.logits is None  # the logits never existed
    assert out.loss.item() == pytest.approx(ref_out.loss.item(), abs=TOLERANCE)
    assert got.keys() == ref_grads.keys()
    if not lora:
        assert "lm_head.weight" in got  # the head trains too
    for name, g in ref_grads.items():
        assert (got[name] - g).abs().max().item() < TOLERANCE, name


def test_a_head_tied_to_the_embedding_trains_as_in_transformers():
    """Full fine-tuning with the head's weight the embedding's: the gradient through the head
    and through the embedding add up in the one parameter."""
    batch = batches()["trained logits"]
    reference, fused = make_model("llama", lora=False, tied=True), make_model("llama", lora=False, tied=True)
    assert fused.lm_head.weight is fused.model.embed_tokens.weight
    assert fused_loss.apply(fused)
    ref_out, ref_grads = loss_and_grads(reference, batch)
    out, got = loss_and_grads(fused, batch)
    assert out.logits is None and out.loss.item() == pytest.approx(ref_out.loss.item(), abs=TOLERANCE)
    for name, g in ref_grads.items():
        assert (got[name] - g).abs().max().item() < TOLERANCE, name


def test_a_deep_copy_computes_with_its_own_modules():
    import copy

    model = make_model("llama", lora=False)
    assert fused_loss.apply(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.zero_()  # uniform predictions: the loss is ln(96)
    out = twin(**batches()["plain labels"])
    assert out.logits is None and out.loss.item() == pytest.approx(math.log(96), abs=1e-5)
    out.loss.backward()
    assert twin.lm_head.weight.grad is not None and model.lm_head.weight.grad is None


@pytest.mark.parametrize("change", ["eval mode", "head replaced", "custom loss", "ignore_index"])
def test_the_model_own_forward_runs_when_the_fused_one_would_differ(change):
    """In eval mode (with gradients on), with the head replaced after apply, with another
    loss function or another ignore_index, the logits are computed as transformers does."""
    model = make_model("llama", lora=False)
    assert fused_loss.apply(model)
    batch = dict(batches()["plain labels"])
    if change == "eval mode":
        model.eval()
    elif change == "head replaced":
        model.lm_head = torch.nn.Sequential(model.lm_head)
    elif change == "custom loss":
        model.loss_function = lambda logits, labels, vocab_size, **kwargs: logits.float().mean()
    else:
        batch["ignore_index"] = -100  # given at all: the fused path does not read it
    out = model(**batch)
    assert out.logits is not None and out.logits.shape == (2, 14, 96)


def test_evaluation_and_generation_get_the_model_own_forward():
    """Without gradients (evaluation, generation) or without labels, logits come back."""
    model = make_model("llama", lora=True)
    assert fused_loss.apply(model)
    batch = batches()["plain labels"]
    with torch.no_grad():
        out = model(**batch)
    assert out.logits is not None and out.loss is not None
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 14, 96)
    as_tuple = model(**batch, return_dict=False)
    assert as_tuple[1].shape == (2, 14, 96)
    generated = model.generate(input_ids=batch["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_not_applied_where_the_code_differs():
    """A model whose causal-LM forward is not Llama's code, a head with LoRA on it (not a
    plain Linear), a second apply: left alone."""
    assert not fused_loss.apply(make_model("gpt2", lora=False))
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        tie_word_embeddings=False))
    with_head = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert not fused_loss.apply(with_head)
    model = make_model("llama", lora=True)
    assert fused_loss.apply(model) and not fused_loss.apply(model)


def test_a_head_replaced_later_runs_the_model_forward():
    """The head swapped or hooked after apply (peft, a hook library): the model's own
    forward, so the replacement is not bypassed."""
    model = make_model("llama", lora=False)
    assert fused_loss.apply(model)
    calls = []
    model.lm_head.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    out = model(**batches()["plain labels"])
    assert calls == [(2, 14, 96)] and out.logits is not None
