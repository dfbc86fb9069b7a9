"""Model footprint and training-memory estimate from a model's ``config.json`` alone.

Light module (stdlib + json only): it never loads weights, never imports torch, and never
touches the network. The TUI shows its numbers before a run starts; the trainer reports the
real ones in ``run_started``.

Where the config comes from (:func:`read_model_config`):

* ``tiny``: :data:`engine.tiny.MODEL_SETTINGS` + ``VOCAB_SIZE`` (engine.tiny imports only the
  standard library at module level, so this stays light and works before the tiny model
  has ever been built);
* a local folder: ``FOLDER/config.json``;
* a Hugging Face id: ``<hub cache>/models--ORG--NAME/snapshots/<rev>/config.json``
  (``refs/<revision or main>`` first, else the newest snapshot), from ``$HF_HUB_CACHE``,
  ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``.

Parameter count (Llama-like decoder: Llama, Mistral, Qwen2/3, Gemma, Phi-3 ...), with
``h`` hidden_size, ``i`` intermediate_size, ``L`` num_hidden_layers, ``n`` heads, ``kv`` key/value
heads, ``d`` head_dim (default ``h / n``), ``V`` vocab_size, ``E`` experts (MoE, default 1)::

    attention  = h*n*d (q) + 2*h*kv*d (k, v) + n*d*h (o)   [+ n*d + 2*kv*d biases for Qwen2]
    mlp        = E * 3*h*i (gate, up, down)  [+ h*E router when E > 1]
    layer      = attention + mlp + 2*h (two RMSNorms)
    total      = V*h (embeddings) + L*layer + h (final norm) + V*h (lm_head, unless tied)

GPT-2/NeoX-style configs (``n_embd``, ``n_layer`` ...) map onto the same names with a
2-matrix MLP (``i`` defaults to ``4h``); GPT-2 adds learned positions and its biases.

Trainable parameters: everything for ``full``; for ``lora``/``qlora`` ``r * (in + out)`` for
each targeted linear layer (``all-linear``: q, k, v, o, gate, up, down in every layer)
plus the full size of ``modules_to_save``.

Memory estimate in bytes (:func:`estimate`), all terms reported separately::

    weights     = params * bytes_per_param(dtype)      fp32 4, bf16/fp16 2 (auto: 2 on a GPU,
                                                        4 on the CPU)
                  4-bit: the decoder's linear weights take 0.5 bytes + the quantisation
                  constants (one fp32 absmax per 64 weights: +0.0625; with double
                  quantisation ~+0.016); 8-bit: ~1.03 bytes; embeddings, norms and
                  lm_head stay at 2 bytes
    adapters    = LoRA params * 4 (kept in fp32 by peft's default)
    gradients   = trainable * 4                         (fp32)
    optimizer   = trainable * 8                         (AdamW: two fp32 states;
                                                          adamw_8bit: trainable * 2)
    activations = batch * seq * h * L * 34              (no gradient checkpointing)
                = batch * seq * h * (2*L + 34)          (checkpointing: one 16-bit layer
                                                          input per layer + one layer live)
                  x2 when the activations are fp32 (fp32 weights, no mixed precision)
    logits      = batch * seq * V * 8                  (fp32 logits + their gradient)
    overhead    = 10% of the sum (allocator fragmentation, buffers)
    total       = sum of the above (CUDA context, ~0.5 GB, is not included)

``k = 34`` is the per-layer activation size of a transformer layer in 16-bit with a fused
attention kernel (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models": ``s*b*h*(34 + 5*a*s/h)``; SDPA/flash attention removes the second
term). It is an estimate: expect the real peak within roughly +-30%.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine import configfile

ACTIVATION_BYTES_PER_TOKEN_HIDDEN = 34  # per layer, 16-bit, fused attention
# A CPU trainer's own resident memory before any weights: Python, torch, transformers, peft,
# the allocator's arenas (the tiny model's whole run peaks at ~0.49 GB, benchmarks in README).
CPU_RUNTIME_BYTES = 450 * 1024 ** 2
FUSED_LOSS_BLOCK = 1 << 22  # elements of one block of logits (engine.perf.fused_loss.BLOCK_ELEMENTS)
FUSED_LOSS_TYPES = ("llama", "qwen2", "qwen3", "mistral")
OVERHEAD_FRACTION = 0.10
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Other names people pass in target_modules for the same layers.
_ALIASES = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "c_proj": ("o_proj", "down_proj"),
    "c_fc": ("up_proj",),
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("up_proj",),
    "dense_4h_to_h": ("down_proj",),
}


class FootprintError(ValueError):
    """The model's config could not be found or read; the message names the place."""


