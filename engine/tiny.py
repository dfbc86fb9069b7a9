"""The built-in demo model: ``model.name_or_path: tiny``.

A ~0.3M-parameter Llama-architecture model and a byte-level BPE tokenizer with a ChatML
chat template, built locally from a fixed seed in a few seconds and cached as an ordinary
Hugging Face folder (``save_pretrained``), so every other code path (loading, LoRA, merge,
chat) treats it exactly like a real model, and it can be handed to other tools too.

Heavy module (tokenizers, transformers, torch): import only in worker processes.

The tokenizer is trained on the sample data shipped in ``sample_data/`` (plus a fixed
paragraph), so the FAQ demo tokenises into few tokens and memorises quickly on a CPU. The
cache key covers the corpus, the settings and :data:`VERSION`, so a change to any of them
builds a fresh model instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from finetui.engine.data.templates import CHATML

VERSION = 2
SEED = 1234
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# finetui's own ChatML (system, tools, Hermes tool calls) with generation markers, so
# `return_assistant_tokens_mask` works and tool-call data trains as it renders; the
# assistant turn's <|im_end|> is inside the markers because the model must learn to stop.
CHAT_TEMPLATE = CHATML

MODEL_SETTINGS = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)

_FALLBACK_TEXT = (
    "finetui is a keyboard-driven terminal app for fine-tuning language models over SSH. "
    "It trains with full fine-tuning, LoRA or QLoRA, shows a live dashboard of loss, "
    "learning rate, tokens per second and GPU memory, and lets you chat with the result. "
    "The quick brown fox jumps over the lazy dog. 0123456789 () [] {} <> = + - * / , . ; : ? !"
)


def cache_root() -> Path:
    base = os.environ.get("FINETUI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "finetui"
    )
    return Path(base)


def _corpus() -> list[str]:
    """Text the tokenizer learns merges from: every string in the shipped sample data."""
    texts: list[str] = []

    def strings(node: object) -> None:
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                strings(value)
        elif isinstance(node, list):
            for value in node:
                strings(value)

    try:
        root = resources.files("finetui.sample_data")
        files = sorted((p for p in root.iterdir() if p.name.endswith((".jsonl", ".json", ".txt"))), key=lambda p: p.name)
    except (ModuleNotFoundError, FileNotFoundError):
        files = []
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.name.endswith(".jsonl"):
            for line in raw.splitlines():
                try:
                    strings(json.loads(line))
                except json.JSONDecodeError:
                    continue
        elif path.name.endswith(".json"):
            try:
                strings(json.loads(raw))
            except json.JSONDecodeError:
                continue
        else:
            texts.append(raw)
    texts.append(_FALLBACK_TEXT)
    return texts


def _key(corpus: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([VERSION, SEED, VOCAB_SIZE, SPECIAL_TOKENS, CHAT_TEMPLATE, MODEL_SETTINGS]).encode())
    for text in corpus:
        h.update(text.encode("utf-8", errors="replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def path() -> Path:
    """Folder of the tiny model, built on first use. Safe when several processes race
    (each builds into a temp folder, the first rename wins)."""
    corpus = _corpus()
    target = cache_root() / f"tiny-v{VERSION}-{_key(corpus)}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build(tmp, corpus)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        bos_token=None,
        model_max_length=MODEL_SETTINGS["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(folder: Path, corpus: list[str] | None = None) -> Path:
    """Build tokenizer + randomly initialised model (seeded) into ``folder``."""
    corpus = corpus if corpus is not None else _corpus()
    tokenizer = build_tokenizer(corpus)
    save_random_llama(folder, tokenizer, MODEL_SETTINGS, SEED,
                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"))
    (folder / "finetui_tiny.json").write_text(json.dumps({"version": VERSION, "seed": SEED}))
    return folder


def save_random_llama(folder: Path, tokenizer, settings: dict, seed: int, *, eos_token_id: int,
                      pad_token_id: int) -> None:
    """A Llama of ``settings`` for ``tokenizer``, its weights drawn from ``seed``, saved with the
    tokenizer in ``folder`` (the tiny model, and the benchmarks' larger random one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **settings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def is_tiny(name_or_path: str) -> bool:
    return name_or_path.strip().lower() == "tiny"
