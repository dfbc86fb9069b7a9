"""`finetui export RUN [--out DIR] [--push-to-hub REPO [--private] [--dry-run]] [--gguf [TYPE]]`:
a run's result as a folder ready to share, and optionally on the Hugging Face Hub.

The folder is what ``finetui merge`` writes (:func:`engine.merge.merge`: safetensors
shards, tokenizer, chat template, generation config; a full fine-tune's weights linked as
they are; an up-to-date ``runs/<id>/merged/`` is linked instead of merged again) plus:

- ``generation_config.json`` whose ``eos_token_id`` lists every token the run's template
  ends a reply with, so ``generate`` stops where training taught the model to stop;
- ``finetui.json`` without local paths (it names the run, not the folder on this machine);
- ``README.md``, a model card: YAML front matter the Hub reads (base_model, library_name,
  tags, datasets when they are Hub ids, license when the base model's card states one)
  and a body with the base model, the data (paths, counts, format, template), the method
  and hyperparameters, the run's evaluation (``runs/<id>/eval/results.json``, written by
  ``finetui eval``), a training-loss summary from ``events.jsonl`` and the finetui version.

``--push-to-hub`` creates the repo (``HfApi.create_repo``, ``exist_ok``) and uploads the
folder (``HfApi.upload_folder``) with the token from ``HF_TOKEN`` or ``hf auth login``;
``HF_ENDPOINT`` names another Hub. ``--dry-run`` lists the repo and every file with its
size and touches no network.

GGUF (``--gguf [f16|bf16|f32|q8_0]``): with ``--llama-cpp DIR`` (or ``$FINETUI_LLAMA_CPP``)
llama.cpp's ``convert_hf_to_gguf.py`` writes it, for any architecture llama.cpp knows.
Without llama.cpp, the ``gguf`` package finetui depends on writes it when it can
(:func:`write_gguf_llama`): the gguf package has a GGUFWriter, llama's tensor-name map and
the special-vocabulary reader but no Hugging Face converter, so finetui does the rest for
the llama architecture with a byte-level BPE tokenizer (GPT-2's or Llama 3's split): the
hyperparameters, the vocabulary and merges, the q/k rows in llama.cpp's order. Anything
else stops before any work with a message saying how to get llama.cpp's converter.

Heavy module (torch, transformers, peft through engine.merge): CLI and worker processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetui.engine.errors import ModelError

Progress = Callable[[str, float], None]  # (stage, fraction done 0..1), as engine.merge
GGUF_TYPES = ("f16", "bf16", "f32", "q8_0")
LLAMA_CPP_ENV = "FINETUI_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
CARD = "README.md"
LLAMA_CPP_HOW = (
    "use llama.cpp's converter: `git clone https://github.com/ggml-org/llama.cpp` and "
    "`pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt`, then pass "
    f"--llama-cpp PATH/TO/llama.cpp (or set {LLAMA_CPP_ENV})"
)


class ExportError(RuntimeError):
    """The export cannot run or the push failed; the message says why (one line)."""


@dataclass
class Exported:
    folder: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in the folder, bytes)
    gguf: Path | None = None
    repo: str | None = None  # pushed to (or, with dry_run, would be)
    url: str | None = None


# ---------------------------------------------------------------------------- helpers


def finetui_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("finetui")
    except metadata.PackageNotFoundError:
        return "unknown"


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """Every file under ``folder`` (relative posix path, size), sorted; hidden files and
    folders (a temporary file of an interrupted write, .cache) are not part of an export."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append((rel.as_posix(), path.stat().st_size))
    return found


def _read_events(run_dir: Path) -> list[dict[str, Any]]:
    from finetui.engine import events as ev

    try:
        return ev.read_file(run_dir / "events.jsonl")
    except OSError:
        return []


def _last(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("type") == kind), None)


