"""Held-out evaluation: ``finetui eval RUN_ID [--split test] [--compare-base] [--json]``.

Heavy module (torch, transformers, datasets): CLI and worker processes only.

The held-out split is rebuilt exactly as training built it: the run's own config.yaml and
tokenizer through ``engine.data.dataset.build`` (same records, same template, same
max_length, same seed, hence the same split). Each example is scored on

- loss / perplexity: mean cross-entropy over the trained tokens (labels != -100), summed
  over the split and divided by their count (a token-weighted mean; perplexity = exp).
  The trainer's ``eval`` events average per-batch means instead, so on the demo split they
  read 5.73 where this reads 5.81; tests/test_evaluate.py recomputes the trainer's number
  from this split to prove the split is the same;
- exact match: the last assistant reply is generated greedily from everything before it
  (batched, left padding) and compared with the reference, whitespace stripped;
- accuracy, when every reference is a short class label (0/1, positive/negative, ...):
  exact match on the label, case and a trailing full stop ignored;
- moderation, when the split refuses off-topic questions with one fixed line (the most
  common target, repeated at least 3 times, or ``--refusal TEXT``): the refusal rate on
  those rows (the reply is exactly that line) and the false-refusal rate on the others.

The tuned model (merged, else base + adapter, else the full fine-tune) is evaluated, and
with ``--compare-base`` the untouched base too, one after the other so only one model is in
memory. Results go to ``runs/<id>/eval/results.json`` (metrics) and ``results.jsonl`` (one
row per example: prompt, target, outputs, matches, losses).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

IGNORE = -100
LABEL_MAX_CHARS = 24
LABEL_MAX_WORDS = 3
LABEL_MAX_CLASSES = 20
SHOWN_ROWS = 50
REFUSAL_MIN_ROWS = 3


class EvalError(RuntimeError):
    """Evaluation cannot run; the message says why."""


@dataclass
class Item:
    index: int
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int] | None  # everything before the last trained span (None: no prompt)
    target_ids: list[int] | None  # the last trained span (the reply, end token included)
    prompt: str = ""
    target: str = ""


@dataclass
class ModelScore:
    name: str  # tuned | base
    source: str = ""
    eval_loss: float | None = None
    perplexity: float | None = None
    trained_tokens: int = 0
    exact_match: float | None = None
    n_exact: int = 0
    n_generated: int = 0
    accuracy: float | None = None  # labels only
    # Moderation (when the split has a refusal line): off-topic rows answered with exactly
    # that line, and in-domain rows answered with it although they should not be.
    refusal_rate: float | None = None
    n_refused: int = 0
    n_off_topic: int = 0
    false_refusal_rate: float | None = None
    n_false_refusals: int = 0
    n_in_domain: int = 0
    loss_s: float = 0.0
    generate_s: float = 0.0
    load_s: float = 0.0
    outputs: list[str] = field(default_factory=list, repr=False)
    losses: list[float | None] = field(default_factory=list, repr=False)

    def metrics(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outputs")
        d.pop("losses")
        return d


# ---------------------------------------------------------------------------- examples


def split_example(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]] | None:
    """(prompt ids, target ids): the last run of trained labels is the target, everything
    before it the prompt. None when there is no prompt to generate from (text data, or
    train_on: all)."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE:
        end -= 1
    if end == 0:
        return None
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    if start == 0:
        return None
    return list(input_ids[:start]), list(input_ids[start:end])


_USER_LINE = re.compile(r"^\s*(user|human)\s*:?\s*$", re.IGNORECASE)
_ROLE_LINE = re.compile(r"^\s*(system|user|assistant|tool|model|human|gpt)\s*:?\s*$", re.IGNORECASE)


def prompt_text(tokenizer: Any, input_ids: list[int], labels: list[int], start: int) -> str:
    """The last user turn as a reader wants to see it: the text between the previous
    trained span and the target, special tokens and bare role headers dropped."""
    begin = start
    while begin > 0 and labels[begin - 1] == IGNORE:
        begin -= 1
    text = tokenizer.decode(input_ids[begin:start], skip_special_tokens=True)
    lines = text.splitlines()
    # A template that adds a default system prompt (SmolLM2, Qwen) puts it before the
    # question: keep what follows the last user header.
    users = [k for k, line in enumerate(lines) if _USER_LINE.match(line)]
    if users:
        lines = lines[users[-1] + 1:]
    lines = [line for line in lines if not _ROLE_LINE.match(line)]
    return "\n".join(lines).strip()


