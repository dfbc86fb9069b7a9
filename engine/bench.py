"""`finetui bench [FLAGS]`: the training benchmark against LLaMA-Factory and a plain
Trainer script (``benchmarks/peer_bench.py``; ``finetui bench --help`` lists its flags).

Light module: it only starts the script, with this interpreter, in a source checkout (the
benchmarks are not part of the wheel).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_bench.py"


def command(args) -> int:
    if not SCRIPT.exists():
        raise RuntimeError(f"{SCRIPT} not found: `finetui bench` runs from a source checkout of finetui")
    rest = list(getattr(args, "rest", None) or [])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return subprocess.call([sys.executable, str(SCRIPT), *rest])
