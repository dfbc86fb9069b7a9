"""What each per-step lever of the trainer is worth, measured in one process.

    python benchmarks/step_levers.py [--model tiny|small] [--cutoff 256] [--rows 400]
        [--rounds 6]

On a small shared CPU, whole runs in separate processes drift by 10-20% from one minute
to the next, which hides 3-10% levers. Here one process builds the job once (LoRA r8
all-linear, packed batches of 8 from LLaMA-Factory's alpaca_en_demo, logits at trained
positions, per-example attention) and then runs ``Trainer.train()`` for one epoch per
variant, round after round, so every variant sees the same minutes of the machine:

- ``stock``: transformers' ``Trainer``, peft's LoRA forward, AdamW looping over tensors;
- ``+fused-adamw``: the same with ``optim=adamw_torch_fused`` (what the trainer uses);
- ``+lean-trainer``: and ``engine.lean_trainer.LeanTrainer`` (no per-step module walks);
- ``+fused-lora``: and ``engine.perf.fused_lora`` (q/k/v and gate/up as one computation, the
  LoRA product added into the float32 weight: one matmul forward);
- ``+fused-layers``: and ``engine.perf.fused_layers`` (rotary embedding and RMSNorm as one
  autograd function each);
- ``+one-length-runs``: and consecutive examples of one length through attention as one
  batched call (``engine.perf.attention.BATCH_RUNS``; before it, one call per example);
- ``+fused-mlp``: and each Llama MLP as one function (``engine.perf.fused_lora.FUSE_MLP``);
- ``+fused-loss``: and the LM head with the cross-entropy as one blocked function
  (``engine.perf.fused_loss``): finetui's trainer as it runs.

The process runs under the memory allocator the trainer would get for the model
(``engine.perf.allocator.trainer_env``; it restarts itself with that environment).

Prints the median ms per optimizer step over the rounds, each variant's ratio to the one
before it and to ``stock``, and the final losses (equal to ~1e-4: the same training).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
VARIANTS = ("stock", "+fused-adamw", "+lean-trainer", "+fused-lora", "+fused-layers", "+one-length-runs",
            "+fused-mlp", "+fused-loss")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", choices=("tiny", "small"))
    p.add_argument("--cutoff", type=int, default=256)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)

    import bench_models
    from finetui.engine.perf import allocator

    model_dir = bench_models.ensure(args.model, None)
    # the memory allocator a trainer process of this model gets (engine/perf/allocator.py)
    env = allocator.trainer_env("cpu", dict(os.environ), allocator.hidden_size(str(model_dir)))
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env)

    sys.modules.setdefault("bitsandbytes", None)  # as the trainer does for unquantised runs
    import torch
    import transformers

    from finetui.engine import lean_trainer, modeling
    from finetui.engine.perf import attention, fused_layers, fused_lora, fused_loss
    from finetui.engine.perf.attention import use_packed_sdpa
    from finetui.engine.data import dataset
    from finetui.engine.train import training_arguments

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    config = bench_models.alpaca_config(model_dir, args.cutoff, args.rows)
    config.train.batch_size, config.train.learning_rate, config.train.lr_scheduler = 8, 1e-3, "cosine"
    config.train.warmup_ratio, config.train.eval_strategy, config.train.save_strategy = 0.0, "no", "no"
    config.train.logging_steps = 1
    tokenizer = modeling.load_tokenizer(str(model_dir))
    built = dataset.build(config, tokenizer)
    collate = dataset.TrainedLogitsOnly(dataset.collator(config, tokenizer))
    out_dir = Path(tempfile.mkdtemp(prefix="finetui-levers-"))
    gc.freeze()

    def run(variant: str) -> tuple[float, float]:
        level = VARIANTS.index(variant)
        torch.manual_seed(config.train.seed)
        model = modeling.load_model(config.model, config.method, tokenizer=tokenizer, device="cpu")
        use_packed_sdpa(model)
        attention.BATCH_RUNS = level >= 5
        fused_lora.FUSE_MLP = level >= 6
        if level >= 3:
            fused_lora.apply(model)
        if level >= 4:
            fused_layers.apply(model)
        if level >= 7:
            fused_loss.apply(model)
        train_args = training_arguments(config, out_dir, "cpu", False, 1)
        if level < 1:
            train_args.optim = "adamw_torch"
        trainer_class = lean_trainer.LeanTrainer if level >= 2 else transformers.Trainer
        trainer = trainer_class(model=model, args=train_args, train_dataset=built.train, data_collator=collate)
        trainer.remove_callback(transformers.PrinterCallback)
        try:
            result = trainer.train()
        finally:
            fused_layers.restore()  # the rotary embedding is replaced module-wide
        return result.metrics["train_runtime"] / trainer.state.global_step * 1000, result.training_loss

    run(VARIANTS[-1])  # warm-up: first-touch costs land on no variant
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))  # no variant always first
        for variant in order:
            ms, loss = run(variant)
            times[variant].append(ms)
            losses[variant] = loss
        print(f"round {round_ + 1}: " + "  ".join(f"{v} {times[v][-1]:.1f}" for v in VARIANTS), flush=True)

    print(f"\n{args.model}, cutoff {args.cutoff}, {args.rows} rows, {args.rounds} rounds "
          f"(median ms per step; ratio = speed-up)")
    print("| variant | ms/step | vs previous | vs stock | train loss |")
    print("|---|---:|---:|---:|---:|")
    medians = {v: statistics.median(times[v]) for v in VARIANTS}
    for i, v in enumerate(VARIANTS):
        prev = medians[VARIANTS[i - 1]] / medians[v] if i else 1.0
        print(f"| {v} | {medians[v]:.1f} | {prev:.2f}x | {medians['stock'] / medians[v]:.2f}x | {losses[v]:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
