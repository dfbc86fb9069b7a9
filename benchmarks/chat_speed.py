"""Chat worker speed vs bare ``model.generate`` on the same model and prompt.

    python benchmarks/chat_speed.py [--new-tokens 128] [--repeats 5] [--models tiny,mid] [--json OUT]

For each model, greedy decoding of exactly ``--new-tokens`` tokens (the end-of-turn token
is suppressed with ``min_new_tokens`` so every path generates the same count), from the
same chat prompt rendered with the model's template:

- bare:      ``model.generate(input_ids, max_new_tokens=N, min_new_tokens=N)`` in this
             process; time to first token = a ``max_new_tokens=1`` call (prefill + 1 token);
- in-proc:   ``engine.chat.ChatModel.generate`` (TextIteratorStreamer + generate() in a
             thread + cancel StoppingCriteria), no IPC;
- worker:    ``ChatClient`` -> ``python -m finetui.engine.chat --serve``: time to first token is
             measured by the client (request written -> first token line read), tokens/s
             = N / (request written -> done line read).

Models: ``tiny`` (the built-in 0.3M-parameter demo model) and ``mid`` (a random-weight
Llama with hidden 512, 8 layers, 8 heads, built from a config with tiny's tokenizer, so
compute dominates). Medians over ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "How do I start a training run and watch its loss from the keyboard?"}]


def build_mid(folder: Path) -> Path:
    """A ~25M-parameter random Llama with tiny's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetui.engine import tiny

    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(tiny.path())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class Bare:
    """model.generate alone: same ids, same generation config as the worker uses."""

    def __init__(self, chat, n: int):
        import torch

        from finetui.engine.chat import check_params

        self.torch, self.chat, self.n = torch, chat, n
        self.ids = torch.tensor([chat.prompt_ids(PROMPT)], device=chat.model.device)
        self.mask = torch.ones_like(self.ids)
        self.config = chat.generation_config(check_params({"max_new_tokens": n, "min_new_tokens": n}), n)
        self.first = chat.generation_config(check_params({"max_new_tokens": 1, "min_new_tokens": 1}), 1)

    def _run(self, config) -> tuple[float, int]:
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.chat.model.generate(input_ids=self.ids, attention_mask=self.mask, generation_config=config)
        return time.perf_counter() - t0, out.shape[1] - self.ids.shape[1]

    def once(self) -> tuple[float, float]:
        """(time to first token = prefill + 1 token, tokens/s over N tokens)"""
        ttft, _ = self._run(self.first)
        seconds, count = self._run(self.config)
        assert count == self.n, count
        return ttft, self.n / seconds


class InProcess:
    """finetui.engine.chat.ChatModel.generate: streamer + generate() in a thread, no IPC."""

    def __init__(self, chat, n: int):
        self.chat, self.n = chat, n
        self.params = {"max_new_tokens": n, "min_new_tokens": n}

    def once(self) -> tuple[float, float]:
        first: list[float] = []
        t0 = time.perf_counter()
        done = self.chat.generate(PROMPT, self.params, on_token=lambda text: first or first.append(time.perf_counter()))
        elapsed = time.perf_counter() - t0
        assert done["new_tokens"] == self.n, done
        return first[0] - t0, self.n / elapsed


class Worker:
    """ChatClient -> python -m finetui.engine.chat --serve: measured from the client's side."""

    def __init__(self, client, n: int):
        self.client, self.n = client, n
        self.reported: list[float] = []

    def once(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        gen = self.client.generate(PROMPT, max_new_tokens=self.n, min_new_tokens=self.n)
        first = None
        for _token in gen:
            if first is None:
                first = time.perf_counter()
        elapsed = time.perf_counter() - t0
        assert gen.done["new_tokens"] == self.n, gen.done
        self.reported.append(gen.done["tokens_per_s"])
        return first - t0, self.n / elapsed


def measure(target: str, n: int, repeats: int, default_threads: bool) -> dict:
    """All paths on one model, interleaved run by run so load on a shared box hits each
    alike; medians."""
    import torch

    from finetui.engine import chat as chat_mod
    from finetui.engine.chat_protocol import ChatClient

    loaded = chat_mod.load(target)  # sets this process's CPU threads as the worker does
    threads = torch.get_num_threads()
    client = ChatClient(target)
    t0 = time.perf_counter()
    ready = client.start(timeout=600)
    start_s = time.perf_counter() - t0
    paths = {"bare": Bare(loaded, n), "in_process": InProcess(loaded, n), "worker": Worker(client, n)}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    if default_threads:
        samples["bare_default_threads"] = []
    try:
        for name, path in paths.items():
            path.once()  # warm-up
        for _ in range(repeats):
            for name, path in paths.items():
                samples[name].append(path.once())
            if default_threads:
                torch.set_num_threads(os.cpu_count() or 1)
                samples["bare_default_threads"].append(paths["bare"].once())
                torch.set_num_threads(threads)
    finally:
        client.close()
    row = {"model": target, "params": loaded.info["params"], "device": loaded.info["device"], "threads": threads,
           "new_tokens": n, "prompt_tokens": len(loaded.prompt_ids(PROMPT)),
           "worker_start_s": start_s, "worker_load_s": ready["load_s"],
           "worker_reported_tokens_per_s": statistics.median(paths["worker"].reported)}
    for name, values in samples.items():
        row[name] = {"ttft_s": statistics.median(v[0] for v in values),
                     "tokens_per_s": statistics.median(v[1] for v in values),
                     "tokens_per_s_all": [round(v[1], 1) for v in values]}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default="tiny,mid", help="comma list: tiny, mid, or model folders")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--default-threads", action="store_true",
                   help="also time bare generate with torch's default thread count (all cores)")
    args = p.parse_args(argv)

    import torch

    from finetui.engine import chat as chat_mod

    chat_mod._quiet_libraries()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            target = str(build_mid(Path(tmp) / "mid")) if name == "mid" else name
            row = measure(target, args.new_tokens, args.repeats, args.default_threads)
            row["model"] = name
            results.append(row)

    print(f"# chat speed: greedy, {args.new_tokens} new tokens (eos suppressed), median of {args.repeats}; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("| model | params | threads | path | time to first token | tokens/s | vs bare |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        for path in ("bare", "in_process", "worker", "bare_default_threads"):
            if path not in r:
                continue
            m = r[path]
            ratio = m["tokens_per_s"] / r["bare"]["tokens_per_s"]
            threads = os.cpu_count() if path == "bare_default_threads" else r["threads"]
            print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {threads} | {path} | {1000 * m['ttft_s']:.1f} ms | "
                  f"{m['tokens_per_s']:.0f} | {ratio:.2f}x |")
    for r in results:
        print(f"{r['model']}: worker start (spawn + imports + load + warm-up) {r['worker_start_s']:.1f}s, "
              f"load {r['worker_load_s']:.1f}s; worker-reported {r['worker_reported_tokens_per_s']:.0f} tok/s; "
              f"tokens/s per run: " + ", ".join(f"{k} {r[k]['tokens_per_s_all']}" for k in
                                               ("bare", "in_process", "worker") if k in r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
