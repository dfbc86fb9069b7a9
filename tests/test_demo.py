"""`finetui demo --model tiny` as a user runs it: train, merge, both evaluations, the
side-by-side answers. (The default, smollm2, takes minutes; its pieces are covered by
tests/test_real_model.py and it is timed in the README.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_demo_on_tiny_runs_every_step(tmp_path, finetui_cache):
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "demo", "--model", "tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for title in ("== train: finetui train", "== merge the adapter into the base", "exact match on 20 training",
                  "== base vs tuned on held-out questions", "== a few held-out questions"):
        assert title in out, title
    # the held-out file has off-topic questions: the refusal rows are in the table
    assert "refusals, off-topic" in out and "false refusals, in-domain" in out
    assert "Q: " in out and "  tuned " in out
    assert "Done in" in proc.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "merged" / "config.json").exists()
    assert (runs[0] / "eval" / "results.json").exists()
