"""Packing (padding-free, DataCollatorWithFlattening) computes the same per-token loss as
padding, on the tiny Llama with sdpa on CPU.

This is the regression check for the packed path: if examples in a packed row could see
each other (mask not derived from position_ids, a KV cache object disabling that, a
collator change), the losses differ by far more than the tolerance.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetui.engine.data import dataset  # noqa: E402

TOLERANCE = 1e-4


def per_token_loss(logits, labels):
    """Cross-entropy of every trained next-token prediction, in order."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    return loss[labels != -100]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, mixed_length_batch):
    from transformers import AutoModelForCausalLM

    config, tokenizer, batch = mixed_length_batch
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()
    return config, tokenizer, model, batch


def collate(config, tokenizer, batch, packing: bool):
    """The batch as the trainer gets it; padded, in the order the packed row has (the
    packing collator puts the longest example first), so per-token losses line up."""
    config = config.model_copy(deep=True)
    config.data.packing = packing
    if not packing:
        batch = sorted(batch, key=lambda r: len(r["input_ids"]), reverse=True)
    return dataset.collator(config, tokenizer)(batch)


def test_packed_loss_equals_padded_loss(setup):
    config, tokenizer, model, batch = setup
    padded = collate(config, tokenizer, batch, packing=False)
    packed = collate(config, tokenizer, batch, packing=True)
    assert padded["input_ids"].shape[0] == len(batch)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["input_ids"].shape[1] == sum(r["length"] for r in batch)  # no padding at all
    assert (padded["labels"] == -100).sum() > 0 and (padded["attention_mask"] == 0).sum() > 0

    with torch.no_grad():
        out_padded = model(**padded)
        out_packed = model(**packed)
    loss_padded = per_token_loss(out_padded.logits, padded["labels"])
    loss_packed = per_token_loss(out_packed.logits, packed["labels"])
    assert loss_padded.shape == loss_packed.shape
    assert loss_padded.numel() == sum(r["n_trained"] for r in batch) - sum(
        1 for r in batch if r["labels"][0] != -100
    )
    assert torch.allclose(loss_padded, loss_packed, atol=TOLERANCE, rtol=0), (
        (loss_padded - loss_packed).abs().max().item()
    )
    assert abs(out_padded.loss.item() - out_packed.loss.item()) < TOLERANCE


def test_check_is_sensitive_to_cross_example_attention(setup):
    """Without per-example positions (plain concatenation) the same check fails: the
    tolerance is meaningful."""
    config, tokenizer, model, batch = setup
    padded = collate(config, tokenizer, batch, packing=False)
    packed = collate(config, tokenizer, batch, packing=True)
    with torch.no_grad():
        loss_padded = per_token_loss(model(**padded).logits, padded["labels"])
        leaky = model(input_ids=packed["input_ids"], use_cache=False)  # one causal sequence
    loss_leaky = per_token_loss(leaky.logits, packed["labels"])
    assert (loss_padded - loss_leaky).abs().max().item() > 100 * TOLERANCE


