"""The trainer process: ``python -m finetui.engine.train --run-dir runs/<id> [--resume]``.

Read top to bottom:

1. :func:`main` takes over the process: SIGHUP ignored (a dropped SSH session must not end
   a run), SIGTERM turned into a stop request, stdout kept for events only. Every failure
   ends in one ``error`` event and a ``finished`` event with status ``failed``.
2. :func:`train` loads the run's ``config.yaml``, the tokenizer and data
   (``engine.data.dataset.build``) and the model (``engine.modeling``), and hands them to the
   Hugging Face ``Trainer`` (``engine.lean_trainer.LeanTrainer``: the same, minus its walks over
   every module). What we add are callbacks (engine/callbacks.py): events from the
   Trainer's logs, evaluations and saves, and "checkpoint, then stop" on SIGTERM. LoRA
   linears that share an input run fused (engine/perf/fused_lora.py), and so do the rotary
   embedding and RMSNorm of Llama-family models (engine/perf/fused_layers.py) and their LM head
   with the loss (engine/perf/fused_loss.py).
3. At the end the adapter (LoRA/QLoRA) or the full model is saved to ``runs/<id>/adapter/``
   with its tokenizer and ``finetui.json``, and a ``finished`` event says how it went.

Why the plain ``Trainer`` and not TRL's ``SFTTrainer``: our data path already renders,
masks and packs (``engine.data``) exactly as the dataset browser shows it; SFTTrainer would
re-tokenise and re-mask by its own rules, and TRL would be one more pinned dependency for
nothing we need.

Only rank 0 speaks on the pipe and in events.jsonl: under ``torchrun`` each other rank
writes its own ``events.rank<R>.jsonl`` (their stdout goes to stderr, i.e. the run's
stdout.log). ``distributed.strategy`` (ddp, fsdp, deepspeed) becomes the Trainer's own
arguments (engine/distributed.py).

This module imports only the standard library and light engine modules at the top, so
the first event goes out before the seconds that torch and transformers take to import.

Exit status: 0 when completed or stopped, 1 when failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from finetui.engine import errors, run_summary
from finetui.engine.perf import import_cache
from finetui.engine import events as ev

CUDA_ONLY_OPTIMIZERS = ("paged_adamw_32bit", "adamw_8bit", "galore_adamw_8bit")


# --------------------------------------------------------------------------- process


class StopRequest:
    """Set by SIGTERM; engine.callbacks.StopOnSignal reads it at the end of each step."""

    def __init__(self) -> None:
        self.requested = False

    def handler(self, signum, frame) -> None:  # a signal handler must be quick: a flag
        self.requested = True


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _event_writer(run_dir: Path, rank: int) -> ev.EventWriter:
    """Rank 0: events go to the original stdout (the pipe) and to events.jsonl. Then fd 1
    points at stderr on every rank, so a stray print from a library lands in stdout.log
    instead of splicing itself into a JSON line."""
    from finetui.engine import ranks

    me = ranks.identity()  # under torchrun every event says which rank, node and host wrote it
    if rank != 0:  # its own stream, events.rank<R>.jsonl: the pipe and events.jsonl are rank 0's
        os.dup2(2, 1)
        return ev.EventWriter(run_dir.name, run_dir / f"events.rank{rank}.jsonl", stream=None, identity=me)
    events_fd = os.dup(1)
    os.dup2(2, 1)
    stream = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)
    writer = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=stream, identity=me)
    writer.after_emit = run_summary.Keeper(run_dir)  # summary.json: `finetui runs list` reads no history
    return writer


def _own_run(run_dir: Path) -> str | None:
    """One trainer per run: the run's lock, held until this process ends. Started by
    engine.runs.launch, we inherited it already held; started by hand, we take it here.
    Returns the refusal when another trainer holds it. Under torchrun only the global rank
    0 holds it (the other ranks, on this node or another, belong to the same run)."""
    from finetui.engine import runs

    if os.environ.get(runs.LOCK_FD_ENV) or _rank() != 0:
        return None
    try:
        runs.take_lock(run_dir)  # the descriptor stays open (and locked) for our whole life
    except runs.RunBusy as exc:
        return str(exc)
    except OSError:
        return None  # no folder: config loading reports it
    return None


def _refuse(run_dir: Path, message: str) -> int:
    print(f"finetui trainer: {message}", file=sys.stderr)
    writer = ev.EventWriter(run_dir.name, None, stream=sys.stdout)
    writer.emit("error", kind="config", message=message, hint="one trainer per run: wait for it or stop it")
    writer.emit("finished", status="failed", metrics={}, outputs={})
    return 1


def _kernels(run_dir: Path) -> str:
    """The run's train.kernels (auto when its config cannot be read: train() reports that)."""
    from finetui.engine import config as config_mod

    try:
        return config_mod.load(run_dir / "config.yaml").train.kernels
    except Exception:  # noqa: BLE001 - reported by train()
        return "auto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetui.engine.train", description="finetui trainer process")
    parser.add_argument("--run-dir", required=True, help="runs/<id> (holds config.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP",
                        help="with --resume: continue from checkpoint-STEP")
    args = parser.parse_args(argv)
    # No cyclic garbage collection while torch, transformers and peft import: their
    # ~430k objects would be scanned over and over (~0.9 s of a ~3.5 s start-up on 2 cores).
    # train() freezes what the imports built and turns collection back on.
    gc.disable()
    if _kernels(Path(args.run_dir)) != "reference":
        import_cache.install()  # transformers' import table from the cache (~0.4 s)

    # The launcher starts us in our own session already; ignoring SIGHUP also covers a
    # trainer started by hand in a terminal that then goes away.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.handler)
    # Over a file-size limit (ulimit -f) a write fails with EFBIG, reported as "out of disk
    # space", instead of the signal killing us without a word.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    run_dir = Path(args.run_dir).resolve()
    rank = _rank()
    if rank == 0:
        lock = _own_run(run_dir)
        if lock is not None:  # another trainer has the run: say so on the pipe, not in its events
            return _refuse(run_dir, lock)
    events = _event_writer(run_dir, rank)
    beat = _heartbeat(run_dir, events)  # every rank: a rank silent for train.hang_after_s is named
    from finetui.engine import ranks

    sampler = ranks.start_sampler(events)  # each node's local rank 0 under torchrun: its GPUs and host
    try:
        status = train(run_dir, events, resume=args.resume or args.checkpoint is not None, stop=stop,
                       checkpoint_step=args.checkpoint, heartbeat=beat)
        return 0 if status in ("completed", "stopped") else 1
    except BaseException as exc:  # noqa: BLE001 - every failure must end in events
        kind, message, hint = errors.classify(exc)
        if kind == "internal" or os.environ.get("FINETUI_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        else:
            print(f"finetui trainer (rank {rank}): {kind}: {message}", file=sys.stderr)
        events.emit("error", kind=kind, message=message, hint=hint)
        events.emit("finished", status="failed", metrics={}, outputs={"checkpoints": "checkpoints"})
        return 1
    finally:
        gc.enable()
        if beat is not None:
            beat.stop()
        if sampler is not None:
            sampler.stop()
        events.close()


def _heartbeat(run_dir: Path, events: ev.EventWriter):
    """Rank 0's heartbeat (engine.heartbeat), beating from now on through the loading phase:
    every fifth of the run's train.hang_after_s without an event (config.yaml is read
    plainly here; train() validates it)."""
    from finetui.engine import heartbeat

    try:
        import yaml

        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - train() reports a bad config
        raw = None
    beat = heartbeat.Heartbeat(events, heartbeat.beat_every(heartbeat.hang_after(raw)))
    beat.enter("loading")  # imports, tokenizer, data, model, the checkpoint to resume from
    return beat.start()


# --------------------------------------------------------------------------- checks


def _precision(requested: str, device: str) -> tuple[bool, bool]:
    """train.precision -> (bf16, fp16) for TrainingArguments."""
    from finetui.engine.modeling import bf16_supported

    on_gpu = device.startswith("cuda")
    if requested == "auto":
        if not on_gpu:
            return False, False
        return (True, False) if bf16_supported(device) else (False, True)
    if requested == "fp16" and not on_gpu:
        raise errors.SetupError("train.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32 on the CPU")
    if requested == "bf16" and on_gpu and not bf16_supported(device):
        raise errors.SetupError("train.precision: this GPU has no bf16; use auto or fp16")
    return requested == "bf16", requested == "fp16"


def check_setup(config, device: str) -> None:
    """Settings that validate on paper but cannot run on this machine."""
    t = config.train
    if t.optimizer in CUDA_ONLY_OPTIMIZERS and not device.startswith("cuda"):
        raise errors.SetupError(
            f"train.optimizer: {t.optimizer} needs a CUDA GPU (bitsandbytes' paged and 8-bit optimizers); "
            "use adamw_torch on the CPU"
        )
    if config.method.init_lora_weights == "loftq" and not device.startswith("cuda"):
        raise errors.SetupError(
            "method.init_lora_weights: loftq needs a CUDA GPU (peft computes the LoftQ initialisation there); "
            "use default, gaussian or another init on the CPU"
        )
    from finetui.engine import startcheck

    missing = startcheck.package_problems(config)  # a run started by hand or by the TUI
    if missing:
        raise errors.SetupError(missing[0])
    from finetui.engine import distributed

    sharding = distributed.setup_problems(config, device, _world_size())
    if sharding:
        raise errors.SetupError(sharding[0])
    if config.method.type == "full" and config.model.dtype == "float16" and t.precision in ("auto", "fp16"):
        raise errors.SetupError(
            "model.dtype: float16 weights cannot be fully fine-tuned with fp16 mixed precision (the optimizer "
            "needs fp32 master weights); set model.dtype: auto or float32, or train.precision: bf16"
        )


# --------------------------------------------------------------------------- training


def _keep_template(tokenizer, template) -> None:
    """Save the chat template we trained with inside the tokenizer (it is saved beside
    every checkpoint, the adapter and the merged model), so any tool renders prompts as
    training did. finetui's templates take render variables (the BOS to write); they are
    fixed here with Jinja ``set`` lines."""
    import json

    from finetui.engine.data import render

    if template.origin == "tokenizer":
        return  # it is already the tokenizer's own
    kwargs_of = getattr(render, "template_kwargs", None) or render._template_kwargs
    preamble = "".join(f"{{%- set {k} = {json.dumps(v)} %}}" for k, v in kwargs_of(tokenizer, template).items())
    tokenizer.chat_template = preamble + template.source


def _cpu_threads(watch) -> list:
    """Training on the CPU: every core while the box is otherwise idle, one fewer while
    anything else wants the CPU (engine/perf/threads.py: measured on 2 cores, one busy
    neighbour makes 2 spinning OpenMP threads 2x slower than 1, while on an idle box 2
    threads are 1.5-1.8x faster). Re-decided between steps by a callback, returned here.
    OMP_NUM_THREADS (torchrun sets it to 1 per process) wins: ``watch`` is None then."""
    if watch is None:
        return []
    from finetui.engine.perf import threads

    watch.start()
    return [threads.callback(watch)]


def _lean_cpu_memory() -> bool:
    """Whether CPU training should hand big blocks back to the system (see _lean_malloc):
    ``FINETUI_CPU_MALLOC=lean``, set by the user or by the launcher for a CPU run of a wide
    model where mimalloc cannot be preloaded (engine/perf/allocator.py decides; nothing is read
    twice). Decided before torch is imported (THP_MEM_ALLOC_ENABLE is read once, at its
    first allocation)."""
    from finetui.engine.perf import allocator

    if os.environ.get(allocator.MARKER) != "lean":
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # torch: 2 MB pages for big CPU tensors
    return True


def _allocator_name(lean: bool) -> str:
    from finetui.engine.perf.allocator import MARKER, mimalloc_loaded

    if mimalloc_loaded():
        return "mimalloc (preloaded)"
    if lean:
        return "glibc, 256 KB mmap threshold"
    if os.environ.get(MARKER) == "heap":
        return (f"glibc keeping freed memory (mmap threshold {os.environ.get('MALLOC_MMAP_THRESHOLD_')}, "
                f"trim threshold {os.environ.get('MALLOC_TRIM_THRESHOLD_')} bytes)")
    return "glibc"


def _lean_malloc() -> None:
    """glibc without mimalloc (engine/perf/allocator.py), large model on the CPU: a fixed 256 KB
    mmap threshold serves big blocks from mmap, so they go back to the system when freed
    and RSS stays near what is live (a 20M Llama at cutoff 1024: 1.8 GB instead of 3.3 GB).
    The price is a page fault per page at every step: ~1.4-1.8x the step time on that
    model (benchmarks/cpu_allocator.py), so it is the fallback, not the default."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD (glibc only)
    except (OSError, AttributeError):
        pass


def _devices(device: str, world_size: int) -> list[str]:
    import torch

    if device.startswith("cuda"):
        n = min(world_size, torch.cuda.device_count())
        return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(max(n, 1))]
    return ["cpu"] if world_size == 1 else [f"cpu (rank {r})" for r in range(world_size)]


def best_checkpoint_aligned(t, has_eval: bool) -> bool:
    """Whether every evaluation that can be the best has a checkpoint saved at its step, so
    the Trainer can keep it and load it at the end (its load_best_model_at_end rule)."""
    if not has_eval or t.eval_strategy == "no" or t.save_strategy == "no":
        return False
    if t.eval_strategy != t.save_strategy:
        return False
    return t.eval_strategy == "epoch" or t.save_steps % t.eval_steps == 0


def training_arguments(config, run_dir: Path, device: str, has_eval: bool, world_size: int):
    """finetui.engine.config.TrainConfig -> transformers.TrainingArguments."""
    from transformers import TrainingArguments

    from finetui.engine import config as config_mod

    t = config.train
    track_best = has_eval and t.eval_strategy != "no" and (t.keep_best or t.early_stopping_patience > 0)
    bf16, fp16 = _precision(t.precision, device)
    scheduler = t.lr_scheduler
    if scheduler == "constant" and (t.warmup_steps or t.warmup_ratio):
        scheduler = "constant_with_warmup"
    # warmup_steps > 0 wins; else the ratio (TrainingArguments reads a float < 1 as one).
    warmup: int | float = t.warmup_steps if t.warmup_steps > 0 else min(t.warmup_ratio, 0.999)
    galore = t.optimizer in config_mod.GALORE_OPTIMIZERS
    from finetui.engine import distributed

    sharding = distributed.trainer_arguments(config, world_size, distributed.world()[2])
    return TrainingArguments(
        **sharding,  # distributed.strategy: fsdp / deepspeed (nothing for ddp or one process)
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup,
        # torch's AdamW as one fused kernel over every tensor: the same update; on the CPU
        # 0.22 instead of 1.0 ms a step for the tiny model's 56 LoRA tensors (the default
        # there is a loop over tensors)
        optim="adamw_torch_fused" if t.optimizer == "adamw_torch" else t.optimizer,
        # GaLore (transformers' optimizers over galore-torch): the linears whose gradients
        # are projected, and the projection's rank
        optim_target_modules=t.optim_target_modules if galore else None,
        optim_args=f"rank={t.galore_rank}" if galore else None,
        neftune_noise_alpha=t.neftune_noise_alpha or None,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        eval_strategy=t.eval_strategy if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # The lowest eval loss is tracked: the Trainer's rotation never deletes its
        # checkpoint, and it is loaded back at the end, so adapter/ holds the best weights.
        metric_for_best_model="eval_loss" if track_best else None,
        greater_is_better=False if track_best else None,
        load_best_model_at_end=bool(t.keep_best and best_checkpoint_aligned(t, has_eval)),
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # The Trainer's NaN filter tests the loss tensor on every step: a host sync.
        logging_nan_inf_filter=False,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=device.startswith("cuda"),
        torch_compile=t.torch_compile,
        # Our collator picks the model's columns itself; keeping the rest lets
        # group_by_length read the precomputed "length" column.
        remove_unused_columns=False,
        prediction_loss_only=True,
        use_cpu=not device.startswith("cuda"),
        ddp_backend="gloo" if world_size > 1 and not device.startswith("cuda") else None,
        ddp_find_unused_parameters=False,
        # a rank that hangs (or dies unseen) ends the others' collectives after this long
        ddp_timeout=config.distributed.timeout_s,
        # train.report_to: the Trainer's own tracker callbacks (TensorBoard, W&B, MLflow,
        # Trackio); finetui's events go out either way and drive the dashboard
        report_to=list(t.report_to) or "none",
        disable_tqdm=True,
    )


def _skip_bitsandbytes(config) -> None:
    """transformers and peft import bitsandbytes whenever it is installed (~1 s of start-up
    and ~45 MB, as it pulls in torch's inductor), though only quantised models and the
    8-bit/paged optimizers use it. For any other run, a None entry in sys.modules makes
    their availability checks (importlib.util.find_spec) answer "not installed". Must run
    before transformers is imported."""
    from finetui.engine.config import GALORE_OPTIMIZERS

    if config.model.quantization == "none" and config.train.optimizer not in (*CUDA_ONLY_OPTIMIZERS,
                                                                               *GALORE_OPTIMIZERS):
        sys.modules.setdefault("bitsandbytes", None)


def _skip_datasets(config) -> None:
    """The Trainer imports ``datasets`` whenever it is installed (~0.3 s of start-up with
    the pandas it pulls in), though only a Hugging Face hub dataset needs it here: the
    tokenised tables are pyarrow (engine.data.table). For local data, the same None entry
    in sys.modules as for bitsandbytes. Must run before transformers is imported."""
    from finetui.engine.data import readers

    try:
        on_hub = readers.resolve_source(config.data.path).kind == "hub"  # the same for every split
    except (OSError, ValueError):
        return  # the data step reports it, with datasets available as usual
    if not on_hub:
        sys.modules.setdefault("datasets", None)


def _imports_done() -> None:
    """After the heavy imports (main() turned collection off): move everything they built
    to the permanent generation, so no later collection scans it (accelerate's gc.collect()
    at the start of training took ~0.3 s over it), and collect normally again. The ~10k
    unreachable objects the imports left (~7 MB) are frozen with the rest: cheaper than a
    full collection now."""
    gc.freeze()
    gc.enable()


def _quiet_libraries(events: ev.EventWriter) -> None:
    """Progress bars off (they would fill stdout.log); a few warnings become log events."""
    import logging

    import transformers

    from finetui.engine.callbacks import WarningsToEvents

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    kept_out = "datasets" in sys.modules and sys.modules["datasets"] is None  # by _skip_datasets
    if not kept_out:
        import datasets

        datasets.disable_progress_bars()
    forward = WarningsToEvents(events)
    for name in ("transformers", "peft"):
        logging.getLogger(name).addHandler(forward)


def _resume_point(run_dir: Path, events: ev.EventWriter, step: int | None, rank: int) -> Path | None:
    """The checkpoint to continue from: checkpoint-``step`` when asked (it must be
    complete), else the newest complete one; each newer checkpoint skipped is said with
    its reason and set aside (renamed skipped-checkpoint-N), so the Trainer neither
    rotates a good one away in its favour nor writes into it again."""
    from finetui.engine import runs

    if step is not None:
        path = run_dir / "checkpoints" / f"checkpoint-{step}"
        if not path.is_dir():
            raise errors.SetupError(f"--checkpoint {step}: run {run_dir.name} has no checkpoint-{step}",
                                    "see the checkpoints/ folder of the run")
        problem = runs.checkpoint_problem(path, marker_required=any(
            (p / runs.COMPLETE_FILE).exists() for p in runs.checkpoints(run_dir)))
        if problem:
            raise errors.SetupError(f"--checkpoint {step}: checkpoint-{step} is not complete: {problem}",
                                    "resume without --checkpoint to take the newest complete checkpoint")
        chosen = path
        skipped = [(p, "newer than the checkpoint asked for") for p in reversed(runs.checkpoints(run_dir))
                   if int(p.name.split("-")[-1]) > step]
    else:
        chosen, skipped = runs.resumable_checkpoint(run_dir)
    for path, reason in skipped:
        aside = _set_aside(path) if rank == 0 else path
        events.emit("log", level="warning",
                    message=f"skipped {path.name}: {reason}" + (f" (kept as {aside.name})" if aside != path else ""))
    return chosen


def best_in_this_folder(run_dir: Path, checkpoint: Path) -> None:
    """Before a resume: the best checkpoint that ``checkpoint``'s trainer_state.json names
    (relative to the run folder, or an absolute path from before, maybe the folder this run
    was copied from) as an absolute path in this run folder, which is what the Trainer reads
    (it checks the folder exists, from the current directory). The checkpoint's completion
    marker is written again for the changed file."""
    import json

    from finetui.engine import atomic, run_paths, runs

    state_file = checkpoint / runs.TRAINER_STATE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
    if not isinstance(best, str) or not best:
        return
    here = str(run_paths.resolve(run_dir, best))
    if here != best:
        state["best_model_checkpoint"] = here
        atomic.write_text(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")
        if (checkpoint / runs.COMPLETE_FILE).exists():
            runs.mark_complete(checkpoint)


def _check_world_change(checkpoint: Path, config, world_size: int, events: ev.EventWriter) -> None:
    """A checkpoint saved by another number of processes (or another strategy) resumes here
    when it can (engine/checkpoint_kind.py, engine/lean_trainer.py), and says so; a DeepSpeed
    checkpoint on another world size is refused, naming it and the way across."""
    from finetui.engine import checkpoint_kind

    refusal = checkpoint_kind.refusal(checkpoint, config.distributed.strategy, world_size)
    if refusal:
        raise errors.SetupError(refusal, "see README, More than one GPU / node: resuming on another number of "
                                "processes")
    was = checkpoint_kind.saved_world_size(checkpoint)
    if was is not None and was != world_size:
        t = config.train
        events.emit("log", level="info",
                    message=f"resuming {checkpoint_kind.describe(checkpoint)} on {world_size} process"
                    f"{'es' if world_size != 1 else ''} ({_setup_name(config.distributed.strategy, world_size)}):"
                    f" step count, optimizer state and learning-rate schedule go on; the global batch is now "
                    f"{t.batch_size * t.gradient_accumulation_steps * world_size} sequences "
                    "(train.batch_size x gradient_accumulation_steps x processes)")


def _setup_name(strategy: str, world_size: int) -> str:
    return "one process" if world_size <= 1 else {"ddp": "DDP", "fsdp": "FSDP", "deepspeed": "DeepSpeed"}[strategy]


def _set_aside(path: Path) -> Path:
    target, n = path.with_name(f"skipped-{path.name}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"skipped-{path.name}-{n}")
    try:
        path.rename(target)
    except OSError:
        return path
    return target


def _variant(config) -> dict | None:
    """The PEFT family's settings a run trained with (finetui.json beside the adapter), or None."""
    m = config.method
    if m.type == "full":
        return None
    return {"use_dora": m.use_dora, "use_rslora": m.use_rslora, "init_lora_weights": m.init_lora_weights,
            "loraplus_lr_ratio": m.loraplus_lr_ratio}


def _loraplus_optimizer(model, config):
    """LoRA+ (method.loraplus_lr_ratio): peft's optimizer, lora_B's learning rate that many
    times lora_A's; None lets the Trainer build train.optimizer as usual."""
    ratio = config.method.loraplus_lr_ratio
    if not ratio or config.method.type == "full":
        return None
    from peft.optimizers import create_loraplus_optimizer

    t = config.train
    if t.optimizer == "adamw_torch":
        import torch

        optimizer_cls, extra = torch.optim.AdamW, {"fused": True}
    else:  # the bitsandbytes optimizers (CUDA; check_setup refused them on the CPU)
        import bitsandbytes as bnb

        optimizer_cls = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "adamw_8bit": bnb.optim.AdamW8bit}[t.optimizer]
        extra = {}
    return create_loraplus_optimizer(model, optimizer_cls, lr=t.learning_rate, loraplus_lr_ratio=ratio,
                                     weight_decay=t.weight_decay, **extra)


def _keep_initial_adapter(model, config, run_dir: Path, rank: int) -> Path | None:
    """PiSSA and OLoRA (method.init_lora_weights) start from the base's own principal
    directions and take them out of the base weights. The adapter as it starts is kept in
    ``adapter-init/`` so the final one can be saved relative to the untouched base."""
    if config.method.init_lora_weights not in ("pissa", "pissa_niter_16", "olora"):
        return None
    folder = run_dir / "adapter-init"
    if rank == 0 and not (folder / "adapter_config.json").exists():  # a resumed run keeps the first one
        peft_config = model.peft_config["default"]
        was = peft_config.init_lora_weights
        peft_config.init_lora_weights = True  # loading it must not run the initialisation again
        try:
            model.save_pretrained(str(folder))
        finally:
            peft_config.init_lora_weights = was
    return folder


def train(run_dir: Path, events: ev.EventWriter, resume: bool = False, stop: StopRequest | None = None,
          checkpoint_step: int | None = None, heartbeat=None) -> str:
    """Train the run in ``run_dir``; return the finished status (completed | stopped).
    ``heartbeat`` (engine.heartbeat.Heartbeat, in its loading phase) is told of progress and
    of quiet phases. Paths in the events are relative to the run folder (engine.run_paths)."""
    from finetui.engine import run_paths
    from finetui.engine import config as config_mod
    from finetui.engine import runs

    stop = stop or StopRequest()
    rank, world_size = _rank(), _world_size()
    config = config_mod.load(run_dir / "config.yaml")
    events.emit("log", level="info", message=f"loading {config.model.name_or_path} and {config.data.path}")

    _skip_bitsandbytes(config)
    _skip_datasets(config)
    lean_memory = _lean_cpu_memory()
    from finetui.engine.perf.threads import CpuThreads

    # Watches what other processes take while we start up: the first thread count.
    # train.kernels: reference keeps torch's own thread count.
    cpu_watch = None if os.environ.get("OMP_NUM_THREADS") or config.train.kernels == "reference" else CpuThreads()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # dataloader workers fork
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "tensorboard" in config.train.report_to:  # the Trainer's TensorBoard files, in the run folder
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    _quiet_libraries(events)
    from transformers import PrinterCallback, set_seed

    from finetui.engine import modeling
    from finetui.engine.callbacks import EventCallback, RankTiming, StopOnSignal, TokenCounter
    from finetui.engine.data import dataset as dataset_mod
    from finetui.engine.lean_trainer import trainer_class

    _imports_done()
    device = modeling.pick_device(config.model.device)
    check_setup(config, device)
    extra_callbacks = []
    if device == "cpu":
        extra_callbacks = _cpu_threads(cpu_watch)
        if lean_memory:
            _lean_malloc()
        events.emit("log", level="info", message=f"CPU memory allocator: {_allocator_name(lean_memory)}")
    set_seed(config.train.seed)  # before the model: LoRA's initial weights are drawn from it

    from finetui.engine import gguf

    # A built-in fetched or a GGUF file converted on first use says so on the event stream
    gguf.prepare(config.model, say=lambda message: events.emit("log", level="info", message=message))
    tokenizer = modeling.load_tokenizer(config.model.name_or_path, config.model.revision,
                                        config.model.trust_remote_code, config.model.gguf_file)
    data = dataset_mod.build(config, tokenizer)  # may add tokens to the tokenizer
    for warning in data.report.warnings:
        events.emit("log", level="warning", message=f"data: {warning}")
    if data.added_tokens:
        events.emit("log", level="info",
                    message=f"added tokens {', '.join(data.added_tokens)} (embeddings resized and trained)")
    _keep_template(tokenizer, data.template)

    model = modeling.load_model(
        config.model, config.method,
        tokenizer=tokenizer,
        added_tokens=data.added_tokens,
        eos_token_ids=data.eos_token_ids,
        gradient_checkpointing=config.train.gradient_checkpointing,
        device=device,
    )
    meta = {"model_cfg": config.model, "method": config.method.type,
            "added_tokens": data.added_tokens, "eos_token_ids": data.eos_token_ids,
            "variant": _variant(config)}

    has_eval = data.test is not None and len(data.test) > 0
    if config.train.eval_strategy != "no" and not has_eval:
        events.emit("log", level="info", message="no test split (data.test_size: 0): evaluation is off")
    _process_group(config, device, world_size)
    args = training_arguments(config, run_dir, device, has_eval, world_size)
    # train.kernels: what runs for speed on this device and precision (engine/perf)
    from finetui.engine import perf
    from finetui.engine.perf.apply import prepare

    plan = perf.plan(config.train.kernels, device, args.bf16 or args.fp16,
                     dtype=str(next(model.parameters()).dtype).replace("torch.", ""), method=config.method.type,
                     lora_dropout=config.method.lora_dropout, quantization=config.model.quantization,
                     use_dora=getattr(config.method, "use_dora", False), packing=config.data.packing,
                     attn_implementation=config.model.attn_implementation)
    events.emit("log", level="info", message=plan.describe())
    prepare(model, plan, say=lambda message: events.emit("log", level="info", message=message))
    args.use_liger_kernel = plan.liger  # transformers applies Liger Kernel to the model in train()
    collate = dataset_mod.collator(config, tokenizer)
    # FINETUI_ALL_LOGITS=1: internal, for the benchmarks' A/B of TrainedLogitsOnly
    if (plan.trained_logits_only and os.environ.get("FINETUI_ALL_LOGITS") != "1"
            and dataset_mod.trained_logits_supported(model)):
        # lm_head and the loss only where a label is trained: same loss, less work and
        # memory (engine/data/dataset.py TrainedLogitsOnly)
        collate = dataset_mod.TrainedLogitsOnly(collate)
    counter = TokenCounter(collate, train_dataset=data.train)
    reporter = EventCallback(events, counter, device, world_size, meta)
    reporter.heartbeat = heartbeat  # progress per micro-batch and evaluation batch; loading ends at train begin
    if has_eval and config.train.keep_best and not args.load_best_model_at_end and config.train.save_strategy != "no":
        events.emit("log", level="warning",
                    message="train.keep_best: checkpoints do not line up with evaluations (save_strategy/save_steps "
                    "vs eval_strategy/eval_steps), so the best evaluation may have no checkpoint and the final "
                    "weights are the last ones; make save_steps a multiple of eval_steps")
    if has_eval and config.train.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        early_stop = EarlyStoppingCallback(config.train.early_stopping_patience,
                                           config.train.early_stopping_threshold)
        extra_callbacks.append(early_stop)
    else:
        early_stop = None
    initial_adapter = _keep_initial_adapter(model, config, run_dir, rank)
    # FSDP and DeepSpeed replace the parameters with their shards: the Trainer's own steps
    sharded = world_size > 1 and config.distributed.strategy != "ddp"
    trainer = trainer_class(plan.lean_trainer and not sharded)(
        model=model,
        args=args,
        data_collator=counter,
        train_dataset=data.train,
        eval_dataset=data.test if has_eval else None,
        processing_class=tokenizer,  # saved beside every checkpoint and the final adapter
        # RankTiming after StopOnSignal: its step window starts after that per-step all-reduce
        callbacks=[reporter, StopOnSignal(stop), *extra_callbacks,
                   *([RankTiming(events, counter, device)] if world_size > 1 else [])],
        optimizers=(_loraplus_optimizer(model, config), None),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    if sharded:  # what the Trainer (accelerate) actually set up, not what was asked
        d = config.distributed
        how = (f"FSDP{trainer.accelerator.state.fsdp_plugin.fsdp_version} {d.fsdp_sharding}, "
               f"{d.fsdp_state_dict} state dict" if trainer.is_fsdp_enabled
               else "DeepSpeed ZeRO " + (d.deepspeed_config or str(d.zero_stage)) if trainer.is_deepspeed_enabled
               else "nothing: the Trainer did not take it up")
        events.emit("log", level="info", message=f"distributed.strategy: {d.strategy} over {world_size} processes "
                    f"({how})")
    trainer.heartbeat = heartbeat  # checkpoint saves and loading the best one are quiet phases

    checkpoint = _resume_point(run_dir, events, checkpoint_step, rank) if resume else None
    if checkpoint is not None:
        _check_world_change(checkpoint, config, world_size, events)
    if checkpoint is not None and rank == 0:
        best_in_this_folder(run_dir, checkpoint)
    if resume and checkpoint is None:
        events.emit("log", level="warning", message="no checkpoint to resume from: starting at step 0")
    events.emit(
        "run_started",
        config=config.to_dict(),
        footprint=modeling.footprint(model),
        datasets={"train": len(data.train), "test": len(data.test) if has_eval else 0},
        devices=_devices(device, world_size),
        data={k: getattr(data.report, k) for k in ("format", "template", "counts", "reasons", "lengths",
                                                   "total_tokens", "trained_tokens", "added_tokens")},
        precision={"dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                   "bf16": args.bf16, "fp16": args.fp16},
        world_size=world_size,
        resumed_from=run_paths.stored(run_dir, checkpoint) if checkpoint else None,
    )

    started = time.time()
    train_loss = train_runtime = None
    if stop.requested:  # SIGTERM while loading: nothing trained, nothing to save
        status = "stopped"
    else:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        status = "stopped" if stop.requested else "completed"
        train_loss = result.training_loss
        train_runtime = result.metrics.get("train_runtime")  # the Trainer's own clock, as peers report it

    if early_stop is not None and early_stop.early_stopping_patience_counter >= early_stop.early_stopping_patience:
        events.emit("log", level="info",
                    message=f"stopped early at step {trainer.state.global_step}: no lower eval loss in "
                    f"{early_stop.early_stopping_patience} evaluations (best {trainer.state.best_metric:.4g} "
                    f"at step {trainer.state.best_global_step})")
    outputs = {"checkpoints": "checkpoints"}  # relative to the run folder: runs can move
    best = trainer.state.best_model_checkpoint
    if best:
        outputs["best_checkpoint"] = run_paths.stored(run_dir, best)
    if trainer.state.global_step > 0:
        adapter_dir = run_dir / "adapter"
        with heartbeat.quiet("saving") if heartbeat is not None else contextlib.nullcontext():
            trainer.save_model(str(adapter_dir))  # adapter or full model, + tokenizer
            if initial_adapter is not None and rank == 0:
                # PiSSA/OLoRA moved the base weights: saved as the difference from the initial
                # adapter (peft's conversion, rank 2r), the adapter applies to the untouched base
                trainer.model.save_pretrained(str(adapter_dir),
                                              path_initial_model_for_weight_conversion=str(initial_adapter))
        if rank == 0:
            modeling.write_meta(adapter_dir, **meta)
        outputs["adapter"] = "adapter"
    events.emit(
        "finished",
        status=status,
        metrics={
            "train_loss": train_loss,
            "eval_loss": reporter.last_eval_loss,
            "runtime_s": round(time.time() - started, 3),
            "train_runtime_s": train_runtime,
            "steps": trainer.state.global_step,
            "epoch": round(float(trainer.state.epoch or 0.0), 4),
            "best_eval_loss": trainer.state.best_metric if args.metric_for_best_model else None,
            "best_step": trainer.state.best_global_step or None,
            # adapter/ holds the best evaluation's weights, not the last step's
            "final_is_best": bool(args.load_best_model_at_end and best),
        },
        outputs=outputs,
    )
    _leave_process_group()
    return status


def _process_group(config, device: str, world_size: int) -> None:
    """Under torchrun on the CPU: the gloo process group, opened here with
    distributed.timeout_s (the Trainer passes its ddp_timeout to accelerate for GPU groups
    only, leaving CPU ones at torch's 30 minutes), so a rank that stops answering ends the
    others' collectives after that long; accelerate takes the group as it finds it."""
    import torch.distributed as dist

    if world_size <= 1 or device.startswith("cuda") or not dist.is_available() or dist.is_initialized():
        return
    from datetime import timedelta

    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=config.distributed.timeout_s))


def _leave_process_group() -> None:
    """Under torchrun: wait until rank 0 has saved, then close the process group. A rank
    that exits with the group still open can abort in C++ at interpreter exit (SIGABRT),
    and torchrun then reports the whole run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