@dataclass
class Architecture:
    """The numbers the count needs, normalised from any supported config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    mlp_matrices: int = 3
    num_experts: int = 1
    model_type: str = "llama"
    torch_dtype: str | None = None
    position_embeddings: int = 0  # learned absolute positions (GPT-2 style)
    gpt_biases: bool = False  # biases on every linear + LayerNorm (GPT-2 style)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Architecture":
        def first(*names: str, default: Any = None) -> Any:
            for name in names:
                if cfg.get(name) is not None:
                    return cfg[name]
            return default

        if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
            # Multimodal wrappers (Gemma 3, Llava ...): the language model is what trains.
            inner = dict(cfg["text_config"])
            inner.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings"))
            inner.setdefault("torch_dtype", cfg.get("torch_dtype") or cfg.get("dtype"))
            return cls.from_config(inner)
        h = first("hidden_size", "n_embd", "d_model")
        layers = first("num_hidden_layers", "n_layer", "num_layers")
        heads = first("num_attention_heads", "n_head", "num_heads")
        vocab = first("vocab_size")
        missing = [n for n, v in (("hidden_size", h), ("num_hidden_layers", layers),
                                  ("num_attention_heads", heads), ("vocab_size", vocab)) if v is None]
        if missing:
            raise FootprintError(f"config.json lacks {', '.join(missing)} (not a decoder model this estimate knows)")
        model_type = str(cfg.get("model_type") or "llama")
        gpt_style = "n_embd" in cfg or model_type in ("gpt2", "gpt_neox", "gptj", "gpt_bigcode", "phi")
        inter = first("intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * int(h)
        kv = first("num_key_value_heads", "num_kv_heads", default=heads)
        head_dim = first("head_dim", default=None) or int(h) // int(heads)
        tie = cfg.get("tie_word_embeddings")
        if tie is None:
            tie = gpt_style  # GPT-2 ties by default, Llama does not
        experts = int(first("num_local_experts", "num_experts", "n_routed_experts", default=1) or 1)
        return cls(
            hidden_size=int(h),
            intermediate_size=int(first("moe_intermediate_size", default=None) or inter) if experts > 1 else int(inter),
            num_hidden_layers=int(layers),
            num_attention_heads=int(heads),
            num_key_value_heads=int(kv),
            head_dim=int(head_dim),
            vocab_size=int(vocab),
            tie_word_embeddings=bool(tie),
            qkv_bias=bool(cfg.get("attention_bias")) or model_type == "qwen2" or gpt_style,
            mlp_matrices=2 if gpt_style else 3,
            num_experts=experts,
            model_type=model_type,
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            position_embeddings=int(first("n_positions", default=0) or 0) if model_type == "gpt2" else 0,
            gpt_biases=model_type == "gpt2",
        )

    # Shapes (in, out) of each linear layer of one decoder layer, by canonical name.
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "up_proj": (h, i), "down_proj": (i, h)}
        if self.mlp_matrices == 3:
            shapes["gate_proj"] = (h, i)
        return shapes


@dataclass
class ParamCount:
    total: int
    embeddings: int
    lm_head: int
    per_layer: int
    linear: int  # all linear weights in the decoder layers (what 4-bit quantises)
    norms_and_biases: int


@dataclass
class MemoryEstimate:
    """Everything the UI shows before a run starts. Bytes unless named otherwise."""

    model: str
    source: str  # where the config came from
    params_total: int
    params_trainable: int
    size_bytes: int  # weights as stored (files on disk when present, else params * dtype)
    weights_bytes: int  # weights as loaded for training (dtype / quantisation)
    adapter_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_bytes: int
    overhead_bytes: int
    total_bytes: int
    method: str
    weights_dtype: str
    notes: list[str] = field(default_factory=list)
    # CPU training only (0 on a GPU, where the CUDA context is left out as before): the
    # process itself (interpreter, torch, transformers, peft), and the merged LoRA weights
    # finetui's fused LoRA keeps for backward (engine/perf/fused_lora.py, fp32 without dropout).
    runtime_bytes: int = 0
    merged_weights_bytes: int = 0
    layers: int = 0  # decoder layers
    layer_weights_bytes: int = 0  # one decoder layer's weights as loaded (what FSDP/ZeRO-3 gather at a time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeviceShare:
    """One GPU's (one process's) share of a MemoryEstimate under a distributed strategy."""

    strategy: str  # "ddp", "fsdp full_shard", "deepspeed ZeRO-3" ...
    world_size: int
    shards: int  # processes the sharded states are divided over (1: replicated)
    weights_bytes: int
    adapter_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    gathered_bytes: int  # full weights of the layers gathered at a time (FSDP, ZeRO-3)
    buckets_bytes: int  # DDP's gradient buckets: a second copy of the gradients for the all-reduce
    activations_bytes: int
    logits_bytes: int
    runtime_bytes: int
    overhead_bytes: int
    total_bytes: int  # on the device
    offloaded_bytes: int  # moved to CPU memory by cpu_offload (per process)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ reading configs


def hub_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    if os.environ.get("TRANSFORMERS_CACHE"):
        dirs.append(Path(os.environ["TRANSFORMERS_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    dirs.append(Path(xdg) / "huggingface" / "hub")
    return dirs


def _snapshot(repo_dir: Path, revision: str | None) -> Path | None:
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    for ref in (revision or "main",):
        ref_file = repo_dir / "refs" / ref
        if ref_file.is_file():
            snap = snapshots / ref_file.read_text(encoding="utf-8").strip()
            if (snap / "config.json").is_file():
                return snap
        if (snapshots / ref / "config.json").is_file():  # a commit hash given as revision
            return snapshots / ref
    found = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def locate(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder holding the model's config.json, or None for 'tiny'. Raises
    FootprintError naming what was tried when it cannot be found locally."""
    from finetui.engine import model_catalog

    name = name_or_path.strip()
    if name.lower() == "tiny":
        return None
    if model_catalog.builtin(name) is not None:
        return model_catalog.cached_builtin(name)  # None until fetched: the shipped config is used
    path = Path(os.path.expanduser(name))
    if model_catalog.is_gguf(name) and path.is_file():
        folder = model_catalog.gguf_folder(path)
        if model_catalog.is_converted(folder):
            return folder
        raise FootprintError(f"{name}: a GGUF file not converted yet (it is converted on first load, "
                             f"or now with `finetui models add {name}`)")
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise FootprintError(f"{path}: folder has no config.json")
    if path.is_file() and path.name == "config.json":
        return path.parent
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        repo = "models--" + name.replace("/", "--")
        for cache in hub_cache_dirs():
            snap = _snapshot(cache / repo, revision)
            if snap is not None:
                return snap
        raise FootprintError(f"{name}: not a local folder and not in the Hugging Face cache "
                             f"({hub_cache_dirs()[0]})")
    raise FootprintError(f"{name}: no such folder")


