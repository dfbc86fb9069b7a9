"""More than one process: the sharding strategy's Trainer arguments, and multi-node launch
commands (torchrun's c10d rendezvous, SLURM sbatch scripts).

Light module (standard library only at import time): the CLI prints an sbatch script
without importing torch. :func:`trainer_arguments` runs in the trainer process.

``distributed.strategy`` goes through the transformers Trainer's own support (accelerate):

* ``ddp``: nothing to add (the Trainer wraps the model in DistributedDataParallel under torchrun);
* ``fsdp``: ``fsdp`` + ``fsdp_config`` with ``version: 2`` (PyTorch FSDP2 ``fully_shard`` on
  each decoder layer); ``hybrid_shard`` shards within a node and replicates across nodes
  (accelerate's ``ParallelismConfig``: ``dp_replicate_size`` nodes x ``dp_shard_size`` GPUs);
* ``deepspeed``: ``deepspeed`` = a ZeRO stage 2/3 JSON built here (``"auto"`` values the
  Trainer fills from its own arguments), or the user's own JSON file.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

DEFAULT_PORT = 29500


def world() -> tuple[int, int, int]:
    """(global rank, world size, nodes) of this process, from torchrun's environment."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    return int(os.environ.get("RANK", "0")), size, max(1, size // max(1, local))


def deepspeed_json(stage: int, offload: bool) -> dict[str, Any]:
    """A ZeRO config for the Trainer; ``auto`` values are filled from TrainingArguments."""
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # a loadable adapter/ or model
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }


def fsdp_config(d, nnodes: int = 1) -> dict[str, Any]:
    """``fsdp_config`` for TrainingArguments (FSDP2)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one fully_shard per decoder layer (_no_split_modules)
        "reshard_after_forward": True,
        "cpu_offload": d.cpu_offload,
        "state_dict_type": "FULL_STATE_DICT" if d.fsdp_state_dict == "full" else "SHARDED_STATE_DICT",
        "activation_checkpointing": d.activation_checkpointing,
        "cpu_ram_efficient_loading": False,
    }


def trainer_arguments(config, world_size: int, nnodes: int = 1) -> dict[str, Any]:
    """Extra TrainingArguments for ``distributed.strategy`` (none for one process or ddp)."""
    d = config.distributed
    if world_size <= 1 or d.strategy == "ddp":
        return {}
    if d.strategy == "deepspeed":
        return {"deepspeed": d.deepspeed_config or deepspeed_json(d.zero_stage, d.cpu_offload)}
    args: dict[str, Any] = {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config(d, nnodes)}
    if d.fsdp_sharding == "hybrid_shard" and nnodes > 1:
        from accelerate.parallelism_config import ParallelismConfig

        args["parallelism_config"] = ParallelismConfig(dp_replicate_size=nnodes,
                                                       dp_shard_size=world_size // nnodes)
    return args


def setup_problems(config, device: str, world_size: int) -> list[str]:
    """What the strategy needs that this machine or install lacks, naming the settings."""
    d, problems = config.distributed, []
    if world_size <= 1 or d.strategy == "ddp":
        return problems
    if d.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            problems.append("distributed.strategy: deepspeed needs the deepspeed package, which is not installed: "
                            "pip install deepspeed (or pip install 'finetui[deepspeed]'; it compiles its ops "
                            "for CUDA), or use distributed.strategy: fsdp")
        elif not device.startswith("cuda"):
            problems.append("distributed.strategy: deepspeed trains on CUDA GPUs only; use distributed.strategy: "
                            "fsdp or ddp on the CPU")
        if d.deepspeed_config and not os.path.isfile(d.deepspeed_config):
            problems.append(f"distributed.deepspeed_config: {d.deepspeed_config} is not a file")
    if d.strategy == "fsdp" and config.model.quantization == "4bit":
        # bitsandbytes can store 4-bit weights in a shardable dtype (bnb_4bit_quant_storage) on
        # CUDA, but finetui's QLoRA loading does not set that up for FSDP yet
        problems.append("distributed.strategy: fsdp with a 4-bit base (method.type: qlora / model.quantization: "
                        "4bit) is not supported yet; use distributed.strategy: ddp (a QLoRA copy per GPU) or "
                        "deepspeed with zero_stage: 2, or method.type: lora with fsdp")
    if (d.strategy == "fsdp" and d.fsdp_sharding == "hybrid_shard" and world()[2] > 1
            and not device.startswith("cuda")):
        problems.append("distributed.fsdp_sharding: hybrid_shard across nodes needs CUDA GPUs (accelerate builds "
                        "its 2-D device mesh for GPU process groups only); use full_shard on CPU nodes")
    if d.strategy == "fsdp" and d.cpu_offload and not device.startswith("cuda"):
        problems.append("distributed.cpu_offload: the weights are already in CPU memory on a CPU run; turn it off")
    return problems


# --------------------------------------------------------------------------- launching


def torchrun_arguments(nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv: str | None = None,
                       run_id: str = "finetui") -> list[str]:
    """torchrun's arguments: one node (``--standalone``) or a c10d rendezvous at HOST:PORT."""
    if nnodes <= 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    if not rdzv:
        raise ValueError("--nnodes above 1 needs --rdzv HOST:PORT (the first node's address, reachable by all)")
    host, _, port = rdzv.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--rdzv {rdzv}: expected HOST:PORT")
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--node_rank={node_rank}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv}", f"--rdzv_id={run_id}"]


