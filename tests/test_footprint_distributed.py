"""Per-GPU memory under ddp / fsdp / deepspeed (engine.footprint.per_device), against
figures worked out by hand."""

from __future__ import annotations

import pytest

from finetui.engine import config as cfg
from finetui.engine import footprint

GB = 10 ** 9


def est(**kw) -> footprint.MemoryEstimate:
    # a 7B-like full fine-tune in bf16: 14 GB weights, 28 GB gradients (fp32), 56 GB Adam;
    # 32 layers of 0.4 GB, so 14 - 12.8 = 1.2 GB outside the layers (embeddings, lm_head)
    values = dict(model="m", source="", params_total=7 * GB, params_trainable=7 * GB, size_bytes=14 * GB,
                  weights_bytes=14 * GB, adapter_bytes=0, gradients_bytes=28 * GB, optimizer_bytes=56 * GB,
                  activations_bytes=4 * GB, logits_bytes=2 * GB, overhead_bytes=0, total_bytes=0,
                  method="full", weights_dtype="bfloat16", layers=32, layer_weights_bytes=GB * 4 // 10)
    values.update(kw)
    return footprint.MemoryEstimate(**values)


def test_ddp_replicates_everything():
    share = footprint.per_device(est(), "ddp", 8)
    assert share.shards == 1 and share.buckets_bytes == 28 * GB  # the reducer's copy of the gradients
    # 14 + 28 + 56 + 28 (buckets) + 4 + 2 = 132 GB, + 10% = 145.2 GB
    assert share.total_bytes == int(132 * GB * 1.1)
    assert footprint.per_device(est(), "ddp", 1).total_bytes == int(104 * GB * 1.1)  # one process: no buckets


def test_fsdp_full_shard_divides_states_and_gathers_two_layers():
    share = footprint.per_device(est(), "fsdp", 8)
    assert share.shards == 8
    assert (share.weights_bytes, share.gradients_bytes, share.optimizer_bytes) == (1.75 * GB, 3.5 * GB, 7 * GB)
    # root (1.2 GB) + two layers (0.8 GB) gathered
    assert share.gathered_bytes == 2 * GB
    # 1.75 + 3.5 + 7 + 2 + 4 + 2 = 20.25 GB, + 10%
    assert share.total_bytes == int(20.25 * GB * 1.1)


def test_hybrid_shard_divides_within_a_node_only():
    share = footprint.per_device(est(), "fsdp", 16, nnodes=2, fsdp_sharding="hybrid_shard")
    assert share.shards == 8  # 8 GPUs per node; the two nodes hold a copy each
    assert share.total_bytes == footprint.per_device(est(), "fsdp", 8).total_bytes
    assert footprint.per_device(est(), "fsdp", 16, nnodes=2).shards == 16


def test_fsdp_cpu_offload_leaves_the_gathered_layers_and_activations():
    share = footprint.per_device(est(), "fsdp", 8, cpu_offload=True)
    assert share.weights_bytes == share.gradients_bytes == share.optimizer_bytes == 0
    assert share.offloaded_bytes == int(12.25 * GB)  # 1.75 + 3.5 + 7 in CPU memory, per process
    assert share.total_bytes == int(8 * GB * 1.1)  # 2 gathered + 4 activations + 2 logits


def test_zero2_and_zero3():
    z2 = footprint.per_device(est(), "deepspeed", 4, zero_stage=2)
    # weights whole (14), gradients 28/4 = 7, optimizer 56/4 = 14, + 6 activations/logits = 41 GB
    assert z2.total_bytes == int(41 * GB * 1.1)
    z3 = footprint.per_device(est(), "deepspeed", 4, zero_stage=3)
    # weights 3.5 + 7 + 14 + 2 gathered + 6 = 32.5 GB
    assert z3.total_bytes == int(32.5 * GB * 1.1)
    z3_off = footprint.per_device(est(), "deepspeed", 4, zero_stage=3, cpu_offload=True)
    assert z3_off.optimizer_bytes == z3_off.weights_bytes == 0 and z3_off.offloaded_bytes == int(17.5 * GB)
    z2_off = footprint.per_device(est(), "deepspeed", 4, zero_stage=2, cpu_offload=True)
    assert z2_off.weights_bytes == 14 * GB and z2_off.offloaded_bytes == 14 * GB


def test_lora_shards_the_adapters_and_the_frozen_base():
    lora = est(adapter_bytes=160 * 10 ** 6, gradients_bytes=160 * 10 ** 6, optimizer_bytes=320 * 10 ** 6,
               params_trainable=40 * 10 ** 6, method="lora")
    share = footprint.per_device(lora, "fsdp", 2)
    assert share.weights_bytes == 7 * GB and share.adapter_bytes == 80 * 10 ** 6
    assert share.optimizer_bytes == 160 * 10 ** 6


def test_one_process_and_unknown_strategy():
    one = footprint.per_device(est(), "fsdp", 1)
    assert one.shards == 1 and one.total_bytes == footprint.per_device(est(), "ddp", 1).total_bytes
    with pytest.raises(ValueError, match="distributed.strategy"):
        footprint.per_device(est(), "zero", 2)


def test_ddp_share_is_the_single_process_estimate_and_the_config_picks_the_strategy():
    config = cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "full"},
                           "distributed": {"strategy": "fsdp"}})
    e = footprint.estimate(config, gpu=True)
    assert footprint.per_device(e, "ddp", 1).total_bytes == e.total_bytes
    # the tiny model: 4 layers; what is outside them plus two of them is gathered
    share = footprint.for_config(e, config, 2)
    assert share.strategy == "fsdp full_shard"
    assert share.gathered_bytes == e.weights_bytes - 2 * e.layer_weights_bytes
    assert share.total_bytes < e.total_bytes


def test_start_check_counts_one_process_share():
    from finetui.engine import startcheck

    ddp = cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "full"}})
    fsdp = cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "full"},
                         "distributed": {"strategy": "fsdp"}})
    free = 40 * GB  # an 8-GPU box of 40 GB cards: full fine-tune of the 7B estimate
    assert startcheck.memory_problem(fsdp, est(), free, "GPU0", True, nproc=8) is None
    problem = startcheck.memory_problem(ddp, est(), free, "GPU0", True, nproc=8)
    assert problem is not None and "needs about 135 GiB" in problem  # 145.2e9 bytes: every GPU holds everything
