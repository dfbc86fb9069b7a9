"""Errors the trainer can explain, and the sorting of any exception into an ``error`` event.

Light module (stdlib only, torch looked up lazily), so the launcher and the UI may import
it. The trainer turns every failure into one ``error`` event whose ``kind`` says whose
move it is:

- ``config``: a setting cannot work here (an 8-bit optimizer on a CPU, ...): change the config;
- ``model``: the model cannot be found or loaded;
- ``data``: the dataset cannot be read, rendered or is empty;
- ``oom``: out of memory; the hint lists what lowers memory;
- ``internal``: anything else (a bug, or a library failure we did not foresee).
"""

from __future__ import annotations

OOM_HINT = (
    "lower train.batch_size (raise train.gradient_accumulation_steps to keep the effective batch) "
    "or data.max_length, turn on train.gradient_checkpointing, or load the base in 4-bit "
    "(method.type: qlora)"
)


class TrainError(Exception):
    """A failure already phrased for the user. ``kind`` is an engine.events ERROR_KINDS value."""

    kind = "internal"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class ModelError(TrainError):
    kind = "model"


class SetupError(TrainError):
    """A config value that validates but cannot run on this machine."""

    kind = "config"


class DataError(TrainError):
    kind = "data"


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeErrors allocators raise (CPU, MPS, cuBLAS)."""
    try:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, torch.OutOfMemoryError):
            return True
    except AttributeError:
        pass
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(s in text for s in ("out of memory", "can't allocate memory", "cublas_status_alloc_failed"))
    return False


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(kind, message, hint) for an ``error`` event."""
    if is_oom(exc):
        first = (str(exc).strip().splitlines() or ["out of memory"])[0]
        return "oom", f"out of memory: {first}", OOM_HINT
    if isinstance(exc, TrainError):
        return exc.kind, str(exc), exc.hint
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    # Errors raised by other parts of the engine carry their meaning in their type.
    if name == "ConfigError" or name == "TemplateError":
        return "config", str(exc), ""
    if module.startswith("engine.data") or name in ("DataError", "RenderError", "ReaderError"):
        return "data", str(exc), ""
    text = str(exc).strip() or name
    return "internal", f"{name}: {text}", "see stdout.log in the run folder for the traceback"
