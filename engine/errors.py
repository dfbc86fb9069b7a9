"""Errors the trainer can explain, and the sorting of any exception into an ``error`` event.

Light module (stdlib only, torch looked up lazily), so the launcher and the UI may import
it. The trainer turns every failure into one ``error`` event whose ``kind`` says whose
move it is:

- ``config``: a setting cannot work here (an 8-bit optimizer on a CPU, ...): change the config;
- ``model``: the model cannot be found or loaded;
- ``data``: the dataset cannot be read, rendered or is empty;
- ``oom``: out of memory; the hint lists what lowers memory;
- ``disk``: out of disk space (ENOSPC, EDQUOT) or over a file-size limit (EFBIG), often
  while a checkpoint is saved; the hint says what to free and how to resume;
- ``internal``: anything else (a bug, or a library failure we did not foresee).
"""

from __future__ import annotations

import errno

OOM_HINT = (
    "lower train.batch_size (raise train.gradient_accumulation_steps to keep the effective batch) "
    "or data.max_length, turn on train.gradient_checkpointing, or load the base in 4-bit "
    "(method.type: qlora)"
)


DISK_HINT = (
    "free space on the disk that holds the run folder (older runs, checkpoints: lower "
    "train.save_total_limit) or point output.runs_dir at a larger disk, then `finetui train --resume RUN`: "
    "it continues from the newest complete checkpoint"
)
DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# How libraries that do not raise OSError say it: safetensors (Rust's io::Error), torch.save
# (PytorchStreamWriter), Python's own messages.
DISK_TEXTS = ("no space left on device", "file too large", "disk quota exceeded", "storagefull",
              "filetoolarge", "file write failed")

# A trainer that ends by a signal says nothing itself; whoever started it (the CLI, the TUI)
# sees the signal in its exit status. SIGKILL is what the kernel's out-of-memory killer sends
# (and `kill -9`, a cgroup at its memory.max, a job scheduler's hard limit).
KILLED_MESSAGE = "killed (SIGKILL) — often the out-of-memory killer"
KILLED_HINT = (
    "when memory runs out the kernel ends the biggest process with SIGKILL (`dmesg | grep -i oom` or "
    "`journalctl -k` says whether it did): lower train.batch_size (raise train.gradient_accumulation_steps "
    "to keep the effective batch) or data.max_length, or turn on train.gradient_checkpointing; "
    "`finetui train --resume {run}` continues from the newest complete checkpoint"
)


def exit_problem(code: int | None, run: str = "RUN") -> tuple[str, str] | None:
    """(message, hint) for a trainer that ended by a signal (``Popen.returncode`` < 0), else None."""
    import signal

    if code is None or code >= 0:
        return None
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return KILLED_MESSAGE, KILLED_HINT.format(run=run)
    return (f"killed ({name})",
            f"something sent the trainer {name}, or it crashed; see stdout.log in the run folder, then "
            f"`finetui train --resume {run}` continues from the newest complete checkpoint")


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


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, EDQUOT or EFBIG anywhere in the exception's chain, or a library's words for them."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return True
        text = str(e).lower()
        if any(t in text for t in DISK_TEXTS):
            return True
    return False


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(kind, message, hint) for an ``error`` event."""
    if is_disk_full(exc):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return "disk", f"out of disk space: {first}", DISK_HINT
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
    if module.startswith("finetui.engine.data") or name in ("DataError", "RenderError", "ReaderError"):
        return "data", str(exc), ""
    text = str(exc).strip() or name
    return "internal", f"{name}: {text}", "see stdout.log in the run folder for the traceback"
