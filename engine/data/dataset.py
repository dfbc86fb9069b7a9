"""Config -> tokenised train/test tables (cached), a report, and collators.

Heavy module: ``transformers`` is imported inside the functions that need it, so importing
this module (e.g. for :func:`length_stats`) stays cheap. ``datasets`` is not used: the
tables are :class:`engine.data.table.TokenTable` (pyarrow), so a trainer reading local data
never imports it (~0.3 s of start-up with pandas).

Pipeline: ``readers.load_records`` -> conversations -> :func:`engine.data.render.render`
(the very function the browser shows) over every record -> drop records that failed to
render or train no token -> split. Raw text longer than ``max_length`` becomes several
examples, its windows (``data.long_text: chunk``, :mod:`engine.data.chunking`), each row
placed ``file:line#chunk2``; the split then keeps a record's windows together.

Caching: the rendered table is written to ``$FINETUI_CACHE/datasets/<key>.arrow`` (default
``~/.cache/finetui/datasets``), where the key hashes the conversations themselves, the
template, the tokenizer (vocabulary, added and special tokens), max_length, train_on,
long_text, text_overlap and the rendering code. The second build with the same inputs
memory-maps that file instead of tokenising again (``report.cache_hit``); a change to any
input is a new key.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from finetui.engine.data import chunking
from finetui.engine.data import render as render_mod
from finetui.engine.data.conversation import Conversation
from finetui.engine.data.formats import MESSAGE_CHARS, clip

CACHE_VERSION = 3  # 3: windows of long texts (2: Arrow IPC files written by engine.data.table; 1: datasets.map caches)
MAX_ISSUES = 200  # issues kept in a report (the total is counted)
# record: the index of the record a row comes from (a long text's windows share it);
# record_tokens / kept_tokens: the record's tokens before truncation or chunking, and those
# its examples keep (on the record's first row, 0 on its other windows)
_INTERNAL_COLUMNS = ("place", "error", "notes", "truncated", "full_length", "trains_end",
                     "record", "record_tokens", "kept_tokens")
MODEL_COLUMNS = ("input_ids", "labels", "length", "n_trained")


class DataError(ValueError):
    """The data cannot be used for training; the message says why, for the user."""


@dataclass
class DataReport:
    source: str
    format: str
    template: str
    end_token: str | None = None
    # records ok invalid truncated no_trained chunked examples train test (ok: records kept;
    # examples: the rows they make, more than ok when long texts are split into windows)
    counts: dict[str, int] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)  # "file:line: message", first MAX_ISSUES
    issues_total: int = 0
    lengths: dict[str, float] = field(default_factory=dict)  # tokens before truncation: min median p95 max mean
    total_tokens: int = 0  # after truncation, over trained-on records
    trained_tokens: int = 0
    # the records' tokens before truncation or chunking, and those the examples keep (a
    # window's overlap counted once): what max_length and data.long_text cost
    tokens_total: int = 0
    tokens_kept: int = 0
    warnings: list[str] = field(default_factory=list)
    cache_hit: bool = False
    added_tokens: list[str] = field(default_factory=list)
    # records read but not trained, by reason (invalid, skipped, no trained token), most first
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuiltData:
    train: Any  # engine.data.table.TokenTable: input_ids, labels, length, n_trained
    test: Any | None
    report: DataReport
    added_tokens: list[str]
    template: render_mod.Template
    eos_token_ids: list[int]  # what generation must stop at (set model.generation_config.eos_token_id)


# ------------------------------------------------------------------------ statistics


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {}
    s = sorted(lengths)
    n = len(s)

    def pct(p: float) -> int:
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {
        "min": s[0],
        "median": median,
        "p95": pct(0.95),
        "max": s[-1],
        "mean": round(sum(s) / n, 1),
    }


def histogram(lengths: Sequence[int], bins: int = 10) -> list[dict[str, int]]:
    """Equal-width bins over [min, max]: [{lo, hi, count}] (hi inclusive)."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    out = [{"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "count": 0} for i in range(bins)]
    for n in lengths:
        out[min(bins - 1, (n - lo) // width)]["count"] += 1
    while out and out[-1]["count"] == 0:
        out.pop()
    return out


def reason_of(message: str) -> str:
    """A problem's message without its particulars, to count alike ones: ``empty text`` for
    ``field 'answer': empty text``, the template's words for a render error."""
    text = message
    if text.startswith("template ") and ": " in text:
        text = text.split(": ", 1)[1]
    if text.startswith("field '") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.split(" (")[0].split(": ")[0].strip()[:80] or "invalid"


NO_TRAINED = "no trained token"


def drop_reasons(loaded, render_errors: Iterable[str] = (), no_trained: int = 0) -> dict[str, int]:
    """Records read but not trained, by reason, most frequent first: the reader's invalid
    records and skipped rows (every one counted, not only those kept as examples), records
    the template could not render, records with no trained token."""
    counts: Counter[str] = Counter()
    counts.update(dict(getattr(loaded, "issue_kinds", None) or {}))
    counts.update(dict(getattr(loaded, "skip_kinds", None) or {}))
    counts.update(reason_of(message) for message in render_errors)
    if no_trained:
        counts[NO_TRAINED] += no_trained
    return dict(counts.most_common())


def no_trained_reason(truncated: bool, max_length: int) -> str:
    if truncated:
        return f"no trained token within max_length {max_length} (the replies start later; dropped)"
    return "no trained token (no assistant reply to learn; dropped)"


# ------------------------------------------------------------------------ building


def cache_dir() -> Path:
    from finetui.engine.tiny import cache_root

    return cache_root() / "datasets"


def _tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(
        [type(tokenizer).__name__, tokenizer.special_tokens_map, render_mod._bos_prefix(tokenizer)],
        sort_keys=True, default=str,
    ).encode())
    return h.hexdigest()


def _code_digest() -> str:
    h = hashlib.sha256()
    for module in ("render.py", "templates.py", "conversation.py", "dataset.py", "table.py", "chunking.py",
                   "bigrecords.py", "skeleton.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    return h.hexdigest()


def cache_key(rows: Sequence[tuple[str, str]], tokenizer, template: render_mod.Template, *, max_length: int, train_on: str,
              long_text: str = "chunk", text_overlap: int = 0) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, template.name, template.source, max_length, train_on, long_text,
                         text_overlap]).encode())
    h.update(_tokenizer_digest(tokenizer).encode())
    h.update(_code_digest().encode())
    for place, conv in rows:
        h.update(place.encode())
        h.update(b"\0")
        h.update(conv.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _render_rows(rows: Sequence[tuple[str, str]], tokenizer, template, max_length: int, train_on: str,
                 long_text: str = "chunk", text_overlap: int = 0, first: int = 0) -> dict[str, list]:
    """Render each (place, serialised conversation): the columns of a tokenised table, one
    row per example (a long text's windows are rows of their own, placed ``#chunkN``).
    ``first``: the record index of ``rows[0]``."""
    end_id = None
    if template.end_token is not None:
        end_id = tokenizer.convert_tokens_to_ids(template.end_token)
    out: dict[str, list] = {k: [] for k in (*MODEL_COLUMNS, *_INTERNAL_COLUMNS)}

    def add(place, ids, labels, n_trained, error, notes, truncated, full, trains_end, record, record_tokens, kept):
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["n_trained"].append(n_trained)
        out["place"].append(place)
        out["error"].append(error)
        out["notes"].append(notes)
        out["truncated"].append(truncated)
        out["full_length"].append(full)
        out["trains_end"].append(trains_end)
        out["record"].append(record)
        out["record_tokens"].append(record_tokens)
        out["kept_tokens"].append(kept)

    for record, (place, raw) in enumerate(rows, first):
        try:
            conv = Conversation.from_dict(json.loads(raw))
            rendered = chunking.render_record(conv, tokenizer, template, train_on=train_on, max_length=max_length,
                                              long_text=long_text, overlap=text_overlap)
        except render_mod.RenderError as exc:
            add(place, [], [], 0, clip(str(exc), MESSAGE_CHARS), "", False, 0, False, record, 0, 0)
            continue
        for k, ex in enumerate(rendered.examples):
            where = f"{place}#chunk{k + 1}" if rendered.chunked else place
            # a window the next one continues has no end token to train: not a missing one
            continued = k + 1 < len(rendered.examples)
            add(where, ex.input_ids, ex.labels, ex.n_trained, "", "; ".join(ex.notes), ex.truncated, ex.full_tokens,
                continued or (end_id is not None and end_id in ex.labels), record,
                rendered.full_tokens if k == 0 else 0, rendered.kept_tokens if k == 0 else 0)
    return out


def _place(where: Any) -> str:
    """A RawRecord's ``file:line`` (or a plain string place)."""
    return str(getattr(where, "place", where))


def tokenise(
    conversations: Iterable[tuple[str, Conversation]],
    tokenizer,
    template: render_mod.Template,
    *,
    max_length: int,
    train_on: str,
    num_proc: int = 1,
    long_text: str = "chunk",
    text_overlap: int = 0,
):
    """Render and tokenise (place, Conversation) pairs, cached by content; raw text longer
    than ``max_length`` is split into windows (``long_text="chunk"``) or truncated.

    Returns (TokenTable with model + internal columns, cache_hit). A miss renders in this
    process, or in ``num_proc`` forked processes (contiguous chunks, joined in order), and
    writes ``render-<key>.arrow``; a hit memory-maps that file."""
    from finetui.engine.data.table import TokenTable

    render_mod.detect_end_token(tokenizer, template)  # once, before workers fork
    rows = [(_place(where), json.dumps(conv.to_dict(), ensure_ascii=False, sort_keys=True)) for where, conv in conversations]
    chunking.check(long_text, text_overlap, max_length)
    key = cache_key(rows, tokenizer, template, max_length=max_length, train_on=train_on, long_text=long_text,
                    text_overlap=text_overlap)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cache_file = folder / f"render-{key}.arrow"
    if cache_file.exists():
        try:
            return TokenTable.read(cache_file, key), True
        except (OSError, ValueError) as exc:  # truncated or foreign file: render again
            print(f"finetui: ignoring unreadable cache file {cache_file} ({exc})", file=sys.stderr)
    args = (tokenizer, template, max_length, train_on, long_text, text_overlap)
    workers = min(num_proc, len(rows)) if num_proc and num_proc > 1 else 1
    if workers > 1:
        columns = _render_in_processes(rows, args, workers)
    else:
        columns = _render_rows(rows, *args)
    table = TokenTable.from_columns(columns, key)
    table.write(cache_file)
    return table, False


_worker_args: tuple | None = None  # (tokenizer, template, max_length, train_on, long_text, overlap) in forked workers


def _render_chunk(part: tuple[int, list[tuple[str, str]]]) -> dict[str, list]:
    first, chunk = part
    return _render_rows(chunk, *_worker_args, first=first)


def _render_in_processes(rows: list[tuple[str, str]], args: tuple, workers: int) -> dict[str, list]:
    """_render_rows over ``workers`` forked processes; the columns joined in row order."""
    import multiprocessing

    global _worker_args
    size = math.ceil(len(rows) / workers)
    chunks = [(i, rows[i:i + size]) for i in range(0, len(rows), size)]
    _worker_args = args  # inherited by the forked workers, not pickled per chunk
    try:
        with multiprocessing.get_context("fork").Pool(len(chunks)) as pool:
            parts = pool.map(_render_chunk, chunks)
    finally:
        _worker_args = None
    return {name: [v for part in parts for v in part[name]] for name in parts[0]}


def build(config, tokenizer) -> BuiltData:
    """Read, render, tokenise and split ``config.data`` (an ``engine.config.Config``)."""
    from finetui.engine.data import readers

    data = config.data
    template = render_mod.resolve_template(tokenizer, data.template)
    added = render_mod.prepare_tokenizer(tokenizer, template)

    loaded = _load(readers, data, data.split)
    train_ds, report, records = _process(loaded, tokenizer, template, data, source=data.path)
    report.added_tokens = list(added)

    test_ds = None
    if data.test_path or data.test_split:
        if data.test_path:
            test_loaded = _load(readers, data, data.split, path=data.test_path)
            test_source = data.test_path
        else:
            test_loaded = _load(readers, data, data.test_split)
            test_source = f"{data.path} [{data.test_split}]"
        test_ds, test_report, _ = _process(test_loaded, tokenizer, template, data, source=test_source)
        report.issues.extend(test_report.issues[: max(0, MAX_ISSUES - len(report.issues))])
        report.issues_total += test_report.issues_total
        report.cache_hit = report.cache_hit and test_report.cache_hit
        for key in ("invalid", "no_trained", "truncated", "chunked"):
            report.counts[f"test_{key}"] = test_report.counts.get(key, 0)
    elif data.test_size > 0 and len(set(records)) >= 2 and len(set(records)) < len(records):
        # windows of one text stay on one side: a held-out window beside its trained
        # neighbours would measure how well the model remembers the text
        train_ds, test_ds = _split_records(train_ds, records, data.test_size, config.train.seed)
    elif data.test_size > 0 and len(train_ds) >= 2:
        n_test = min(len(train_ds) - 1, max(1, round(len(train_ds) * data.test_size)))
        parts = train_ds.train_test_split(test_size=n_test, seed=config.train.seed, shuffle=True)
        train_ds, test_ds = parts["train"], parts["test"]
    report.counts["train"] = len(train_ds)
    report.counts["test"] = len(test_ds) if test_ds is not None else 0
    return BuiltData(
        train=train_ds,
        test=test_ds,
        report=report,
        added_tokens=list(added),
        template=template,
        eos_token_ids=render_mod.generation_eos_ids(tokenizer, template),
    )


def _split_records(table, records: list[int], test_size: float, seed: int):
    """(train, test) with whole records on each side (a long text's windows together): the
    test part is ``test_size`` of the records, drawn as ``train_test_split`` draws rows."""
    import numpy as np

    distinct = sorted(set(records))
    n_test = min(len(distinct) - 1, max(1, round(len(distinct) * test_size)))
    order = np.random.default_rng(seed).permutation(len(distinct))
    test = {distinct[k] for k in order[:n_test].tolist()}
    return (table.select([i for i, r in enumerate(records) if r not in test]),
            table.select([i for i, r in enumerate(records) if r in test]))


def tokens_line(counts: dict[str, int], tokens_kept: int, tokens_total: int, max_length: int,
                text_truncated: int = 0) -> str | None:
    """What max_length keeps of the records' tokens, when it cuts or splits any: the line the
    trainer's data report and ``finetui data inspect`` print (None when every record fits)."""
    chunked, truncated = counts.get("chunked", 0), counts.get("truncated", 0)
    if not (chunked or truncated) or not tokens_total:
        return None
    share = 100 * tokens_kept / tokens_total
    parts = [f"{tokens_kept:,} of {tokens_total:,} tokens kept ({share:.1f}%)"]
    if chunked:
        parts.append(f"{chunked} record{'s' if chunked != 1 else ''} longer than max_length {max_length} split "
                     f"into {counts.get('windows', 0)} windows (data.long_text: chunk)")
    if truncated:
        hint = (f" ({text_truncated} raw text{'s' if text_truncated != 1 else ''}: data.long_text: chunk trains "
                f"{'them' if text_truncated != 1 else 'it'} whole)" if text_truncated else "")
        parts.append(f"{truncated} record{'s' if truncated != 1 else ''} truncated at max_length {max_length}{hint}")
    return "; ".join(parts)


def _load(readers, data, split: str, path: str | None = None):
    try:
        return readers.load_records(
            path or data.path,
            format=data.format,
            columns=dict(data.columns) or None,
            split=split,
            subset=data.subset,
            streaming=data.streaming,
            max_samples=data.max_samples,
            on_error=data.on_error,
            roles=dict(getattr(data, "roles", None) or {}) or None,
        )
    except (OSError, ValueError) as exc:
        raise DataError(str(exc).strip() or type(exc).__name__) from None


def _process(loaded, tokenizer, template, data, *, source: str):
    """Tokenise a LoadResult; drop what cannot train; build its report."""
    conversations = list(loaded.conversations)
    issues = [str(issue) for issue in (loaded.issues or [])]
    n_read_issues = len(issues)
    read_counts = dict(loaded.counts or {})
    read_invalid = int(read_counts.get("invalid", read_counts.get("skipped", 0)) or 0)
    read_skipped = int(read_counts.get("skipped", 0) or 0) if "invalid" in read_counts else 0
    if not conversations:
        detail = f": {issues[0]}" if issues else ""
        raise DataError(f"{source}: no usable records{detail}")
    table, cache_hit = tokenise(
        conversations, tokenizer, template,
        max_length=data.max_length, train_on=data.train_on, num_proc=data.num_proc,
        long_text=getattr(data, "long_text", "chunk"), text_overlap=getattr(data, "text_overlap", 0),
    )
    col = table.__getitem__  # a whole column as a list, no row decoding
    places, errors, n_trained = col("place"), col("error"), col("n_trained")
    truncated, full_length, length = col("truncated"), col("full_length"), col("length")
    notes, trains_end = col("notes"), col("trains_end")
    records, record_tokens, kept_tokens = col("record"), col("record_tokens"), col("kept_tokens")

    if data.on_error == "strict":
        for place, err in zip(places, errors):
            if err:
                raise DataError(f"{place}: {err}")

    keep: list[int] = []
    render_invalid = no_trained = n_truncated = 0
    for i, (place, err) in enumerate(zip(places, errors)):
        if err:
            render_invalid += 1
            issues.append(f"{place}: {err}")
        elif n_trained[i] == 0:
            no_trained += 1
            issues.append(f"{place}: {no_trained_reason(truncated[i], data.max_length)}")
        else:
            keep.append(i)
        if truncated[i] and not err:
            n_truncated += 1
    if not keep:
        first = f" (first: {issues[0]})" if issues else ""
        raise DataError(f"{source}: no record has a trained token{first}")
    # a long text split into windows: its rows share one record
    windows = Counter(records[i] for i, err in enumerate(errors) if not err)
    n_chunked = sum(1 for n in windows.values() if n > 1)
    tokens_total = sum(record_tokens[i] for i, err in enumerate(errors) if not err)
    tokens_kept = sum(kept_tokens[i] for i, err in enumerate(errors) if not err)
    text_truncated = sum(1 for i, t in enumerate(truncated) if t and conversations[records[i]][1].kind == "text")

    rendered = [i for i, err in enumerate(errors) if not err]
    summary = [
        {"n_trained": n_trained[i], "truncated": truncated[i], "trains_end": trains_end[i],
         "notes": [notes[i]] if notes[i] else []}
        for i in rendered
    ]
    # rows skipped (KTO label false), records repaired, preference pairs: said before training
    data_notes = getattr(loaded, "notes", None)
    warnings = [*(data_notes() if data_notes else []),
                *render_mod.preflight(tokenizer, template, summary, max_length=data.max_length)]
    counts = {"truncated": n_truncated, "chunked": n_chunked,
              "windows": sum(n for n in windows.values() if n > 1)}
    kept_line = tokens_line(counts, tokens_kept, tokens_total, data.max_length, text_truncated)
    if kept_line:
        warnings.append(kept_line)

    ds = table if len(keep) == len(table) else table.select(keep)
    ds = ds.remove_columns(list(_INTERNAL_COLUMNS))
    report = DataReport(
        source=source,
        format=str(getattr(loaded, "format", data.format)),
        template=template.label,
        end_token=template.end_token,
        counts={
            "records": len(conversations) + read_invalid + read_skipped,
            "ok": len({records[i] for i in keep}),
            "invalid": read_invalid + render_invalid,
            "skipped": read_skipped,
            "repaired": int(read_counts.get("repaired", 0) or 0),
            "truncated": n_truncated,
            "no_trained": no_trained,
            "chunked": n_chunked,
            "examples": len(keep),
        },
        issues=issues[:MAX_ISSUES],
        issues_total=read_invalid + len(issues) - n_read_issues,
        lengths=length_stats([full_length[i] for i in rendered]),
        total_tokens=sum(length[i] for i in keep),
        trained_tokens=sum(n_trained[i] for i in keep),
        tokens_total=tokens_total,
        tokens_kept=tokens_kept,
        warnings=warnings,
        cache_hit=cache_hit,
        reasons=drop_reasons(loaded, (err for err in errors if err), no_trained),
    )
    return ds, report, [records[i] for i in keep]


# ------------------------------------------------------------------------ collators


class ModelInputs:
    """Pass only the model's columns (input_ids, labels) to the wrapped collator, so
    bookkeeping columns (length, n_trained) never reach ``model.forward``; add ``extra``
    keyword arguments to every batch. ``longest_first``: the batch's examples in order of
    length, longest first (a packed row: examples of one length end up side by side, and
    engine.perf.attention runs them as one batched kernel call; the loss is a sum over tokens,
    so the order within a batch changes nothing else)."""

    def __init__(self, inner, keys: tuple[str, ...] = ("input_ids", "labels"), extra: dict[str, Any] | None = None,
                 longest_first: bool = False):
        self.inner = inner
        self.keys = keys
        self.extra = dict(extra or {})
        self.longest_first = longest_first

    def __call__(self, features):
        if self.longest_first:
            features = sorted(features, key=lambda f: len(f["input_ids"]), reverse=True)  # stable
        batch = self.inner([{k: f[k] for k in self.keys if k in f} for f in features])
        batch.update(self.extra)
        return batch


class TrainedLogitsOnly:
    """Wraps a training collator so the model projects to the vocabulary only where a label
    is trained.

    A causal LM's ``lm_head`` and cross-entropy run over every position, yet only positions
    whose next token is trained contribute to the loss: prompts, padding and each row's last
    token do not. The batch gains ``logits_to_keep`` (a boolean (batch, length) mask that
    transformers' ``slice_logits_to_keep`` applies before ``lm_head``) and ``shift_labels``
    (the targets of exactly those positions, which ``ForCausalLMLoss`` then uses as they
    are). The loss, its gradients and the Trainer's ``num_items_in_batch`` (counted from
    ``shift_labels``) are unchanged (tests/test_trained_logits.py); the logits tensor, the
    largest activation of a large-vocabulary model (8 x 1,024 tokens x 151k vocab in fp32 is
    5 GB), shrinks to the trained positions. Use only where :func:`trained_logits_supported`.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        import torch

        batch = self.inner(features)
        labels = batch["labels"]
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=render_mod.IGNORE)
        keep = shifted != render_mod.IGNORE
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = shifted[keep]
        return batch


def trained_logits_supported(model) -> bool:
    """Whether ``model`` (or the base of a peft model) takes a boolean ``logits_to_keep``
    and computes transformers' causal-LM loss, which uses ``shift_labels`` as given."""
    import inspect

    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    custom = getattr(base, "_loss_function", None)  # set by whoever replaced the loss
    if custom is not None:
        return custom is ForCausalLMLoss
    # transformers falls back to ForCausalLM for a missing or unknown loss_type
    return LOSS_MAPPING.get(getattr(base, "loss_type", None) or "ForCausalLM", ForCausalLMLoss) is ForCausalLMLoss


def collator(config, tokenizer):
    """Batches for the trainer.

    padding (default): ``DataCollatorForSeq2Seq`` - input_ids padded with the pad id on the
    right, labels with -100, attention_mask; to a multiple of 8 on a GPU (tensor cores).
    packing (``data.packing``): ``DataCollatorWithFlattening`` - the batch as one row
    without padding (longest example first), position_ids restarting per example and -100
    on each example's first label, so no token attends to or predicts across examples
    (sdpa/eager get a block-diagonal mask from the position_ids; flash_attention_2 gets
    cu_seq_lens). Packed batches carry ``use_cache=False`` (see below).
    """
    import copy

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if config.data.packing:
        flash = config.model.attn_implementation == "flash_attention_2"
        # use_cache=False: with a KV cache object present, transformers does not derive the
        # block-diagonal mask from position_ids, and examples would attend to each other
        # (tests/test_packing_equivalence.py shows the difference).
        return ModelInputs(
            DataCollatorWithFlattening(
                return_position_ids=True, separator_id=render_mod.IGNORE, return_flash_attn_kwargs=flash,
            ),
            extra={"use_cache": False},
            longest_first=True,
        )
    if tokenizer.pad_token is None:
        raise DataError("tokenizer has no pad token (call engine.data.render.prepare_tokenizer first)")
    tok = copy.copy(tokenizer)
    tok.padding_side = "right"  # left padding would shift position ids in training
    return ModelInputs(DataCollatorForSeq2Seq(
        tok,
        padding=True,
        label_pad_token_id=render_mod.IGNORE,
        pad_to_multiple_of=8 if _on_gpu(config) else None,
        return_tensors="pt",
    ))


def _on_gpu(config) -> bool:
    if config.model.device == "cpu":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
