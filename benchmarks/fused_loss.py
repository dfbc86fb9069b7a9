"""The LM head and cross-entropy: unfused (transformers' way) against engine/perf/fused_loss.py.

    python benchmarks/fused_loss.py [--repeats 3]

Forward and backward of ``cross_entropy(hidden @ W^T, targets)`` over the trained tokens of
a batch, the head frozen (LoRA), for two shapes: the tiny model's (1,490 tokens, hidden 64,
vocabulary 1,024) and Qwen2.5-0.5B's head (2,048 tokens, hidden 896, vocabulary 151,936).
Each (shape, way) runs in its own process, interleaved, so peak RSS is its own, under the
memory allocator a CPU trainer of that width gets (``engine.perf.allocator.trainer_env``); prints
the median ms per step and the peak RSS above what the inputs take, and the losses (equal).
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
SHAPES = {"tiny": (1490, 64, 1024, 50), "qwen2.5-0.5b head": (2048, 896, 151936, 2)}


def child(shape: str, way: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from finetui.engine.perf.fused_loss import linear_cross_entropy

    torch.set_num_threads(2)
    n, d, v, steps = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = torch.randn(v, d, generator=g) * 0.02
    targets = torch.randint(0, v, (n,), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        if way == "unfused":
            loss = torch.nn.functional.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum") / n
        else:
            loss = linear_cross_entropy(hidden, weight, None, targets, n)
        loss.backward()
        times.append(time.perf_counter() - t)
        hidden.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1000 * statistics.median(times[1:]), "peak_mb": (peak - base) / 1024, "loss": loss.item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return 0
    sys.path.insert(0, str(ROOT))
    from finetui.engine.perf.allocator import trainer_env

    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for shape in SHAPES:
            for way in ("unfused", "fused"):
                env = trainer_env("cpu", dict(os.environ), hidden_size=SHAPES[shape][1])
                out = subprocess.run([sys.executable, __file__, "--child", shape, way], capture_output=True, text=True,
                                     env=env)
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{shape} {way} failed:\n{out.stderr[-3000:]}")
                results.setdefault((shape, way), []).append(json.loads(line[7:]))
    print(f"{args.repeats} interleaved repeat(s), medians; forward + backward, head frozen")
    print("| shape | way | ms/step | peak RSS above the inputs, MB | loss |")
    print("|---|---|---:|---:|---:|")
    for (shape, way), rs in results.items():
        ms = statistics.median(r["ms"] for r in rs)
        peak = statistics.median(r["peak_mb"] for r in rs)
        print(f"| {shape} | {way} | {ms:,.1f} | {peak:,.0f} | {rs[-1]['loss']:.6f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