def read_model_config(name_or_path: str, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """(config dict, where it came from) for 'tiny', a folder or a cached hub id."""
    folder = locate(name_or_path, revision)
    if folder is None and name_or_path.strip().lower() != "tiny":
        from finetui.engine import model_catalog

        return model_catalog.config_for(name_or_path) or {}, f"built-in {name_or_path} (engine.model_catalog)"
    if folder is None:
        from finetui.engine import tiny  # stdlib-only at import time; keeps torch out

        cfg = dict(tiny.MODEL_SETTINGS)
        cfg.update(vocab_size=tiny.VOCAB_SIZE, model_type="llama", torch_dtype="float32")
        return cfg, "built-in tiny model (engine.tiny.MODEL_SETTINGS)"
    cfg_path = folder / "config.json"
    try:
        return configfile.json_object(cfg_path, missing=None), str(cfg_path)
    except configfile.ConfigFileError as exc:
        raise FootprintError(str(exc)) from None


def weight_files_size(name_or_path: str, revision: str | None = None) -> int | None:
    """Bytes of the weight files next to config.json (safetensors preferred), if present."""
    try:
        folder = locate(name_or_path, revision)
    except FootprintError:
        return None
    if folder is None:
        return None
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = [p for p in folder.glob(pattern) if p.is_file() and "optimizer" not in p.name
                 and "training_args" not in p.name]
        if files:
            return sum(p.stat().st_size for p in files)  # stat follows the cache's symlinks
    return None


# ---------------------------------------------------------------------------- counting


def count_params(arch: Architecture) -> ParamCount:
    h, L, V, E = arch.hidden_size, arch.num_hidden_layers, arch.vocab_size, arch.num_experts
    shapes = arch.linear_shapes()
    attn = sum(a * b for n, (a, b) in shapes.items() if n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp = sum(a * b for n, (a, b) in shapes.items() if n in ("gate_proj", "up_proj", "down_proj")) * E
    biases = 0
    if arch.qkv_bias:
        biases += shapes["q_proj"][1] + shapes["k_proj"][1] + shapes["v_proj"][1]
    router = h * E if E > 1 else 0
    norms = 2 * h
    final_norm = h
    if arch.gpt_biases:  # o, up, down biases and LayerNorm biases
        biases += h + arch.intermediate_size + h
        norms, final_norm = 4 * h, 2 * h
    per_layer = attn + mlp + biases + router + norms
    embeddings = V * h + arch.position_embeddings * h
    lm_head = 0 if arch.tie_word_embeddings else V * h
    total = embeddings + L * per_layer + final_norm + lm_head
    return ParamCount(
        total=total,
        embeddings=embeddings,
        lm_head=lm_head,
        per_layer=per_layer,
        linear=L * (attn + mlp),
        norms_and_biases=L * (norms + biases + router) + final_norm,
    )


def _targets(target_modules: Any) -> set[str]:
    if target_modules in (None, "all-linear"):
        return set(LINEAR_NAMES)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    found: set[str] = set()
    for name in names:
        short = str(name).rsplit(".", 1)[-1]
        if short in LINEAR_NAMES:
            found.add(short)
        found.update(_ALIASES.get(short, ()))
    return found


def lora_params(arch: Architecture, r: int, target_modules: Any = "all-linear", dora: bool = False) -> int:
    """LoRA's A and B of every targeted linear; DoRA (``dora``) adds a magnitude vector, one
    value per output feature."""
    per_layer = 0
    for name, (fan_in, fan_out) in arch.linear_shapes().items():
        if name in _targets(target_modules):
            experts = arch.num_experts if name in ("gate_proj", "up_proj", "down_proj") else 1
            per_layer += (r * (fan_in + fan_out) + (fan_out if dora else 0)) * experts
    return per_layer * arch.num_hidden_layers


def _saved_params(arch: Architecture, counts: ParamCount, modules: list[str]) -> int:
    total = 0
    for name in modules or []:
        short = str(name).rsplit(".", 1)[-1]
        if short in ("embed_tokens", "wte", "embed_in"):
            total += counts.embeddings
        elif short in ("lm_head", "embed_out"):
            total += counts.lm_head or counts.embeddings
    return total


# ---------------------------------------------------------------------------- estimate

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """Read 'section.name' from a Config object or a plain dict."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return default if node is None else node


def estimate(config: Any, model_config: dict[str, Any] | None = None, source: str | None = None,
             gpu: bool | None = None, mean_tokens: float | None = None) -> MemoryEstimate:
    """Footprint + memory estimate for a training config (engine.config.Config or its dict).

    ``model_config`` is the model's config.json as a dict; read from ``model.name_or_path``
    when not given (raises FootprintError when it cannot be found locally). ``gpu`` says
    whether a GPU is present (the caller probes; None: assume one), which decides what
    ``model.dtype: auto`` means (bf16 on a GPU, fp32 on the CPU). ``mean_tokens``, the
    data's mean tokens per example when known: with ``data.packing`` a batch holds
    ``batch_size * mean_tokens`` tokens instead of ``batch_size * max_length``.
    """
    name = str(_get(config, "model.name_or_path", "tiny"))
    revision = _get(config, "model.revision")
    if model_config is None:
        model_config, source = read_model_config(name, revision)
    arch = Architecture.from_config(model_config)
    counts = count_params(arch)
    notes: list[str] = []

    method = str(_get(config, "method.type", "lora"))
    quant = str(_get(config, "model.quantization", "none"))
    if method == "qlora" and quant == "none":
        quant = "4bit"
    device = str(_get(config, "model.device", "auto"))
    dtype = str(_get(config, "model.dtype", "auto"))
    on_cpu = device == "cpu" or (device == "auto" and gpu is False)
    if dtype == "auto":
        dtype = "float32" if on_cpu else "bfloat16"
        notes.append(f"dtype auto: {dtype} " + ("(no GPU: trains on the CPU)" if on_cpu else "(on a GPU; fp32 on a CPU)"))
    wbytes = _DTYPE_BYTES.get(dtype, 2)

    # Weights as loaded: quantisation applies to the decoder's linear layers only.
    if quant == "4bit":
        double = bool(_get(config, "model.bnb_4bit_use_double_quant", True))
        per = 0.5 + (0.127 / 8 if double else 0.5 / 8)  # absmax constants per 64-block
        weights = int(counts.linear * per + (counts.total - counts.linear) * 2)
        weights_dtype = "4-bit " + str(_get(config, "model.bnb_4bit_quant_type", "nf4"))
    elif quant == "8bit":
        weights = int(counts.linear * 1.03 + (counts.total - counts.linear) * 2)
        weights_dtype = "8-bit"
    else:
        weights = counts.total * wbytes
        weights_dtype = dtype

    if method == "full":
        trainable = counts.total
        adapters = 0
    else:
        r = int(_get(config, "method.lora_r", 16))
        dora = bool(_get(config, "method.use_dora", False))
        lora = lora_params(arch, r, _get(config, "method.target_modules", "all-linear"), dora=dora)
        if dora:
            notes.append("DoRA: its magnitude vectors are counted; the weight norms its forward computes "
                         "(one adapted weight at a time) are not")
        saved = _saved_params(arch, counts, _get(config, "method.modules_to_save", []) or [])
        trainable = lora + saved
        adapters = trainable * 4
        if lora == 0:
            notes.append("no LoRA target matched this architecture's layer names")

    optimizer = str(_get(config, "train.optimizer", "adamw_torch"))
    grads = trainable * 4
    optim = trainable * (2 if optimizer == "adamw_8bit" else 8)

    batch = int(_get(config, "train.batch_size", 8))
    seq = int(_get(config, "data.max_length", 512))
    if mean_tokens and _get(config, "data.packing", False):
        seq = max(1, min(seq, int(math.ceil(mean_tokens))))
        notes.append(f"packing: {batch} examples of {seq} tokens on average per batch")
    h, L = arch.hidden_size, arch.num_hidden_layers
    precision = str(_get(config, "train.precision", "auto"))
    fp32_acts = quant == "none" and wbytes == 4 and precision not in ("bf16", "fp16")
    act_scale = 2 if fp32_acts else 1
    if _get(config, "train.gradient_checkpointing", False):
        activations = batch * seq * h * (2 * L + ACTIVATION_BYTES_PER_TOKEN_HIDDEN) * act_scale
    else:
        activations = batch * seq * h * L * ACTIVATION_BYTES_PER_TOKEN_HIDDEN * act_scale
    logits = batch * seq * arch.vocab_size * 8
    runtime = merged = 0
    if on_cpu:
        runtime = CPU_RUNTIME_BYTES
        if fp32_acts and arch.model_type in FUSED_LOSS_TYPES:
            # engine/perf/fused_loss.py: a block of rows at a time, never the whole batch's logits
            logits = min(batch * seq * arch.vocab_size, FUSED_LOSS_BLOCK) * 4 * 3
        if method == "lora" and fp32_acts and not float(_get(config, "method.lora_dropout", 0.0) or 0.0):
            merged = counts.linear * 4

    L = arch.num_hidden_layers
    layer_linear = counts.linear // max(1, L)
    layer_rest = counts.per_layer - layer_linear
    if quant == "4bit":
        layer_weights = int(layer_linear * per + layer_rest * 2)
    elif quant == "8bit":
        layer_weights = int(layer_linear * 1.03 + layer_rest * 2)
    else:
        layer_weights = counts.per_layer * wbytes
    subtotal = weights + adapters + grads + optim + activations + logits + runtime + merged
    overhead = int(subtotal * OVERHEAD_FRACTION)
    on_disk = weight_files_size(name, revision)
    if on_disk is None:
        stored = _DTYPE_BYTES.get(str(arch.torch_dtype or "float32").replace("torch.", ""), 4)
        on_disk = counts.total * stored
    return MemoryEstimate(
        model=name,
        source=source or "",
        params_total=counts.total,
        params_trainable=trainable,
        size_bytes=on_disk,
        weights_bytes=weights,
        adapter_bytes=adapters,
        gradients_bytes=grads,
        optimizer_bytes=optim,
        activations_bytes=activations,
        logits_bytes=logits,
        overhead_bytes=overhead,
        total_bytes=subtotal + overhead,
        method=method,
        weights_dtype=weights_dtype,
        notes=notes,
        runtime_bytes=runtime,
        merged_weights_bytes=merged,
        layers=L,
        layer_weights_bytes=layer_weights,
    )


def per_device(est: MemoryEstimate, strategy: str = "ddp", world_size: int = 1, nnodes: int = 1,
               fsdp_sharding: str = "full_shard", cpu_offload: bool = False, zero_stage: int = 2) -> DeviceShare:
    """One process's memory under ``distributed.strategy`` over ``world_size`` processes
    (``nnodes`` nodes). What each strategy divides by the number of shards ``N``::

        ddp                every process holds everything (N = 1), and DDP's reducer keeps its
                           gradient buckets beside the gradients (one more copy of them)
        fsdp full_shard    weights, adapters, gradients, optimizer state / N (N = world size)
        fsdp hybrid_shard  the same within a node (N = processes per node), replicated across nodes
        ZeRO-2             gradients and optimizer state / N; weights and adapters replicated
        ZeRO-3             weights, adapters, gradients, optimizer state / N

    FSDP and ZeRO-3 gather full weights one layer at a time: two decoder layers (the one
    computing and the next, prefetched) and, for FSDP2, the root module (embeddings, final
    norm, lm_head: everything outside the layers), which stays gathered through the step.
    ``cpu_offload`` moves to CPU memory: FSDP the parameter, adapter and gradient shards
    and the optimizer state (the step runs on the CPU); ZeRO the optimizer state, and at
    stage 3 the parameter shards too. Activations, logits and the runtime are per process
    and stay as they are (train.batch_size is per process); overhead is 10% of the rest."""
    world_size = max(1, world_size)
    nnodes = max(1, min(nnodes, world_size))
    notes: list[str] = []
    weights, adapters, grads, optim = est.weights_bytes, est.adapter_bytes, est.gradients_bytes, est.optimizer_bytes
    gathered = offloaded = buckets = 0
    if world_size == 1 or strategy == "ddp":
        shards, name = 1, "ddp" if world_size > 1 else "one process"
        buckets = grads if world_size > 1 else 0
    elif strategy == "fsdp":
        shards = world_size if fsdp_sharding == "full_shard" or nnodes == 1 else world_size // nnodes
        name = f"fsdp {fsdp_sharding}"
        weights, adapters, grads, optim = (-(-x // shards) for x in (weights, adapters, grads, optim))
        outside = max(0, est.weights_bytes - est.layers * est.layer_weights_bytes)
        gathered = outside + min(2, est.layers) * est.layer_weights_bytes
        if cpu_offload:
            offloaded = weights + adapters + grads + optim
            weights = adapters = grads = optim = 0
    elif strategy == "deepspeed":
        shards, name = world_size, f"deepspeed ZeRO-{zero_stage}"
        grads, optim = -(-grads // shards), -(-optim // shards)
        if zero_stage == 3:
            weights, adapters = -(-weights // shards), -(-adapters // shards)
            outside = max(0, est.weights_bytes - est.layers * est.layer_weights_bytes)
            gathered = outside + min(2, est.layers) * est.layer_weights_bytes
        if cpu_offload:
            offloaded, optim = optim, 0
            if zero_stage == 3:
                offloaded += weights + adapters
                weights = adapters = 0
    else:
        raise ValueError(f"distributed.strategy: {strategy!r} (expected ddp, fsdp or deepspeed)")
    if strategy == "fsdp" and fsdp_sharding == "hybrid_shard" and nnodes == 1 and world_size > 1:
        notes.append("hybrid_shard on one node shards like full_shard")
    subtotal = (weights + adapters + grads + optim + gathered + buckets + est.activations_bytes + est.logits_bytes
                + est.runtime_bytes + est.merged_weights_bytes)
    overhead = int(subtotal * OVERHEAD_FRACTION)
    return DeviceShare(
        strategy=name, world_size=world_size, shards=shards, weights_bytes=weights, adapter_bytes=adapters,
        gradients_bytes=grads, optimizer_bytes=optim, gathered_bytes=gathered, buckets_bytes=buckets,
        activations_bytes=est.activations_bytes, logits_bytes=est.logits_bytes, runtime_bytes=est.runtime_bytes,
        overhead_bytes=overhead, total_bytes=subtotal + overhead, offloaded_bytes=offloaded, notes=notes)


def for_config(est: MemoryEstimate, config: Any, world_size: int, nnodes: int = 1) -> DeviceShare:
    """per_device with the config's ``distributed`` section (engine.config.Config or its dict)."""
    return per_device(est, str(_get(config, "distributed.strategy", "ddp")), world_size, nnodes,
                      fsdp_sharding=str(_get(config, "distributed.fsdp_sharding", "full_shard")),
                      cpu_offload=bool(_get(config, "distributed.cpu_offload", False)),
                      zero_stage=int(_get(config, "distributed.zero_stage", 2)))


# ---------------------------------------------------------------------------- formatting


def human_count(n: int | float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(int(n))
