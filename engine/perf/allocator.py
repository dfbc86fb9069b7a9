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

Models narrower than ``MIN_HIDDEN`` (the tiny demo model) keep glibc, which starts at once
(under mimalloc the trainer's imports take ~0.4 s longer, a sixth of such a model's
start-up), told to keep what is freed: ``MALLOC_MMAP_THRESHOLD_`` 32 MB and
``MALLOC_TRIM_THRESHOLD_`` 64 MB (``HEAP``). As it is, glibc gives freed memory back (its
mmap threshold adapts, and the top of the heap is trimmed) and faults it in again at the
next step: on the tiny model, LoRA, packed batches of 8 at cutoff 256, 2,000-3,000 page
faults a step, none with ``HEAP``, and a step ~1.1x faster for ~10 MB more peak RSS
(``python benchmarks/cpu_allocator.py --model tiny``). Both settings are needed: setting
either one fixes the other at glibc's default, and that faults more than glibc as it is.

``FINETUI_CPU_MALLOC`` (internal, for the benchmarks' A/B: ``train.kernels`` is the user's
switch; ``reference`` keeps glibc as it is): ``auto`` (default) as above; ``mimalloc`` preloads it for any
model on any device; ``heap`` glibc keeping what is freed (``HEAP``) for any model;
``system`` glibc as it is; ``lean`` glibc with a 256 KB mmap threshold (the least memory,
the most page faults; also what a CPU run of a large model gets when mimalloc is not
installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "FINETUI_CPU_MALLOC"
LIBRARY = "cmeel.prefix/lib/libmimalloc.so"
MIN_HIDDEN = 256  # hidden size from which a CPU run gets mimalloc
# glibc keeping freed memory for reuse (narrower models on the CPU; see the docstring)
HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


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
    from finetui.engine.hardware import NvmlBackend

    return NvmlBackend(env).problem is not None


def trainer_env(device: str, env: dict[str, str], hidden_size: int | None = None,
                kernels: str = "auto") -> dict[str, str]:
    """``env`` for a trainer process. A CPU run gets mimalloc preloaded for a model at least
    ``MIN_HIDDEN`` wide (or of unknown width), glibc keeping freed memory (``HEAP``) for a
    narrower one; ``FINETUI_CPU_MALLOC`` (internal: the benchmarks' A/B) can ask for either
    anywhere (see the module docstring). Sets ``FINETUI_CPU_MALLOC`` to what it chose
    (``mimalloc``, ``heap``, or ``lean`` when a wide CPU run finds no mimalloc library): the
    trainer reads only that. ``kernels`` = ``reference`` (train.kernels): ``env`` as it is,
    glibc as the process starts."""
    if kernels == "reference":
        return {k: v for k, v in env.items() if k != MARKER}
    choice = env.get(MARKER, "auto")
    if choice == "auto":
        if not trains_on_cpu(device, env):
            return env
        if hidden_size is not None and hidden_size < MIN_HIDDEN:
            return _heap_env(env)
    elif choice == "heap":
        return _heap_env(env)
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


def _heap_env(env: dict[str, str]) -> dict[str, str]:
    """glibc keeping freed memory: ``HEAP``'s settings where the user has not set them."""
    return {**HEAP, **env, MARKER: "heap"}


def mimalloc_loaded() -> bool:
    """Whether this process runs with mimalloc mapped (Linux /proc)."""
    try:
        return "libmimalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def hidden_size(name_or_path: str, revision: str | None = None) -> int | None:
    """The model's hidden size from its config.json (tiny, a folder, the HF cache), or None."""
    from finetui.engine.footprint import Architecture, read_model_config

    try:
        cfg, _ = read_model_config(name_or_path, revision)
        return int(Architecture.from_config(cfg).hidden_size)
    except Exception:  # noqa: BLE001 - unknown layout or not cached: decide without it
        return None
