"""The PEFT family through peft and transformers: DoRA, rsLoRA, PiSSA / OLoRA / LoftQ
initialisation, LoRA+, GaLore and NEFTune each train a few steps of the tiny model (loss
finite, the saved adapter says the variant), and an adapter merges into a model whose
logits are the adapter model's. Combinations peft cannot do are refused naming the settings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from finetui.engine import config as cfg
from finetui.engine import footprint, modeling
from finetui.engine.merge import merge
from train_helpers import of_type, stdout_log, train

pytestmark = pytest.mark.slow

NO_EVAL = {"eval_strategy": "no", "save_strategy": "no", "max_steps": 3, "learning_rate": 1e-2}


def trained(tmp_path, name, method=None, train_settings=None, model=None):
    sections = {"method": {"type": "lora", **(method or {})}, "train": {**NO_EVAL, **(train_settings or {})}}
    if model:
        sections["model"] = model
    run_dir, rc, events = train(tmp_path, name, **sections)
    assert rc == 0, stdout_log(run_dir)
    losses = [e["loss"] for e in of_type(events, "step")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    return run_dir, events


def adapter_config(run_dir) -> dict:
    return json.loads((run_dir / "adapter" / "adapter_config.json").read_text())


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is finetui? It trains models over SSH.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def assert_merges(run_dir, atol=1e-4, quantization="none"):
    """The merged model (engine/merge.py) computes what base + adapter computes (the base as
    trained: ``quantization`` 4bit for a LoftQ adapter)."""
    out = merge(run_dir)
    merged, tok = modeling.load_for_inference(out, device="cpu")
    assert not hasattr(merged, "peft_config")
    adapted, tok_a = modeling.load_adapter_model(run_dir / "adapter", device="cpu", quantization=quantization)
    base, _ = modeling.load_for_inference(run_dir, use_adapter=False, device="cpu")
    got, want, plain = logits(merged, tok), logits(adapted, tok_a), logits(base, tok_a)
    assert torch.allclose(got, want, atol=atol), (got - want).abs().max()
    assert (want - plain).abs().max() > 1e-3  # the adapter changed something


def test_dora_trains_saves_and_merges(tmp_path, finetui_cache):
    run_dir, _ = trained(tmp_path, "dora", {"use_dora": True})
    assert adapter_config(run_dir)["use_dora"] is True
    meta = json.loads((run_dir / "adapter" / "finetui.json").read_text())
    assert meta["variant"]["use_dora"] is True
    assert_merges(run_dir)


def test_rslora_trains_saves_and_merges(tmp_path, finetui_cache):
    run_dir, _ = trained(tmp_path, "rslora", {"use_rslora": True, "lora_r": 8, "lora_alpha": 16})
    config = adapter_config(run_dir)
    assert config["use_rslora"] is True and config["r"] == 8
    assert_merges(run_dir)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_adapters_apply_to_the_untouched_base(tmp_path, finetui_cache, init):
    """They move the base weights at the start; the saved adapter is converted (rank 2r)
    so base + adapter is the trained model on the base as published."""
    run_dir, _ = trained(tmp_path, init, {"init_lora_weights": init, "lora_r": 4, "lora_alpha": 8},
                         {"save_strategy": "steps", "save_steps": 3})
    config = adapter_config(run_dir)
    assert config["r"] == 8 and config["init_lora_weights"] is True  # peft's conversion to plain LoRA
    assert json.loads((run_dir / "adapter" / "finetui.json").read_text())["variant"]["init_lora_weights"] == init
    assert (run_dir / "adapter-init" / "adapter_config.json").exists()

    # The model as trained: the base moved by the initialisation (made again, as the
    # trainer made it) with the last checkpoint's adapter weights.
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed

    run_cfg = cfg.load(run_dir / "config.yaml")
    set_seed(run_cfg.train.seed)
    as_trained = modeling.load_model(run_cfg.model, run_cfg.method, device="cpu")
    set_peft_model_state_dict(as_trained, load_file(run_dir / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors"))
    as_trained.eval()
    saved, tok = modeling.load_adapter_model(run_dir / "adapter", device="cpu")  # on the untouched base
    assert torch.allclose(logits(saved, tok), logits(as_trained, tok), atol=1e-4)
    assert_merges(run_dir)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="peft computes LoftQ on a CUDA GPU")
def test_loftq_on_a_4bit_base(tmp_path, finetui_cache):
    run_dir, _ = trained(tmp_path, "loftq", {"type": "qlora", "init_lora_weights": "loftq"})
    assert json.loads((run_dir / "adapter" / "finetui.json").read_text())["variant"]["init_lora_weights"] == "loftq"
    assert adapter_config(run_dir)["peft_type"] == "LORA"
    assert_merges(run_dir, atol=2e-2, quantization="4bit")


def test_loftq_adapter_merges_into_the_dequantised_4bit_base(tmp_path, finetui_cache):
    """peft computes LoftQ on CUDA only, so on the CPU a QLoRA adapter stands in for one:
    marked loftq in its finetui.json, it merges into the 4-bit base dequantised, and the
    merged model computes what the adapter on the 4-bit base computes."""
    run_dir, _ = trained(tmp_path, "qlora", {"type": "qlora"}, {"learning_rate": 5e-2})
    meta_file = run_dir / "adapter" / "finetui.json"
    meta = json.loads(meta_file.read_text())
    meta["variant"]["init_lora_weights"] = "loftq"
    meta_file.write_text(json.dumps(meta))
    out = merge(run_dir)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged, tok = modeling.load_for_inference(out, device="cpu")
    on_4bit, _ = modeling.load_adapter_model(run_dir / "adapter", device="cpu", quantization="4bit")
    on_full, _ = modeling.load_adapter_model(run_dir / "adapter", device="cpu")
    got, want, other = logits(merged, tok), logits(on_4bit, tok), logits(on_full, tok)
    assert (got - want).abs().max() < (other - want).abs().max() / 10, ((got - want).abs().max(),
                                                                      (other - want).abs().max())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a box without CUDA")
def test_loftq_without_cuda_is_refused_naming_the_setting(tmp_path, finetui_cache):
    run_dir, rc, events = train(tmp_path, "loftq", method={"type": "qlora", "init_lora_weights": "loftq"},
                                train=NO_EVAL)
    assert rc == 1
    error = of_type(events, "error")[0]
    assert error["kind"] == "config" and error["message"].startswith("method.init_lora_weights: loftq needs a CUDA GPU")


def test_loraplus_trains_lora_b_faster(tmp_path, finetui_cache):
    run_dir, events = trained(tmp_path, "loraplus", {"loraplus_lr_ratio": 16.0},
                              {"save_strategy": "steps", "save_steps": 3})
    meta = json.loads((run_dir / "adapter" / "finetui.json").read_text())
    assert meta["variant"]["loraplus_lr_ratio"] == 16.0
    # the run's optimizer was peft's LoRA+ one: lora_B's groups start at 16x the learning rate
    state = torch.load(run_dir / "checkpoints" / "checkpoint-3" / "optimizer.pt", weights_only=False)
    rates = {round(g["initial_lr"], 9) for g in state["param_groups"] if g["params"]}
    assert rates == {1e-2, 0.16}
    assert_merges(run_dir)


def test_galore_full_fine_tune(tmp_path, finetui_cache):
    run_dir, events = trained(tmp_path, "galore", train_settings={"optimizer": "galore_adamw", "galore_rank": 8},
                              method={"type": "full"})
    started = of_type(events, "run_started")[0]
    assert started["config"]["train"]["optimizer"] == "galore_adamw"
    args = torch.load(run_dir / "adapter" / "training_args.bin", weights_only=False)
    assert args.optim == "galore_adamw" and args.optim_target_modules == ["self_attn", "mlp"]


def test_neftune_noise_changes_the_training_loss(tmp_path, finetui_cache):
    """Same seed, same data: noisy embeddings give another loss from the first step on."""
    _, plain = trained(tmp_path, "plain")
    _, noisy = trained(tmp_path, "neftune", train_settings={"neftune_noise_alpha": 50.0})
    first = [of_type(events, "step")[0]["loss"] for events in (plain, noisy)]
    assert first[0] != pytest.approx(first[1], rel=1e-4)
    assert of_type(noisy, "run_started")[0]["config"]["train"]["neftune_noise_alpha"] == 50.0


@pytest.mark.parametrize("settings, message", [
    ({"method": {"type": "full", "use_dora": True}}, "method.use_dora: a LoRA setting, but method.type is full"),
    ({"method": {"type": "lora", "init_lora_weights": "loftq"}}, "method.init_lora_weights: loftq"),
    ({"method": {"type": "qlora", "init_lora_weights": "pissa"}}, "quantised base"),
    ({"method": {"type": "lora", "init_lora_weights": "olora", "use_dora": True}}, "method.use_dora"),
    ({"method": {"type": "lora"}, "train": {"optimizer": "galore_adamw"}}, "it needs method.type: full"),
    ({"method": {"type": "full", "loraplus_lr_ratio": 16}}, "method.loraplus_lr_ratio"),
])
def test_unsupported_combinations_are_refused_naming_the_settings(settings, message):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(settings)
    assert message in str(info.value)


def test_estimate_counts_dora_magnitudes(tiny_model_dir):
    plain = footprint.estimate(cfg.validate({"method": {"type": "lora"}}))
    dora = footprint.estimate(cfg.validate({"method": {"type": "lora", "use_dora": True}}))
    extra = dora.params_trainable - plain.params_trainable
    # one magnitude per output feature of every adapted linear (7 per Llama block)
    from finetui.engine.modeling import load_model

    model = load_model(cfg.validate({"method": {"type": "lora", "use_dora": True}}).model,
                       cfg.validate({"method": {"type": "lora", "use_dora": True}}).method, device="cpu")
    magnitudes = sum(p.numel() for n, p in model.named_parameters() if "lora_magnitude_vector" in n)
    assert extra == magnitudes > 0


def test_dora_on_a_4bit_base_trains(tmp_path, finetui_cache):
    """peft supports DoRA on bitsandbytes' 4-bit linears: QLoRA + DoRA is allowed and trains."""
    run_dir, _ = trained(tmp_path, "qdora", {"type": "qlora", "use_dora": True})
    assert adapter_config(run_dir)["use_dora"] is True


def test_galore_without_its_package_is_refused_naming_the_setting(monkeypatch):
    import sys

    from finetui.engine import startcheck

    config = cfg.validate({"method": {"type": "full"}, "train": {"optimizer": "galore_adamw"}})
    assert startcheck.package_problems(config) == []  # installed with the test extra
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # as if it were not installed
    assert startcheck.package_problems(config) == [
        "train.optimizer: galore_adamw needs the galore-torch package, which is not installed: "
        "pip install galore-torch (or pip install 'finetui[galore]')"]
