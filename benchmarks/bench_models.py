"""The models the training benchmark uses, saved as ordinary local Hugging Face folders so
every system (finetui, LLaMA-Factory, the plain Trainer script) loads exactly the same
weights and tokenizer from disk.

    python benchmarks/bench_models.py [--dir DIR] [--models tiny,small]

- ``tiny``:  finetui's built-in demo model (``engine.tiny``: Llama, hidden 64, 4 layers,
  ~0.3M parameters, byte-level BPE with 1,024 tokens and a ChatML template), copied as is.
- ``small``: a ~20M-parameter Llama (hidden 512, 6 layers, 8 heads, MLP 1,376) with the
  tiny tokenizer, random weights drawn from a fixed seed, so that compute, not start-up,
  dominates a run.

Folders are built once and reused (a ``bench_model.json`` marker records the settings; a
change of settings rebuilds). Default place: ``$FINETUI_CACHE/bench-models``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED = 20240601
SMALL_SETTINGS = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
MODELS = ("tiny", "small")
ALPACA = ROOT.parent / "shared" / "datasets" / "llamafactory" / "dataset_info.json"
MARKER = "bench_model.json"


def default_dir() -> Path:
    from engine.tiny import cache_root

    return cache_root() / "bench-models"


def _marker(name: str) -> dict:
    from engine import tiny

    settings = tiny.MODEL_SETTINGS if name == "tiny" else SMALL_SETTINGS
    return {"name": name, "tiny_version": tiny.VERSION, "seed": tiny.SEED if name == "tiny" else SEED,
            "settings": settings}


def _ready(folder: Path, name: str) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == _marker(name)
    except (OSError, json.JSONDecodeError):
        return False


def build_small(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine import tiny

    tok = AutoTokenizer.from_pretrained(tiny.path())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SMALL_SETTINGS,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def ensure(name: str, root: Path | None = None) -> Path:
    """The folder of bench model ``name`` (tiny | small), built if missing or stale."""
    if name not in MODELS:
        raise SystemExit(f"unknown bench model {name!r} (choose from {', '.join(MODELS)})")
    root = Path(root) if root else default_dir()
    folder = root / name
    if _ready(folder, name):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    tmp = root / f".{name}-build"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if name == "tiny":
        from engine import tiny

        for item in tiny.path().iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    else:
        build_small(tmp)
    (tmp / MARKER).write_text(json.dumps(_marker(name)))
    tmp.rename(folder)
    return folder


def alpaca_config(model_dir: Path, cutoff: int, rows: int):
    """The benchmark job as an ``engine.config.Config``, for the in-process benchmarks:
    LoRA r8 / alpha 16 all-linear without dropout, ChatML, packed, the first ``rows``
    records of LLaMA-Factory's alpaca_en_demo cut at ``cutoff`` tokens, no test split."""
    from engine.config import Config

    config = Config()
    config.model.name_or_path = str(model_dir)
    config.data.path = f"{ALPACA}:alpaca_en_demo"
    config.data.template = "chatml"
    config.data.max_length = cutoff
    config.data.max_samples = rows
    config.data.test_size = 0
    config.data.packing = True
    config.method.lora_r, config.method.lora_alpha, config.method.lora_dropout = 8, 16, 0.0
    return config


def params(folder: Path) -> int:
    """Parameter count from the safetensors header (no torch import)."""
    import struct

    total = 0
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="where to save the folders")
    p.add_argument("--models", default="tiny,small")
    args = p.parse_args(argv)
    for name in args.models.split(","):
        folder = ensure(name.strip(), args.dir)
        print(f"{name}: {folder} ({params(folder) / 1e6:.2f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
