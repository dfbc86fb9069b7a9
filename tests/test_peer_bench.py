"""The training benchmark's own logic (``benchmarks/peer_bench.py``), without installing
LLaMA-Factory: a stand-in peer script keeps the real script's contract (``SCRIPT --install``
installs into ``$PEER_VENV``; ``SCRIPT JOB.yaml OUT.json`` installs if needed, runs the job
and writes its figures), and its "venv" holds a ``python`` that answers the token count."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

COUNT = {"samples": 4, "real_tokens": 400, "trained_tokens": 160}

# The stand-in peer: installs a fake venv on demand (as the real script does with pip),
# logs what it is asked to do, and writes a result in the real script's JSON shape.
STUB = r"""#!/usr/bin/env bash
set -euo pipefail
venv=${PEER_VENV:?}
install() {
  mkdir -p "$venv/bin"
  cat > "$venv/bin/python" <<'PY'
#!/usr/bin/env bash
echo 'LF_COUNT __COUNT__'
PY
  printf '#!/usr/bin/env bash\nexit 0\n' > "$venv/bin/llamafactory-cli"
  chmod +x "$venv/bin/python" "$venv/bin/llamafactory-cli"
  echo install >> "$STUB_LOG"
}
if [ "${1:-}" = "--install" ]; then
  [ -x "$venv/bin/llamafactory-cli" ] || install
  exit 0
fi
[ -x "$venv/bin/llamafactory-cli" ] || install
echo "run $1" >> "$STUB_LOG"
printf '%s' '{"wall_s": 3.0, "exit_code": 0, "peak_rss_kb": 102400, "train_runtime_s": 2.0, "train_samples_per_second": 2.0, "train_loss": 1.5, "first_step_s": 1.0}' > "$2"
"""


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def peer_bench():
    return _load("peer_bench")


@pytest.fixture
def stub_peer(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(stand-in peer script, an empty peer venv location, the stand-in's log)."""
    script = tmp_path / "peer.sh"
    script.write_text(STUB.replace("__COUNT__", json.dumps(COUNT)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    venv = tmp_path / "empty-peer-venv"  # nothing there: a fresh machine
    log = tmp_path / "peer-calls.log"
    monkeypatch.setenv("STUB_LOG", str(log))
    return script, venv, log


def test_llamafactory_run_installs_the_peer_before_counting_its_tokens(peer_bench, stub_peer, tmp_path):
    """On a fresh machine the first LLaMA-Factory run must install the peer before it runs
    the peer's python to count tokens (it used to raise FileNotFoundError for that python)."""
    script, venv, log = stub_peer
    args = Namespace(peer_script=script, peer_venv=venv, timeout=60)
    job = peer_bench.Job("tiny", tmp_path / "model", 256, 4, tmp_path / "work")

    result = peer_bench.run_llamafactory(job, "llamafactory-0", False, args)

    assert not result.get("error"), result
    assert log.read_text().splitlines()[0] == "install"
    assert result["real_tokens"] == COUNT["real_tokens"]
    assert result["tokens_per_s"] == pytest.approx(2.0 * COUNT["real_tokens"] / COUNT["samples"])


def test_bench_on_a_fresh_machine_installs_the_peer_first(peer_bench, stub_peer, tmp_path, finetui_cache, capsys):
    """`finetui bench --systems llamafactory` with no peer venv: installs, then counts and runs;
    the report carries GFLOP/s and the fraction of the matmul peak."""
    script, venv, log = stub_peer
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text("{}")  # the stand-in peer reads no data
    out = tmp_path / "results.json"
    code = peer_bench.main(["--models", "tiny", "--cutoffs", "256", "--rows", "4", "--repeats", "1",
                            "--systems", "llamafactory", "--peer-script", str(script), "--peer-venv", str(venv),
                            "--data-dir", str(data), "--models-dir", str(tmp_path / "models"),
                            "--work", str(tmp_path / "work"), "--out", str(out), "--probe-seconds", "0.2"])
    assert code == 0
    assert log.read_text().splitlines()[0] == "install"
    results = json.loads(out.read_text())
    (run,) = results["jobs"]["tiny-c256-r4"]["runs"]
    assert not run.get("error"), run
    assert results["matmul_peak"]["best_gflops"] > 0 and len(results["matmul_peak"]["probes"]) == 2
    assert run["gflops"] == pytest.approx(run["train_flops"] / run["train_runtime_s"] / 1e9)
    assert run["peak_fraction"] == pytest.approx(run["gflops"] / results["matmul_peak"]["best_gflops"])
    report = capsys.readouterr().out
    assert "GFLOP/s" in report and "of peak" in report


def test_flop_estimate_of_the_tiny_model(peer_bench, tiny_model_dir):
    """body/head/LoRA counts from the safetensors header, and the formula the report states."""
    bench_models = _load("bench_models")
    c = bench_models.flop_params(tiny_model_dir, lora_r=8)
    # tiny: hidden 64, MLP 176, 4 layers, untied 1,024 x 64 embedding and head.
    assert c["head"] == 1024 * 64
    assert c["body"] == c["total"] - 2 * 1024 * 64
    per_layer = 8 * ((64 + 64) * 4 + (64 + 176) * 3)  # q, k, v, o; gate, up, down
    assert c["lora"] == 4 * per_layer
    flops = bench_models.train_flops(c, real_tokens=1000, trained_tokens=400)
    assert flops == 4 * c["body"] * 1000 + 4 * c["head"] * 400 + 6 * c["lora"] * 1000
    assert bench_models.train_flops(c, 1000, None) == bench_models.train_flops(c, 1000, 1000)


def test_a_variant_can_run_another_checkouts_finetui(peer_bench, tmp_path):
    """--variant NAME:python=PATH (before/after in one interleaved run): the variant keeps its
    --set overrides and environment, and runs that interpreter's CLI module, the current one
    (finetui.engine.cli) or an older checkout's (engine.cli)."""
    name, sets, env = peer_bench.parse_variant(f"before:python={sys.executable},data.packing=false,env.X=1")
    assert (name, sets) == ("before", ["data.packing=false"])
    assert env == {"X": "1", peer_bench.PYTHON_KEY: sys.executable}
    assert peer_bench.finetui_cli(sys.executable, tmp_path) == [sys.executable, "-m", "finetui.engine.cli"]
    old = tmp_path / "old"
    (old / "engine").mkdir(parents=True)
    (old / "engine" / "__init__.py").write_text("")
    shim = tmp_path / "python-old"  # an interpreter that sees only the old layout
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    shim.chmod(0o755)
    assert peer_bench.finetui_cli(str(shim), old) == [str(shim), "-m", "engine.cli"]


def test_run_timed_records_the_cpu_seconds_of_the_command_and_its_children(peer_bench, tmp_path):
    """cpu_s (user + system of the command and the children it waited for): the before/after
    figure that other work on the machine changes least."""
    busy = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.6: pass')"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}]); {busy}"
    log = tmp_path / "run.log"
    start, end, rc, rss = peer_bench.run_timed([sys.executable, "-c", code], env=dict(os.environ), cwd=tmp_path,
                                               log_file=log, timeout=120)
    assert rc == 0 and rss
    assert 1.2 <= peer_bench.cpu_seconds(log) <= (end - start) * (os.cpu_count() or 1) + 0.5
