"""Load tokenizers and models: the built-in tiny model, a local folder, the Hugging Face
cache or a hub id; in 16/32-bit or quantised (bitsandbytes 4-bit NF4 / 8-bit); with LoRA
adapters for training; and a run's result for inference.

Heavy module (torch, transformers, peft): worker processes only (trainer, merge, chat).

Where a model comes from (:func:`resolve_model_path`), in this order:

1. ``tiny``: the built-in demo model (:func:`engine.tiny.path`);
   ``smollm2``: SmolLM2-135M-Instruct, fetched and converted once (:mod:`engine.gguf`);
2. a ``.gguf`` file (or a folder / hub id with ``model.gguf_file``): dequantised once into a
   cached Hugging Face folder (:mod:`engine.gguf`);
3. an existing folder with a ``config.json``;
4. a hub id already in the Hugging Face cache (no network touched);
5. a hub id not cached: downloaded only when the hub answers within a few seconds; offline
   (``HF_HUB_OFFLINE=1`` or no route) it is one clear line, never a long retry loop.

Every failure is a :class:`engine.errors.ModelError` whose message names the setting
(``model.name_or_path``) so the trainer can send it as an ``error`` event of kind ``model``.

Public API (also used by engine/chat.py and engine/merge.py):

- ``resolve_model_path(name, revision=None) -> Path``
- ``load_tokenizer(name_or_path, revision=None, trust_remote_code=False)``
- ``load_model(model_cfg, method_cfg=None, *, tokenizer=None, added_tokens=(), eos_token_ids=None,
  gradient_checkpointing=False, device=None, quantization=None) -> model``
- ``fit_tokenizer(model, tokenizer, eos_token_ids=None)``: grow embeddings for added tokens,
  set eos/pad ids (training and merge call it the same way, so shapes always agree)
- ``footprint(model) -> dict``: params total/trainable, bytes, FLOPs per token
- ``load_for_inference(run_dir_or_model, use_adapter=True, device="auto", trust_remote_code=False)
  -> (model, tokenizer)``
- ``write_meta(folder, ...)`` / ``read_meta(folder)``: ``finetui.json`` beside an adapter

Code shipped with a model (``auto_map`` + a ``.py`` file) runs only when the user asks:
``model.trust_remote_code`` in their own config, or ``--trust-remote-code`` on chat, eval
and merge. A file that came with the weights (an adapter's ``finetui.json``, a run's
``config.yaml`` when chatting with, evaluating or merging it) never turns it on: when it
asks, loading stops with :func:`remote_code_refused`, naming the file and the flag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from finetui.engine import hub, tiny
from finetui.engine.errors import ModelError
from finetui.engine.targets import is_adapter_dir, is_model_dir  # noqa: F401 - engine.modeling.is_*_dir for its callers

META_FILE = "finetui.json"  # written beside every adapter/model the trainer saves


# --------------------------------------------------------------------------- where


def _offline_message(name: str) -> str:
    return (
        f"model '{name}' is not in the Hugging Face cache and the hub cannot be reached (offline): "
        "download it on a connected machine or set model.name_or_path to a local folder"
    )


def _download(repo_id: str, revision: str | None, trust_remote_code: bool) -> Path:
    from huggingface_hub import snapshot_download

    # safetensors preferred: fetch pickled *.bin weights only when a repo has nothing else.
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns + ["*.bin"]))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"model.name_or_path: cannot download '{repo_id}': {first}") from None
    return folder


def resolve_model_path(name: str, revision: str | None = None, trust_remote_code: bool = False,
                       gguf_file: str | None = None) -> Path:
    """``model.name_or_path`` -> a local folder holding config.json (see module docstring)."""
    from finetui.engine import gguf, model_catalog

    name = str(name).strip()
    if tiny.is_tiny(name):
        return tiny.path()
    if model_catalog.builtin(name) is not None:
        return gguf.fetch_builtin(name)
    path = Path(name).expanduser()
    if model_catalog.is_gguf(name):
        return gguf.ensure_local(path)
    if gguf_file:
        if path.is_dir():
            return gguf.ensure_local(path / gguf_file)
        if not hub.is_hub_id(name):
            raise ModelError(f"model.name_or_path: no such folder '{name}'")
        return gguf.ensure_hub(name, gguf_file, revision, download=not hub.offline() and hub.reachable())
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(
                f"model.name_or_path: '{name}' has no config.json (not a Hugging Face model folder)"
            )
        return path
    if path.exists():
        raise ModelError(f"model.name_or_path: '{name}' is a file; expected a model folder")
    if not hub.is_hub_id(name):
        raise ModelError(f"model.name_or_path: no such folder '{name}'")
    cached = hub.cached_snapshot(name, revision)
    if cached is not None:
        return cached
    if hub.offline() or not hub.reachable():
        raise ModelError(_offline_message(name))
    return _download(name, revision, trust_remote_code)


# --------------------------------------------------------------------------- what on


def pick_device(device: str = "auto") -> str:
    """'cuda:<local rank>' or 'cpu'. auto: CUDA when present."""
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device == "cuda":
        raise ModelError(
            "model.device: cuda was asked for but no CUDA GPU is visible (set model.device: auto or cpu)",
            hint="check nvidia-smi and CUDA_VISIBLE_DEVICES",
        )
    return "cpu"


def bf16_supported(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def pick_dtype(dtype: str, device: str):
    """model.dtype -> torch dtype. auto: bf16 on a GPU that has it, else fp32 (a CPU, or
    an older GPU where fp16 mixed precision needs fp32 master weights)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _quantization_config(model_cfg, quantization: str, device: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = model_cfg.bnb_4bit_compute_dtype
    compute_dtype = (
        (torch.bfloat16 if bf16_supported(device) else torch.float32)
        if compute == "auto"
        else {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[compute]
    )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# --------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


REMOTE_CODE_HINT = ("pass --trust-remote-code (or set model.trust_remote_code: true in your own config) "
                    "only if you trust the code in the model's folder")


def remote_code_refused(asked_by: str | os.PathLike, model: str) -> ModelError:
    """The error when a file that came with the weights asks to run the model's code."""
    return ModelError(
        f"{asked_by} asks to run code shipped with model {model} (trust_remote_code: true); "
        "finetui runs it only when you ask: pass --trust-remote-code if you trust it",
        hint=REMOTE_CODE_HINT,
    )


def _needs_code(name_or_path: str | os.PathLike, what: str) -> ModelError:
    return ModelError(f"model {name_or_path}: {what} ships its own code (auto_map); {REMOTE_CODE_HINT}")


def load_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None, trust_remote_code: bool = False,
                   gguf_file: str | None = None):
    """The tokenizer of a model (tiny, folder, cache, hub id), or of any folder holding
    tokenizer files (an adapter saves the tokenizer it was trained with)."""
    path = Path(str(name_or_path)).expanduser()
    if not (path.is_dir() and any((path / f).exists() for f in ("tokenizer_config.json", "tokenizer.json"))):
        path = resolve_model_path(str(name_or_path), revision, trust_remote_code, gguf_file)
    try:
        if _generic_fast_tokenizer(path):
            from transformers.tokenization_utils_tokenizers import TokenizersBackend

            return TokenizersBackend.from_pretrained(str(path), _from_auto=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        if "trust_remote_code" in str(exc):
            raise _needs_code(name_or_path, "its tokenizer") from None
        raise ModelError(f"model {name_or_path}: cannot load the tokenizer: {_first_line(exc)}") from None


# model types whose folder, when its tokenizer_config.json names the generic fast class,
# AutoTokenizer answers with that class (tests/test_tokenizer_loading.py checks both against
# transformers' own tables and by loading both ways)
GENERIC_TOKENIZER_MODEL_TYPES = frozenset({"llama"})


def _generic_fast_tokenizer(path: Path) -> bool:
    """Whether ``path`` holds a tokenizer that AutoTokenizer would load as the generic
    ``TokenizersBackend`` (the class transformers 5 saves, and finetui's built-in models
    use): it names that class, ships tokenizer.json and no code, and its model type is one
    AutoTokenizer does not swap for a class of its own. Loading the class directly skips
    AutoTokenizer's imports (torch and the model-config tables: ~3.7 s of a 4.7 s start on
    this machine), which every ``finetui data inspect`` and dataset-browser worker pays."""
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(settings, dict) and isinstance(config, dict)
            and settings.get("tokenizer_class") == "TokenizersBackend" and "auto_map" not in settings
            and "auto_map" not in config and config.get("model_type") in GENERIC_TOKENIZER_MODEL_TYPES
            and (path / "tokenizer.json").is_file())


def fit_tokenizer(model, tokenizer, eos_token_ids: list[int] | None = None) -> None:
    """Make the model agree with a tokenizer that may have gained tokens.

    Embeddings only ever grow: a model whose matrix is already padded past the vocabulary
    (Qwen, Llama 3) keeps its size; new rows start at the mean of the old ones
    (transformers' mean_resizing), so a new token's first logits are ordinary. Training,
    merge and inference all call this, so adapter and base shapes always match.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.config.eos_token_id = eos
    model.config.pad_token_id = pad
    if getattr(model, "generation_config", None) is not None:
        ids = [i for i in (eos_token_ids or []) if i is not None] or ([eos] if eos is not None else [])
        model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
        model.generation_config.pad_token_id = pad


def _embedding_module_names(model) -> list[str]:
    """Short names (e.g. embed_tokens, lm_head) of the input/output embeddings, as peft's
    modules_to_save matches them by suffix."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    names = []
    for full, module in model.named_modules():
        if any(module is w for w in wanted if w is not None):
            short = full.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names


def _embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def apply_lora(model, method_cfg, train_embeddings: bool, gradient_checkpointing: bool = False,
               base_path: Path | None = None):
    """Wrap the model with LoRA adapters (QLoRA: after k-bit preparation), in the variant
    the method asks for (peft's DoRA, rsLoRA, PiSSA/OLoRA/LoftQ initialisation). LoftQ
    reads the unquantised weights from ``base_path``'s safetensors."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Casts norms/embeddings to fp32 and enables input grads so LoRA on a frozen
        # quantised base trains stably; gradient checkpointing is switched on here when
        # asked (non-reentrant, so frozen inputs need no grad).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    modules_to_save = list(method_cfg.modules_to_save)
    if train_embeddings:
        # New tokens (ChatML on a base model) have untrained rows: the adapter must carry
        # the whole embedding and output matrices, or the model can never emit <|im_end|>.
        for name in _embedding_module_names(model):
            if name not in modules_to_save:
                modules_to_save.append(name)
    target = method_cfg.target_modules
    init = getattr(method_cfg, "init_lora_weights", "default")
    lora = LoraConfig(
        r=method_cfg.lora_r,
        lora_alpha=method_cfg.lora_alpha,
        lora_dropout=method_cfg.lora_dropout,
        target_modules=target if target == "all-linear" else list(target),
        modules_to_save=modules_to_save or None,
        ensure_weight_tying=bool(train_embeddings and _embeddings_tied(model)),
        use_dora=bool(getattr(method_cfg, "use_dora", False)),
        use_rslora=bool(getattr(method_cfg, "use_rslora", False)),
        # loftq: peft's replace_lora_weights_loftq below, on the 4-bit layers
        init_lora_weights=True if init in ("default", "loftq") else init,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ModelError(f"method.target_modules: {_first_line(exc)}") from None
    if init == "loftq":
        _loftq(model, base_path)
    if gradient_checkpointing:
        # With a frozen base, the checkpointed blocks' inputs need requires_grad.
        model.enable_input_require_grads()
    return model


def _loftq(model, base_path: Path | None) -> None:
    """LoftQ for a 4-bit base: each LoRA pair starts at the low-rank part of what 4-bit
    rounding lost (peft.replace_lora_weights_loftq, from the base's safetensors)."""
    from peft import replace_lora_weights_loftq

    if base_path is None or not any(Path(base_path).glob("*.safetensors")):
        raise ModelError("method.init_lora_weights: loftq reads the unquantised weights from the base model's "
                         ".safetensors files, and this model has none")
    try:
        replace_lora_weights_loftq(model, model_path=str(base_path))
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"method.init_lora_weights: loftq: {_first_line(exc)}") from None


def _cpu_4bit_packing_guard(model, training: bool) -> None:
    """bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU kernel on the first
    no-grad forward (evaluation, generation). Its repacking needs out_features % 32 == 0 and
    in_features % blocksize == 0 (tiny's 176-wide MLP has neither), and a repacked weight
    in the middle of training (the Trainer evaluates between steps) is not what the
    training path expects: keep training, and layers that cannot be repacked, on the
    ordinary 4-bit path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            block = getattr(state, "blocksize", 64) or 64
            if training or module.out_features % 32 or module.in_features % block:
                module.support_avx512bf16_for_cpu = False


def load_model(
    model_cfg,
    method_cfg=None,
    *,
    tokenizer=None,
    added_tokens: list[str] | tuple[str, ...] = (),
    eos_token_ids: list[int] | None = None,
    gradient_checkpointing: bool = False,
    device: str | None = None,
    quantization: str | None = None,
):
    """Load ``model_cfg`` (an engine.config.ModelConfig) ready for ``method_cfg``.

    method_cfg None (or type full) returns the plain model; lora/qlora return a peft model
    with only the adapters (and, when ``added_tokens``, the embeddings) trainable.
    ``quantization`` overrides model_cfg.quantization (merge loads the base unquantised).
    With a tokenizer, embeddings and eos/pad ids are fitted to it (:func:`fit_tokenizer`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or pick_device(model_cfg.device)
    quantization = quantization if quantization is not None else model_cfg.quantization
    path = resolve_model_path(model_cfg.name_or_path, model_cfg.revision, model_cfg.trust_remote_code,
                              model_cfg.gguf_file)
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(model_cfg.dtype, device),
        "device_map": {"": device},
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if any(path.glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # never unpickle *.bin when safetensors exist
    if quantization != "none":
        kwargs["quantization_config"] = _quantization_config(model_cfg, quantization, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        text = _first_line(exc)
        if "out of memory" in str(exc).lower():
            raise
        if "trust_remote_code" in str(exc):
            raise _needs_code(model_cfg.name_or_path, "it") from None
        raise ModelError(f"model {model_cfg.name_or_path}: cannot load: {text}") from None
    method = getattr(method_cfg, "type", "full") if method_cfg is not None else "full"
    if quantization == "4bit" and device == "cpu":
        _cpu_4bit_packing_guard(model, training=method_cfg is not None)
    if tokenizer is not None:
        fit_tokenizer(model, tokenizer, eos_token_ids)
    if method in ("lora", "qlora"):
        model = apply_lora(model, method_cfg, bool(added_tokens), gradient_checkpointing, base_path=path)
    elif method_cfg is None:
        model.eval()
    return model


# --------------------------------------------------------------------------- sizes


def footprint(model) -> dict[str, int]:
    """Parameter counts, bytes held, and 6*N training FLOPs per token.

    bitsandbytes packs two 4-bit weights per byte, so a Params4bit of n elements stands for
    2n weights; bytes are what the tensors really occupy.
    """
    total = trainable = size = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = n * 2 * param.element_size()
        total += n
        if param.requires_grad:
            trainable += n
        size += param.numel() * param.element_size()
    return {
        "params_total": total,
        "params_trainable": trainable,
        "size_bytes": size,
        "flops_per_token": 6 * total,
    }


# --------------------------------------------------------------------------- metadata


def write_meta(folder: Path, model_cfg, method: str, added_tokens: list[str], eos_token_ids: list[int],
               variant: dict[str, Any] | None = None) -> None:
    """``finetui.json`` beside a saved adapter/model: how to rebuild its base (by the name the
    user gave, e.g. ``tiny``, not a cache path that differs between machines)."""
    meta = {
        "base_model": model_cfg.name_or_path,
        "revision": model_cfg.revision,
        "gguf_file": model_cfg.gguf_file,
        "trust_remote_code": model_cfg.trust_remote_code,
        "quantization": model_cfg.quantization,
        "dtype": model_cfg.dtype,
        "method": method,
        "added_tokens": list(added_tokens),
        "eos_token_ids": list(eos_token_ids),
    }
    if variant:  # the PEFT family's settings (DoRA, rsLoRA, initialisation, LoRA+), as trained
        meta["variant"] = variant
    from finetui.engine import atomic

    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=1))


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def base_config_for_adapter(adapter_dir: Path, trust_remote_code: bool = False):
    """A ModelConfig for the base an adapter was trained on (finetui.json, else peft's
    adapter_config.json). ``trust_remote_code`` is the user's own choice: a finetui.json
    that asks for it without that is refused (:func:`remote_code_refused`)."""
    from finetui.engine.config import ModelConfig

    meta = read_meta(adapter_dir)
    if meta.get("base_model"):
        if meta.get("trust_remote_code") and not trust_remote_code:
            raise remote_code_refused(Path(adapter_dir) / META_FILE, meta["base_model"])
        return ModelConfig(
            name_or_path=meta["base_model"],
            revision=meta.get("revision"),
            gguf_file=meta.get("gguf_file"),
            trust_remote_code=trust_remote_code,
            quantization=meta.get("quantization") or "none",
        )
    try:
        peft_cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ModelError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)") from None
    base = peft_cfg.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter_dir}/adapter_config.json does not name its base model")
    return ModelConfig(name_or_path=base, revision=peft_cfg.get("revision"), trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- inference


def load_adapter_model(adapter_dir: Path, *, device: str = "cpu", quantization: str = "none",
                       dtype: str | None = None, trainable: bool = False, trust_remote_code: bool = False,
                       dequantized: bool = False):
    """Base + LoRA adapter, fitted exactly as in training: the tokenizer saved with the
    adapter (added tokens, eos) decides the embedding size before the adapter loads.
    ``dequantized``: the base loaded with ``quantization`` and dequantised back to plain
    linears (the weights a 4-bit run trained against, in full precision)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    base_cfg = base_config_for_adapter(adapter_dir, trust_remote_code)
    if dtype is not None:
        base_cfg = base_cfg.model_copy(update={"dtype": dtype})
    meta = read_meta(adapter_dir)
    tokenizer = load_tokenizer(adapter_dir, trust_remote_code=base_cfg.trust_remote_code) \
        if (adapter_dir / "tokenizer_config.json").exists() \
        else load_tokenizer(base_cfg.name_or_path, base_cfg.revision, base_cfg.trust_remote_code, base_cfg.gguf_file)
    base = load_model(base_cfg, None, device=device, quantization=quantization)
    if dequantized and quantization != "none":
        base = base.dequantize()
    fit_tokenizer(base, tokenizer, meta.get("eos_token_ids"))
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except Exception as exc:
        raise ModelError(f"{adapter_dir}: cannot load the adapter: {_first_line(exc)}") from None
    model.eval()
    return model, tokenizer


def _load_folder(folder: Path, device: str, trust_remote_code: bool = False):
    from finetui.engine.config import ModelConfig

    cfg = ModelConfig(name_or_path=str(folder), trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    model = load_model(cfg, None, device=device)
    return model, tokenizer


def load_for_inference(run_dir_or_model: str | os.PathLike, use_adapter: bool = True, device: str = "auto",
                       quantization: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode for chat and evaluation.

    - a run (id, prefix, ``last`` or folder): ``merged/`` if present, else base + ``adapter/``
      (or the full fine-tune in ``adapter/``), else its last checkpoint; with
      ``use_adapter=False`` the run's base model. A LoRA run's base is loaded as trained
      (4-bit for QLoRA) unless ``quantization`` says otherwise;
    - an adapter folder: its base + the adapter;
    - ``tiny``, a model folder, a cached hub id: that model.

    ``trust_remote_code`` is the user's ``--trust-remote-code``: the only thing that lets a
    model's own code run; a run's config.yaml or an adapter's finetui.json asking for it
    is refused (:func:`remote_code_refused`).
    """
    device = pick_device(device)
    target = str(run_dir_or_model)
    from finetui.engine import runs, targets

    what = targets.resolve(target)
    if what.kind == "adapter":
        q = quantization if quantization is not None else (read_meta(what.path).get("quantization") or "none")
        return load_adapter_model(what.path, device=device, quantization=q, trust_remote_code=trust_remote_code)
    if what.kind != "run":  # a model, a hub id, or a clear error
        return _load_folder(resolve_model_path(target, trust_remote_code=trust_remote_code), device,
                            trust_remote_code)
    run_dir = what.path

    from finetui.engine.config import load as load_config

    config = load_config(run_dir / "config.yaml")
    if config.model.trust_remote_code and not trust_remote_code:
        raise remote_code_refused(run_dir / "config.yaml", config.model.name_or_path)
    model_cfg = config.model.model_copy(update={"trust_remote_code": trust_remote_code})
    if not use_adapter:
        tokenizer = load_tokenizer(model_cfg.name_or_path, model_cfg.revision, trust_remote_code, model_cfg.gguf_file)
        model = load_model(model_cfg, None, device=device, quantization=quantization)
        return model, tokenizer
    candidates = [run_dir / "merged", run_dir / "adapter"]
    last = runs.last_checkpoint(run_dir)
    if last is not None:
        candidates.append(last)
    for folder in candidates:
        if is_adapter_dir(folder):
            q = quantization if quantization is not None else config.model.quantization
            return load_adapter_model(folder, device=device, quantization=q, trust_remote_code=trust_remote_code)
        if is_model_dir(folder):
            return _load_folder(folder, device, trust_remote_code)
    missing = targets.missing("trained weights", f"run {run_dir.name}", yet=True,
                              hint="no merged/, adapter/ or checkpoint; use --base to talk to its base model")
    raise ModelError(str(missing))
