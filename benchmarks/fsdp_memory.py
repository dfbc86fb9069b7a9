"""Per-process memory of a 2-process CPU run (gloo) under DDP and FSDP2, measured and estimated.

    python benchmarks/fsdp_memory.py [--hidden 768] [--layers 8] [--steps 2]

A random Llama (the tiny model's tokenizer, ``--hidden`` / ``--layers``) is fully fine-tuned
in fp32 for a few steps (batch 2 x 64 tokens per process) by ``finetui``'s trainer under
``torchrun --nproc_per_node 2``, once with ``distributed.strategy: ddp`` and once with
``fsdp``. Each worker's peak RSS (VmHWM) is polled from /proc while it runs. The two
strategies share the runtime, activations and logits, so the difference between their
peaks is what sharding saved; it is printed beside the difference of
``engine.footprint.per_device`` for the same config (2 processes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finetui.engine import config as cfg  # noqa: E402
from finetui.engine import footprint, runs, tiny  # noqa: E402


def make_model(folder: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny.path())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                         num_key_value_heads=hidden // 64, max_position_embeddings=256,
                                         tie_word_embeddings=False))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def peak_rss(proc, poll_s: float = 0.1) -> dict[int, int]:
    """VmHWM (bytes) of every process under ``proc`` until it exits, by pid."""
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        for child in root.children(recursive=True):
            try:
                status = Path(f"/proc/{child.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[child.pid] = max(peaks.get(child.pid, 0), int(line.split()[1]) * 1024)
        time.sleep(poll_s)
    return peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsdp-memory-"))
    model = make_model(work / "model", a.hidden, a.layers)
    data = {"model": {"name_or_path": str(model), "dtype": "float32", "device": "cpu"},
            "method": {"type": "full"},
            "data": {"path": "sample:finetui_faq", "format": "qa", "max_samples": 16, "max_length": 64,
                     "test_size": 0},
            "train": {"max_steps": a.steps, "batch_size": 2, "eval_strategy": "no", "save_strategy": "no",
                      "logging_steps": 1}}
    rows = {}
    for strategy in ("ddp", "fsdp"):
        config = cfg.validate({**data, "distributed": {"strategy": strategy}})
        run_dir = runs.new_run(config, name=strategy, root=work / "runs")
        proc = runs.launch(run_dir, nproc=2)
        peaks = peak_rss(proc)
        proc.communicate()
        workers = sorted(peaks.values(), reverse=True)[:2]  # torchrun's own agent is the smallest
        est = footprint.per_device(footprint.estimate(config, gpu=False), strategy, 2)
        rows[strategy] = (proc.returncode, workers, est)
        print(f"{strategy}: exit {proc.returncode}, worker peak RSS {[round(w / 2**20) for w in workers]} MiB, "
              f"estimate {est.total_bytes / 2**20:.0f} MiB (weights {est.weights_bytes / 2**20:.0f}, grads "
              f"{est.gradients_bytes / 2**20:.0f}, optimizer {est.optimizer_bytes / 2**20:.0f}, gathered "
              f"{est.gathered_bytes / 2**20:.0f}, DDP buckets {est.buckets_bytes / 2**20:.0f})")
    measured = (sum(rows["ddp"][1]) - sum(rows["fsdp"][1])) / 2 / 2**20
    estimated = (rows["ddp"][2].total_bytes - rows["fsdp"][2].total_bytes) / 2**20
    print(f"saved per process by FSDP2 (2 processes): measured {measured:.0f} MiB, estimated {estimated:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
