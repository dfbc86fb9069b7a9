"""finetui.engine.modeling: where models come from, the clear errors, LoRA/QLoRA wiring, sizes."""

from __future__ import annotations

import time

import pytest

from finetui.engine import modeling
from finetui.engine.config import MethodConfig, ModelConfig
from finetui.engine.errors import ModelError


def test_missing_local_folder_is_one_clear_line(tmp_path):
    with pytest.raises(ModelError) as err:
        modeling.resolve_model_path(str(tmp_path / "nope"))
    assert str(err.value) == f"model.name_or_path: no such folder '{tmp_path / 'nope'}'"
    with pytest.raises(ModelError, match="no such folder './models/x'"):
        modeling.resolve_model_path("./models/x")


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        modeling.resolve_model_path(str(tmp_path))


def test_uncached_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(ModelError) as err:
        modeling.resolve_model_path("some-org/not-in-any-cache-7f3a")
    assert time.time() - started < 5
    assert str(err.value) == (
        "model 'some-org/not-in-any-cache-7f3a' is not in the Hugging Face cache and the hub cannot be "
        "reached (offline): download it on a connected machine or set model.name_or_path to a local folder"
    )


def test_tiny_tokenizer_and_model(finetui_cache):
    tok = modeling.load_tokenizer("tiny")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    model = modeling.load_model(ModelConfig(name_or_path="tiny"), None, tokenizer=tok, device="cpu")
    assert not model.training  # inference load
    fp = modeling.footprint(model)
    n = sum(p.numel() for p in model.parameters())
    assert fp["params_total"] == n == fp["params_trainable"]
    assert fp["size_bytes"] == 4 * n  # fp32 on the CPU
    assert fp["flops_per_token"] == 6 * n
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_lora_all_linear_and_listed_targets(finetui_cache):
    tok = modeling.load_tokenizer("tiny")
    model = modeling.load_model(ModelConfig(), MethodConfig(type="lora", lora_r=4), tokenizer=tok, device="cpu")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("mlp.down_proj" in n for n in trainable)  # all-linear reaches the MLP too
    assert not any("lm_head" in n for n in trainable)  # ...but not the output layer

    listed = modeling.load_model(ModelConfig(), MethodConfig(type="lora", lora_r=4, target_modules=["q_proj", "v_proj"]),
                                 tokenizer=tok, device="cpu")
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in listed.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "v_proj"}
    fp = modeling.footprint(listed)
    assert 0 < fp["params_trainable"] < fp["params_total"]


def test_lora_trains_embeddings_when_tokens_were_added(finetui_cache):
    tok = modeling.load_tokenizer("tiny")
    rows = modeling.load_model(ModelConfig(), None, device="cpu").get_input_embeddings().weight.shape[0]
    tok.add_special_tokens({"additional_special_tokens": ["<|new_a|>", "<|new_b|>"]})
    model = modeling.load_model(ModelConfig(), MethodConfig(type="lora", lora_r=4), tokenizer=tok,
                                added_tokens=["<|new_a|>", "<|new_b|>"], device="cpu")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > rows
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert set(model.peft_config["default"].modules_to_save) >= {"embed_tokens", "lm_head"}


def test_fit_tokenizer_never_shrinks(finetui_cache):
    tok = modeling.load_tokenizer("tiny")
    model = modeling.load_model(ModelConfig(), None, device="cpu")
    model.resize_token_embeddings(len(tok) + 64)  # padded past the vocabulary, like Qwen
    modeling.fit_tokenizer(model, tok, eos_token_ids=[tok.eos_token_id, 0])
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 64
    assert model.generation_config.eos_token_id == [tok.eos_token_id, 0]


def test_qlora_loads_4bit_on_cpu(finetui_cache):
    bnb = pytest.importorskip("bitsandbytes")
    tok = modeling.load_tokenizer("tiny")
    full = modeling.footprint(modeling.load_model(ModelConfig(), None, device="cpu"))
    model = modeling.load_model(ModelConfig(quantization="4bit"), MethodConfig(type="qlora", lora_r=4),
                                tokenizer=tok, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    fp = modeling.footprint(model)
    # The logical parameter count survives packing; the bytes do not.
    assert fp["params_total"] >= full["params_total"]
    assert fp["size_bytes"] < full["size_bytes"]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_load_for_inference_plain_model(finetui_cache):
    model, tok = modeling.load_for_inference("tiny", device="cpu")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 3


def test_error_kinds():
    import torch

    from finetui.engine import errors

    kind, message, hint = errors.classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert kind == "oom" and "batch_size" in hint and "gradient_checkpointing" in hint and "4-bit" in hint
    assert errors.classify(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))[0] == "oom"
    assert errors.classify(ModelError("model.name_or_path: no such folder 'x'"))[0] == "model"
    assert errors.classify(errors.SetupError("train.optimizer: ..."))[0] == "config"
    from finetui.engine.data.dataset import DataError

    assert errors.classify(DataError("no usable records"))[0] == "data"
    assert errors.classify(KeyError("boom"))[0] == "internal"


def test_cached_hub_id_loads_offline(tmp_path, tiny_model_dir):
    """A hub id already in the Hugging Face cache resolves to its snapshot, no network."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = tmp_path / "hub" / "models--some-org--tiny-cached"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    code = ("from finetui.engine import modeling; print(modeling.resolve_model_path('some-org/tiny-cached')); "
            "print(len(modeling.load_tokenizer('some-org/tiny-cached')))")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path, vocab = proc.stdout.split()
    assert Path(path) == snapshot and int(vocab) > 0


def test_lora_on_an_8bit_base_on_cpu(finetui_cache):
    bnb = pytest.importorskip("bitsandbytes")
    import torch

    tok = modeling.load_tokenizer("tiny")
    model = modeling.load_model(ModelConfig(quantization="8bit"), MethodConfig(type="lora", lora_r=4),
                                tokenizer=tok, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    ids = torch.randint(0, 1000, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