def _eval_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a folder here (a sample:, a path or a dataset_info entry is not)."""
    if not name or ":" in name or Path(name).expanduser().exists():
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and ".." not in name


def _card_license(base: str | None) -> str | None:
    """The license the base model's own card declares, from a local folder or the Hub cache
    (never the network)."""
    if not base:
        return None
    readme: Path | None = None
    path = Path(base).expanduser()
    if path.is_dir():
        readme = path / CARD
    elif _is_hub_id(base):
        from finetui.engine import hub

        readme = hub.cached_file(base, CARD)  # None: not cached, or a malformed id or cache
    if readme is None:
        return None
    try:
        front = _front_matter(readme.read_text(encoding="utf-8"))
    except OSError:
        return None
    value = front.get("license")
    return str(value) if isinstance(value, (str, int)) and str(value).strip() else None


def _front_matter(text: str) -> dict[str, Any]:
    import yaml

    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------- the model card


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value) if value else "—"
    elif value is None:
        text = "—"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


METHOD_KEYS = ("type", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "use_dora",
               "use_rslora", "init_lora_weights", "loraplus_lr_ratio")
TRAIN_KEYS = ("epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
              "warmup_ratio", "warmup_steps", "optimizer", "weight_decay", "max_grad_norm", "neftune_noise_alpha",
              "precision", "gradient_checkpointing", "seed")
DATA_KEYS = ("max_length", "train_on", "packing", "test_size", "max_samples")


def hyperparameters(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(``section.key``, value) of what shaped the weights: the method (LoRA settings only
    for LoRA/QLoRA), the optimisation and the data limits."""
    method = config.get("method", {})
    rows: list[tuple[str, Any]] = []
    for key in METHOD_KEYS:
        if key in method and (key == "type" or method.get("type") != "full"):
            rows.append((f"method.{key}", method[key]))
    if method.get("type") == "qlora":
        model = config.get("model", {})
        rows += [(f"model.{k}", model[k]) for k in ("quantization", "bnb_4bit_quant_type") if k in model]
    train = config.get("train", {})
    rows += [(f"train.{k}", train[k]) for k in TRAIN_KEYS if k in train]
    if str(train.get("optimizer", "")).startswith("galore"):
        rows += [(f"train.{k}", train[k]) for k in ("galore_rank", "optim_target_modules") if k in train]
    data = config.get("data", {})
    rows += [(f"data.{k}", data[k]) for k in DATA_KEYS if k in data]
    return rows


