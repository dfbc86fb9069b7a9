"""What a checkpoint folder holds, and whether a run can resume from it on the processes
it has now (``finetui train --resume RUN --nproc N``, N free to differ from the run's start).

Light module (standard library only): the trainer asks before loading anything.

A checkpoint is one of:

* ``plain``: one process or DDP (``model.safetensors`` or ``adapter_model.safetensors``,
  ``optimizer.pt`` keyed by parameter index);
* ``fsdp-full``: FSDP with ``distributed.fsdp_state_dict: full`` (``pytorch_model_fsdp.bin`` and
  ``optimizer.bin``, full tensors keyed by parameter name; rank 0 also saved the plain weights);
* ``fsdp-sharded``: FSDP with ``fsdp_state_dict: sharded`` (``pytorch_model_fsdp_0/`` and
  ``optimizer_0/``, torch.distributed.checkpoint folders);
* ``deepspeed``: DeepSpeed ZeRO (``global_step<N>/`` with one file per rank).

Every combination of the first three loads on any number of processes
(engine/lean_trainer.py: the Trainer's own loading where the kind matches the setup,
torch.distributed.checkpoint's state-dict API and resharding where it does not). A DeepSpeed
checkpoint loads only under DeepSpeed on the world size that saved it (its universal
checkpoint conversion is the way across): anything else is refused, naming the checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

PLAIN, FSDP_FULL, FSDP_SHARDED, DEEPSPEED = "plain", "fsdp-full", "fsdp-sharded", "deepspeed"
FSDP_KINDS = (FSDP_FULL, FSDP_SHARDED)


def kind(path: str | Path) -> str:
    """Which of the four layouts the checkpoint folder has."""
    path = Path(path)
    if any(p.is_dir() for p in path.glob("global_step*")):
        return DEEPSPEED
    if (path / "pytorch_model_fsdp_0").is_dir():
        return FSDP_SHARDED
    if (path / "pytorch_model_fsdp.bin").is_file():
        return FSDP_FULL
    return PLAIN


def saved_world_size(path: str | Path) -> int | None:
    """How many processes saved it: the Trainer writes one RNG state per process
    (``rng_state.pth`` alone for one process, ``rng_state_<R>.pth`` for several)."""
    path = Path(path)
    ranks = [m for p in path.glob("rng_state_*.pth") if (m := re.fullmatch(r"rng_state_(\d+)\.pth", p.name))]
    if ranks:
        return max(int(m.group(1)) for m in ranks) + 1
    return 1 if (path / "rng_state.pth").is_file() else None


SETUP_NAMES = {PLAIN: "one process or DDP", "fsdp": "FSDP", DEEPSPEED: "DeepSpeed"}


def setup(strategy: str, world_size: int) -> str:
    """How the run trains now: plain (one process or ddp), fsdp or deepspeed."""
    if world_size <= 1 or strategy == "ddp":
        return PLAIN
    return "fsdp" if strategy == "fsdp" else DEEPSPEED


def _processes(n: int | None) -> str:
    return "an unknown number of processes" if n is None else f"{n} process" + ("es" if n != 1 else "")


def describe(path: str | Path) -> str:
    """``checkpoint-8 (FSDP, full state dict, saved by 2 processes)``."""
    path = Path(path)
    what = {PLAIN: "one process or DDP", FSDP_FULL: "FSDP, full state dict", FSDP_SHARDED: "FSDP, sharded state dict",
            DEEPSPEED: "DeepSpeed ZeRO"}[kind(path)]
    return f"{path.name} ({what}, saved by {_processes(saved_world_size(path))})"


def refusal(path: str | Path, strategy: str, world_size: int) -> str | None:
    """Why this checkpoint cannot be resumed by ``world_size`` processes under ``strategy``
    (the message names the checkpoint and what to do), or None when it can."""
    path = Path(path)
    saved, was = kind(path), saved_world_size(path)
    now = setup(strategy, world_size)
    if saved == DEEPSPEED and (now != DEEPSPEED or (was is not None and was != world_size)):
        step = next((p.name for p in sorted(path.glob("global_step*")) if p.is_dir()), "global_stepN")
        return (f"{path} was saved by DeepSpeed ZeRO over {_processes(was)}; it loads only under "
                f"distributed.strategy: deepspeed on {_processes(was)} (--nproc {was or 'N'}), and this resume "
                f"has {_processes(world_size)}" + ("" if now == DEEPSPEED else f" ({SETUP_NAMES[now]})") + ". "
                f"To change the world size, convert it with DeepSpeed's universal checkpoint "
                f"(python -m deepspeed.checkpoint.ds_to_universal --input_folder {path / step} "
                f"--output_folder {path / (step + '_universal')}) and resume under a DeepSpeed JSON with "
                '"checkpoint": {"load_universal": true} (distributed.deepspeed_config), '
                f"or resume with --nproc {was or 'N'}")
    if now == DEEPSPEED and saved != DEEPSPEED:
        return (f"{path} was saved without DeepSpeed ({describe(path)}); DeepSpeed resumes only its own "
                "checkpoints: resume with --set distributed.strategy=fsdp (or ddp), which loads it on any "
                "number of processes")
    return None