def make_items(tokenizer: Any, rows: list[tuple[list[int], list[int]]]) -> list[Item]:
    items = []
    for i, (ids, labels) in enumerate(rows):
        parts = split_example(ids, labels)
        item = Item(i, list(ids), list(labels), *(parts or (None, None)))
        if parts:
            item.prompt = prompt_text(tokenizer, ids, labels, len(parts[0]))
            item.target = tokenizer.decode(parts[1], skip_special_tokens=True).strip()
        items.append(item)
    return items


def _normal_label(text: str) -> str:
    return text.strip().rstrip(".!").strip().lower()


def label_set(targets: list[str]) -> list[str] | None:
    """The class labels when every target is a short label and they repeat (a
    classification split), else None."""
    if len(targets) < 2:
        return None
    for t in targets:
        if not t or len(t) > LABEL_MAX_CHARS or len(t.split()) > LABEL_MAX_WORDS:
            return None
    classes = sorted({_normal_label(t) for t in targets})
    if len(classes) > LABEL_MAX_CLASSES or len(classes) > max(2, len(targets) // 2):
        return None
    return classes


def refusal_line(targets: list[str], labels: list[str] | None) -> str | None:
    """The reply a split uses to refuse (a moderation set: off-topic questions all answered
    with one fixed line): the most common target when it repeats at least
    :data:`REFUSAL_MIN_ROWS` times and is a sentence, not a class label; else None."""
    if labels is not None or not targets:
        return None
    counts: dict[str, int] = {}
    for t in targets:
        counts[t] = counts.get(t, 0) + 1
    line, n = max(counts.items(), key=lambda kv: kv[1])
    if n < REFUSAL_MIN_ROWS or n == len(targets) or len(line.split()) < 3:
        return None
    return line


def _refusals(result: "ModelScore", items: list[Item], replies: dict[int, str], refusal: str) -> None:
    off = [it for it in items if it.prompt_ids and it.target == refusal]
    on = [it for it in items if it.prompt_ids and it.target != refusal]
    result.n_off_topic, result.n_in_domain = len(off), len(on)
    result.n_refused = sum(1 for it in off if replies[it.index] == refusal)
    result.n_false_refusals = sum(1 for it in on if replies[it.index] == refusal)
    result.refusal_rate = result.n_refused / len(off) if off else None
    result.false_refusal_rate = result.n_false_refusals / len(on) if on else None


# ---------------------------------------------------------------------------- scoring


def _batches(order: list[int], size: int):
    for k in range(0, len(order), size):
        yield order[k:k + size]


def token_losses(model: Any, items: list[Item], pad_id: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(sum of token losses, trained tokens) per item; right padding, batches of similar
    length. A label at position 0 is never predicted, as in training."""
    import torch
    import torch.nn.functional as F

    device = _device_of(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for chunk in _batches(order, batch_size):
        width = max(len(items[i].input_ids) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(items[i].input_ids)
            ids[row, :n] = torch.tensor(items[i].input_ids)
            labels[row, :n] = torch.tensor(items[i].labels)
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            target = labels[:, 1:].to(device)
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                ignore_index=IGNORE, reduction="none",
            ).view(len(chunk), -1)
            sums = loss.sum(dim=1).tolist()
            counts = (target != IGNORE).sum(dim=1).tolist()
        del logits, loss
        for row, i in enumerate(chunk):
            out[i] = (float(sums[row]), int(counts[row]))
    return out


def generate_greedy(chat: Any, items: list[Item], max_new_tokens: int, batch_size: int = 8) -> dict[int, str]:
    """Greedy replies for items with a prompt: {item index: stripped text}. Batched with
    left padding (prompts of similar length together), stopping at the end-of-turn ids."""
    import torch

    from finetui.engine.chat import check_params

    model, tokenizer = chat.model, chat.tokenizer
    device = _device_of(model)
    eos = list(chat.eos_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    todo = [it for it in items if it.prompt_ids]
    order = sorted(range(len(todo)), key=lambda k: len(todo[k].prompt_ids))
    replies: dict[int, str] = {}
    for chunk in _batches(order, batch_size):
        width = max(len(todo[k].prompt_ids) for k in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, k in enumerate(chunk):
            p = todo[k].prompt_ids
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        new = max(1, min(max_new_tokens, chat.context - width))
        config = chat.generation_config(check_params({"max_new_tokens": new}), new)
        config.pad_token_id = pad_id
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row, k in enumerate(chunk):
            gen = out[row, width:].tolist()
            cut = next((j for j, t in enumerate(gen) if t in eos), len(gen))
            replies[todo[k].index] = tokenizer.decode(gen[:cut], skip_special_tokens=True).strip()
    return replies


def score(chat: Any, name: str, items: list[Item], max_new_tokens: int, batch_size: int,
          labels: list[str] | None, progress: Callable[[str], None], refusal: str | None = None) -> ModelScore:
    result = ModelScore(name=name, source=str(chat.info.get("source", "")), load_s=float(chat.info.get("load_s", 0.0)))
    tokenizer = chat.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else chat.eos_token_ids[0]
    progress(f"{name}: loss on {len(items)} examples")
    t0 = time.perf_counter()
    losses = token_losses(chat.model, items, pad_id, batch_size)
    result.loss_s = round(time.perf_counter() - t0, 3)
    total, count = sum(s for s, _ in losses), sum(n for _, n in losses)
    result.trained_tokens = count
    if count:
        result.eval_loss = total / count
        result.perplexity = math.exp(min(result.eval_loss, 700.0))
    result.losses = [s / n if n else None for s, n in losses]
    with_prompt = [it for it in items if it.prompt_ids]
    if with_prompt:
        progress(f"{name}: generating {len(with_prompt)} replies (greedy, up to {max_new_tokens} tokens)")
        t0 = time.perf_counter()
        replies = generate_greedy(chat, items, max_new_tokens, batch_size)
        result.generate_s = round(time.perf_counter() - t0, 3)
        result.outputs = [replies.get(it.index, "") for it in items]
        result.n_generated = len(with_prompt)
        result.n_exact = sum(1 for it in with_prompt if replies[it.index] == it.target)
        result.exact_match = result.n_exact / len(with_prompt)
        if labels is not None:
            hits = sum(1 for it in with_prompt if _normal_label(replies[it.index]) == _normal_label(it.target))
            result.accuracy = hits / len(with_prompt)
        if refusal is not None:
            _refusals(result, items, replies, refusal)
    else:
        result.outputs = [""] * len(items)
    return result


def _device_of(model: Any):
    try:
        return model.device
    except AttributeError:
        return next(model.parameters()).device


def _release(chat: Any) -> None:
    """Drop a model before loading the next, so only one is in (GPU) memory."""
    chat.model = None
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _fit_vocab(model: Any, tokenizer: Any) -> bool:
    """The base model must read the tuned tokenizer's ids: when training added tokens
    (ChatML markers on a base model), grow its embeddings to match."""
    n = len(tokenizer)
    if model.get_input_embeddings().num_embeddings < n:
        model.resize_token_embeddings(n, mean_resizing=True)  # as engine.modeling.fit_tokenizer
        return True
    return False


# ---------------------------------------------------------------------------- evaluate


def evaluate(
    run: str,
    *,
    split: str = "test",
    compare_base: bool = False,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    save: bool = True,
    progress: Callable[[str], None] | None = None,
    refusal: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Evaluate a run on its held-out split. Returns the results (also saved).
    ``trust_remote_code``: the user's --trust-remote-code (the run's config.yaml cannot)."""
    from finetui.engine import chat as chat_mod
    from finetui.engine.targets import NotFound, find_run
    from finetui.engine.config import ConfigError, load as load_config
    from finetui.engine.data import dataset

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    if split not in ("test", "train"):
        raise EvalError(f"--split {split}: expected test (the held-out split) or train")
    if limit is not None and limit < 1:
        raise EvalError("--limit must be >= 1")
    if max_new_tokens < 1:
        raise EvalError("--max-new-tokens must be >= 1")
    try:
        run_dir = find_run(run)
    except NotFound as exc:
        raise EvalError(str(exc)) from None
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise EvalError(f"run {run_dir.name}: {exc}") from None

    progress(f"loading the tuned model of {run_dir.name}")
    try:
        tuned = chat_mod.load(str(run_dir), trust_remote_code=trust_remote_code)
    except chat_mod.ModelLoadError as exc:
        raise EvalError(str(exc)) from None
    tokenizer = tuned.tokenizer

    progress(f"rebuilding the {split} split from {config.data.path}")
    t0 = time.perf_counter()
    try:
        built = dataset.build(config, tokenizer)
    except (dataset.DataError, ValueError, OSError) as exc:
        raise EvalError(f"cannot rebuild the data of run {run_dir.name}: {exc}") from None
    data_s = round(time.perf_counter() - t0, 3)
    ds = built.test if split == "test" else built.train
    if ds is None or len(ds) == 0:
        raise EvalError(
            f"run {run_dir.name} has no held-out split (data.test_size is {config.data.test_size} and no "
            f"data.test_split or data.test_path); evaluate the training split with --split train"
        )
    n_split = len(ds)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = list(zip(ds["input_ids"], ds["labels"]))
    # Generation must stop where training taught it to: the split's end tokens too.
    for tid in built.eos_token_ids:
        if tid not in tuned.eos_token_ids:
            tuned.eos_token_ids.append(tid)
    items = make_items(tokenizer, rows)
    notes: list[str] = []
    targets = [it.target for it in items if it.prompt_ids]
    labels = label_set(targets)
    if refusal is not None:
        refusal = refusal.strip()
        if not any(t == refusal for t in targets):
            notes.append(f"--refusal {refusal!r} is not the target of any example: no moderation rows")
    else:
        refusal = refusal_line(targets, labels)
    longest = max((len(it.target_ids) for it in items if it.target_ids), default=0)
    if targets and longest > max_new_tokens:
        too_long = sum(1 for it in items if it.target_ids and len(it.target_ids) > max_new_tokens)
        notes.append(f"{too_long} targets are longer than --max-new-tokens {max_new_tokens} "
                     f"(longest {longest} tokens): they cannot match exactly")
    if not targets:
        notes.append("no example has a prompt before its trained tokens (text data or train_on: all): "
                     "loss and perplexity only")

    scores = [score(tuned, "tuned", items, max_new_tokens, batch_size, labels, progress, refusal)]
    eos_ids = list(tuned.eos_token_ids)
    if compare_base and hasattr(tuned.model, "disable_adapter"):
        # A LoRA run: its base is already in memory under the adapter; switching the
        # adapter off gives exactly the base as trained (4-bit for QLoRA, embeddings
        # fitted to the tokenizer) without loading it a second time.
        base = dataclasses.replace(tuned, info={**tuned.info, "source": "base (adapter off)", "load_s": 0.0})
        with tuned.model.disable_adapter():
            scores.insert(0, score(base, "base", items, max_new_tokens, batch_size, labels, progress, refusal))
        _release(tuned)
    elif compare_base:
        _release(tuned)
        progress(f"loading the base model {config.model.name_or_path}")
        try:
            base = chat_mod.load(str(run_dir), base=True, trust_remote_code=trust_remote_code)
        except chat_mod.ModelLoadError as exc:
            raise EvalError(f"--compare-base: {exc}") from None
        if _fit_vocab(base.model, tokenizer):
            notes.append("the base model's embeddings were grown to the tuned tokenizer's vocabulary "
                         "(tokens added in training are untrained in the base)")
        # Same ids, same stop tokens: only the weights differ.
        base.tokenizer, base.eos_token_ids = tokenizer, eos_ids
        scores.insert(0, score(base, "base", items, max_new_tokens, batch_size, labels, progress, refusal))
        _release(base)
    else:
        _release(tuned)

    result = {
        "run_id": run_dir.name,
        "split": split,
        "examples": len(items),
        "split_size": n_split,
        "limit": limit,
        "template": built.template.label,
        "max_new_tokens": max_new_tokens,
        "labels": labels,
        "refusal": refusal,
        "metrics": {s.name: s.metrics() for s in scores},
        "notes": notes,
        "data_s": data_s,
        "total_s": round(time.perf_counter() - started, 3),
        "created": round(time.time(), 3),
    }
    rows_out = []
    for it in items:
        row: dict[str, Any] = {"index": it.index, "prompt": it.prompt, "target": it.target}
        for s in scores:
            row[s.name] = s.outputs[it.index] if it.prompt_ids else None
            row[f"{s.name}_match"] = (s.outputs[it.index] == it.target) if it.prompt_ids else None
            loss = s.losses[it.index]
            row[f"{s.name}_loss"] = round(loss, 5) if loss is not None else None
        row["prompt_text"] = tokenizer.decode(it.prompt_ids or [], skip_special_tokens=False)
        rows_out.append(row)
    result["rows"] = rows_out
    if save:
        out = run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in result.items() if k != "rows"}
        from finetui.engine import atomic

        atomic.write_text(out / "results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        atomic.write_text(out / "results.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows_out))
        result["saved"] = {"results": str(out / "results.json"), "rows": str(out / "results.jsonl")}
    return result


# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


def print_report(result: dict[str, Any], console: Any = None) -> None:
    from rich.table import Table

    from finetui.engine.console import console as make_console

    console = console or make_console()
    metrics = result["metrics"]
    names = [n for n in ("base", "tuned") if n in metrics]
    title = f"{result['run_id']} · {result['split']} split · {result['examples']} examples"
    if result["examples"] < result["split_size"]:
        title += f" of {result['split_size']}"
    summary = Table(title=title, title_justify="left", expand=False)
    summary.add_column("metric")
    for n in names:
        summary.add_column(n, justify="right")
    summary.add_row("eval loss", *(_fmt(metrics[n]["eval_loss"]) for n in names))
    summary.add_row("perplexity", *(_fmt(metrics[n]["perplexity"], "{:.2f}") for n in names))

    def em(n: str) -> str:
        m = metrics[n]
        if m["exact_match"] is None:
            return "—"
        return f"{m['n_exact']}/{m['n_generated']} ({100 * m['exact_match']:.1f}%)"

    summary.add_row("exact match", *(em(n) for n in names))
    if result["labels"] is not None:
        summary.add_row(f"accuracy (labels: {_escape(', '.join(result['labels']))})",
                        *(_fmt(metrics[n]["accuracy"], "{:.1%}") for n in names))
    if result.get("refusal") is not None:
        def rate(n: str, hits: str, rows: str, key: str) -> str:
            m = metrics[n]
            return "—" if m[key] is None else f"{m[hits]}/{m[rows]} ({100 * m[key]:.0f}%)"

        summary.add_row("refusals, off-topic (higher is better)",
                        *(rate(n, "n_refused", "n_off_topic", "refusal_rate") for n in names))
        summary.add_row("false refusals, in-domain (lower is better)",
                        *(rate(n, "n_false_refusals", "n_in_domain", "false_refusal_rate") for n in names))
    summary.add_row("seconds (loss + generation)",
                    *(f"{metrics[n]['loss_s'] + metrics[n]['generate_s']:.1f}" for n in names))
    console.print(summary)

    rows = result["rows"]
    if any(r["target"] for r in rows):
        table = Table(expand=True, show_lines=False)
        table.add_column("#", justify="right", no_wrap=True, width=3)
        for col, ratio in (("prompt", 3), ("target", 3), *((n, 3) for n in names)):
            table.add_column(col + (" output" if col in names else ""), ratio=ratio, no_wrap=True,
                             overflow="ellipsis")

        def cell(row: dict[str, Any], n: str) -> str:
            text = (row.get(n) or "").replace("\n", " ⏎ ")
            if row.get(f"{n}_match"):
                return f"[green]✓[/] {_escape(text)}"
            return f"[red]✗[/] {_escape(text)}"

        for row in rows[:SHOWN_ROWS]:
            table.add_row(str(row["index"]), _escape(row["prompt"].replace("\n", " ⏎ ")),
                          _escape(row["target"].replace("\n", " ⏎ ")), *(cell(row, n) for n in names))
        console.print(table)
        if len(rows) > SHOWN_ROWS:
            console.print(f"… {len(rows) - SHOWN_ROWS} more rows in {result.get('saved', {}).get('rows', 'results.jsonl')}")
    if result.get("refusal") is not None:
        console.print(f"refusal line: {_escape(repr(result['refusal']))} (exact match of the whole reply)")
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {_escape(note)}")
    if "saved" in result:
        console.print(f"saved {result['saved']['results']} and {result['saved']['rows']} "
                      f"({result['total_s']:.1f}s)")


def _escape(text: str) -> str:
    """Data and model output as the report shows them: literal markup, visible controls."""
    from rich.markup import escape

    from finetui.engine.visible import visible

    return escape(visible(text))


def command(args: argparse.Namespace) -> int:
    from finetui.engine.chat import _quiet_libraries

    _quiet_libraries()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    tty = sys.stderr.isatty()
    progress = (lambda m: print(f"· {m}", file=sys.stderr, flush=True)) if tty else None
    result = evaluate(
        args.run,
        split=args.split,
        compare_base=args.compare_base,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=getattr(args, "batch_size", None) or 16,
        progress=progress,
        refusal=getattr(args, "refusal", None),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )
    if args.json:
        from finetui.engine.visible import json_text

        print(json_text(result))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    from finetui.engine import cli

    sys.exit(cli.main(["eval", *sys.argv[1:]]))
