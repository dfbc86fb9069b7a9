"""The one training configuration: schema, YAML load/save, `--set` overrides.

Light module: pydantic and yaml only. The TUI builds its settings form from this schema
(field types, defaults, descriptions, bounds), and the CLI and trainer validate with it, so
the same value is refused the same way everywhere.

Errors name the key (``train.learning_rate``), the allowed values, and, when the config
came from a file, ``file:line``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetui.engine import configfile
from finetui.engine.perf import KERNELS  # train.kernels

SECTIONS = ("model", "data", "method", "train", "distributed", "output")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field(
        "tiny",
        description="'tiny' (built-in 0.3M demo model), 'smollm2' (built-in SmolLM2-135M-Instruct), "
        "a local folder, a .gguf file, or a Hugging Face id (must already be in the local cache when offline).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(
        None, description="A GGUF file inside the folder or hub repo of name_or_path (converted once to a cached folder)."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load the base weights quantised with bitsandbytes."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantise the quantisation constants too.")
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="dtype of the matmuls on 4-bit weights (auto: bf16 where supported)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype (auto: bf16 on a GPU that supports it, else fp32)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel (auto: sdpa)."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")


DATA_FORMATS = ("auto", "text", "qa", "alpaca", "openorca", "sharegpt", "messages", "chatml", "preference",
                "transcript")
LONG_TEXT = ("chunk", "truncate")  # data.long_text
TRANSCRIPT_ROLES = ("user", "assistant", "system")  # the values of data.roles
# A run does not start (finetui train, the TUI's Start) when more than this share of the
# records would be dropped as invalid, unless the user says so (engine.data.dropcheck).
MAX_DROP_FRACTION = 0.05


class DataConfig(_Section):
    path: str = Field(
        "sample:finetui_faq",
        description="File, folder, Hugging Face id, 'sample:NAME' or a dataset_info.json "
        "entry as DIR/dataset_info.json:NAME.",
    )
    format: Literal[DATA_FORMATS] = Field("auto", description="Record format (auto-detected).")  # type: ignore[valid-type]
    columns: dict[str, str] = Field(
        default_factory=dict, description="Column mapping for unusual names, e.g. {question: prompt}."
    )
    split: str = Field("train", description="Split to read from a hub dataset or a folder.")
    subset: str | None = Field(None, description="Hub dataset configuration (subset) name.")
    streaming: bool = Field(False, description="Stream a hub dataset instead of downloading it.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many records.")
    template: str = Field(
        "auto",
        description="auto (tokenizer's own, else chatml), tokenizer, chatml, qa, alpaca, plain, "
        "or a path to a .jinja file.",
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant", description="Train on assistant turns only, or on every token."
    )
    max_length: int = Field(
        512, ge=16, le=1_048_576,
        description="Tokens per example; a longer conversation is truncated, a longer raw text split (data.long_text).",
    )
    long_text: Literal[LONG_TEXT] = Field(  # type: ignore[valid-type]
        "chunk",
        description="Raw text (format text) longer than max_length: chunk splits it into max_length-token windows, "
        "each one example (every token trained); truncate keeps the first max_length tokens only.",
    )
    text_overlap: int = Field(
        0, ge=0,
        description="Tokens each window of a chunked text repeats from the one before, as context (not trained "
        "twice); less than half of max_length.",
    )
    roles: dict[str, Literal[TRANSCRIPT_ROLES]] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="Transcripts: the role of each speaker, e.g. {Host: user, Guest: assistant} (user, assistant "
        "or system); consecutive turns of one role are merged.",
    )
    test_size: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction held out for evaluation.")
    test_split: str | None = Field(None, description="Use this existing split as the test set instead.")
    test_path: str | None = Field(
        None,
        description="A separate file (or any data.path form) holding the test set, read with the same format "
        "and columns; overrides test_size and test_split.",
    )
    packing: bool = Field(
        False,
        description="Put each batch's examples back to back in one row, without padding; position_ids "
        "restart per example so none attends to another (same loss as padding, less work).",
    )
    on_error: Literal["skip", "strict"] = Field(
        "skip", description="skip: drop bad records and report them; strict: stop at the first."
    )
    max_drop_fraction: float = Field(
        MAX_DROP_FRACTION, ge=0.0, le=1.0,
        description="finetui train and the TUI's Start stop before a run when more than this share of the "
        "records would be dropped as invalid, saying how many and why (1: never stop; --allow-drops once).",
    )
    num_proc: int = Field(1, ge=1, le=256, description="Processes for tokenisation.")

    @model_validator(mode="after")
    def _windows(self) -> "DataConfig":
        if 2 * self.text_overlap >= self.max_length:
            raise ValueError(
                f"data.text_overlap: {self.text_overlap} must be less than half of data.max_length "
                f"({self.max_length}), or the windows of a long text would mostly repeat each other"
            )
        return self


# method.init_lora_weights: peft's init_lora_weights ("default" is peft's True)
LORA_INITS = ("default", "gaussian", "pissa", "pissa_niter_16", "olora", "loftq")
# train.report_to: the Trainer's trackers, each an optional package (TRACKER_PACKAGES)
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")
# module each tracker imports -> the pip requirement that provides it
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                    "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}
# train.optimizer values that are transformers' GaLore optimizers (need galore-torch)
GALORE_OPTIMIZERS = ("galore_adamw", "galore_adamw_8bit", "galore_adafactor")


class MethodConfig(_Section):
    type: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full: all weights; lora: adapters on a 16-bit base; qlora: adapters on a 4-bit base."
    )
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path (0: LoRA linears that share an input run as one, faster).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: all-linear or a list of names."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Extra modules trained in full and saved with the adapter."
    )
    use_dora: bool = Field(
        False,
        description="DoRA (peft): each adapted weight split into a magnitude vector and a LoRA-updated direction; "
        "closer to full fine-tuning at low rank, slower steps.",
    )
    use_rslora: bool = Field(
        False, description="rsLoRA (peft): scale by lora_alpha / sqrt(lora_r) instead of / lora_r (stable at high rank)."
    )
    init_lora_weights: Literal[LORA_INITS] = Field(  # type: ignore[valid-type]
        "default",
        description="LoRA initialisation (peft): default (B = 0), gaussian, pissa (principal singular vectors; "
        "pissa_niter_16: fast SVD), olora (QR), loftq (qlora only: offsets the 4-bit rounding). pissa and olora "
        "move the base weights; the saved adapter is converted so it applies to the untouched base.",
    )
    loraplus_lr_ratio: float = Field(
        0.0, ge=0.0, le=1000.0,
        description="LoRA+ (peft.optimizers.create_loraplus_optimizer): lora_B learns this many times faster "
        "than lora_A, e.g. 16 (0: off).",
    )


class TrainConfig(_Section):
    epochs: float = Field(3.0, gt=0, le=10_000, description="Passes over the training set.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(8, ge=1, le=65_536, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=65_536, description="Steps summed before an update.")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of steps spent warming up.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps (overrides warmup_ratio when > 0).")
    optimizer: Literal["adamw_torch", "paged_adamw_32bit", "adamw_8bit", *GALORE_OPTIMIZERS] = Field(  # type: ignore[valid-type]
        "adamw_torch",
        description="paged_adamw_32bit, adamw_8bit and galore_adamw_8bit need CUDA; galore_* (transformers' GaLore: "
        "gradients projected to galore_rank) go with method.type: full and need galore-torch.",
    )
    galore_rank: int = Field(128, ge=1, le=65_536, description="GaLore: rank of the gradient projection.")
    optim_target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["self_attn", "mlp"],
        description="GaLore: the linear layers whose gradients are projected (names or regexes, or all-linear).",
    )
    neftune_noise_alpha: float = Field(
        0.0, ge=0.0, le=100.0,
        description="NEFTune (the Trainer's): uniform noise of this scale added to the input embeddings while "
        "training, e.g. 5 (0: off).",
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping (0: off).")
    group_by_length: bool = Field(False, description="Batch examples of similar length (less padding).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Mixed precision (auto: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, ~30% slower.")
    eval_strategy: Literal["no", "steps", "epoch"] = Field("epoch", description="When to evaluate.")
    eval_steps: int = Field(50, ge=1, description="Evaluate every N steps (eval_strategy: steps).")
    save_strategy: Literal["no", "steps", "epoch"] = Field("epoch", description="When to save checkpoints.")
    save_steps: int = Field(100, ge=1, description="Save every N steps (save_strategy: steps).")
    save_total_limit: int | None = Field(2, ge=1, description="Keep at most this many checkpoints (the best one is never deleted).")
    keep_best: bool = Field(
        True,
        description="Track the lowest eval loss: its checkpoint is never rotated away, and the final adapter/model "
        "is the best one (what merge, chat and eval use), when checkpoints line up with evaluations.",
    )
    early_stopping_patience: int = Field(
        0, ge=0, le=1000, description="Stop after this many evaluations without a lower eval loss (0: off)."
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0.0, description="How much lower the eval loss must be to count as better (early stopping)."
    )
    logging_steps: int = Field(1, ge=1, description="Emit a step event every N steps.")
    seed: int = Field(42, description="Seed for data order, init and dropout.")
    dataloader_num_workers: int = Field(0, ge=0, le=64, description="Data-loading worker processes.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    hang_after_s: float = Field(
        600, ge=10, le=604_800,
        description="No event or heartbeat for this many seconds while the trainer lives: the run looks hung.",
    )
    kernels: Literal[KERNELS] = Field(  # type: ignore[valid-type]
        "auto",
        description="auto: finetui's faster code where it wins (fused CPU kernels; Liger Kernel and flash-attn on CUDA "
        "when installed); reference: plain transformers + peft, the same losses (engine/perf).",
    )
    report_to: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="Trackers the Trainer reports to as well, e.g. [tensorboard] (tensorboard, wandb, mlflow, "
        "trackio: each an optional package, pip install 'finetui[trackers]'); [] or none: off. finetui's own "
        "events drive the dashboard either way.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # --set train.report_to=tensorboard, or tensorboard,wandb
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("report_to")
    @classmethod
    def _trackers_known(cls, value: list[str]) -> list[str]:
        if "none" in value:
            if len(value) > 1:
                raise ValueError("train.report_to: none cannot be listed with trackers; give [] or the trackers")
            return []
        return list(dict.fromkeys(value))


class DistributedConfig(_Section):
    """How several processes share the work (``finetui train --nproc N`` / ``--nnodes``):
    through the transformers Trainer's own FSDP and DeepSpeed support (accelerate), not
    hand-written wrapping. One process ignores it."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per GPU; fsdp: PyTorch FSDP2 shards weights, gradients and "
        "optimizer state; deepspeed: ZeRO stage 2/3 (needs the deepspeed package).")
    fsdp_sharding: Literal["full_shard", "hybrid_shard"] = Field(
        "full_shard", description="FSDP: shard across every GPU (full_shard) or within a node and replicate "
        "across nodes (hybrid_shard: less inter-node traffic, more memory).")
    fsdp_state_dict: Literal["full", "sharded"] = Field(
        "full", description="FSDP checkpoints: one full state dict gathered on rank 0, or one shard per rank "
        "(faster to save); either resumes on another number of processes.")
    activation_checkpointing: bool = Field(
        False, description="FSDP: recompute each layer's activations in the backward pass (FSDP's own; "
        "leave train.gradient_checkpointing off).")
    cpu_offload: bool = Field(
        False, description="Keep parameters and optimizer state in CPU memory (FSDP: parameters and "
        "gradients; DeepSpeed: optimizer state, and parameters at ZeRO-3). Slower, less GPU memory.")
    zero_stage: Literal[2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 2 shards gradients and optimizer state, 3 the weights too.")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed: your own DeepSpeed JSON (replaces zero_stage and cpu_offload).")
    timeout_s: int = Field(
        600, ge=10, description="Seconds a process waits in a collective (all-reduce, all-gather, barrier) for "
        "the others before it gives up: a hung rank ends the run instead of holding every other one forever.")