def test_padding_collator(setup):
    config, tokenizer, _, batch = setup
    config = config.model_copy(deep=True)
    config.data.packing = False
    padded = dataset.collator(config, tokenizer)(batch)  # rows in the batch's order
    longest = max(r["length"] for r in batch)
    assert padded["input_ids"].shape == (len(batch), longest)
    for i, row in enumerate(batch):
        n = row["length"]
        assert padded["input_ids"][i, :n].tolist() == row["input_ids"]  # right padding
        assert padded["labels"][i, :n].tolist() == row["labels"]
        assert set(padded["input_ids"][i, n:].tolist()) <= {tokenizer.pad_token_id}
        assert set(padded["labels"][i, n:].tolist()) <= {-100}
        assert padded["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
    assert set(padded) == {"input_ids", "labels", "attention_mask"}  # no bookkeeping columns


@pytest.fixture(scope="module")
def packed_model(tiny_model_dir):
    """The tiny model with the trainer's packed attention (engine.perf.attention: sdpa per
    example instead of one masked sdpa over the row)."""
    from transformers import AutoModelForCausalLM

    from finetui.engine.perf.attention import NAME, use_packed_sdpa

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    assert use_packed_sdpa(model) and model.config._attn_implementation == NAME
    model.eval()
    return model


def test_packed_attention_equals_padded(setup, packed_model):
    """sdpa_packed on a packed batch: same per-token loss and the same gradients as
    plain sdpa on the padded batch; a padded batch through it is plain sdpa."""
    config, tokenizer, model, batch = setup
    padded = collate(config, tokenizer, batch, packing=False)
    packed = collate(config, tokenizer, batch, packing=True)

    out_padded = model(**padded)
    out_packed = packed_model(**packed)
    loss_padded = per_token_loss(out_padded.logits, padded["labels"])
    loss_packed = per_token_loss(out_packed.logits, packed["labels"])
    assert torch.allclose(loss_padded, loss_packed, atol=TOLERANCE, rtol=0), (
        (loss_padded - loss_packed).abs().max().item()
    )
    out_padded.loss.backward()
    out_packed.loss.backward()
    for (name, p), q in zip(model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-3), name
    model.zero_grad(set_to_none=True)
    packed_model.zero_grad(set_to_none=True)

    with torch.no_grad():  # padded input: the fallback is transformers' own sdpa, mask included
        same = packed_model(**padded)
        plain = model(**padded)
    assert torch.allclose(same.logits, plain.logits, atol=1e-5)


def test_packed_attention_grouped_query_heads():
    """Grouped-query attention (fewer key/value heads): per-example attention equals the
    block-diagonal mask on a packed row."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetui.engine.perf.attention import use_packed_sdpa

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    masked = LlamaForCausalLM(cfg).eval()
    masked.set_attn_implementation("sdpa")
    per_example = LlamaForCausalLM(cfg).eval()
    per_example.load_state_dict(masked.state_dict())
    per_example.set_attn_implementation("sdpa")
    assert use_packed_sdpa(per_example)
    lengths = [5, 11, 3, 9]
    ids = torch.randint(0, 64, (1, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        a = masked(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        b = per_example(input_ids=ids, position_ids=position_ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max().item()


def test_packed_attention_batches_examples_of_one_length():
    """Consecutive examples of one length run as one batched kernel call: the same logits
    and gradients as the block-diagonal mask, with runs of several lengths, a length that
    comes back later, and a row of equal lengths only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetui.engine.perf.attention import _runs, use_packed_sdpa

    segments = [(0, 7), (7, 14), (14, 21), (21, 25), (25, 34), (34, 43), (43, 47)]
    assert _runs(segments) == [(7, 3), (4, 1), (9, 2), (4, 1)]
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    masked = LlamaForCausalLM(cfg)
    masked.set_attn_implementation("sdpa")
    batched = LlamaForCausalLM(cfg)
    batched.load_state_dict(masked.state_dict())
    batched.set_attn_implementation("sdpa")
    assert use_packed_sdpa(batched)
    for lengths in ([7, 7, 7, 4, 9, 9, 4], [6, 6, 6, 6]):
        ids = torch.randint(0, 64, (1, sum(lengths)))
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        a = masked(input_ids=ids, position_ids=position_ids, use_cache=False, labels=ids)
        b = batched(input_ids=ids, position_ids=position_ids, use_cache=False, labels=ids)
        assert torch.allclose(a.logits, b.logits, atol=1e-5), (a.logits - b.logits).abs().max().item()
        a.loss.backward()
        b.loss.backward()
        for (name, p), q in zip(masked.named_parameters(), batched.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), (lengths, name)
        masked.zero_grad(set_to_none=True)
        batched.zero_grad(set_to_none=True)


def test_packing_collator_puts_the_longest_example_first(setup):
    config, tokenizer, _, batch = setup
    packed = collate(config, tokenizer, batch, packing=True)
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    assert lengths == sorted((r["length"] for r in batch), reverse=True)
    assert len(set(lengths)) > 1
