"""This machine's matmul peak, as the training benchmark measures it: torch float32 GEMMs
of a few sizes, on the CPU (or the first GPU), with torch's default threads, for about
``--seconds`` in all; the best GFLOP/s of any size is the peak.

    python benchmarks/matmul_peak.py [--seconds 5] [--device cpu|cuda]

Prints one JSON object: best_gflops, the size that reached it, GFLOP/s per size, threads,
device, seconds. A GEMM of (m x k) by (k x n) is counted as 2·m·k·n FLOPs. Square sizes
and two shapes of the benchmark models' layers (tokens x hidden by hidden x MLP width) are
tried; each size runs repeatedly for its share of the time and keeps its fastest call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# (m, k, n): square GEMMs and the shapes of a batch of tokens through a 576-wide model's
# MLP (SmolLM2-135M: hidden 576, MLP 1,536) and a 512-wide one (the bench's small model).
SHAPES = ((512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 576, 1536), (2048, 512, 1376))


def probe(seconds: float = 5.0, device: str = "cpu") -> dict:
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    share = seconds / len(SHAPES)
    per_shape: dict[str, float] = {}
    started = time.perf_counter()
    for m, k, n in SHAPES:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
        torch.mm(a, b, out=out)  # warm-up: thread pool, packing buffers
        sync()
        best = float("inf")
        until = time.perf_counter() + share
        while True:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            sync()
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() >= until:
                break
        per_shape[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 2)
    name, best_gflops = max(per_shape.items(), key=lambda kv: kv[1])
    return {"best_gflops": best_gflops, "best_shape": name, "gflops": per_shape,
            "threads": torch.get_num_threads(), "device": device,
            "seconds": round(time.perf_counter() - started, 2), "time": time.time()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="time for all sizes together")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(probe(args.seconds, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
