"""A LLaMA-Factory training YAML -> a finetui config (``finetui import llamafactory``).

Light module: yaml, the config schema and the data readers' resolver (no records are read,
nothing is imported from torch). What is mapped:

* model: ``model_name_or_path``, ``model_revision``, ``quantization_bit`` 4 (bitsandbytes)
  -> ``method.type: qlora``, 8 -> ``model.quantization: 8bit``, ``flash_attn``;
* data: ``dataset`` names resolved through ``DATASET_DIR/dataset_info.json``
  (``dataset_dir``, default ``data``, relative to the current folder as in
  llamafactory-cli) and written as ``DATASET_DIR/dataset_info.json:NAME``; ``eval_dataset``
  -> ``data.test_path``; ``val_size`` (a fraction) -> ``data.test_size``; ``template``
  (a model family's name -> the model's own chat template); ``cutoff_len``,
  ``train_on_prompt``, ``packing`` / ``neat_packing``, ``max_samples``;
* method: ``finetuning_type`` full / lora (freeze is refused: finetui has no layer
  freezing), LoRA rank / alpha / dropout / target (``all`` -> peft's ``all-linear``),
  ``additional_target``, and the PEFT variants finetui's schema has (DoRA, rsLoRA, PiSSA,
  LoRA+);
* train: the Trainer's hyperparameters, ``bf16`` / ``fp16`` / ``pure_bf16``,
  ``report_to``, NEFTune, GaLore.

``stage: pt`` is taken when the dataset is raw text (finetui trains every token of it);
``rm``, ``ppo``, ``dpo`` and ``kto`` are refused, naming ``stage``. A key that cannot be
mapped is listed with why; a value of the wrong type, a bad YAML or a missing dataset is an
error naming ``JOB.yaml:LINE``. Where LLaMA-Factory's default differs from finetui's in a
way that changes what is trained (learning rate 5e-5, linear schedule, rank 8, cutoff 2048,
no held-out split, gradient checkpointing on), LLaMA-Factory's is written, and said so.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetui.engine import config as cfg
from finetui.engine import configfile

REFUSED_STAGES = {"rm": "reward modelling", "ppo": "PPO", "dpo": "DPO", "kto": "KTO"}
# LLaMA-Factory templates with a finetui template of the same layout
TEMPLATES = {"alpaca": "alpaca", "chatml": "chatml", "chatml_de": "chatml", "empty": "plain"}
# LLaMA-Factory's flash_attn -> model.attn_implementation
ATTENTION = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
STRATEGIES = ("no", "steps", "epoch")  # eval_strategy, save_strategy
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_hf": "adamw_torch", "adamw_torch_fused": "adamw_torch",
              "paged_adamw_32bit": "paged_adamw_32bit", "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit"}

# Simple one-to-one keys: LLaMA-Factory key -> (finetui key, type)
DIRECT: dict[str, tuple[str, type]] = {
    "model_name_or_path": ("model.name_or_path", str),
    "model_revision": ("model.revision", str),
    "cutoff_len": ("data.max_length", int),
    "max_samples": ("data.max_samples", int),
    "preprocessing_num_workers": ("data.num_proc", int),
    "streaming": ("data.streaming", bool),
    "per_device_train_batch_size": ("train.batch_size", int),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", int),
    "learning_rate": ("train.learning_rate", float),
    "num_train_epochs": ("train.epochs", float),
    "max_steps": ("train.max_steps", int),
    "warmup_ratio": ("train.warmup_ratio", float),
    "warmup_steps": ("train.warmup_steps", int),
    "weight_decay": ("train.weight_decay", float),
    "max_grad_norm": ("train.max_grad_norm", float),
    "logging_steps": ("train.logging_steps", int),
    "eval_steps": ("train.eval_steps", int),
    "save_total_limit": ("train.save_total_limit", int),
    "seed": ("train.seed", int),
    "dataloader_num_workers": ("train.dataloader_num_workers", int),
    "group_by_length": ("train.group_by_length", bool),
    "torch_compile": ("train.torch_compile", bool),
    "lora_dropout": ("method.lora_dropout", float),
    "use_dora": ("method.use_dora", bool),
    "use_rslora": ("method.use_rslora", bool),
    "loraplus_lr_ratio": ("method.loraplus_lr_ratio", float),
    "neftune_noise_alpha": ("train.neftune_noise_alpha", float),
}

# Keys with no effect on a finetui run, and why
NOT_NEEDED = {
    "do_train": "finetui train always trains",
    "overwrite_cache": "finetui keeps no tokenised-data cache of LLaMA-Factory's to overwrite",
    "overwrite_output_dir": "each finetui run writes a new runs/<id>/ folder",
    "plot_loss": "the dashboard and runs/<id>/events.jsonl hold the loss curve",
    "ddp_timeout": "finetui leaves the process-group timeout at torch's default",
    "save_only_model": "finetui's checkpoints keep what finetui train --resume needs",
    "per_device_eval_batch_size": "finetui evaluates with train.batch_size",
    "dataset_dir": "used to resolve the dataset names",
    "quantization_method": "bitsandbytes is finetui's quantisation",
    "pissa_iter": "read with pissa_init",
    "pissa_convert": "finetui always converts a PiSSA adapter so it applies to the untouched base",
    "galore_target": "read with use_galore",
    "galore_rank": "read with use_galore",
    "preprocessing_batch_size": "finetui renders in its own batches",
}

# Keys finetui cannot carry over, and why
UNMAPPED = {
    "deepspeed": "finetui trains on one GPU or with DDP (finetui train --nproc N), without DeepSpeed",
    "fsdp": "finetui trains on one GPU or with DDP (finetui train --nproc N), without FSDP",
    "fsdp_config": "finetui trains on one GPU or with DDP (finetui train --nproc N), without FSDP",
    "resume_from_checkpoint": "continue a finetui run with finetui train --resume RUN_ID",
    "adapter_name_or_path": "finetui starts a new adapter; merge the old one first (finetui merge) and "
                            "train on the merged folder",
    "mask_history": "finetui trains every assistant turn (data.train_on: assistant); it has no last-turn-only mode",
    "default_system": "finetui adds no default system prompt; put it in the data",
    "enable_thinking": "finetui renders the data as it is; no thinking toggle",
    "tool_format": "finetui renders tools with data.template",
    "mix_strategy": "finetui trains on one dataset (data.path)",
    "interleave_probs": "finetui trains on one dataset (data.path)",
    "buffer_size": "finetui streams a hub dataset in order",
    "tokenized_path": "finetui tokenises from the data each run",
    "eval_on_each_dataset": "finetui evaluates one test set",
    "do_eval": "finetui evaluates during training (train.eval_strategy) or with finetui eval RUN",
    "do_predict": "predict with finetui eval RUN or finetui chat RUN",
    "upcast_layernorm": "no finetui setting for it",
    "upcast_lmhead_output": "no finetui setting for it",
    "rope_scaling": "no finetui setting for it",
    "shift_attn": "no finetui setting for it",
    "use_unsloth": "finetui does not use Unsloth",
    "enable_liger_kernel": "finetui uses its own fused layers",
    "use_llama_pro": "finetui has no block expansion (LLaMA Pro)",
    "freeze_trainable_layers": "finetui has no layer freezing",
    "freeze_trainable_modules": "finetui has no layer freezing",
    "freeze_extra_modules": "finetui has no layer freezing",
    "loraplus_lr_embedding": "finetui's LoRA+ keeps peft's embedding learning rate",
    "create_new_adapter": "finetui starts a new adapter each run",
    "push_to_hub": "publish the result after training instead",
    "hub_model_id": "publish the result after training instead",
    "cache_dir": "finetui reads the Hugging Face cache where huggingface_hub puts it (HF_HOME)",
    "media_dir": "finetui trains on text only",
    "image_max_pixels": "finetui trains on text only",
    "video_max_pixels": "finetui trains on text only",
}

# LLaMA-Factory's (and the Trainer's) defaults where they differ from finetui's in what is trained
DEFAULTS = {
    "train.learning_rate": 5e-5,
    "train.lr_scheduler": "linear",
    "method.lora_r": 8,
    "data.max_length": 2048,
    "data.test_size": 0.0,
    "train.eval_strategy": "no",
    "train.gradient_checkpointing": True,
}
DEFAULT_KEY = {  # the LLaMA-Factory key that would have set each default
    "train.learning_rate": "learning_rate", "train.lr_scheduler": "lr_scheduler_type", "method.lora_r": "lora_rank",
    "data.max_length": "cutoff_len", "data.test_size": "val_size", "train.eval_strategy": "eval_strategy",
    "train.gradient_checkpointing": "disable_gradient_checkpointing",
}


class ImportProblem(ValueError):
    """The job file cannot be imported; one line per problem, each naming JOB.yaml:LINE and the key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Imported:
    config: cfg.Config
    data: dict[str, dict[str, Any]]  # only the settings the job gave (or LLaMA-Factory's defaults)
    mapped: list[str] = field(default_factory=list)  # "lf_key -> finetui.key: value"
    defaults: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # "JOB.yaml:LINE: key: why"
    not_needed: list[str] = field(default_factory=list)

    def to_yaml(self, source: str) -> str:
        head = [f"# finetui config imported from LLaMA-Factory's {source} (finetui import llamafactory)"]
        if self.unmapped:
            head.append("# not carried over:")
            head += [f"#   {' '.join(line.splitlines())}" for line in self.unmapped]
        return "\n".join(head) + "\n" + yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)


