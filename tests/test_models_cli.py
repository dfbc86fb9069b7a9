"""`finetui models`: what a user sees before anything is fetched, with a hub model cached.
Light: no torch, no network (the fetch itself is tested on the real model in
tests/test_real_model.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _models(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    hub = tmp_path / "hub"
    snap = hub / "models--org--little" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True, exist_ok=True)
    (hub / "models--org--little" / "refs").mkdir(exist_ok=True)
    (hub / "models--org--little" / "refs" / "main").write_text("b" * 40)
    blobs = hub / "models--org--little" / "blobs"
    blobs.mkdir(exist_ok=True)
    (blobs / "0123abcd").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 1000}))
    if not (snap / "config.json").exists():  # the HF cache's layout: snapshots link to blobs
        (snap / "config.json").symlink_to(blobs / "0123abcd")
    env = {"PATH": "/usr/bin:/bin", "FINETUI_CACHE": str(tmp_path / "cache"), "HF_HUB_CACHE": str(hub),
           "HOME": str(tmp_path)}
    code = ("import sys; from finetui.engine import cli; rc = cli.main(sys.argv[1:]); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, "models", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_models_lists_builtins_and_the_hub_cache(tmp_path):
    proc = _models(tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr  # listing never imports torch
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["tiny"]["kind"] == "built-in" and rows["tiny"]["params"] == 332_352
    smol = rows["smollm2"]
    assert (smol["cached"], smol["params"], smol["fetch_bytes"]) == (False, 134_515_008, 92_871_040)
    little = rows["org/little"]
    # 1000*256 embeddings + 2 layers + norm + untied head
    # the blob once (the snapshot's link to it is not counted again) and refs/main's 40 bytes
    assert little["size_bytes"] == (tmp_path / "hub" / "models--org--little" / "blobs" / "0123abcd").stat().st_size + 40
    assert little["kind"] == "hub cache" and little["params"] == 1000 * 256 * 2 + 2 * (4 * 256 * 256 + 3 * 256 * 512 + 2 * 256) + 256


def test_models_table_says_what_happens_on_first_use(tmp_path):
    proc = _models(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "params", "on", "disk", "status"]
    smol = next(line for line in lines if line.startswith("smollm2"))
    assert "135M" in smol and "fetched on first use (92.9 MB)" in smol
    assert any(line.startswith("org/little") and "hub cache" in line for line in lines)


def test_models_add_refuses_what_is_not_gguf(tmp_path):
    proc = _models(tmp_path, "add", "model.bin")
    assert proc.returncode == 2 and "expected a .gguf file" in proc.stderr
