"""`finetui launch slurm`: the sbatch script parses (bash -n) and runs torchrun with a c10d
rendezvous on the job's first node, node rank from SLURM; torchrun's arguments for
`finetui train --nnodes`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetui.engine import distributed

ROOT = Path(__file__).resolve().parent.parent


def launch(tmp_path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(tmp_path / "runs"), "launch",
                           "slurm", str(ROOT / "sample_data" / "quickstart.yaml"), *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_sbatch_script_parses_and_names_the_torchrun_arguments(tmp_path):
    done = launch(tmp_path, "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "02:00:00",
                  "--set", "distributed.strategy=fsdp")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00"):
        assert line in script.splitlines()
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    for arg in ('--nnodes "$SLURM_NNODES"', "--nproc-per-node 4", '--node-rank "$SLURM_NODEID"',
                "--rdzv-backend c10d", '--rdzv-endpoint "$HEAD_NODE:$PORT"', '--rdzv-id "$SLURM_JOB_ID"',
                '-m finetui.engine.train --run-dir "$RUN_DIR"'):
        assert arg in srun
    assert "-m finetui.engine.torchrun" in srun  # torch.distributed.run, naming a failed rank
    assert re.search(r"^export RUN_DIR HEAD_NODE PORT", script, re.M)  # seen inside srun's bash -c
    # the run folder exists, with the config the job trains
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"RUN_DIR={run_dir.resolve()}" in script
    assert "strategy: fsdp" in (run_dir / "config.yaml").read_text()
    assert "memory per GPU (fsdp full_shard, 8 processes)" in done.stderr


def test_sbatch_script_runs_its_srun_line_with_slurms_variables(tmp_path):
    """The srun line, with srun stubbed by a shell function that runs its command once per
    node, expands to the torchrun command each node runs."""
    done = launch(tmp_path, "--nodes", "2", "--gpus-per-node", "8")
    script = done.stdout.replace("#!/bin/bash", "#!/bin/bash\nscontrol() { echo node-a; echo node-b; }\n"
                                 "srun() { shift; for n in 0 1; do SLURM_NODEID=$n \"$@\"; done; }", 1)
    script = script.replace(f"{sys.executable} -m finetui.engine.torchrun", "echo torchrun")
    env = {"SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "42", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert line.startswith(f"torchrun --nnodes 2 --nproc-per-node 8 --node-rank {rank} --rdzv-backend c10d "
                               "--rdzv-endpoint node-a:29500 --rdzv-id 42 -m finetui.engine.train --run-dir ")


def test_torchrun_arguments():
    assert distributed.torchrun_arguments(4) == ["--standalone", "--nproc_per_node=4"]
    assert distributed.torchrun_arguments(2, 3, 1, "10.0.0.1:29400", "j") == [
        "--nnodes=3", "--nproc_per_node=2", "--node_rank=1", "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.1:29400", "--rdzv_id=j"]
    with pytest.raises(ValueError, match="--rdzv HOST:PORT"):
        distributed.torchrun_arguments(1, 2, 0, None)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.torchrun_arguments(1, 2, 0, "nohost")


def test_bad_sizes_are_refused(tmp_path):
    done = launch(tmp_path, "--nodes", "0", "--gpus-per-node", "8")
    assert done.returncode == 2 and "at least 1" in done.stderr
