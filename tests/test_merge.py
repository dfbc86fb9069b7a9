"""finetui merge: the merged model answers exactly as base + adapter; ChatML on a base
model (added tokens) survives the round trip; a full fine-tune is linked, not merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetui.engine import modeling
from finetui.engine.merge import merge
from train_helpers import of_type, stdout_log, train

pytestmark = pytest.mark.slow

PROMPTS = ["What is finetui?", "Does finetui need a mouse?", "Tell me a joke."]


def greedy(model, tokenizer, prompt: str, n: int = 16) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory) -> Path:
    """A small base model the way hub base models come: eos only, no pad, no chat
    template, no ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("base-model")
    faq = Path(__file__).resolve().parents[1] / "sample_data" / "finetui_faq.jsonl"
    corpus = [v for line in faq.read_text().splitlines() if line.strip() for v in json.loads(line).values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=fast.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_lora_merge_answers_like_base_plus_adapter(tmp_path, finetui_cache):
    run_dir, rc, events = train(tmp_path, "lora", method={"type": "lora"},
                                train={"learning_rate": 2e-2, "eval_strategy": "no", "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    stages = []
    out = merge(run_dir, shard_size="500KB", progress=lambda stage, done: stages.append((stage, done)))
    assert out == run_dir / "merged" and stages[-1] == ("done", 1.0)
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    assert (out / "tokenizer.json").exists()

    merged, merged_tok = modeling.load_for_inference(run_dir, device="cpu")  # merged/ wins
    assert not hasattr(merged, "peft_config")
    adapted, tok = modeling.load_adapter_model(run_dir / "adapter", device="cpu")
    base, _ = modeling.load_for_inference(run_dir, use_adapter=False, device="cpu")
    outputs = [greedy(merged, merged_tok, p) for p in PROMPTS]
    assert outputs == [greedy(adapted, tok, p) for p in PROMPTS]
    assert outputs != [greedy(base, tok, p) for p in PROMPTS]  # the adapter did something


def test_chatml_on_a_base_model_adds_tokens_and_merges(tmp_path, finetui_cache, base_model_dir):
    run_dir, rc, events = train(
        tmp_path, "chatml",
        model={"name_or_path": str(base_model_dir)},
        method={"type": "lora"},
        data={"template": "chatml"},
        train={"learning_rate": 2e-2, "eval_strategy": "no", "save_strategy": "no"},
    )
    assert rc == 0, stdout_log(run_dir)
    assert any("added tokens" in e["message"] for e in of_type(events, "log"))
    started = of_type(events, "run_started")[0]
    assert {"<|im_start|>", "<|im_end|>"} <= set(started["data"]["added_tokens"])

    adapter = run_dir / "adapter"
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)
    meta = json.loads((adapter / "finetui.json").read_text())
    saved_tok = modeling.load_tokenizer(adapter)
    im_end = saved_tok.convert_tokens_to_ids("<|im_end|>")
    assert saved_tok.eos_token == "<|im_end|>" and im_end in meta["eos_token_ids"]
    assert "<|im_start|>" in (saved_tok.chat_template or "")  # the trained template travels with it

    out = merge(run_dir, out=tmp_path / "merged-chatml")
    merged_cfg = json.loads((out / "config.json").read_text())
    assert merged_cfg["vocab_size"] >= len(saved_tok) > 400
    gen = json.loads((out / "generation_config.json").read_text())
    assert im_end in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])

    merged, merged_tok = modeling.load_for_inference(out, device="cpu")
    adapted, tok = modeling.load_adapter_model(adapter, device="cpu")
    assert [greedy(merged, merged_tok, p) for p in PROMPTS] == [greedy(adapted, tok, p) for p in PROMPTS]


def test_full_fine_tune_merge_is_a_link_and_cli(tmp_path, finetui_cache):
    run_dir, rc, _ = train(tmp_path, "full", train={"eval_strategy": "no", "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "merge", str(run_dir), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = Path(json.loads(proc.stdout)["merged"])
    assert out == run_dir / "merged"
    weights = out / "model.safetensors"
    assert weights.read_bytes() == (run_dir / "adapter" / "model.safetensors").read_bytes()
    assert os.stat(weights).st_ino == os.stat(run_dir / "adapter" / "model.safetensors").st_ino
    model, tok = modeling.load_for_inference(run_dir, device="cpu")
    assert greedy(model, tok, PROMPTS[0], n=4)


def test_qlora_merges_into_an_unquantised_base(tmp_path, finetui_cache):
    run_dir, rc, _ = train(tmp_path, "qlora", method={"type": "qlora"},
                           train={"learning_rate": 2e-2, "eval_strategy": "no", "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    out = merge(run_dir)
    merged_cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in merged_cfg
    model, tok = modeling.load_for_inference(run_dir, device="cpu")
    assert not any("4bit" in type(m).__name__ for m in model.modules())
    assert len(greedy(model, tok, PROMPTS[0], n=4)) == 4
