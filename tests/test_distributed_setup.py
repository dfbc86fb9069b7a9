"""distributed.* settings: what config validation and the trainer's set-up refuse, naming
the settings, and the Trainer arguments each strategy becomes."""

from __future__ import annotations

import importlib.util

import pytest

from finetui.engine import config as cfg
from finetui.engine import distributed


def config(**dist):
    return cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "lora"}, "distributed": dist})


def test_config_refusals_name_the_settings():
    with pytest.raises(cfg.ConfigError, match="distributed.activation_checkpointing"):
        cfg.validate({"train": {"gradient_checkpointing": True},
                      "distributed": {"strategy": "fsdp", "activation_checkpointing": True}})
    with pytest.raises(cfg.ConfigError, match="distributed.strategy: fsdp cannot shard 8-bit"):
        cfg.validate({"method": {"type": "lora"}, "model": {"quantization": "8bit"},
                      "distributed": {"strategy": "fsdp"}})
    with pytest.raises(cfg.ConfigError, match="distributed.deepspeed_config: a DeepSpeed JSON needs"):
        config(deepspeed_config="ds.json")
    with pytest.raises(cfg.ConfigError, match="distributed.zero_stage"):
        config(strategy="deepspeed", zero_stage=4)


def test_trainer_arguments_per_strategy():
    assert distributed.trainer_arguments(config(strategy="fsdp"), world_size=1) == {}  # one process
    assert distributed.trainer_arguments(config(), world_size=4) == {}  # ddp: the Trainer's default
    fsdp = distributed.trainer_arguments(config(strategy="fsdp", fsdp_state_dict="sharded",
                                                activation_checkpointing=True), world_size=4)
    assert fsdp["fsdp"] == "full_shard auto_wrap"
    assert fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_config"]["activation_checkpointing"] is True
    ds = distributed.trainer_arguments(config(strategy="deepspeed", zero_stage=3, cpu_offload=True), 8)["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    own = config(strategy="deepspeed", deepspeed_config="/etc/ds.json")
    assert distributed.trainer_arguments(own, 2) == {"deepspeed": "/etc/ds.json"}


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_missing_is_a_clear_refusal():
    (problem,) = distributed.setup_problems(config(strategy="deepspeed"), "cpu", 2)
    assert problem.startswith("distributed.strategy: deepspeed needs the deepspeed package")
    assert "pip install 'finetui[deepspeed]'" in problem


def test_cpu_refusals(monkeypatch):
    qlora = cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "qlora"},
                          "distributed": {"strategy": "fsdp"}})
    assert "fsdp with a 4-bit base" in distributed.setup_problems(qlora, "cpu", 2)[0]
    assert "fsdp with a 4-bit base" in distributed.setup_problems(qlora, "cuda:0", 2)[0]
    assert distributed.setup_problems(qlora, "cpu", 1) == []  # one process: the section is ignored
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two nodes of one process
    (problem,) = distributed.setup_problems(config(strategy="fsdp", fsdp_sharding="hybrid_shard"), "cpu", 2)
    assert problem.startswith("distributed.fsdp_sharding: hybrid_shard across nodes")
    assert distributed.setup_problems(config(strategy="fsdp"), "cpu", 2) == []
