"""Logits only at trained positions (``TrainedLogitsOnly``) against full logits: LoRA
training step time and peak memory on a large-vocabulary model, where the logits are the
largest activation.

    python benchmarks/trained_logits.py [--vocab 151936] [--hidden 896] [--layers 2]
        [--cutoff 512] [--batches 3] [--repeats 2] [--threads N]

The model is Qwen2.5-0.5B-shaped (vocabulary 151,936, hidden 896, 14 heads / 2 KV heads,
MLP 4,864) with ``--layers`` layers and random weights; the batches are the first
``8 x --batches`` records of LLaMA-Factory's alpaca_en_demo rendered with ChatML by the tiny
tokenizer (so ~75% of the real positions are trained), padded (the default collator), LoRA
r8 on all linear layers, fp32 on the CPU. Each variant runs in its own process (peak RSS is
the process's high-water mark), variants interleaved; prints medians and the ratios.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data" / "datasets" / "llamafactory" / "dataset_info.json"


def one(args) -> dict:
    """Runs in the child: build, train ``--batches`` steps, report."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from finetui.engine import tiny
    from finetui.engine.config import Config
    from finetui.engine.data import dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config()
    config.data.path = f"{DATA}:alpaca_en_demo"
    config.data.template = "chatml"
    config.data.max_length = args.cutoff
    config.data.max_samples = 8 * args.batches + 8
    config.data.test_size = 0
    tokenizer = AutoTokenizer.from_pretrained(tiny.path())
    built = dataset.build(config, tokenizer)
    rows = [built.train[i] for i in range(8 * args.batches)]
    collate = dataset.collator(config, tokenizer)
    if args.variant == "trained":
        collate = dataset.TrainedLogitsOnly(collate)
    batches = [collate(rows[i:i + 8]) for i in range(0, len(rows), 8)]

    torch.manual_seed(0)
    shape = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4864,
                        num_hidden_layers=args.layers, num_attention_heads=14, num_key_value_heads=2,
                        max_position_embeddings=4096, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(shape, attn_implementation="sdpa", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, losses = [], []
    for b in batches:
        items = (b["shift_labels"] if "shift_labels" in b else b["labels"][..., 1:]).ne(-100).sum()
        t = time.perf_counter()
        loss = model(**b, num_items_in_batch=items).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    return {"variant": args.variant, "step_s": statistics.median(times[1:] or times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_train_mb": rss_before / 1024, "losses": losses,
            "positions": int(sum(b["input_ids"].numel() for b in batches)),
            "trained": int(sum(b["labels"][..., 1:].ne(-100).sum() for b in batches))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=int, default=512)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variant", choices=("full", "trained"), help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(one(args)))
        return 0
    runs: dict[str, list[dict]] = {"full": [], "trained": []}
    for _ in range(args.repeats):
        for variant in runs:
            cmd = [sys.executable, __file__, "--variant", variant, *[
                x for k in ("vocab", "hidden", "layers", "cutoff", "batches", "threads")
                for x in (f"--{k}", str(getattr(args, k)))]]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), cwd=ROOT)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[7:])
            runs[variant].append(r)
            print(f"  {variant}: step {r['step_s']:.3f} s, peak RSS {r['peak_rss_mb']:,.0f} MB", file=sys.stderr)
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "peak_rss_mb", "rss_before_train_mb")}
           for v, rs in runs.items()}
    full, trained = runs["full"][0], runs["trained"][0]
    diff = max(abs(a - b) for a, b in zip(full["losses"], trained["losses"]))
    print(f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, cutoff {args.cutoff}, "
          f"{args.batches} batches of 8 (padded), {full['trained']:,} of {full['positions']:,} positions trained, "
          f"{args.repeats} interleaved repeats (medians)")
    print("| logits | step s | peak RSS MB | RSS growth in training MB |")
    print("|---|---:|---:|---:|")
    for v in ("full", "trained"):
        m = med[v]
        print(f"| {'all positions' if v == 'full' else 'trained positions'} | {m['step_s']:.3f} | "
              f"{m['peak_rss_mb']:,.0f} | {m['peak_rss_mb'] - m['rss_before_train_mb']:,.0f} |")
    print(f"trained/full: step time x{med['trained']['step_s'] / med['full']['step_s']:.2f}, peak RSS "
          f"x{med['trained']['peak_rss_mb'] / med['full']['peak_rss_mb']:.2f}, training growth x"
          f"{(med['trained']['peak_rss_mb'] - med['trained']['rss_before_train_mb']) / max(1e-9, med['full']['peak_rss_mb'] - med['full']['rss_before_train_mb']):.2f}; "
          f"largest loss difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
