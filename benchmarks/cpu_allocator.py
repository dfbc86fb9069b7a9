"""CPU training under four memory allocators: step time, page faults and peak RSS.

    python benchmarks/cpu_allocator.py [--model small|tiny] [--cutoff 256] [--rows 96]
        [--repeats 1]

Each allocator runs the same LoRA training loop (r8 all-linear, packed batches of 8 from
LLaMA-Factory's alpaca_en_demo, logits at trained positions, the trainer's fused LoRA,
layers and loss, 2 threads) in its own process, interleaved:

- ``glibc``: the system malloc as it is;
- ``glibc-heap``: glibc keeping freed memory (32 MB mmap and 64 MB trim thresholds: what
  the launcher gives CPU runs of models narrower than 256, ``engine.perf.allocator.HEAP``);
- ``glibc-lean``: glibc with a 256 KB mmap threshold and torch's 2 MB pages (what
  ``FINETUI_CPU_MALLOC=lean`` does in the trainer);
- ``mimalloc``: the launcher's choice for CPU runs (``engine.perf.allocator.trainer_env``:
  ``LD_PRELOAD`` of the cmeel-mimalloc library, ``MIMALLOC_PURGE_DELAY=-1``).

Prints the median ms per step (first step left out), minor page faults per step in the
loop, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
ALLOCATORS = ("glibc", "glibc-heap", "glibc-lean", "mimalloc")


def child(args) -> dict:
    if args.allocator == "glibc-lean":
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    import torch

    import bench_models
    from finetui.engine import modeling
    from finetui.engine.perf import fused_layers, fused_lora, fused_loss
    from finetui.engine.perf.allocator import mimalloc_loaded
    from finetui.engine.perf.attention import use_packed_sdpa
    from finetui.engine.data import dataset

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_dir = bench_models.ensure(args.model, None)
    config = bench_models.alpaca_config(model_dir, args.cutoff, args.rows)
    tokenizer = modeling.load_tokenizer(str(model_dir))
    built = dataset.build(config, tokenizer)
    rows = [built.train[i] for i in range(len(built.train))]
    collate = dataset.TrainedLogitsOnly(dataset.collator(config, tokenizer))
    batches = [collate(rows[i:i + 8]) for i in range(0, len(rows) - 7, 8)]
    model = modeling.load_model(config.model, config.method, tokenizer=tokenizer, device="cpu")
    use_packed_sdpa(model)
    fused_lora.apply(model)
    fused_layers.apply(model)
    fused_loss.apply(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for b in batches:
        t = time.perf_counter()
        loss = model(**b, num_items_in_batch=b["shift_labels"].ne(-100).sum()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"allocator": args.allocator, "mimalloc_loaded": mimalloc_loaded(),
            "ms_per_step": 1000 * statistics.median(times[1:] or times),
            "faults_per_step": (ru.ru_minflt - faults0) / len(batches),
            "peak_rss_mb": ru.ru_maxrss / 1024, "steps": len(batches)}


def env_for(allocator: str) -> dict[str, str]:
    from finetui.engine.perf.allocator import HEAP, trainer_env

    env = dict(os.environ)
    for key in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY", "FINETUI_CPU_MALLOC", "THP_MEM_ALLOC_ENABLE", *HEAP):
        env.pop(key, None)
    if allocator == "glibc-heap":
        env.update(HEAP)
    if allocator == "glibc-lean":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    if allocator == "mimalloc":
        env = trainer_env("cpu", env)
        if "LD_PRELOAD" not in env:
            raise SystemExit("cmeel-mimalloc is not installed (pip install -e .)")
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small", choices=("tiny", "small"))
    p.add_argument("--cutoff", type=int, default=256)
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.allocator:
        print("RESULT " + json.dumps(child(args)))
        return 0
    runs: dict[str, list[dict]] = {a: [] for a in ALLOCATORS}
    for _ in range(args.repeats):
        for allocator in ALLOCATORS:
            cmd = [sys.executable, __file__, "--allocator", allocator, "--model", args.model,
                   "--cutoff", str(args.cutoff), "--rows", str(args.rows)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env_for(allocator), cwd=ROOT)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{allocator} failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[7:])
            if (allocator == "mimalloc") != r["mimalloc_loaded"]:
                raise SystemExit(f"{allocator}: mimalloc loaded = {r['mimalloc_loaded']}")
            runs[allocator].append(r)
            print(f"  {allocator}: {r['ms_per_step']:.0f} ms/step", file=sys.stderr)
    print(f"{args.model} model, cutoff {args.cutoff}, {runs['glibc'][0]['steps']} packed steps of 8, "
          f"{args.repeats} interleaved repeat(s), medians")
    print("| allocator | ms/step | page faults/step | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for allocator, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("ms_per_step", "faults_per_step", "peak_rss_mb")}
        print(f"| {allocator} | {med['ms_per_step']:,.0f} | {med['faults_per_step']:,.0f} | {med['peak_rss_mb']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
