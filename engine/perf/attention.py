"""Packed batches without cross-example attention and without an L x L mask.

Heavy module (torch, transformers): the trainer process only.

With ``data.packing`` a batch is one row: the examples back to back, ``position_ids``
restarting at 0 for each. Plain ``sdpa`` then needs a block-diagonal L x L mask, which
transformers builds from the position_ids; with a mask, torch's CPU kernels fall back to
materialising the full L x L attention for the whole row (8 examples of ~400 tokens: a
3,000 x 3,000 matrix per head and layer), so packing loses on attention what it saves on
padding. ``flash_attention_2`` avoids that with variable-length kernels (cu_seq_lens), but
it needs a CUDA GPU and the flash-attn package.

``sdpa_packed`` is sdpa per example instead: the row is cut where position_ids restart and
each piece goes through ``scaled_dot_product_attention(is_causal=True)`` (the fused kernel,
no mask); consecutive examples of the same length go through as one batch (no padding
needed; the packing collator orders a batch longest first, so they are consecutive). Same
result as the block-diagonal mask (tests/test_packing_equivalence.py), ~5x less attention
work on the CPU for alpaca-sized examples. Anything that is not a packed
row (padded batches, a batch of one, decoding with a cache) goes to transformers' own
sdpa with the mask it would have had.
"""

from __future__ import annotations

NAME = "sdpa_packed"
# consecutive examples of one length as one call (benchmarks/step_levers.py measures it off)
BATCH_RUNS = True

_last: list = [None, None]  # (position_ids tensor, its segments): every layer sees the same tensor


def _segments(position_ids) -> list[tuple[int, int]]:
    """[start, end) of each example in a packed row: a new one wherever the position does
    not follow on from the previous one (transformers' find_packed_sequence_indices rule)."""
    if _last[0] is position_ids:
        return _last[1]
    pos = position_ids[0]
    breaks = ((pos[1:] - pos[:-1]) != 1).nonzero().flatten().add(1).tolist()  # one host sync per forward
    starts = [0, *breaks]
    segments = list(zip(starts, [*breaks, int(pos.shape[0])]))
    _last[0], _last[1] = position_ids, segments
    return segments


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """An AttentionInterface function: query (1, heads, L, d), key/value (1, kv_heads, L, d)
    -> ((1, L, heads, d), None)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1
            or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    segments = _segments(position_ids)
    if len(segments) == 1:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    dropout = dropout if module.training else 0.0
    runs = _runs(segments)
    # split, not slicing: the backward of a split is one cat, while each slice's backward
    # writes its piece into a zero tensor the size of the whole row (per layer and tensor).
    # Cut along the tokens of the (1, L, heads, d) view: that is how q/k/v lie in memory
    # (a projection's output), so a run of n examples of length l is a view (n, l, heads, d).
    sizes = [n * length for length, n in runs]
    pieces = zip(*(t.transpose(1, 2).split(sizes, 1) for t in (query, key, value)))
    out = torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            *(t.reshape(n, length, t.shape[2], t.shape[3]).transpose(1, 2) for t in qkv),
            dropout_p=dropout, scale=scaling, is_causal=True,
        ).transpose(1, 2).reshape(1, n * length, query.shape[1], value.shape[3])
        for (length, n), qkv in zip(runs, pieces)
    ], dim=1)
    return out, None


def _runs(segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(length, count) for each run of consecutive examples of one length: such a run is one
    batched kernel call, exact without any padding (the packing collator puts examples of a
    length next to each other; at a cutoff, every truncated example has its length)."""
    runs: list[list[int]] = []
    for start, end in segments:
        if BATCH_RUNS and runs and runs[-1][0] == end - start:
            runs[-1][1] += 1
        else:
            runs.append([end - start, 1])
    return [(length, n) for length, n in runs]


def packed_sdpa_mask(*args, **kwargs):
    """No mask for a batch without padding (packed rows are cut per example instead);
    otherwise the mask sdpa would get."""
    from transformers.masking_utils import sdpa_mask

    if (kwargs.get("attention_mask") is None and kwargs.get("q_length") == kwargs.get("kv_length")
            and not _nonzero(kwargs.get("q_offset", 0)) and not _nonzero(kwargs.get("kv_offset", 0))):
        return None
    return sdpa_mask(*args, **kwargs)


def _nonzero(value) -> bool:
    try:
        return bool(value)
    except (TypeError, RuntimeError):
        return True


def supported(model) -> bool:
    """Plain causal attention through transformers' AttentionInterface on sdpa: no sliding
    windows, chunked or bidirectional blocks, soft-capping (those masks are not only
    "causal within each example")."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None):
        return False
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    return bool(getattr(model, "_can_set_attn_implementation", lambda: False)())


def use_packed_sdpa(model) -> bool:
    """Switch a (not yet peft-wrapped, or the base of a peft) model from sdpa to sdpa_packed.
    Returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supported(base):
        return False
    AttentionInterface.register(NAME, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, packed_sdpa_mask)
    base.set_attn_implementation(NAME)
    return base.config._attn_implementation == NAME
