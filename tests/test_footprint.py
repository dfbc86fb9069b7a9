"""finetui.engine.footprint: parameter counts against published sizes, the memory formula's
terms, config lookup (tiny, folder, HF cache) and that it stays light."""

import json
import subprocess
import sys

import pytest

from finetui.engine import footprint as fp
from finetui.engine.config import Config

LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "tie_word_embeddings": False, "torch_dtype": "float16",
}
LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
QWEN25_05B = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}


@pytest.mark.parametrize(
    "cfg, expected",
    [(LLAMA2_7B, 6_738_415_616), (LLAMA3_8B, 8_030_261_248), (QWEN25_05B, 494_032_768), (GPT2, 124_439_808)],
    ids=["llama2-7b", "llama3-8b", "qwen2.5-0.5b", "gpt2"],
)
def test_param_count_matches_published_models(cfg, expected):
    assert fp.count_params(fp.Architecture.from_config(cfg)).total == expected


def test_lora_trainable_params_llama2_7b_r16_all_linear():
    arch = fp.Architecture.from_config(LLAMA2_7B)
    assert fp.lora_params(arch, 16, "all-linear") == 39_976_960  # what peft prints
    assert fp.lora_params(arch, 8, ["q_proj", "v_proj"]) == 4_194_304


def test_estimate_terms_follow_the_documented_formula():
    cfg = Config.model_validate({
        "model": {"name_or_path": "x", "dtype": "bfloat16"},
        "method": {"type": "full"},
        "train": {"batch_size": 2, "gradient_checkpointing": False},
        "data": {"max_length": 256},
    })
    est = fp.estimate(cfg, LLAMA2_7B, source="test")
    n = 6_738_415_616
    assert est.params_trainable == est.params_total == n
    assert est.weights_bytes == 2 * n
    assert est.gradients_bytes == 4 * n and est.optimizer_bytes == 8 * n
    assert est.activations_bytes == 2 * 256 * 4096 * 32 * 34
    assert est.logits_bytes == 2 * 256 * 32000 * 8
    subtotal = est.weights_bytes + est.gradients_bytes + est.optimizer_bytes + est.activations_bytes + est.logits_bytes
    assert est.total_bytes == subtotal + int(subtotal * 0.10)


def test_qlora_is_much_smaller_than_lora_and_checkpointing_cuts_activations():
    base = {"model": {"name_or_path": "x"}, "train": {"batch_size": 4}, "data": {"max_length": 512}}
    lora = fp.estimate({**base, "method": {"type": "lora"}}, LLAMA2_7B)
    qlora = fp.estimate({**base, "method": {"type": "qlora"}}, LLAMA2_7B)
    assert qlora.weights_bytes < lora.weights_bytes / 3
    assert qlora.params_trainable == lora.params_trainable
    ckpt = fp.estimate({**base, "method": {"type": "lora"},
                        "train": {"batch_size": 4, "gradient_checkpointing": True}}, LLAMA2_7B)
    assert ckpt.activations_bytes < lora.activations_bytes / 10
    # 7B QLoRA fits the 8-12 GB class with checkpointing and a small batch.
    small = fp.estimate({"model": {"name_or_path": "x"}, "method": {"type": "qlora"},
                         "train": {"batch_size": 1, "gradient_checkpointing": True},
                         "data": {"max_length": 512}}, LLAMA2_7B)
    assert 3 << 30 < small.total_bytes < 12 << 30


def test_tiny_comes_from_engine_tiny_settings_without_building_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    from finetui.engine import tiny

    cfg, source = fp.read_model_config("tiny")
    assert cfg["hidden_size"] == tiny.MODEL_SETTINGS["hidden_size"]
    est = fp.estimate(Config())
    assert 200_000 < est.params_total < 600_000  # ~0.3M parameters (332K)
    assert not (tmp_path / "cache").exists()


def test_local_folder_and_hub_cache_lookup(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN25_05B))
    (folder / "model.safetensors").write_bytes(b"\0" * 1234)
    est = fp.estimate({"model": {"name_or_path": str(folder)}})
    assert est.params_total == 494_032_768 and est.size_bytes == 1234

    hub = tmp_path / "hub"
    repo = hub / "models--Org--Name"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(LLAMA2_7B))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    cfg, source = fp.read_model_config("Org/Name")
    assert cfg["hidden_size"] == 4096 and "abc123" in source


def test_errors_name_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(fp.FootprintError, match="no such folder"):
        fp.read_model_config(str(tmp_path / "missing"))
    with pytest.raises(fp.FootprintError, match="Hugging Face cache"):
        fp.read_model_config("Nobody/Here")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"hidden_size": 4,\n oops}')
    with pytest.raises(fp.FootprintError, match=r"config.json:2: invalid JSON"):
        fp.read_model_config(str(bad))
    (bad / "config.json").write_text('{"foo": 1}')
    with pytest.raises(fp.FootprintError, match="lacks hidden_size"):
        fp.estimate({"model": {"name_or_path": str(bad)}})


def test_human_units():
    assert fp.human_count(6_738_415_616) == "6.7B"
    assert fp.human_count(332_352) == "332K"


def test_footprint_imports_nothing_heavy():
    code = (
        "import sys, engine.footprint as f; f.estimate({'model': {'name_or_path': 'tiny'}});"
        "print([m for m in ('torch', 'transformers', 'tokenizers', 'textual', 'pydantic') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