def loss_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the run's events say about training: steps, first/last/lowest step loss, final
    train loss, best eval loss and its step, runtime, how it ended."""
    steps = [e for e in events if e.get("type") == "step" and isinstance(e.get("loss"), (int, float))]
    evals = [e for e in events if e.get("type") == "eval" and isinstance(e.get("eval_loss"), (int, float))]
    finished = _last(events, "finished") or {}
    metrics = finished.get("metrics") or {}
    out: dict[str, Any] = {"status": finished.get("status"), "steps": metrics.get("steps"),
                           "epoch": metrics.get("epoch"), "runtime_s": metrics.get("runtime_s"),
                           "train_loss": metrics.get("train_loss")}
    if steps:
        lowest = min(steps, key=lambda e: e["loss"])
        out.update(first_loss=steps[0]["loss"], first_step=steps[0].get("step"), last_loss=steps[-1]["loss"],
                   last_step=steps[-1].get("step"), min_loss=lowest["loss"], min_step=lowest.get("step"),
                   total_steps=steps[-1].get("total_steps"))
        if out["steps"] is None:
            out["steps"] = steps[-1].get("step")
    if evals:
        best = min(evals, key=lambda e: e["eval_loss"])
        out.update(best_eval_loss=best["eval_loss"], best_eval_step=best.get("step"),
                   last_eval_loss=evals[-1]["eval_loss"], evals=len(evals))
    return out


def eval_table(results: dict[str, Any]) -> list[str]:
    """The evaluation of ``finetui eval`` as a Markdown table (metric | base | tuned)."""
    metrics = results.get("metrics") or {}
    names = [n for n in ("base", "tuned") if n in metrics]
    if not names:
        return []

    def ratio(m: dict[str, Any], rate: str, hits: str, total: str) -> str:
        return "—" if m.get(rate) is None else f"{m[rate]:.1%} ({m.get(hits)}/{m.get(total)})"

    specs: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("eval loss", lambda m: "—" if m.get("eval_loss") is None else f"{m['eval_loss']:.4f}"),
        ("perplexity", lambda m: "—" if m.get("perplexity") is None else f"{m['perplexity']:.2f}"),
        ("exact match", lambda m: ratio(m, "exact_match", "n_exact", "n_generated")),
    ]
    if results.get("labels"):
        specs.append(("accuracy", lambda m: "—" if m.get("accuracy") is None else f"{m['accuracy']:.1%}"))
    if results.get("refusal") is not None:
        specs.append(("refusals, off-topic", lambda m: ratio(m, "refusal_rate", "n_refused", "n_off_topic")))
        specs.append(("false refusals, in-domain",
                      lambda m: ratio(m, "false_refusal_rate", "n_false_refusals", "n_in_domain")))
    rows = [(label, *(fn(metrics[n]) for n in names)) for label, fn in specs]
    return _table(("metric", *names), rows)


def model_card(run_dir: Path, *, base_model: str | None, method: str | None, title: str | None = None,
               files: list[tuple[str, int]] | None = None, load_as: str = "REPO_OR_FOLDER") -> str:
    """README.md for an exported run (front matter + Markdown); ``load_as`` is what the
    usage example passes to from_pretrained (the Hub repo, else the folder)."""
    import yaml

    from finetui.engine.units import format_bytes, format_duration

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    events = _read_events(run_dir)
    started = _last(events, "run_started") or {}
    if not config and isinstance(started.get("config"), dict):
        config = started["config"]
    data_cfg = config.get("data", {}) or {}
    method = method or (config.get("method") or {}).get("type") or "full"
    version = finetui_version()
    data_paths = [p for p in (data_cfg.get("path"), data_cfg.get("test_path")) if p]
    datasets = [p for p in data_paths if _is_hub_id(p)]

    front: dict[str, Any] = {}
    if base_model and _is_hub_id(base_model):
        front["base_model"] = base_model
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    tags = ["finetui", "text-generation"]
    tags += {"lora": ["lora", "peft-merged"], "qlora": ["qlora", "lora", "peft-merged"]}.get(method, ["full-fine-tune"])
    front["tags"] = tags
    if datasets:
        front["datasets"] = datasets
    license_id = _card_license(base_model)
    if license_id:
        front["license"] = license_id

    info = started.get("data") or {}
    counts = info.get("counts") or {}
    sizes = started.get("datasets") or {}
    method_name = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}.get(method, method)
    lines = [f"# {title or run_dir.name}", ""]
    lines.append(f"A fine-tune of `{base_model or '?'}` ({method_name}) made with "
                 f"[finetui](https://pypi.org/project/finetui/) {version}, run `{run_dir.name}`."
                 + (" The adapter is merged into the weights: this is an ordinary model." if method != "full" else ""))
    lines += ["", "## Base model", ""]
    if base_model and _is_hub_id(base_model):
        lines.append(f"[`{base_model}`](https://huggingface.co/{base_model})"
                     + (f", license `{license_id}`" if license_id else ""))
    else:
        lines.append(f"`{base_model or '?'}` (a local model, not on the Hub)"
                     + (f", license `{license_id}`" if license_id else ""))
    footprint = started.get("footprint") or {}
    if footprint.get("params_total"):
        lines.append(f"\n{footprint['params_total']:,} parameters, {footprint.get('params_trainable', 0):,} trained.")

    lines += ["", "## Data", ""]
    rows: list[tuple[Any, ...]] = [("path", ", ".join(f"`{p}`" for p in data_paths) or "—")]
    if data_cfg.get("subset"):
        rows.append(("subset", data_cfg["subset"]))
    rows.append(("format", info.get("format") or data_cfg.get("format")))
    template = info.get("template") or data_cfg.get("template")
    if template == "tokenizer":
        template = "the model's own chat template (tokenizer)"
    rows.append(("template", template))
    rows.append(("trained on", "assistant replies" if data_cfg.get("train_on", "assistant") == "assistant"
                 else "every token"))
    if counts.get("records") is not None:
        rows.append(("records read", counts["records"]))
    dropped = sum(int(counts.get(k) or 0) for k in ("invalid", "skipped", "no_trained"))
    if counts:
        rows.append(("records dropped", dropped))
    if sizes:
        rows.append(("train examples", sizes.get("train")))
        rows.append(("held-out examples", sizes.get("test", 0)))
    if info.get("trained_tokens") is not None:
        rows.append(("tokens (trained)", f"{info.get('total_tokens', 0):,} ({info['trained_tokens']:,})"))
    if data_cfg.get("max_length"):
        rows.append(("max length", data_cfg["max_length"]))
    lines += _table(("", ""), rows)

    lines += ["", "## Method and hyperparameters", ""]
    lines += _table(("setting", "value"), hyperparameters(config))

    lines += ["", "## Evaluation", ""]
    results = _eval_results(run_dir)
    table = eval_table(results) if results else []
    if table:
        of = results.get("split_size")
        of_text = f" of {of}" if of not in (None, results.get("examples")) else ""
        lines.append(f"`finetui eval` on the {results.get('split', 'test')} split, {results.get('examples')} examples"
                     f"{of_text} (greedy decoding; exact match of the whole reply):")
        lines += [""] + table
    else:
        lines.append("No held-out evaluation was run (`finetui eval RUN` writes one; export again to include it).")

    summary = loss_summary(events)
    lines += ["", "## Training", ""]
    trows: list[tuple[Any, ...]] = []
    if summary.get("status"):
        trows.append(("status", summary["status"]))
    if summary.get("steps") is not None:
        trows.append(("steps", summary["steps"]))
    if summary.get("epoch") is not None:
        trows.append(("epochs", summary["epoch"]))
    if summary.get("first_loss") is not None:
        trows.append(("loss, first step", f"{summary['first_loss']:.4f} (step {summary['first_step']})"))
        trows.append(("loss, last step", f"{summary['last_loss']:.4f} (step {summary['last_step']})"))
        trows.append(("loss, lowest", f"{summary['min_loss']:.4f} (step {summary['min_step']})"))
    if summary.get("train_loss") is not None:
        trows.append(("mean train loss", f"{summary['train_loss']:.4f}"))
    if summary.get("best_eval_loss") is not None:
        trows.append(("eval loss, best", f"{summary['best_eval_loss']:.4f} (step {summary['best_eval_step']})"))
        trows.append(("eval loss, last", f"{summary['last_eval_loss']:.4f}"))
    if summary.get("runtime_s") is not None:
        trows.append(("runtime", format_duration(summary["runtime_s"])))
    devices = started.get("devices")
    if devices:
        trows.append(("devices", devices))
    lines += _table(("", ""), trows) if trows else ["No training events were recorded."]

    if files:
        lines += ["", "## Files", ""]
        lines += _table(("file", "size"), [(f"`{name}`", format_bytes(size)) for name, size in files])

    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"model = AutoModelForCausalLM.from_pretrained({json.dumps(load_as)})",
              f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(load_as)})",
              'messages = [{"role": "user", "content": "Hello!"}]',
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
              "                                       return_dict=True)",
              "reply = model.generate(**inputs, max_new_tokens=128)",
              "print(tokenizer.decode(reply[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
              "```", "", f"Exported with finetui {version}.", ""]
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()
    return f"---\n{head}\n---\n\n" + "\n".join(lines)


# ---------------------------------------------------------------------------- the folder


def _merged_is_current(run_dir: Path) -> bool:
    """``runs/<id>/merged/`` written by `finetui merge` after the adapter was last saved."""
    merged, adapter = run_dir / "merged", run_dir / "adapter"
    try:
        newest = max(p.stat().st_mtime for p in adapter.iterdir() if p.is_file())
        return (merged / "config.json").stat().st_mtime >= newest and any(merged.glob("*.safetensors"))
    except (OSError, ValueError):
        return False


def _prepare_out(out: Path, run_dir: Path) -> None:
    """An empty folder, or a previous export (its files are replaced: stale shards of
    another shard size must not be uploaded with the new ones)."""
    if out.resolve() in (run_dir.resolve(), (run_dir / "adapter").resolve(), (run_dir / "merged").resolve()):
        raise ExportError(f"--out {out}: choose a folder of its own (not the run, its adapter/ or merged/)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file")
    if out.is_dir() and any(out.iterdir()):
        from finetui.engine import modeling

        if not (out / modeling.META_FILE).exists():
            raise ExportError(f"--out {out}: the folder is not empty and holds no earlier export; "
                              "choose a new or empty folder")
        for item in out.iterdir():
            if item.is_file() or item.is_symlink():
                item.unlink()


def _fix_generation_config(out: Path, eos_ids: list[int]) -> None:
    """Every end-of-reply token of the run's template in generation_config.json."""
    from finetui.engine import atomic

    path = out / "generation_config.json"
    try:
        gen = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        try:
            model = json.loads((out / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        gen = {k: model[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if model.get(k) is not None}
    current = gen.get("eos_token_id")
    have = [current] if isinstance(current, int) else list(current or [])
    wanted = have + [i for i in eos_ids if isinstance(i, int) and i not in have]
    if wanted and (wanted != have or not path.exists()):
        gen["eos_token_id"] = wanted[0] if len(wanted) == 1 else wanted
        if path.exists():
            path.unlink()  # a full fine-tune's file is a hard link to the run's own
        atomic.write_text(path, json.dumps(gen, indent=2) + "\n")


def find_converter(llama_cpp: str | os.PathLike | None) -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py from --llama-cpp or $FINETUI_LLAMA_CPP (None when
    neither names one; an ExportError that says how when the folder has none)."""
    where = llama_cpp or os.environ.get(LLAMA_CPP_ENV)
    if not where:
        return None
    path = Path(where).expanduser()
    script = path if path.is_file() else path / CONVERTER
    if not script.is_file():
        raise ExportError(f"no {CONVERTER} in {path}: {LLAMA_CPP_HOW}")
    return script


def write_gguf(folder: Path, script: Path, outtype: str, say: Callable[[str], None]) -> Path:
    """Run llama.cpp's converter on the exported folder; return the .gguf file."""
    target = folder / f"{folder.name}-{outtype}.gguf"
    command = [sys.executable, str(script), str(folder), "--outfile", str(target), "--outtype", outtype]
    say(f"$ {' '.join(command)}")
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if proc.returncode != 0 or not target.is_file():
        tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or [f"exit status {proc.returncode}"]
        raise ExportError(f"llama.cpp's {CONVERTER} failed: {tail[0].strip()}")
    return target


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(tok: dict[str, Any]) -> str | None:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, for the two this
    writer knows exactly: GPT-2's (ByteLevel with its regex) and Llama 3's split."""
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt2"
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split" \
            and (parts[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT and parts[1].get("type") == "ByteLevel" \
            and not parts[1].get("use_regex", True):
        return "llama-bpe"
    return None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gguf_problem(config: dict[str, Any] | None, tok: dict[str, Any] | None) -> str | None:
    """Why the built-in writer cannot convert a model with this config.json and
    tokenizer.json (None: it can)."""
    if config is None:
        return "no readable config.json"
    if config.get("model_type") != "llama":
        return f"the built-in GGUF writer knows the llama architecture only, not {config.get('model_type')!r}"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        return f"rope scaling {rope.get('rope_type') or rope.get('type')!r} is not written by the built-in GGUF writer"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "biases in attention or MLP are not written by the built-in GGUF writer"
    if tok is None:
        return "no tokenizer.json (a fast tokenizer) to write the vocabulary from"
    if (tok.get("model") or {}).get("type") != "BPE" or _pre_tokenizer(tok) is None or tok.get("normalizer"):
        return "the built-in GGUF writer knows byte-level BPE tokenizers with GPT-2's or Llama 3's split only"
    return None


def _permute(weight, n_head: int):
    """Hugging Face's q/k rows (rotary halves) in llama.cpp's order (interleaved pairs), as
    convert_hf_to_gguf.py does."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


def _source_gguf_problem(run_dir: Path, trust_remote_code: bool) -> str | None:
    """gguf_problem for the model a run will export, before any merging: the full
    fine-tune's config, or the base's; the tokenizer saved with the run."""
    from finetui.engine import modeling

    adapter = run_dir / "adapter"
    config = _json(adapter / "config.json")
    if config is None and modeling.is_adapter_dir(adapter):
        try:
            base = modeling.base_config_for_adapter(adapter, trust_remote_code)
            folder = modeling.resolve_model_path(base.name_or_path, base.revision, gguf_file=base.gguf_file)
        except ModelError as exc:
            return f"the base model: {exc}"
        config = _json(folder / "config.json")
    return gguf_problem(config, _json(adapter / "tokenizer.json"))


def write_gguf_llama(folder: Path, target: Path, outtype: str) -> Path:
    """A llama-architecture model folder as one GGUF file, through the gguf package's
    GGUFWriter and its tensor-name map: metadata, the byte-level BPE vocabulary with its
    merges, special tokens and chat template (gguf.SpecialVocab), and every tensor (q/k
    rows permuted; 1-D tensors in float32, the rest in ``outtype``)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config, tok = _json(folder / "config.json"), _json(folder / "tokenizer.json")
    problem = gguf_problem(config, tok)
    if problem:
        raise ExportError(f"{problem}: {LLAMA_CPP_HOW}")
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    hidden, n_layer = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // n_head
    rope = config.get("rope_parameters") or {}
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]

    tmp = target.with_name(f".{target.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(ftype)

    # The vocabulary by id; ids the tokenizer does not use (embeddings padded to a multiple)
    # get placeholder tokens, as llama.cpp's converter writes them.
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(config["vocab_size"]):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=config["vocab_size"])
    special.add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    files = sorted(folder.glob("*.safetensors"))
    seen = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                new = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise ExportError(f"{path.name}: tensor {name} has no GGUF name for llama: {LLAMA_CPP_HOW}")
                data = f.get_tensor(name).float().numpy()
                if name.endswith("q_proj.weight"):
                    data = _permute(data, n_head)
                elif name.endswith("k_proj.weight"):
                    data = _permute(data, n_kv)
                if data.ndim <= 1 or qtype == gguf.GGMLQuantizationType.F32:
                    writer.add_tensor(new, data.astype(np.float32))
                else:
                    kind = qtype
                    if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
                        kind = gguf.GGMLQuantizationType.F16  # rows must be whole Q8_0 blocks
                    writer.add_tensor(new, gguf.quants.quantize(data, kind), raw_dtype=kind)
                seen.add(name)
    if not any(n.startswith("lm_head") for n in seen) and not config.get("tie_word_embeddings", False):
        raise ExportError(f"{folder}: no lm_head weights found")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, target)
    return target


def export(run: str | os.PathLike, out: str | os.PathLike | None = None, *, shard_size: str = "2GB",
           gguf: str | None = None, llama_cpp: str | os.PathLike | None = None, hub_repo: str | None = None,
           progress: Progress | None = None, trust_remote_code: bool = False) -> Exported:
    """Write the run's model, its card and (with ``gguf``) a GGUF file into ``out``
    (default ``runs/<id>/export``). ``hub_repo``: the repo it will be pushed to (the card
    is titled with it and its usage example loads it)."""
    from finetui.engine import atomic, merge, modeling, targets

    report = progress or (lambda stage, fraction: None)
    try:
        run_dir = targets.find_run(str(run))
        adapter = targets.run_adapter(run_dir)
    except targets.NotFound as exc:
        raise ExportError(str(exc)) from None
    if gguf is not None and gguf not in GGUF_TYPES:
        raise ExportError(f"--gguf {gguf}: expected one of {', '.join(GGUF_TYPES)}")
    script = find_converter(llama_cpp) if gguf is not None else None  # before any work
    if gguf is not None and script is None:
        problem = _source_gguf_problem(run_dir, trust_remote_code)
        if problem:
            raise ExportError(f"--gguf: {problem}; {LLAMA_CPP_HOW}")
    folder = Path(out).expanduser() if out is not None else run_dir / "export"
    _prepare_out(folder, run_dir)

    meta = modeling.read_meta(adapter)
    lora = modeling.is_adapter_dir(adapter)
    if lora and _merged_is_current(run_dir):
        report("linking the merged model of `finetui merge`", 0.5)
        merge._link_or_copy(run_dir / "merged", folder)
    else:
        # merge() reports its own stages; the card and the GGUF file come after them.
        def scaled(stage: str, fraction: float) -> None:
            if stage != "done":
                report(stage, 0.85 * fraction)

        merge.merge(run_dir, out=folder, shard_size=shard_size, progress=scaled, trust_remote_code=trust_remote_code)

    report("writing the generation config and the model card", 0.9)
    _fix_generation_config(folder, list(meta.get("eos_token_ids") or []))
    meta.update({"run_id": run_dir.name, "exported_with": f"finetui {finetui_version()}",
                 "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    meta.pop("merged_from", None)  # a path on this machine: not for a published folder
    meta["method"] = meta.get("method") or ("lora" if lora else "full")
    if (folder / modeling.META_FILE).exists():
        (folder / modeling.META_FILE).unlink()  # may be a hard link to the run's own
    atomic.write_text(folder / modeling.META_FILE, json.dumps(meta, indent=1))
    for name in ("README.md", "training_args.bin"):  # peft's or the trainer's, not ours
        if (folder / name).exists():
            (folder / name).unlink()

    gguf_file = None
    if script is not None:
        report(f"writing GGUF ({gguf}) with llama.cpp", 0.92)
        gguf_file = write_gguf(folder, script, gguf, lambda line: report(line, 0.92))
    elif gguf is not None:
        report(f"writing GGUF ({gguf}) with the gguf package", 0.92)
        gguf_file = write_gguf_llama(folder, folder / f"{folder.name}-{gguf}.gguf", gguf)

    base = meta.get("base_model") or (json.loads((adapter / "adapter_config.json").read_text()).get(
        "base_model_name_or_path") if lora else None)
    if not base:
        try:
            import yaml

            base = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model", {}).get("name_or_path")
        except (OSError, ValueError):
            base = None
    method = meta.get("method") if meta.get("method") != "merged" else None
    card = model_card(run_dir, base_model=base, method=method, files=folder_files(folder), title=hub_repo,
                      load_as=hub_repo or str(folder.resolve()))
    atomic.write_text(folder / CARD, card)
    for name in (CARD, modeling.META_FILE):
        os.chmod(folder / name, 0o644)  # atomic writes are private; these are for sharing
    report("done", 1.0)
    return Exported(folder=folder, files=folder_files(folder), gguf=gguf_file)


# ---------------------------------------------------------------------------- the Hub


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def describe_push(folder: Path, repo: str, private: bool) -> list[str]:
    """What --dry-run prints: the repo, then every file with its size, then the total."""
    from finetui.engine.units import format_bytes

    files = folder_files(folder)
    lines = [f"would create {'private' if private else 'public'} model repo {repo} on {_endpoint()} "
             f"(if it does not exist) and upload {len(files)} files from {folder}:"]
    width = max((len(name) for name, _ in files), default=0)
    lines += [f"  {name:<{width}}  {format_bytes(size):>10}  ({size:,} bytes)" for name, size in files]
    total = sum(size for _, size in files)
    lines.append(f"  total {format_bytes(total)} ({total:,} bytes)")
    return lines


def _network_error(exc: BaseException, offline: type) -> bool:
    """A connection, DNS or timeout failure of huggingface_hub's HTTP client (httpx), or
    its offline mode: classes are matched by name, the client library being its choice."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (OSError, offline)) or bool(
        names & {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "ProxyError"})


def check_push(repo: str, token: str | None = None) -> str:
    """What a push needs before any work: a repo id, the network allowed, a token.
    Returns the token."""
    from finetui.engine import hub

    if not re.fullmatch(r"([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", repo):
        raise ExportError(f"--push-to-hub {repo}: expected a repo id like user/name")
    if hub.offline():
        raise ExportError(f"offline (HF_HUB_OFFLINE is set): cannot push to {repo}; "
                          "--dry-run lists what would be uploaded")
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ExportError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def push(folder: Path, repo: str, *, private: bool = False, token: str | None = None,
         commit_message: str | None = None) -> str:
    """Create ``repo`` (if missing) and upload ``folder``; return the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = check_push(repo, token)
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    files = [name for name, _ in folder_files(folder)]
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        repo_id = getattr(url, "repo_id", None) or repo
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files, repo_type="model",
                          commit_message=commit_message or f"finetui export of {folder.name}")
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the Hub refused the push to {repo}: {first}") from None
    except Exception as exc:  # noqa: BLE001 - network failures become one line; the rest propagate
        if not _network_error(exc, OfflineModeIsEnabled):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise ExportError(f"cannot reach the Hub at {endpoint} ({type(exc).__name__}: {first}); "
                          "check the network or HF_ENDPOINT, or use --dry-run") from None
    return str(url)


# ---------------------------------------------------------------------------- command line


def add_parser(sub) -> None:
    from finetui.engine.cli import TRUST_HELP

    x = sub.add_parser("export", help="a run's merged model + model card in a folder; push it to the Hub, write GGUF",
                       description="Write a run's model (merged safetensors, tokenizer, chat template, generation "
                                   "config) and a model card README.md into a folder; optionally push the folder to "
                                   "the Hugging Face Hub, and write a GGUF file (llama.cpp's converter, or the gguf "
                                   "package for Llama-architecture models).")
    x.add_argument("run", help="run id (or unique prefix, or last)")
    x.add_argument("--out", metavar="DIR", help="output folder (default runs/<id>/export); an earlier export there is replaced")
    x.add_argument("--shard-size", default="2GB", metavar="SIZE",
                   help="max safetensors shard size, e.g. 500MB (default 2GB)")
    x.add_argument("--push-to-hub", metavar="REPO", help="create the Hub repo user/name (if missing) and upload the "
                   "folder; token from HF_TOKEN or `hf auth login`, endpoint from HF_ENDPOINT")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    x.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list the repo and every file that "
                   "would be uploaded, with sizes; no network")
    x.add_argument("--gguf", nargs="?", const="f16", choices=GGUF_TYPES, metavar="TYPE",
                   help=f"also write a GGUF file into the folder (TYPE: {', '.join(GGUF_TYPES)}; default f16): "
                   f"with llama.cpp's {CONVERTER} when --llama-cpp or ${LLAMA_CPP_ENV} names it, else with the gguf "
                   "package for llama-architecture models")
    x.add_argument("--llama-cpp", metavar="DIR", help=f"llama.cpp checkout holding {CONVERTER} (default "
                   f"${LLAMA_CPP_ENV})")
    x.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    x.add_argument("--json", action="store_true", help="print the result as one JSON object")


def command(args) -> int:
    def show(stage: str, fraction: float) -> None:  # stderr, also with --json (stdout stays one object)
        print(f"[{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)

    if (args.private or args.dry_run) and not args.push_to_hub:
        raise ExportError("--private and --dry-run go with --push-to-hub REPO")
    if args.push_to_hub and not args.dry_run:
        check_push(args.push_to_hub)  # offline, no token: say so before the export's work
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.modules.setdefault("bitsandbytes", None)  # as engine.merge: the base loads unquantised
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        done = export(args.run, args.out, shard_size=args.shard_size, gguf=args.gguf, llama_cpp=args.llama_cpp,
                      hub_repo=args.push_to_hub, progress=show, trust_remote_code=args.trust_remote_code)
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    result: dict[str, Any] = {"exported": str(done.folder), "files": [{"path": n, "bytes": s} for n, s in done.files],
                              "gguf": str(done.gguf) if done.gguf else None}
    if args.push_to_hub and args.dry_run:
        lines = describe_push(done.folder, args.push_to_hub, args.private)
        result["dry_run"] = {"repo": args.push_to_hub, "private": args.private, "endpoint": _endpoint()}
        if not args.json:
            print("\n".join(lines), flush=True)
    elif args.push_to_hub:
        show(f"pushing to {args.push_to_hub} on {_endpoint()}", 0.95)
        result["pushed"] = push(done.folder, args.push_to_hub, private=args.private)
        show(f"pushed: {result['pushed']}", 1.0)
    if args.json:
        print(json.dumps(result))
    else:
        print(done.folder)
    return 0