def slurm_script(run_dir: str, nodes: int, gpus_per_node: int, partition: str | None = None,
                 time: str | None = None, account: str | None = None, cpus_per_task: int | None = None,
                 job_name: str = "finetui", port: int = DEFAULT_PORT, python: str = "python",
                 setup: str | None = None) -> str:
    """An sbatch script for a run folder already made (``finetui launch slurm`` makes it):
    one task per node (srun), each running torchrun with ``gpus_per_node`` processes; the
    nodes meet at a c10d rendezvous on the job's first node, node rank from SLURM_NODEID.
    The run folder must be on storage every node sees; only global rank 0 writes its
    checkpoints and run record, every other rank its own events.rank<R>.jsonl."""
    q = shlex.quote
    head = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
            "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={gpus_per_node}"]
    for flag, value in (("cpus-per-task", cpus_per_task), ("partition", partition), ("account", account),
                        ("time", time)):
        if value:
            head.append(f"#SBATCH --{flag}={value}")
    head.append(f"#SBATCH --output={run_dir}/slurm-%j.out")
    body = [
        "set -euo pipefail",
        *([setup] if setup else []),
        f"RUN_DIR={q(run_dir)}  # on storage every node sees",
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"PORT={port}",
        "export RUN_DIR HEAD_NODE PORT PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",
        "",
        "# one task per node: SLURM_NODEID is the node rank; the rendezvous is on the first node",
        "srun --kill-on-bad-exit=1 bash -c '" + " ".join([
            f"{q(python)} -m finetui.engine.torchrun",  # torchrun, naming a failed rank on the run's record
            '--nnodes "$SLURM_NNODES"', f"--nproc-per-node {gpus_per_node}", '--node-rank "$SLURM_NODEID"',
            "--rdzv-backend c10d", '--rdzv-endpoint "$HEAD_NODE:$PORT"', '--rdzv-id "$SLURM_JOB_ID"',
            '-m finetui.engine.train --run-dir "$RUN_DIR"']) + "'",
        "",
    ]
    return "\n".join(head + [""] + body)


# --------------------------------------------------------------------------- finetui launch


def add_parser(sub) -> None:
    la = sub.add_parser("launch", help="print a job script for a cluster scheduler (slurm)",
                        description="Create the run folder and print an sbatch script that trains it on "
                                    "several nodes (srun + torchrun, c10d rendezvous). Submit it with "
                                    "`finetui launch slurm c.yaml --nodes 2 --gpus-per-node 8 > job.sh; "
                                    "sbatch job.sh`. The runs folder (--runs-dir) must be on storage "
                                    "every node sees.")
    lsub = la.add_subparsers(dest="scheduler", metavar="SCHEDULER", required=True)
    s = lsub.add_parser("slurm", help="an sbatch script (srun + torchrun)")
    s.add_argument("config", help="config YAML")
    s.add_argument("--nodes", type=int, required=True, metavar="N", help="nodes")
    s.add_argument("--gpus-per-node", type=int, required=True, metavar="G", help="GPUs (processes) per node")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set distributed.strategy=fsdp (repeatable)")
    s.add_argument("--name", help="name part of the run id")
    s.add_argument("--partition", metavar="P", help="#SBATCH --partition")
    s.add_argument("--time", metavar="T", help="#SBATCH --time, e.g. 12:00:00")
    s.add_argument("--account", metavar="A", help="#SBATCH --account")
    s.add_argument("--cpus-per-task", type=int, metavar="C", help="#SBATCH --cpus-per-task")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"rendezvous port on the first node "
                   f"(default {DEFAULT_PORT})")
    s.add_argument("--setup", metavar="LINE", help="a shell line run first on the batch host, e.g. "
                   "'source ~/venv/bin/activate'")


def command(args) -> int:
    import sys
    from pathlib import Path

    from finetui.engine import config as cfg
    from finetui.engine import footprint, runs
    from finetui.engine.units import format_bytes

    if args.nodes < 1 or args.gpus_per_node < 1:
        print("finetui launch slurm: --nodes and --gpus-per-node must be at least 1", file=sys.stderr)
        return 2
    try:
        config = cfg.load(args.config, args.overrides)
    except cfg.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    world_size = args.nodes * args.gpus_per_node
    run_dir = runs.new_run(config, name=args.name or config.output.run_name or Path(args.config).stem).resolve()
    print(slurm_script(str(run_dir), args.nodes, args.gpus_per_node, partition=args.partition, time=args.time,
                       account=args.account, cpus_per_task=args.cpus_per_task, job_name=run_dir.name[:64],
                       port=args.port, python=sys.executable, setup=args.setup), end="")
    print(f"run folder: {run_dir} (must be on storage every node sees)", file=sys.stderr)
    try:
        share = footprint.for_config(footprint.estimate(config, gpu=True), config, world_size, args.nodes)
        print(f"memory per GPU ({share.strategy}, {world_size} processes): {format_bytes(share.total_bytes)}"
              + (f", {format_bytes(share.offloaded_bytes)} offloaded to CPU" if share.offloaded_bytes else ""),
              file=sys.stderr)
    except footprint.FootprintError as exc:
        print(f"memory per GPU: no estimate ({exc})", file=sys.stderr)
    return 0
