"""`finetui merge RUN_ID_OR_ADAPTER [--out DIR] [--shard-size 2GB]`: fold a LoRA adapter
into its base model and save an ordinary model folder (safetensors shards, tokenizer,
generation_config) that any tool can load without peft.

Heavy module (torch, transformers, peft); the TUI calls :func:`merge` in a subprocess.

The base is loaded unquantised, even for a QLoRA run: merging into 4-bit weights would
round the adapter away. A LoftQ adapter is the exception: it was initialised to make up for
the 4-bit rounding, so it merges into the 4-bit base dequantised. Its embeddings are grown exactly as in training
(``engine.modeling.fit_tokenizer`` with the tokenizer saved beside the adapter), so an
adapter that trained new tokens (ChatML on a base model) fits. A full fine-tune's output is
already a plain model: "merging" it links (or copies) the files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable

from finetui.engine.errors import ModelError

Progress = Callable[[str, float], None]  # (stage, fraction done 0..1)


def _source(run_dir_or_adapter: str | os.PathLike) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None) from a run id/prefix/``last``/path or a folder
    (``engine.targets.merge_source``)."""
    from finetui.engine import targets

    try:
        return targets.merge_source(run_dir_or_adapter)
    except targets.NotFound as exc:
        if exc.what != "adapter/":
            raise
        raise ModelError(str(exc)) from None


def _link_or_copy(src: Path, out: Path) -> None:
    """A full fine-tune is its own merged model: hard links cost no space; copy across
    file systems."""
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name == "training_args.bin" or not item.is_file():
            continue
        target = out / item.name
        if target.exists():
            target.unlink()
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def _native_dtype(adapter: Path, trust_remote_code: bool = False):
    """The dtype the base model's config.json declares (None when it says nothing)."""
    import torch

    from finetui.engine import modeling

    base = modeling.base_config_for_adapter(adapter, trust_remote_code)
    folder = modeling.resolve_model_path(base.name_or_path, base.revision, gguf_file=base.gguf_file)
    try:
        declared = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    name = declared.get("dtype") or declared.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)


def merge(run_dir_or_adapter: str | os.PathLike, out: str | os.PathLike | None = None,
          shard_size: str = "2GB", progress: Progress | None = None, trust_remote_code: bool = False) -> Path:
    """Merge and save; return the output folder (default: the run's ``merged/``, or
    ``<adapter>-merged`` beside a bare adapter folder). ``trust_remote_code``: the user's
    --trust-remote-code; an adapter's finetui.json asking for it is refused."""
    from finetui.engine import modeling

    report = progress or (lambda stage, fraction: None)
    adapter, run_dir = _source(run_dir_or_adapter)
    if out is None:
        out = run_dir / "merged" if run_dir is not None else adapter.parent / f"{adapter.name}-merged"
    out = Path(out)

    if not modeling.is_adapter_dir(adapter):  # a full fine-tune
        if not modeling.is_model_dir(adapter):
            raise ModelError(f"{adapter}: neither a LoRA adapter nor a model folder")
        report("linking the fine-tuned model", 0.5)
        _link_or_copy(adapter, out)
        report("done", 1.0)
        return out

    report("loading base and adapter", 0.1)
    # Full precision for the arithmetic: the base's own dtype on the CPU (fp32 for tiny).
    # A LoftQ adapter (method.init_lora_weights: loftq) holds what 4-bit rounding took from
    # the base: it merges into the 4-bit weights it trained on, dequantised, not into the
    # original ones (which would count the rounding twice).
    loftq = (modeling.read_meta(adapter).get("variant") or {}).get("init_lora_weights") == "loftq"
    model, tokenizer = modeling.load_adapter_model(adapter, device="cpu", quantization="4bit" if loftq else "none",
                                                   dequantized=loftq, trust_remote_code=trust_remote_code)
    report("merging", 0.6)
    merged = model.merge_and_unload()
    native = _native_dtype(adapter, trust_remote_code)
    if native is not None and native != merged.dtype:
        merged = merged.to(native)  # save as the base was published (bf16 stays bf16)
    report("saving", 0.8)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), max_shard_size=shard_size, safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    meta = modeling.read_meta(adapter)
    meta.update({"merged_from": str(adapter.resolve()), "method": "merged"})
    from finetui.engine import atomic

    atomic.write_text(out / modeling.META_FILE, json.dumps(meta, indent=1))
    report("done", 1.0)
    return out


def command(args) -> int:
    def show(stage: str, fraction: float) -> None:
        if not args.json:
            print(f"[{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The base is always loaded unquantised here (a QLoRA adapter merges into the 16/32-bit
    # base), so bitsandbytes is never needed; hidden, its import (~1 s, and a warning about
    # optional CPU kernels) is skipped, as the trainer does for unquantised runs.
    sys.modules.setdefault("bitsandbytes", None)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own stage lines say enough
    # peft still calls a transformers API deprecated for v6; the user can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    out = merge(args.run, out=args.out, shard_size=args.shard_size, progress=show,
                trust_remote_code=getattr(args, "trust_remote_code", False))
    if args.json:
        print(json.dumps({"merged": str(out)}))
    else:
        print(out)
    return 0
