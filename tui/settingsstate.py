"""What the Settings screen knows and decides, without Textual: the form's values, a
proposed value checked by validating the whole config, the memory estimate before launch
(``engine.footprint``, this box's GPUs, the limits ``finetui train`` refuses without
``--force``), what makes Start pointless, where Save writes by default and what the start
dialog asks. Plain Python (light: the engine's estimate, no weights), so tests drive it
without an app; the screen only shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine import config as cfg
from finetui.tui.session import Preset, SettingsState, display_path, flatten, presets, sample_dir

YAML_SUFFIXES = (".yaml", ".yml")
CHECK_INLINE_BYTES = 2_000_000  # data this small is checked before the start dialog opens, in the UI thread
FITS_SHARE = 0.95  # an estimate fits a GPU when it needs at most this share of its memory


def flat_values(config: cfg.Config) -> dict[str, Any]:
    """``section.key`` -> value: the form's rows."""
    return flatten(config.to_dict())


def propose(config: cfg.Config, key: str, value: Any) -> cfg.Config:
    """``config`` with ``key`` set to ``value``, validated whole as ``finetui train`` does;
    ConfigError (with the CLI's words) when refused."""
    return update(config, {key: value})


def update(config: cfg.Config, values: dict[str, Any]) -> cfg.Config:
    """``config`` with every ``section.key`` of ``values`` set, validated whole (ConfigError)."""
    data = config.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return cfg.validate(data)