def _has(key: str) -> bool:
    section, name = key.split(".", 1)
    return name in cfg.Config.model_fields[section].annotation.model_fields


class _Job:
    """The job's keys with their lines; typed reads that name JOB.yaml:LINE."""

    def __init__(self, data: dict[str, Any], lines: dict[str, int], source: str):
        self.data, self.lines, self.source = data, lines, source
        self.problems: list[str] = []
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.source}:{line}" if line else self.source

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {key}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self:
            return default
        value = self.data[key]
        try:
            return _coerce(value, kind)
        except ValueError:
            self.problem(key, f"expected {_KIND_NAMES[kind]}, got {value!r}")
            return default


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise ValueError
    if kind is float:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            number = float(value)
        else:
            raise ValueError
        if not math.isfinite(number):
            raise ValueError
        return number
    if isinstance(value, (dict, list)):
        raise ValueError
    return str(value)


def read_job(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The job's top-level keys and the line each is on; errors name JOB.yaml:LINE."""
    path = Path(path)
    try:
        text = configfile.read(path)
        data = configfile.parse(text, path, toml=False)
        root = yaml.compose(text)  # the same text parsed just above: no error of its own
    except configfile.ConfigFileError as exc:
        raise ImportProblem([str(exc)]) from None
    if data is None:
        raise ImportProblem([f"{path}: the file is empty; a LLaMA-Factory job has model_name_or_path, stage, "
                             "finetuning_type, dataset, template ..."])
    if not isinstance(data, dict):
        raise ImportProblem([f"{path}:1: a LLaMA-Factory job is a mapping of keys (model_name_or_path: ..., "
                             f"dataset: ...), got a {type(data).__name__}"])
    lines = {}
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return {str(k): v for k, v in data.items()}, lines


def convert(data: dict[str, Any], lines: dict[str, int], source: str, cwd: str | Path | None = None) -> Imported:
    """Map a job's keys onto a finetui config; raise ImportProblem for what cannot be imported."""
    job = _Job(data, lines, source)
    out: dict[str, dict[str, Any]] = {s: {} for s in cfg.SECTIONS}
    mapped: list[str] = []
    unmapped: list[str] = []
    not_needed: list[str] = []
    given: set[str] = set()  # finetui keys the job set (so no default is written over them)

    def put(key: str, value: Any, lf_key: str) -> None:
        section, name = key.split(".", 1)
        out[section][name] = value
        given.add(key)
        mapped.append(f"{lf_key} -> {key}: {_shown(value)}")

    def unmap(key: str, why: str) -> None:
        job.used.add(key)
        unmapped.append(f"{job.at(key)}: {key}: {why}")

    if "model_name_or_path" not in job:
        job.problem("model_name_or_path", "missing: the model to fine-tune")

    # stage
    stage = job.get("stage", str, "sft")
    pretrain = stage == "pt"
    if stage in REFUSED_STAGES:
        job.problem("stage", f"{stage} ({REFUSED_STAGES[stage]}) is not supported: finetui trains supervised "
                    "fine-tuning (stage: sft) and raw-text pretraining (stage: pt) only")
    elif stage not in ("sft", "pt"):
        job.problem("stage", f"unknown stage {stage!r} (LLaMA-Factory's: pt, sft, rm, ppo, dpo, kto)")

    # method
    method = job.get("finetuning_type", str, "lora")
    bits = job.get("quantization_bit", int)
    qmethod = job.get("quantization_method", str, "bitsandbytes")
    if method == "freeze":
        job.problem("finetuning_type", "freeze (train only the last layers) is refused: finetui has no layer "
                    "freezing; use finetuning_type: lora, or full to train every weight")
    elif method not in ("full", "lora"):
        job.problem("finetuning_type", f"{method!r} is not supported (finetui: full, lora, and lora on a 4-bit "
                    "base with quantization_bit: 4)")
    if bits is not None:
        if qmethod not in ("bitsandbytes", "bnb"):
            job.problem("quantization_method", f"{qmethod} is not supported: finetui quantises with bitsandbytes "
                        "(quantization_method: bnb)")
        elif bits == 4:
            if method == "lora":
                put("method.type", "qlora", "quantization_bit")
            else:
                put("model.quantization", "4bit", "quantization_bit")
        elif bits == 8:
            put("model.quantization", "8bit", "quantization_bit")
        else:
            job.problem("quantization_bit", f"{bits}-bit is not supported: bitsandbytes quantises to 4 or 8 bits")
        qtype = job.get("quantization_type", str)
        if qtype is not None:
            _put_one_of(job, put, "quantization_type", qtype, "model.bnb_4bit_quant_type", ("nf4", "fp4"))
        double = job.get("double_quantization", bool)
        if double is not None:
            put("model.bnb_4bit_use_double_quant", double, "double_quantization")
    else:
        for key in ("quantization_type", "double_quantization"):
            if key in job:
                job.used.add(key)
                not_needed.append(f"{key}: no quantization_bit, so nothing is quantised")
    if method in ("full", "lora") and "method.type" not in given:
        put("method.type", method, "finetuning_type")
    lora = method == "lora"

    if lora or any(k in job for k in ("lora_rank", "lora_alpha", "lora_target")):
        rank = job.get("lora_rank", int)
        if rank is not None:
            put("method.lora_r", rank, "lora_rank")
        alpha = job.get("lora_alpha", int)
        if alpha is not None:
            put("method.lora_alpha", alpha, "lora_alpha")
        elif lora:  # LLaMA-Factory: lora_alpha defaults to twice the rank
            out["method"]["lora_alpha"] = 2 * (rank or 8)
            given.add("method.lora_alpha")
            mapped.append(f"lora_alpha (absent: twice lora_rank) -> method.lora_alpha: {2 * (rank or 8)}")
        target = job.get("lora_target", str)
        if target is not None:
            put("method.target_modules", _modules(target), "lora_target")
        extra = job.get("additional_target", str)
        if extra is not None:
            put("method.modules_to_save", _names(extra), "additional_target")
    if job.get("pissa_init", bool):
        if _has("method.init_lora_weights"):
            niter = job.get("pissa_iter", int, 16)
            choice = "pissa" if niter == -1 else "pissa_niter_16"
            put("method.init_lora_weights", choice, "pissa_init")
            if niter not in (-1, 16):
                unmap("pissa_iter", f"finetui offers PiSSA with a full SVD (pissa_iter: -1) or 16 fast-SVD "
                      f"iterations; {niter} was taken as 16")
        else:
            unmap("pissa_init", "this finetui has no method.init_lora_weights")
    if job.get("use_galore", bool):
        optimizer = "galore_adamw_8bit" if job.get("optim", str, "") == "adamw_8bit" else "galore_adamw"
        if _has("train.galore_rank"):
            put("train.optimizer", optimizer, "use_galore")
            rank = job.get("galore_rank", int)
            if rank is not None:
                put("train.galore_rank", rank, "galore_rank")
            target = job.get("galore_target", str)
            if target is not None:
                put("train.optim_target_modules", _modules(target), "galore_target")
            for key in ("galore_update_interval", "galore_scale", "galore_proj_type", "galore_layerwise"):
                if key in job:
                    unmap(key, "finetui passes galore_rank and the target modules only; transformers' defaults "
                          "for the rest")
        else:
            unmap("use_galore", "this finetui has no GaLore optimizer")
    elif "optim" in job:
        optim = job.get("optim", str)
        if optim in OPTIMIZERS:
            put("train.optimizer", OPTIMIZERS[optim], "optim")
        else:
            unmap("optim", f"{optim}: finetui's optimizers are {', '.join(sorted(set(OPTIMIZERS.values())))}")
    for key in ("use_apollo", "use_badam", "use_adam_mini", "use_muon"):
        if job.get(key, bool):
            unmap(key, "finetui's optimizers are AdamW (torch, paged, 8-bit) and GaLore")

    # simple keys
    for key, (target, kind) in DIRECT.items():
        if key not in job:
            continue
        value = job.get(key, kind)
        if value is None:
            continue
        if not _has(target):
            unmap(key, f"this finetui has no {target}")
            continue
        if target.startswith("method.") and target != "method.lora_dropout" and not lora and value:
            unmap(key, f"a LoRA setting, but finetuning_type is {method}")
            continue
        put(target, value, key)

    # model
    attention = job.get("flash_attn", str)
    if attention is not None:
        _put_one_of(job, put, "flash_attn", attention, "model.attn_implementation", ATTENTION)
    if job.get("trust_remote_code", bool):
        unmap("trust_remote_code", "finetui runs code shipped with a model only when you turn it on yourself: "
              "add model.trust_remote_code: true to the config if you trust this model")

    # template
    template = job.get("template", str)
    if template is not None:
        if template in TEMPLATES:
            put("data.template", TEMPLATES[template], "template")
        elif template == "default":
            put("data.template", "auto", "template")
            unmap("template", "LLaMA-Factory's default template (Human:/Assistant:) has no finetui equivalent; "
                  "data.template: auto uses the model's own chat template, else chatml")
        else:  # a model family's template reproduces that model's own chat template
            put("data.template", "tokenizer", "template")

    # data
    _map_data(job, put, unmap, pretrain, cwd)
    if job.get("train_on_prompt", bool):
        put("data.train_on", "all", "train_on_prompt")
    packing = job.get("packing", bool)
    neat = job.get("neat_packing", bool)
    if neat:
        put("data.packing", True, "neat_packing")
    elif packing is not None:
        put("data.packing", packing, "packing")
        if packing:
            mapped[-1] += " (finetui's packing never lets examples attend to each other, as neat_packing)"
    elif pretrain:
        put("data.packing", True, "stage: pt (LLaMA-Factory packs pretraining text)")
    if pretrain and "data.train_on" not in given:
        put("data.train_on", "all", "stage: pt")

    # train
    scheduler = job.get("lr_scheduler_type", str)
    if scheduler is not None:
        if scheduler in SCHEDULERS:
            put("train.lr_scheduler", SCHEDULERS[scheduler], "lr_scheduler_type")
        else:
            closest = "cosine" if "cosine" in scheduler else "linear"
            unmap("lr_scheduler_type", f"{scheduler}: finetui's schedules are linear, cosine and constant "
                  f"(warm-up from warmup_ratio/warmup_steps); {closest} is used")
            put("train.lr_scheduler", closest, "lr_scheduler_type")
    if job.get("pure_bf16", bool):
        put("train.precision", "bf16", "pure_bf16")
        put("model.dtype", "bfloat16", "pure_bf16")
    elif job.get("bf16", bool):
        put("train.precision", "bf16", "bf16")
    elif job.get("fp16", bool):
        put("train.precision", "fp16", "fp16")
    for key in ("bf16", "fp16"):
        job.used.add(key)
    if "disable_gradient_checkpointing" in job:
        put("train.gradient_checkpointing", not job.get("disable_gradient_checkpointing", bool, False),
            "disable_gradient_checkpointing")
    elif "gradient_checkpointing" in job:
        put("train.gradient_checkpointing", job.get("gradient_checkpointing", bool, True), "gradient_checkpointing")
    strategy = job.get("eval_strategy", str) or job.get("evaluation_strategy", str)
    if strategy is not None:
        _put_one_of(job, put, "eval_strategy", strategy, "train.eval_strategy", STRATEGIES)
    save = job.get("save_strategy", str)
    if save is not None:
        _put_one_of(job, put, "save_strategy", save, "train.save_strategy", STRATEGIES)
    steps = job.get("save_steps", int)
    if steps is not None:
        put("train.save_steps", steps, "save_steps")
        if save is None:  # the Trainer's default save_strategy is steps
            put("train.save_strategy", "steps", "save_steps")
    _map_report_to(job, put, unmap)
    output_dir = job.get("output_dir", str)
    if output_dir is not None:
        name = "-".join(p for p in Path(output_dir).parts if p not in (".", "..", "/"))
        put("output.run_name", name, "output_dir")
        mapped[-1] += " (finetui writes runs/<id>/ under output.runs_dir)"

    # what is left
    for key in data:
        if key in job.used:
            continue
        if data[key] is None:
            not_needed.append(f"{key}: empty (null)")
        elif key in NOT_NEEDED:
            not_needed.append(f"{key}: {NOT_NEEDED[key]}")
        elif key in UNMAPPED:
            unmap(key, UNMAPPED[key])
        else:
            unmap(key, "no finetui setting for it")

    if job.problems:
        raise ImportProblem(job.problems)

    defaults = []
    for key, value in DEFAULTS.items():
        if key in given or (key == "method.lora_r" and not lora):
            continue
        section, name = key.split(".", 1)
        if key == "data.test_size" and "test_path" in out["data"]:
            continue
        out[section][name] = value
        defaults.append(f"{key}: {_shown(value)} (LLaMA-Factory's default: {DEFAULT_KEY[key]} not set)")
    if out["data"].get("test_size", 1) == 0 and not out["data"].get("test_path") and \
            out["train"].get("eval_strategy", "no") != "no":
        raise ImportProblem([f"{job.at('eval_strategy')}: eval_strategy: {out['train']['eval_strategy']} needs "
                             "val_size or eval_dataset (there is nothing to evaluate on)"])

    data_out = {}  # each section in the schema's order, as finetui writes its own configs
    for section, values in out.items():
        if values:
            order = list(cfg.Config.model_fields[section].annotation.model_fields)
            data_out[section] = {k: values[k] for k in sorted(values, key=order.index)}
    try:
        config = cfg.validate(data_out)
    except cfg.ConfigError as exc:
        raise ImportProblem([f"{source}: the imported config is not valid for finetui: {p}"
                             for p in exc.problems]) from None
    return Imported(config, data_out, mapped, defaults, unmapped, not_needed)


def _map_data(job: _Job, put, unmap, pretrain: bool, cwd: str | Path | None) -> None:
    from finetui.engine.data import formats, readers

    names = _names(job.get("dataset", str))
    if not names:
        job.problem("dataset", "missing: the dataset name(s) from dataset_info.json")
        return
    folder = job.get("dataset_dir", str, "data")
    base = Path(cwd) if cwd is not None else Path.cwd()

    def spec_of(key: str, name: str) -> str | None:
        if folder == "ONLINE":  # LLaMA-Factory: every name is a hub dataset
            return f"hf:{name}"
        registry = Path(folder) / readers.REGISTRY_FILE
        if not (base / registry).is_file():
            job.problem(key, f"{name}: no {registry} (dataset_dir: {folder}) in {base}; run finetui import from "
                        "the folder llamafactory-cli runs in, or set dataset_dir")
            return None
        spec = f"{registry}:{name}"
        try:
            source = readers.resolve_source(base / spec)
        except (OSError, ValueError) as exc:
            job.problem(key, str(exc))
            return None
        if pretrain and source.entry is not None and formats.registry_format(source.entry.raw)[0] != "text":
            job.problem("stage", f"pt trains on raw text, but dataset {name!r} is not a text entry "
                        "(columns: {prompt: text}); use stage: sft for it")
            return None
        return spec

    spec = spec_of("dataset", names[0])
    if spec:
        put("data.path", spec, "dataset")
    if len(names) > 1:
        unmap("dataset", f"finetui trains on one dataset; only {names[0]} was taken, not "
              f"{', '.join(names[1:])} (combine them into one file to train on all)")
    evals = _names(job.get("eval_dataset", str))
    if evals:
        spec = spec_of("eval_dataset", evals[0])
        if spec:
            put("data.test_path", spec, "eval_dataset")
        if len(evals) > 1:
            unmap("eval_dataset", f"finetui evaluates on one test set; only {evals[0]} was taken")
    size = job.get("val_size", float)
    if size:
        if 0 < size < 1:
            put("data.test_size", size, "val_size")
        else:
            unmap("val_size", f"{size:g} examples: finetui holds out a fraction (data.test_size below 1); "
                  "set it by hand")


def _map_report_to(job: _Job, put, unmap) -> None:
    if "report_to" not in job:
        return
    raw = job.data["report_to"]
    job.used.add("report_to")
    if isinstance(raw, str):
        raw = _names(raw)
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        job.problem("report_to", f"expected a tracker name or a list of them, got {raw!r}")
        return
    if not _has("train.report_to"):
        if raw and raw != ["none"]:
            unmap("report_to", "this finetui has no train.report_to; its dashboard reads its own events")
        return
    known = getattr(cfg, "TRACKERS", ("none", "tensorboard", "wandb", "mlflow", "trackio"))
    wanted = [v for v in raw if v != "none"]
    taken = [v for v in wanted if v in known]
    left = [v for v in wanted if v not in known]
    if taken or not left:
        put("train.report_to", taken, "report_to")
    if left:
        unmap("report_to", f"{', '.join(left)}: finetui reports to {', '.join(v for v in known if v != 'none')}")


def _names(value: str | None) -> list[str]:
    """LLaMA-Factory's comma-separated list: its names."""
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _modules(value: str) -> str | list[str]:
    """A comma-separated list of module names as finetui's target modules (``all``: every linear layer)."""
    names = _names(value)
    return "all-linear" if names == ["all"] else names


def _put_one_of(job: _Job, put, key: str, value: Any, target: str, choices) -> None:
    """``put`` ``value`` at ``target`` (mapped through ``choices`` where it is a dict) when it is one
    of ``choices``; otherwise a problem at ``key`` naming them."""
    if value in choices:
        put(target, choices[value] if isinstance(choices, dict) else value, key)
    else:
        names = list(choices)
        job.problem(key, f"{value!r}: {', '.join(names[:-1])} or {names[-1]}")


def _shown(value: Any) -> str:
    if isinstance(value, (list, dict, bool)) or value is None:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return str(value)


def import_job(path: str | Path, cwd: str | Path | None = None) -> Imported:
    data, lines = read_job(path)
    return convert(data, lines, str(path), cwd)


def command(args) -> int:
    try:
        result = import_job(args.job)
    except ImportProblem as exc:
        for line in exc.problems:
            print(f"finetui: {line}", file=sys.stderr)
        return 2
    text = result.to_yaml(Path(args.job).name)
    report = sys.stderr
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from finetui.engine import atomic

        atomic.write_text(out, text)
        cfg.load(out)  # what was written loads back (raises ConfigError naming out:line otherwise)
        report = sys.stdout
        print(f"wrote {out} from {args.job}", file=report)
    else:
        sys.stdout.write(text)
    print(f"mapped ({len(result.mapped)}):", file=report)
    for line in result.mapped:
        print(f"  {line}", file=report)
    if result.defaults:
        print(f"LLaMA-Factory defaults written ({len(result.defaults)}):", file=report)
        for line in result.defaults:
            print(f"  {line}", file=report)
    if result.not_needed:
        print(f"not needed ({len(result.not_needed)}):", file=report)
        for line in result.not_needed:
            print(f"  {line}", file=report)
    print(f"not mapped ({len(result.unmapped)}):" if result.unmapped else "not mapped: none", file=report)
    for line in result.unmapped:
        print(f"  {line}", file=report)
    if args.out:
        print(f"train it: finetui train {args.out}", file=report)
    return 0
