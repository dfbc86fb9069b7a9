"""What the trainer's imports cost with and without transformers' import table from the
cache (engine/perf/import_cache.py), in fresh interpreters, alternating.

    python benchmarks/import_time.py [--rounds 6]

Each round starts one interpreter per variant (order alternating) that imports what the
trainer needs before its first step (torch, transformers, peft, a causal-LM auto class and
the Trainer) and reports the seconds that took; the first round warms the disk cache and
the import-table cache and is not counted. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
sys.modules["bitsandbytes"] = None  # as the trainer does for unquantised runs
sys.modules["datasets"] = None      # and for local data
from finetui.engine.perf import import_cache
import_cache.install()
t = time.perf_counter()
import torch
t_torch = time.perf_counter()
import transformers, peft
from transformers import AutoModelForCausalLM, Trainer
print(json.dumps({"torch": t_torch - t, "rest": time.perf_counter() - t_torch}))
"""


def once(cached: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["FINETUI_IMPORT_CACHE"] = "1" if cached else "0"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    once(True), once(False)  # warm-up
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for i in range(args.rounds):
        for cached in ((False, True) if i % 2 == 0 else (True, False)):
            runs[cached].append(once(cached))
    rest = {k: statistics.median(r["rest"] for r in v) for k, v in runs.items()}
    torch_s = {k: statistics.median(r["torch"] for r in v) for k, v in runs.items()}
    print(f"{args.rounds} rounds, median seconds (torch | transformers + peft + AutoModelForCausalLM + Trainer)")
    print(f"  transformers' own scan: {torch_s[False]:.3f} | {rest[False]:.3f}")
    print(f"  import table cached:    {torch_s[True]:.3f} | {rest[True]:.3f}")
    print(f"  total {torch_s[False] + rest[False]:.3f} -> {torch_s[True] + rest[True]:.3f} s "
          f"({(torch_s[True] + rest[True]) / (torch_s[False] + rest[False]):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
