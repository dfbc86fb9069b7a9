"""Before a run folder is made: the model is there, the data can be read, ``data.max_length``
fits the model's context, and the memory estimate fits what is free.

Light module (no torch): ``finetui train`` (engine.launcher) and the TUI's Settings screen
call it, so both refuse the same run with the same words.

* :func:`model_problem` / :func:`data_problems`: a model folder that is not there, a hub id
  that is neither cached nor downloadable, a data file that cannot be found. Hard refusals:
  the trainer would fail at once, leaving a "failed" run behind.
* :func:`limits`: ``data.max_length`` beyond the model's context (``max_position_embeddings``
  in its config.json, unless it sets RoPE scaling), and a job whose estimate
  (:func:`engine.footprint.estimate`, with every row ``max_length`` tokens long) exceeds the
  free RAM (CPU; the cgroup's limit counts) or the free VRAM of the first GPU. Each line
  names the setting to turn; ``finetui train --force`` (the TUI: "start anyway") starts the
  run all the same, since the estimate is an upper bound within about +-30%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetui.engine import footprint
from finetui.engine.units import format_bytes

FORCE_HINT = "--force starts it anyway (the TUI: start anyway)"
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
GPU_HEADROOM = 0.95  # the CUDA context and other processes' memory are not in the estimate


# ---------------------------------------------------------------------------- hard checks


def model_problem(config) -> str | None:
    """Why the trainer could not find ``model.name_or_path``, or None. Never downloads:
    a hub id that is not cached is refused only when the hub cannot be reached."""
    from finetui.engine import hub, model_catalog, modeling, tiny
    from finetui.engine.errors import ModelError

    m = config.model
    name = str(m.name_or_path).strip()
    if tiny.is_tiny(name) or model_catalog.builtin(name) or model_catalog.is_gguf(name) or m.gguf_file:
        return None  # built, fetched or converted in the foreground (engine.launcher), which says why not
    path = Path(name).expanduser()
    if path.exists() or not hub.is_hub_id(name):
        try:
            modeling.resolve_model_path(name, m.revision)  # a local path: no network
        except ModelError as exc:
            return str(exc)
        return None
    if hub.probe(name, m.revision) == "offline":
        return modeling._offline_message(name)
    return None  # cached, or the trainer downloads it


def package_problems(config) -> list[str]:
    """Optional packages the settings need and this Python lacks (train.report_to's trackers,
    GaLore's galore-torch), each naming the setting and the pip command. Looked up with
    importlib's find_spec: nothing is imported."""
    import importlib.util

    from finetui.engine.config import GALORE_OPTIMIZERS, TRACKER_PACKAGES

    def missing(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            return True

    problems = []
    for tracker in config.train.report_to:
        module, requirement = TRACKER_PACKAGES[tracker]
        if missing(module):
            problems.append(f"train.report_to: {tracker} needs the {requirement} package, which is not installed: "
                            f"pip install {requirement} (or pip install 'finetui[trackers]'), "
                            "or take it out of train.report_to")
    if config.train.optimizer in GALORE_OPTIMIZERS and missing("galore_torch"):
        problems.append(f"train.optimizer: {config.train.optimizer} needs the galore-torch package, which is not "
                        "installed: pip install galore-torch (or pip install 'finetui[galore]')")
    return problems


def data_problems(config) -> list[str]:
    """``data.path`` / ``data.test_path`` that cannot be found or named (hub datasets are
    read by the trainer)."""
    from finetui.engine.data import formats, readers

    problems = []
    data = config.data
    for key, spec in (("data.path", data.path), ("data.test_path", data.test_path)):
        if not spec:
            continue
        try:
            readers.resolve_source(spec, split=data.split, subset=data.subset)
        except (formats.DataError, OSError, ValueError) as exc:
            text = str(exc)
            problems.append(text if text.startswith(key) else f"{key}: {text}")
    return problems


# ---------------------------------------------------------------------------- limits


def _text_config(model_config: dict[str, Any]) -> dict[str, Any]:
    inner = model_config.get("text_config")
    return inner if isinstance(inner, dict) and "hidden_size" not in model_config else model_config


def context_length(model_config: dict[str, Any]) -> int | None:
    """The model's context in tokens from its config.json, or None when it does not say."""
    cfg = _text_config(model_config)
    for key in CONTEXT_KEYS:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def rope_scaled(model_config: dict[str, Any]) -> bool:
    """Whether the config sets RoPE scaling (rope_scaling, or rope_parameters with a
    rope_type other than default)."""
    cfg = _text_config(model_config)
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type") or value.get("type")
            if kind not in (None, "default") or value.get("factor") not in (None, 1, 1.0):
                return True
        elif value:
            return True
    return False


def context_problem(config, model_config: dict[str, Any]) -> str | None:
    context = context_length(model_config)
    length = int(config.data.max_length)
    if context is None or length <= context or rope_scaled(model_config):
        return None
    return (f"data.max_length: {length:,} is beyond the context of {config.model.name_or_path}, {context:,} "
            f"tokens (max_position_embeddings in its config.json, no RoPE scaling): set data.max_length to "
            f"{context} or less (--set data.max_length={context}), or use a model with rope_scaling")


def _cgroup_free() -> int | None:
    """Bytes this process's cgroup (v2) may still take, when it has a memory limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            free = None
            while True:  # the tightest limit on the way up
                try:
                    limit = (folder / "memory.max").read_text().strip()
                    used = int((folder / "memory.current").read_text().strip())
                    if limit != "max":
                        left = max(0, int(limit) - used)
                        free = left if free is None else min(free, left)
                except (OSError, ValueError):
                    pass
                if folder == Path("/sys/fs/cgroup") or folder.parent == folder:
                    return free
                folder = folder.parent
    return None


def free_ram() -> int:
    """Available RAM (psutil's ``available``), or less when a cgroup limit says so."""
    import psutil

    free = int(psutil.virtual_memory().available)
    limit = _cgroup_free()
    return min(free, limit) if limit is not None else free


def free_memory(config, gpus: list | None = None) -> tuple[int | None, str, bool]:
    """(free bytes, what they are, whether the run trains on a GPU)."""
    if gpus is None:
        try:
            from finetui.engine import hardware

            gpus = hardware.gpu_backend().read()
        except Exception:
            gpus = []
    if config.model.device != "cpu" and gpus:
        gpu = gpus[0]
        if gpu.memory_total_bytes:
            free = int(gpu.memory_total_bytes * GPU_HEADROOM) - int(gpu.memory_used_bytes or 0)
            return max(0, free), f"free VRAM on GPU {gpu.index} ({gpu.name})", True
        return None, "GPU memory (not readable)", True
    return free_ram(), "free RAM", False


def _knobs(config, est: footprint.MemoryEstimate, gpu: bool) -> str:
    """The settings that lower the biggest part of the estimate."""
    per_row = est.activations_bytes + est.logits_bytes
    fixed = est.weights_bytes + est.adapter_bytes + est.gradients_bytes + est.optimizer_bytes + est.merged_weights_bytes
    if per_row >= fixed:
        knobs = ["lower train.batch_size (raise train.gradient_accumulation_steps to keep the effective batch)",
                 "or data.max_length"]
        if not config.train.gradient_checkpointing:
            knobs.append("or turn on train.gradient_checkpointing")
        return ", ".join(knobs)
    knobs = []
    if config.method.type == "full":
        knobs.append("train adapters (method.type: lora" + (" or qlora" if gpu else "") + ")")
    if gpu and config.model.quantization == "none":
        knobs.append("load the base in 4-bit (method.type: qlora)")
    if gpu and config.train.optimizer == "adamw_torch" and config.method.type == "full":
        knobs.append("use train.optimizer: adamw_8bit")
    knobs.append("pick a smaller model (model.name_or_path)")
    return ", or ".join(knobs)


def memory_problem(config, est: footprint.MemoryEstimate, free: int | None, where: str, gpu: bool,
                   nproc: int = 1) -> str | None:
    if free is None:
        return None
    # one process's share under distributed.strategy (ddp: everything; fsdp/ZeRO: shards)
    share = footprint.for_config(est, config, max(1, nproc))
    copies = 1 if gpu else max(1, nproc)  # each CPU process holds its own share in the same RAM
    need = share.total_bytes * copies
    if need <= free:
        return None
    hb = format_bytes
    states = (share.weights_bytes + share.adapter_bytes + share.gradients_bytes + share.optimizer_bytes
              + share.gathered_bytes + est.merged_weights_bytes)
    parts = (f"activations {hb(est.activations_bytes + est.logits_bytes)} for train.batch_size "
             f"{config.train.batch_size} x data.max_length {config.data.max_length}, "
             f"weights+optimizer {hb(states)}")
    times = f" x {copies} processes ({share.strategy})" if copies > 1 else ""
    return (f"memory: this run needs about {hb(need)}{times} ({parts}), more than the {hb(free)} of {where}: "
            f"{_knobs(config, est, gpu)}")


def limits(config, *, gpus: list | None = None, nproc: int = 1,
           model_config: dict[str, Any] | None = None) -> list[str]:
    """The lines that hold a run back unless forced: context, then memory. [] when the
    model's config cannot be read here (the trainer will say more)."""
    if model_config is None:
        try:
            model_config, _ = footprint.read_model_config(config.model.name_or_path, config.model.revision)
        except footprint.FootprintError:
            return []
    problems = []
    context = context_problem(config, model_config)
    if context:
        problems.append(context)
    free, where, gpu = free_memory(config, gpus)
    try:
        est = footprint.estimate(config, model_config, gpu=gpu)
    except (footprint.FootprintError, ValueError, TypeError):
        est = None
    memory = memory_problem(config, est, free, where, gpu, nproc) if est is not None else None
    if memory:
        problems.append(memory)
    return problems
