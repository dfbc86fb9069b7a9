"""The memory allocator of a CPU training process: mimalloc, preloaded.

Light module (no torch): the launcher calls :func:`trainer_env` before starting the trainer.

Training on the CPU allocates and frees every activation at every step, and with packing
each step has another length, so every size changes from step to step. glibc's malloc
either keeps what is freed in a heap that fragments (RSS well past what is ever live) or,
with a low mmap threshold, hands every big block back and pays a page fault per 4 KB page
when it comes back. Measured on the 20M-parameter bench model, LoRA, packed batches of 8,
2 cores (``python benchmarks/cpu_allocator.py --cutoff 256``, then ``--cutoff 1024``):

=====================  ==============  ===============  ==============
cutoff 256 / 1024      glibc defaults  glibc, 256 KB    mimalloc,
                                       mmap threshold   never purged
=====================  ==============  ===============  ==============
ms per step            948 / 2,168     1,745 / 3,122    956 / 2,264
peak RSS (MB)          1,770 / 3,274   1,089 / 1,764    1,228 / 2,055
page faults per step   30k / 64k       400k / 430k      0.2k / 0.3k
=====================  ==============  ===============  ==============

mimalloc (size-segregated pages, freed memory reused in place) keeps glibc's speed at about
two thirds of its memory, so a CPU run gets it through ``LD_PRELOAD`` with
``MIMALLOC_PURGE_DELAY=-1`` (freed memory stays mapped for reuse instead of being returned
and faulted in again). It comes from the ``cmeel-mimalloc`` wheel (Linux x86_64 and
aarch64). GPU runs keep glibc: their host memory is the checkpoint on its way to the GPU,
which mimalloc without purging would keep mapped for the whole run.

Models narrower than ``MIN_HIDDEN`` (the tiny demo model) keep glibc: their activations
are small enough for glibc's heap to serve without faults or growth, and under mimalloc the
trainer's imports take ~0.4 s longer, which on such a model is a sixth of its start-up.

``FINETUI_CPU_MALLOC``: ``auto`` (default) as above; ``mimalloc`` preloads it for any
model on any device; ``system`` glibc as it is; ``lean`` glibc with a 256 KB mmap threshold
(the least memory, the most page faults; also what a CPU run of a large model gets when
mimalloc is not installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "FINETUI_CPU_MALLOC"
LIBRARY = "cmeel.prefix/lib/libmimalloc.so"
MIN_HIDDEN = 256  # hidden size from which a CPU run gets mimalloc


def mimalloc_library() -> Path | None:
    """The shared library from the ``cmeel-mimalloc`` wheel, if installed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        path = Path(str(distribution("cmeel-mimalloc").locate_file(LIBRARY)))
    except (PackageNotFoundError, OSError, ValueError):
        return None
    return path if path.is_file() else None


def trains_on_cpu(device: str, env: dict[str, str]) -> bool:
    """Whether a trainer with ``model.device`` = ``device`` will run on the CPU: asked for,
    or ``auto`` with no NVIDIA GPU visible (NVML; no torch import)."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    from engine.hardware import NvmlBackend

    return NvmlBackend(env).problem is not None


def trainer_env(device: str, env: dict[str, str], hidden_size: int | None = None) -> dict[str, str]:
    """``env`` for a trainer process, with mimalloc preloaded when it trains on the CPU a
    model at least ``MIN_HIDDEN`` wide (or of unknown width), or when ``FINETUI_CPU_MALLOC``
    asks for it (see the module docstring). Sets ``FINETUI_CPU_MALLOC=mimalloc`` when it does,
    ``=lean`` when such a run finds no mimalloc library: the trainer reads only that."""
    choice = env.get(MARKER, "auto")
    if choice == "auto":
        if hidden_size is not None and hidden_size < MIN_HIDDEN:
            return env
        if not trains_on_cpu(device, env):
            return env
    elif choice != "mimalloc":
        return env
    library = mimalloc_library()
    if library is None:
        # no wheel for this platform: glibc with a low mmap threshold (the trainer sets it)
        return env if choice == "mimalloc" else {**env, MARKER: "lean"}
    out = dict(env)
    preloads = [p for p in env.get("LD_PRELOAD", "").split() if p != str(library)]
    out["LD_PRELOAD"] = " ".join([str(library), *preloads])
    out.setdefault("MIMALLOC_PURGE_DELAY", "-1")
    out[MARKER] = "mimalloc"
    return out


def mimalloc_loaded() -> bool:
    """Whether this process runs with mimalloc mapped (Linux /proc)."""
    try:
        return "libmimalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def hidden_size(name_or_path: str, revision: str | None = None) -> int | None:
    """The model's hidden size from its config.json (tiny, a folder, the HF cache), or None."""
    from engine.footprint import Architecture, read_model_config

    try:
        cfg, _ = read_model_config(name_or_path, revision)
        return int(Architecture.from_config(cfg).hidden_size)
    except Exception:  # noqa: BLE001 - unknown layout or not cached: decide without it
        return None