class OutputConfig(_Section):
    runs_dir: str = Field("runs", description="Folder that holds one sub-folder per run.")
    run_name: str | None = Field(None, description="Name in the run id (default: the config file's name).")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.method.type == "qlora" and self.model.quantization == "none":
            # QLoRA means a 4-bit base; say so rather than silently training 16-bit LoRA.
            object.__setattr__(self.model, "quantization", "4bit")
        t = self.train
        if t.early_stopping_patience and t.eval_strategy == "no":
            raise ValueError("train.early_stopping_patience: early stopping needs evaluations; "
                             "set train.eval_strategy to steps or epoch")
        for problem in (*_method_problems(self), *_distributed_problems(self)):
            raise ValueError(problem)
        if self.method.type == "full" and self.model.quantization != "none":
            raise ValueError(
                "method.type: full fine-tuning cannot update quantised weights; "
                "use method.type: qlora (or lora) with model.quantization: "
                f"{self.model.quantization}, or set model.quantization: none"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _method_problems(config: "Config") -> list[str]:
    """Settings of the PEFT family that do not go together (what peft and transformers
    would refuse later, or silently ignore), each naming the settings."""
    m, t = config.method, config.train
    problems = []
    lora_only = [name for name, on in (("use_dora", m.use_dora), ("use_rslora", m.use_rslora),
                                       ("init_lora_weights", m.init_lora_weights != "default"),
                                       ("loraplus_lr_ratio", m.loraplus_lr_ratio > 0)) if on]
    if m.type == "full" and lora_only:
        problems.append(f"method.{lora_only[0]}: a LoRA setting, but method.type is full; "
                        "use method.type: lora or qlora, or turn it off")
    if m.init_lora_weights == "loftq" and m.type != "qlora":
        problems.append("method.init_lora_weights: loftq initialises LoRA to offset the rounding of a 4-bit base; "
                        "it needs method.type: qlora (model.quantization: 4bit)")
    if m.init_lora_weights == "loftq" and config.model.quantization == "8bit":
        problems.append("method.init_lora_weights: loftq needs model.quantization: 4bit (got 8bit)")
    if m.init_lora_weights in ("pissa", "pissa_niter_16", "olora") and config.model.quantization != "none":
        problems.append(f"method.init_lora_weights: {m.init_lora_weights} rewrites the base weights, which a "
                        f"quantised base (model.quantization: {config.model.quantization}) cannot take; "
                        "use method.type: lora with model.quantization: none, or loftq for qlora")
    if m.init_lora_weights in ("pissa", "pissa_niter_16", "olora") and m.use_dora:
        problems.append(f"method.init_lora_weights: {m.init_lora_weights} with method.use_dora: the adapter "
                        "cannot be converted back to the untouched base (peft); turn one off")
    if t.optimizer in GALORE_OPTIMIZERS and m.type != "full":
        problems.append(f"train.optimizer: {t.optimizer} (GaLore) projects the gradients of full weights; "
                        f"it needs method.type: full (got {m.type}); LoRA runs use adamw_torch")
    if m.loraplus_lr_ratio > 0 and t.optimizer in GALORE_OPTIMIZERS:
        problems.append("method.loraplus_lr_ratio: LoRA+ builds its own optimizer; "
                        f"it cannot go with train.optimizer: {t.optimizer}")
    return problems


def _distributed_problems(config: "Config") -> list[str]:
    """Sharding settings that do not go together, each naming the settings."""
    d, problems = config.distributed, []
    if d.strategy == "fsdp" and d.activation_checkpointing and config.train.gradient_checkpointing:
        problems.append("distributed.activation_checkpointing: FSDP's activation checkpointing and "
                        "train.gradient_checkpointing do the same; turn one off")
    if d.strategy == "fsdp" and config.model.quantization == "8bit":
        problems.append("distributed.strategy: fsdp cannot shard 8-bit weights (bitsandbytes); use "
                        "model.quantization: 4bit (QLoRA) or none, or distributed.strategy: ddp")
    if d.strategy == "deepspeed" and config.model.quantization != "none" and d.zero_stage == 3:
        problems.append(f"distributed.zero_stage: 3 cannot shard {config.model.quantization} quantised weights; "
                        "use distributed.zero_stage: 2 or model.quantization: none")
    if d.deepspeed_config is not None and d.strategy != "deepspeed":
        problems.append("distributed.deepspeed_config: a DeepSpeed JSON needs distributed.strategy: deepspeed "
                        f"(got {d.strategy})")
    return problems


class ConfigError(ValueError):
    """A config problem, already phrased for the user: one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------------------- loading


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*path, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(root, ())
    return lines


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _field_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _phrase(err: dict[str, Any]) -> str:
    loc = tuple(str(p) for p in err.get("loc", ()))
    key = ".".join(loc) if loc else "(config)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = _field_model(loc)
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(loc[-1], _known_keys(parent), n=1)
            if close:
                hint = f" (did you mean {'.'.join((*loc[:-1], close[0]))}?)"
            else:
                hint = f" (known keys: {', '.join(_known_keys(parent))})"
        return f"{key}: unknown key{hint}"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if ":" in msg.split(" ", 1)[0]:
            return msg  # already names its key
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def validate(data: dict[str, Any], source: str | None = None, text: str | None = None,
             overrides: list[str] | None = None) -> Config:
    """Build a Config from plain data; raise ConfigError with key-naming messages. A
    problem with a value that came from ``overrides`` (``--set KEY=VALUE``) is placed at
    that ``--set``, not at the file's line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{source}: " if source else ""
        raise ConfigError([f"{where}a config must be a mapping of sections (model, data, method, train, output)"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(text) if text else {}
        set_at = _override_keys(overrides or [])
        problems = []
        for err in exc.errors():
            phrase = _phrase(err)
            loc = tuple(str(p) for p in err.get("loc", ()))
            where = ""
            given = next((set_at[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in set_at), None)
            if given is not None:
                where = f"--set {given}: "
            elif source:
                line = None
                for n in range(len(loc), 0, -1):
                    line = lines.get(loc[:n])
                    if line:
                        break
                where = f"{source}:{line}: " if line else f"{source}: "
            problems.append(where + phrase)
        raise ConfigError(problems) from None


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply ``key=value`` overrides, validate."""
    path = Path(path)
    try:
        text = configfile.read(path, missing="no such config file")
        data = configfile.parse(text, path, toml=False)
    except configfile.ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    if data is None:  # an empty (or comments-only) file is a mistake, not "all defaults"
        raise ConfigError([f"{path}: the config file is empty (no settings in it); write the keys to set "
                           "(model:, data:, train: ...), e.g. from sample_data/quickstart.yaml"])
    if overrides:
        data = apply_overrides(data, overrides)
    return validate(data, source=str(path), text=text, overrides=overrides)


def _override_keys(overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Key path -> the ``--set`` item that gave it (the last one wins, as in apply_overrides)."""
    keys = {}
    for item in overrides:
        key = item.split("=", 1)[0]
        keys[tuple(p for p in key.strip().split(".") if p)] = item
    return keys


def loads(text: str, source: str = "<string>") -> Config:
    try:
        data = configfile.parse(text, source, toml=False) or {}
    except configfile.ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    return validate(data, source=source, text=text)


def save(config: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from finetui.engine import atomic

    atomic.write_text(path, config.to_yaml())
    return path


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to plain config data (values parsed as YAML scalars)."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"--set {item}: expected key=value, e.g. train.batch_size=4"])
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if len(parts) < 2:
            raise ConfigError([f"--set {item}: key must be section.name, e.g. train.batch_size (sections: {', '.join(SECTIONS)})"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            # YAML 1.1 reads no/yes/on/off as booleans; on the command line they are
            # words (train.save_strategy=no), and real booleans still accept true/false.
            value = raw.strip()
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def set_value(config: Config, key: str, value: Any) -> Config:
    """Return a new Config with one dotted key changed, validated as a whole."""
    return validate(apply_overrides(config.to_dict(), [f"{key}={_yaml_scalar(value)}"]))


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def field_specs() -> list[dict[str, Any]]:
    """Flat description of every setting, for generated forms and docs.

    Each item: key ('train.batch_size'), section, name, type name, default, description,
    choices (for Literal fields) and numeric bounds.
    """
    import typing

    specs = []
    for section in SECTIONS:
        model = Config.model_fields[section].annotation
        for name, field in model.model_fields.items():
            ann = field.annotation
            choices = None
            kind = getattr(ann, "__name__", str(ann))
            args = typing.get_args(ann)
            if typing.get_origin(ann) is Literal:
                choices, kind = list(args), "choice"
            elif ann is bool:
                kind = "bool"
            elif ann is int or (args and int in args and float not in args and str not in args):
                kind = "int"
            elif ann is float:
                kind = "float"
            elif ann in (str, str | None):
                kind = "str"
            else:
                kind = "yaml"
            bounds = {}
            for meta in field.metadata:
                for attr in ("ge", "gt", "le", "lt"):
                    if getattr(meta, attr, None) is not None:
                        bounds[attr] = getattr(meta, attr)
            default = field.get_default(call_default_factory=True)
            specs.append(
                {
                    "key": f"{section}.{name}",
                    "section": section,
                    "name": name,
                    "kind": kind,
                    "optional": type(None) in args,
                    "default": default,
                    "description": field.description or "",
                    "choices": choices,
                    "bounds": bounds,
                }
            )
    return specs
