"""What the trainer adds to the Hugging Face ``Trainer``: callbacks, nothing else.

Heavy module (transformers, torch): imported by engine/train.py once the process is set up.

- :class:`TokenCounter` wraps the data collator and records each batch's real tokens;
- :class:`EventCallback` turns the Trainer's logs, evaluations and saves into events;
- :class:`StopOnSignal` turns a SIGTERM (a flag set by engine/train.py) into "save a
  checkpoint at the end of this step, then stop".
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetui.engine import events as ev

MAX_FORWARDED_WARNINGS = 20


class TokenCounter:
    """Wraps the data collator; counts real (non-pad) tokens and samples per batch.

    Counting here, on the CPU tensors the collator has just built, costs the GPU nothing;
    counting later would take a ``.item()`` host sync on every step.

    Batches are built ahead of their use (accelerate looks one batch ahead, dataloader
    workers prefetch), so each built batch's count waits in a queue and the callback takes
    one off per micro-batch the Trainer reports done. Dataloader workers send their counts
    through a pipe; the DataLoader hands batches out round-robin from worker 0 at the start
    of each epoch, so taking counts in that order matches them to batches exactly. Batches
    built for evaluation are not training: in the main process the callback drops them
    after each evaluation; in worker processes they are told apart by their dataset.
    """

    def __init__(self, collate, train_dataset=None):
        self.collate = collate
        self.train_dataset = train_dataset
        self.built: collections.deque[tuple[int, int]] = collections.deque()
        self.tokens = 0  # consumed by training so far
        self.samples = 0
        self._from_workers = multiprocessing.SimpleQueue()  # made before the workers fork
        self._per_worker: dict[int, collections.deque[tuple[int, int]]] = {}
        self._workers = 1
        self._next_worker = 0

    def __call__(self, features):
        import torch.utils.data

        batch = self.collate(features)
        mask = batch.get("attention_mask")
        # Packed batches have no padding and no mask: every position is a real token.
        entry = (int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()), len(features))
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            self.built.append(entry)
        elif self._is_train(worker.dataset):
            self._from_workers.put((worker.id, worker.num_workers, entry))
        return batch

    def _is_train(self, dataset) -> bool:
        if self.train_dataset is None or dataset is self.train_dataset:
            return True
        # A worker started by spawn holds a copy: compare the datasets' fingerprints.
        mine = getattr(self.train_dataset, "_fingerprint", None)
        return mine is not None and getattr(dataset, "_fingerprint", None) == mine

    def new_epoch(self) -> None:
        """A new dataloader iterator: its first batch comes from worker 0."""
        self._next_worker = 0

    def consume(self, batches: int = 1) -> None:
        """Training used the next ``batches`` built batches."""
        while not self._from_workers.empty():
            worker, self._workers, entry = self._from_workers.get()
            self._per_worker.setdefault(worker, collections.deque()).append(entry)
        for _ in range(batches):
            if self.built:
                tokens, samples = self.built.popleft()
            else:
                queue = self._per_worker.get(self._next_worker)
                if not queue:
                    return
                tokens, samples = queue.popleft()
                self._next_worker = (self._next_worker + 1) % self._workers
            self.tokens += tokens
            self.samples += samples

    def discard_after(self, keep: int) -> None:
        """Forget batches built after the first ``keep`` (evaluation's, in the main process)."""
        while len(self.built) > keep:
            self.built.pop()

    def read(self) -> tuple[int, int]:
        return self.tokens, self.samples


def memory_now(device: str) -> dict[str, int | None]:
    """GPU allocator figures on CUDA; on a CPU the process memory is the device memory.
    Host-side counters only: no device sync."""
    import resource

    import psutil
    import torch

    rss = psutil.Process().memory_info().rss
    if device.startswith("cuda"):
        return {
            "allocated_bytes": torch.cuda.memory_allocated(device),
            "peak_bytes": torch.cuda.max_memory_allocated(device),
            "rss_bytes": rss,
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"allocated_bytes": rss, "peak_bytes": max(peak, rss), "rss_bytes": rss}


class EventCallback(TrainerCallback):
    """The Trainer's logs, evaluations and saves as events (rank 0 writes; the writer of
    other ranks is mute).

    Throughput is measured between two step events; evaluation and checkpoint time reset
    the window, so they never read as slow training.
    """

    def __init__(self, events: ev.EventWriter, counter: TokenCounter, device: str, world_size: int,
                 meta: dict[str, Any]):
        self.events = events
        self.counter = counter
        self.device = device
        self.world_size = world_size
        self.meta = meta  # for finetui.json in each checkpoint (engine.modeling.write_meta)
        self.last_eval_loss: float | None = None
        self.built_at_step_end = 0

    def _reset_window(self) -> None:
        self.window_start = time.time()
        self.window_tokens, self.window_samples = self.counter.read()

    heartbeat = None  # engine.heartbeat.Heartbeat (rank 0): told of each micro-batch and evaluation batch

    def _progress(self, doing: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat.progress(doing)

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_start = time.time()
        self.first_step = state.global_step  # > 0 when resuming
        self._reset_window()
        if self.heartbeat is not None:
            self.heartbeat.leave()  # loading is over: from here on, beats need progress

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.counter.new_epoch()

    def on_substep_end(self, args, state, control, **kwargs):
        self.counter.consume(1)  # a gradient-accumulation micro-batch
        self._progress("training")

    def on_prediction_step(self, args, state, control, **kwargs):
        self._progress("evaluating")

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.consume(1)  # the micro-batch that ended the optimizer step
        self.built_at_step_end = len(self.counter.built)
        self._progress("training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or not state.is_world_process_zero:
            return  # evaluation metrics come through on_evaluate; the closing summary via train()
        now = time.time()
        tokens, samples = self.counter.read()
        window = max(now - self.window_start, 1e-9)
        # Each rank counts its own batches and ranks get equal shares: scale rank 0's.
        tokens_per_s = (tokens - self.window_tokens) * self.world_size / window
        samples_per_s = (samples - self.window_samples) * self.world_size / window
        done = state.global_step - self.first_step
        elapsed = now - self.train_start
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
        self.events.emit(
            "step",
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=round(float(logs.get("epoch", state.epoch or 0.0)), 4),
            loss=logs["loss"],
            learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_s=round(tokens_per_s, 1),
            samples_per_s=round(samples_per_s, 2),
            elapsed_s=round(elapsed, 3),
            eta_s=round(eta, 1) if eta is not None else None,
            memory=memory_now(self.device),
            tokens=tokens * self.world_size,
        )
        self._reset_window()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.counter.discard_after(self.built_at_step_end)  # evaluation's batches are not training
        metrics = metrics or {}
        loss = metrics.get("eval_loss")
        if state.is_world_process_zero and loss is not None:
            self.last_eval_loss = loss
            others = {k: v for k, v in metrics.items() if k != "eval_loss" and isinstance(v, (int, float))}
            self.events.emit("eval", step=state.global_step, eval_loss=loss,
                             perplexity=math.exp(min(loss, 50.0)), metrics=others)
        self._reset_window()

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero:
            from finetui.engine.modeling import write_meta

            from finetui.engine.runs import mark_complete

            # With its finetui.json a checkpoint loads like the final adapter (chat mid-run).
            if path.is_dir():
                write_meta(path, **self.meta)
                _relative_best(path)  # trainer_state.json names the best checkpoint inside the run
                # Written last, once its files check out: only then does resume take it.
                problem = mark_complete(path)
                if problem:
                    self.events.emit("log", level="warning",
                                     message=f"{path.name} is not complete ({problem}): resume will skip it")
            from finetui.engine import run_paths

            # relative to the run folder, as every path in the events: runs can move
            self.events.emit("checkpoint", path=run_paths.stored(Path(args.output_dir).parent, path),
                             step=state.global_step)
        self._reset_window()


def _relative_best(checkpoint: Path) -> None:
    """The Trainer writes the best checkpoint's absolute path into trainer_state.json; make
    it relative to the run folder (engine.train.best_in_this_folder makes it absolute again,
    in the folder the run is in then, before a resume), so a copied run never points at the
    original's weights."""
    import json

    from finetui.engine import atomic, run_paths

    state_file = checkpoint / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the completeness check names it
    best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
    if isinstance(best, str) and Path(best).is_absolute():
        state["best_model_checkpoint"] = run_paths.stored(checkpoint.parent.parent, best)
        atomic.write_text(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


class StopOnSignal(TrainerCallback):
    """A stop request -> save a checkpoint at the end of this step, then stop.

    Under several processes every rank must stop at the same step or the next gradient
    all-reduce would hang, so the ranks agree on the flag (one one-element all-reduce per
    step; single-process runs skip it).
    """

    def __init__(self, stop):
        self.stop = stop  # engine.train.StopRequest

    def _agreed(self, args) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.stop.requested
        flag = torch.tensor([1 if self.stop.requested else 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop.requested = bool(flag.item())
        return self.stop.requested

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            control.should_save = True
            control.should_training_stop = True


class WarningsToEvents(logging.Handler):
    """Forward a few distinct library warnings (transformers, peft) as log events."""

    def __init__(self, events: ev.EventWriter):
        super().__init__(level=logging.WARNING)
        self.events = events
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip().splitlines()[0][:500]
        except Exception:
            return
        if not message or message in self.seen or len(self.seen) >= MAX_FORWARDED_WARNINGS:
            return
        self.seen.add(message)
        self.events.emit("log", level="warning", message=message)


class RankTiming(TrainerCallback):
    """Under torchrun, every rank's own pace into its own stream: a ``rank_step`` event at
    each logged step (engine.ranks), on every rank.

    * ``step_s``: wall seconds per optimizer step over the window (evaluation and saving
      reset it). The ranks wait for each other in the gradient all-reduce, so this is about
      the same on every rank: the pace of the whole run.
    * ``own_s``: seconds per step of this rank's own forward passes (training only), which
      come before it waits for the others: the rank with the most is the one the others
      wait for. On CUDA they are timed with CUDA events (the host runs ahead of the GPU);
      under FSDP the forward passes include the all-gathers of the shards.
    * ``tokens_per_s``: this rank's own real tokens per second (engine.callbacks.TokenCounter):
      the run's throughput is their sum (engine.ranks.RankBoard.global_tokens_per_s).
    """

    def __init__(self, events: ev.EventWriter, counter: TokenCounter, device: str):
        self.events = events
        self.counter = counter
        self.device = device
        self._pairs: list[Any] = []  # (start, end) of each training forward in the window
        self._start: Any = None
        self._hooks: list[Any] = []

    def _reset(self, state) -> None:
        self.window_start = time.time()
        self.window_step = state.global_step
        self.window_tokens, _ = self.counter.read()
        self._pairs = []

    def _now(self) -> Any:
        if self.device.startswith("cuda"):
            import torch

            mark = torch.cuda.Event(enable_timing=True)
            mark.record()
            return mark
        return time.perf_counter()

    def _before(self, module, args) -> None:
        if module.training:
            self._start = self._now()

    def _after(self, module, args, output) -> None:
        if module.training and self._start is not None:
            self._pairs.append((self._start, self._now()))
            self._start = None

    def _forward_s(self) -> float:
        if not self._pairs:
            return 0.0
        if self.device.startswith("cuda"):
            self._pairs[-1][1].synchronize()  # once per logged step
            return sum(a.elapsed_time(b) for a, b in self._pairs) / 1000.0
        return sum(b - a for a, b in self._pairs)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and not self._hooks:
            self._hooks = [model.register_forward_pre_hook(self._before),
                           model.register_forward_hook(self._after)]
        self._reset(state)

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in (logs or {}):
            return
        now = time.time()
        steps = max(state.global_step - self.window_step, 1)
        window = max(now - self.window_start, 1e-9)
        tokens, _ = self.counter.read()
        self.events.emit("rank_step", step=state.global_step, step_s=round(window / steps, 4),
                         own_s=round(self._forward_s() / steps, 4),
                         tokens_per_s=round((tokens - self.window_tokens) / window, 1),
                         tokens=tokens, device=str(args.device), memory=memory_now(self.device))
        self._reset(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._reset(state)

    def on_save(self, args, state, control, **kwargs):
        self._reset(state)
