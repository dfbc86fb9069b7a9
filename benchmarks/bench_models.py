"""The models the training benchmark uses, saved as ordinary local Hugging Face folders so
every system (finetui, LLaMA-Factory, the plain Trainer script) loads exactly the same
weights and tokenizer from disk.

    python benchmarks/bench_models.py [--dir DIR] [--models tiny,small]

- ``tiny``:  finetui's built-in demo model (``engine.tiny``: Llama, hidden 64, 4 layers,
  ~0.3M parameters, byte-level BPE with 1,024 tokens and a ChatML template), copied as is.
- ``small``: a ~20M-parameter Llama (hidden 512, 6 layers, 8 heads, MLP 1,376) with the
  tiny tokenizer, random weights drawn from a fixed seed, so that compute, not start-up,
  dominates a run.
- ``smollm2``: the real SmolLM2-135M-Instruct (finetui's built-in, :mod:`engine.gguf`):
  its converted folder in finetui's cache, used in place (fetched and converted on first
  use), with its own tokenizer (49,152 tokens, ChatML natively).

Folders are built once and reused (a ``bench_model.json`` marker records the settings; a
change of settings rebuilds). Default place: ``$FINETUI_CACHE/bench-models``.

The job's data: ``DATA_DIR`` (LLaMA-Factory's ``dataset_info.json`` folder with
``alpaca_en_demo``), the one place the benchmarks look for it.
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
MODELS = ("tiny", "small", "smollm2")
# LLaMA-Factory's demo data (dataset_info.json + alpaca_en_demo.json): the one place the
# benchmarks read it from (`finetui bench --data-dir` overrides it for one run).
DATA_DIR = ROOT / "tests" / "data" / "datasets" / "llamafactory"  # copies in the repository (tests/data/SOURCES.md)
ALPACA = DATA_DIR / "dataset_info.json"
MARKER = "bench_model.json"


def default_dir() -> Path:
    from finetui.engine.tiny import cache_root

    return cache_root() / "bench-models"


def _marker(name: str) -> dict:
    from finetui.engine import tiny

    settings = tiny.MODEL_SETTINGS if name == "tiny" else SMALL_SETTINGS
    return {"name": name, "tiny_version": tiny.VERSION, "seed": tiny.SEED if name == "tiny" else SEED,
            "settings": settings}


def _ready(folder: Path, name: str) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == _marker(name)
    except (OSError, json.JSONDecodeError):
        return False


def build_small(folder: Path) -> None:
    from transformers import AutoTokenizer

    from finetui.engine import tiny

    tok = AutoTokenizer.from_pretrained(tiny.path())
    tiny.save_random_llama(folder, tok, SMALL_SETTINGS, SEED, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)


def ensure(name: str, root: Path | None = None) -> Path:
    """The folder of bench model ``name`` (tiny | small | smollm2), built if missing or stale."""
    if name not in MODELS:
        raise SystemExit(f"unknown bench model {name!r} (choose from {', '.join(MODELS)})")
    if name == "smollm2":  # a real model: its converted folder in finetui's cache, as is
        from finetui.engine.modeling import resolve_model_path

        return resolve_model_path("smollm2")
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
        from finetui.engine import tiny

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
    from finetui.engine.config import Config

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


def _shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the safetensors headers (no torch import)."""
    import struct

    shapes: dict[str, list[int]] = {}
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        shapes.update({key: meta["shape"] for key, meta in header.items() if key != "__metadata__"})
    return shapes


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def params(folder: Path) -> int:
    """Parameter count from the safetensors header (tied embeddings are stored, and counted, once)."""
    return sum(_count(s) for s in _shapes(folder).values())


def flop_params(folder: Path, lora_r: int) -> dict[str, int]:
    """The parameter counts the FLOP estimate uses (see :func:`train_flops`):

    - ``body``: every parameter of the decoder blocks and the final norm (the blocks'
      linear layers are nearly all of it; the input embedding, a lookup, is left out);
    - ``head``: the LM head (vocabulary x hidden; the embedding matrix when tied);
    - ``lora``: the LoRA adapters, r x (in + out) for each 2-D weight in the blocks
      (peft's ``all-linear``: every linear layer but the head).
    """
    shapes = _shapes(folder)
    embed = next((k for k in shapes if k.endswith("embed_tokens.weight")), None)
    head = "lm_head.weight" if "lm_head.weight" in shapes else embed
    body = sum(_count(s) for k, s in shapes.items() if k not in (embed, head))
    lora = sum(lora_r * (s[0] + s[1]) for k, s in shapes.items() if ".layers." in k and len(s) == 2)
    return {"total": params(folder), "body": body, "head": _count(shapes[head]) if head else 0, "lora": lora}


def train_flops(counts: dict[str, int], real_tokens: int, trained_tokens: int | None) -> float:
    """Training FLOPs of one epoch of LoRA, the work the job needs (whoever skips or adds work):

        4·body·real_tokens + 4·head·trained_tokens + 6·lora·real_tokens

    A matmul costs 2 FLOPs per weight per token forward; backward costs 2 more for the
    input's gradient and 2 for the weight's, and the frozen base skips the weight's: 4 per
    frozen weight per token (the usual 6·N is for full fine-tuning), 6 per adapter weight.
    The head is needed only where a label is trained (elsewhere its output is thrown away);
    without a trained-token count it is counted at every real token. Attention scores
    (Q·K and the weights times V, ~6·layers·width·context per token, causal) are left out,
    as in the usual 6·N estimate.
    """
    trained = real_tokens if trained_tokens is None else trained_tokens
    return 4.0 * counts["body"] * real_tokens + 4.0 * counts["head"] * trained + 6.0 * counts["lora"] * real_tokens


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