def current_value(config: cfg.Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


def data_path_problem(path: str) -> str | None:
    """A local data path that does not exist (hub ids and sample: names are not checked)."""
    value = path.strip()
    if not value or value.startswith(("sample:", "hf:")):
        return None
    entry = value.split(".json:", 1)[0] + ".json" if ".json:" in value else value
    local = entry.startswith(("/", "./", "../", "~")) or entry.endswith(
        (".json", ".jsonl", ".csv", ".txt", ".parquet", ".tsv")) or value.count("/") != 1
    p = Path(entry).expanduser()
    if local and not p.exists():
        return f"data.path: {entry}: no such file or folder"
    return None


def default_save_path(base: Path | None) -> str:
    """Where Save writes unless told: back to the user's own file, else ``finetui.yaml``
    (a preset or the quickstart shipped with finetui is never overwritten)."""
    if base is not None:
        try:
            base.resolve().relative_to(sample_dir().resolve())
        except ValueError:
            return display_path(base)
    return "finetui.yaml"


def save_problem(path: Path) -> str | None:
    """Why the settings cannot be saved at ``path`` before trying (a folder)."""
    if path.is_dir():
        return f"{path}: is a folder; give a file name, e.g. {path / 'finetui.yaml'}"
    return None


def load_preset(state: SettingsState, name: str) -> Preset | None:
    """Load the preset called ``name`` into ``state`` (None: no such preset; ConfigError:
    it does not validate, and ``state`` is unchanged)."""
    for preset in presets():
        if preset.name == name:
            state.load(preset.path, origin=f"preset {preset.name}")
            return preset
    return None


def drops_at_once(config: cfg.Config) -> list[str] | None:
    """The lines that stop a run for the records it would drop (engine.data.dropcheck),
    read at once when the local data is small; None when it is bigger (:func:`drops` in a
    thread)."""
    from finetui.engine.data import dropcheck

    if dropcheck.local_bytes(config.data) <= CHECK_INLINE_BYTES:
        return dropcheck.refusal(config.data)
    return None


def drops(config: cfg.Config) -> tuple[list[str], str | None]:
    """Blocking: (the lines that stop a run for the records it would drop, why the check
    failed). A failed check never stands between the user and Start."""
    from finetui.engine.data import dropcheck

    try:
        return dropcheck.refusal(config.data), None
    except Exception as exc:
        return [], f"data check failed: {exc}"


def start_question(limits: list[str], drops: list[str], blocking: str | None) -> tuple[str, str]:
    """The start dialog's (title, verb): a plain start, or start anyway past the limits
    ``finetui train`` refuses without --force, or past data that would be dropped."""
    title, verb = "Start a training run", "start"
    if limits and blocking is None:
        title, verb = "Beyond the model's context or the free memory: start anyway?", "start anyway"
    if drops:
        title, verb = "Records would be dropped: start anyway?", "start anyway"
    return title, verb


@dataclass
class Estimate:
    """One config's estimate: the footprint (or the problem instead), whether that problem
    stops Start, and the limits beyond which ``finetui train`` asks for --force."""

    config: cfg.Config
    memory: Any = None  # engine.footprint.MemoryEstimate
    problem: str | None = None
    blocks: bool = True  # a missing model stops Start; a GGUF the run converts does not
    limits: list[str] = field(default_factory=list)


class Footprint:
    """The estimate of the current config and this box's GPUs (probed once)."""

    def __init__(self) -> None:
        self.now: Estimate | None = None  # the last estimate taken
        self.gpus: list | None = None  # engine.hardware.GpuReading

    # the current estimate's parts (None / [] before the first one)
    estimate = property(lambda self: self.now.memory if self.now else None)
    problem = property(lambda self: self.now.problem if self.now else None)
    blocks = property(lambda self: self.now.blocks if self.now else True)
    limits = property(lambda self: self.now.limits if self.now else [])

    def probe_gpus(self) -> list:
        """GPUs this box has (NVML, cached); [] on a CPU-only box."""
        if self.gpus is None:
            try:
                from finetui.engine import hardware

                self.gpus = hardware.gpu_backend().read()
            except Exception:
                self.gpus = []
        return self.gpus

    def compute(self, config: cfg.Config) -> Estimate:
        """Blocking (reads config.json, probes GPUs): the estimate of ``config``."""
        from finetui.engine import footprint, model_catalog, startcheck

        gpus = self.probe_gpus()
        result = Estimate(config)
        try:
            result.memory = footprint.estimate(config, gpu=bool(gpus))
            result.limits = startcheck.limits(config, gpus=gpus)
        except footprint.FootprintError as exc:
            result.memory, result.limits, result.problem = None, [], f"model.name_or_path: {exc}"
            name = config.model.name_or_path
            # A GGUF file not converted yet has no config.json to read; the run converts it.
            result.blocks = not (model_catalog.is_gguf(name) and Path(name).expanduser().is_file())
        except Exception as exc:  # a strange config.json must not take the screen down
            result.memory, result.limits, result.problem = None, [], f"footprint: {exc}"
        return result

    def take(self, result: Estimate) -> None:
        self.now = result

    def share(self, config: cfg.Config):
        """The per-GPU share (engine.footprint.DeviceShare) under distributed.strategy fsdp or
        deepspeed over this box's GPUs (two when fewer are seen); None under ddp."""
        if config.distributed.strategy == "ddp" or self.estimate is None:
            return None
        from finetui.engine import footprint

        return footprint.for_config(self.estimate, config, self.share_gpus())

    def share_gpus(self) -> int:
        """How many GPUs the share is over: `finetui train --nproc N` runs one process each."""
        return max(2, len(self.gpus or []))

    def fit(self, config: cfg.Config) -> tuple[bool, int] | None:
        """(fits, GPU0's memory): whether the estimate (one GPU's share when sharded) fits
        the first GPU. None without a GPU reading."""
        gpus = self.gpus or []
        total = gpus[0].memory_total_bytes if gpus else None
        if not total or self.estimate is None:
            return None
        share = self.share(config)
        need = share.total_bytes if share is not None else self.estimate.total_bytes
        return need <= total * FITS_SHARE, total

    def detail_rows(self) -> list[tuple[str, str]]:
        """(label, value) lines of the estimate, for the preview and the start dialog."""
        from finetui.engine.footprint import human_count
        from finetui.engine.units import format_bytes

        est = self.estimate
        return [
            ("model", f"{est.model}  [{est.source}]"),
            ("parameters", f"{human_count(est.params_total)} total, {human_count(est.params_trainable)} "
                           f"trainable ({est.method})"),
            ("size", f"{format_bytes(est.size_bytes)} stored; {format_bytes(est.weights_bytes)} loaded as "
                     f"{est.weights_dtype}"),
            ("memory", f"≈ {format_bytes(est.total_bytes)} peak, of which"),
            ("  weights", format_bytes(est.weights_bytes + est.adapter_bytes)),
            ("  grads+optim", format_bytes(est.gradients_bytes + est.optimizer_bytes)),
            ("  activations", format_bytes(est.activations_bytes + est.logits_bytes)),
            ("  overhead", format_bytes(est.overhead_bytes)),
        ]


def preflight(config: cfg.Config, footprint: Footprint, invalid: list[str]) -> str | None:
    """A problem that makes starting pointless (the trainer would fail at once): a refused
    value still in an editor (``invalid``: their keys), a data path that is not there, a
    package the config needs, a model with no estimate."""
    if invalid:
        return f"{invalid[0]}: refused value still in the editor (fix it or press esc on it)"
    problem = data_path_problem(config.data.path)
    if problem:
        return problem
    from finetui.engine import startcheck

    missing = startcheck.package_problems(config)  # a tracker or galore-torch not installed
    if missing:
        return missing[0]
    if footprint.estimate is None and footprint.problem and footprint.blocks:
        return footprint.problem
    return None
