"""``finetui data inspect``: what a dataset becomes once rendered for training.

Prints the source and detected format, record counts (ok / invalid / skipped / repaired /
truncated / no trained token), the first issues with ``file:line``, what is not trained as
written (rows skipped with their reason, records kept after a repair, preference pairs
trained on their chosen reply), token length statistics with a text histogram, pre-flight
warnings, and one rendered example with its trained tokens marked (green on a terminal,
``«»`` elsewhere). ``--json`` prints all of it as one JSON object.

The CLI imports this module for every ``finetui data ...`` call, so it imports nothing
heavy at module level: the tokenizer, readers and renderer are imported in
:func:`command`. Rendering is :func:`engine.data.render.render`, the same function that
builds the training set, so what is shown is what is trained.

At scale (a million records): records stream from the reader and are not kept; batches of
them render together (one tokenizer call a batch) in a worker process per core
(``--num-proc``); what each leaves is a few numbers, so memory stays flat. On a terminal a
progress bar on stderr says how far the reading is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from finetui.engine import hub
from finetui.engine.data.formats import MESSAGE_CHARS, clip
from finetui.engine.visible import json_text, visible
from finetui.engine.json_errors import error_kind, json_error

SHOW_ISSUES = 5
HIST_BINS = 10
BAR_WIDTH = 36
OPEN_MARK, CLOSE_MARK = "\u00ab", "\u00bb"  # « »


class InspectError(ValueError):
    """Unusable input, phrased for the user (engine.cli prints it on one line)."""


def command(args) -> int:
    """Exit status 0 when at least one record is usable, 1 otherwise (no usable record, or
    an input that cannot be read). With ``--json`` an error is a JSON object on stdout too,
    engine.json_errors' shape: ``{"ok": false, "error": {"kind": "data", "message": ...,
    "where": "file:line" | "--option" | null}}`` (plus the report when the records were
    read but none is usable)."""
    if getattr(args, "data_command", "inspect") not in (None, "inspect"):
        raise InspectError(f"unknown data command: {args.data_command}")
    as_json = bool(getattr(args, "json", False))
    try:
        result = _run(args)
    except Exception as exc:  # what engine.cli would print as one line
        if not as_json or os.environ.get("FINETUI_DEBUG"):
            raise
        print(json_text(error_object(exc), indent=2))
        return 1
    unusable = result["counts"]["ok"] == 0
    if unusable:
        result.update(no_usable_error(result))
    if as_json:
        print(json_text(result, indent=2))
    else:
        print_report(result)
        if unusable:
            print(f"finetui: {visible(result['error']['message'])}", file=sys.stderr)
    return 1 if unusable else 0


def no_usable_error(result: dict[str, Any]) -> dict[str, Any]:
    """The ``ok`` and ``error`` (engine.json_errors) of a report in which no record can be trained."""
    c = result["counts"]
    issues = result.get("issues") or []
    first = issues[0] if issues else ((result.get("skipped") or [None])[0])
    why = f"; first: {first}" if first else ""
    place = _split_place(first)[0] if first else None
    return json_error("data", f"{result['source']}: no usable record ({c['records']} read: {c['invalid']} invalid, "
                              f"{c.get('skipped', 0)} skipped, {c['no_trained']} with no trained token){why}",
                      place or result["source"])


def error_object(exc: BaseException) -> dict[str, Any]:
    """finetui.engine.json_errors' object for an input that cannot be inspected."""
    message = clip(str(exc).strip() or type(exc).__name__, MESSAGE_CHARS)
    place = getattr(exc, "place", None)
    if place is None:
        place, _ = _split_place(message)
    kind = error_kind(exc)
    return json_error("data" if kind == "internal" else kind, message, place)


def _split_place(message: str) -> tuple[str | None, str]:
    """``("data.jsonl:17", rest)`` for ``"data.jsonl:17: rest"``; ``(None, message)`` when
    the message does not start with a place (a file, ``file:line``, ``--option value``)."""
    head, sep, rest = message.partition(": ")
    if not sep or not head or "(" in head or len(head) > 1000:
        return None, message
    return head, rest


def _run(args) -> dict[str, Any]:
    return inspect(
        args.path,
        format=args.format,
        template=args.template,
        model=args.model,
        max_length=args.max_length,
        train_on=args.train_on,
        columns=parse_columns(args.columns),
        dataset_dir=args.dataset_dir,
        split=args.split,
        subset=args.subset,
        example=args.example,
        strict=args.strict,
        long_text=getattr(args, "long_text", "chunk"),
        text_overlap=getattr(args, "text_overlap", 0),
        roles=parse_roles(getattr(args, "roles", None)),
        num_proc=getattr(args, "num_proc", None),
    )


def parse_columns(items: list[str] | None) -> dict[str, str]:
    columns: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise InspectError(f"--column {item}: expected CANON=NAME, e.g. --column question=prompt")
        canon, name = (part.strip() for part in item.split("=", 1))
        if not canon or not name:
            raise InspectError(f"--column {item}: expected CANON=NAME, e.g. --column question=prompt")
        columns[canon] = name
    return columns


def parse_roles(items: list[str] | str | None) -> dict[str, str]:
    """``--roles Host=user,Guest=assistant`` (repeatable): a transcript's speaker -> role."""
    from finetui.engine.data.transcripts import ROLES

    if isinstance(items, str):
        items = [items]
    roles: dict[str, str] = {}
    for item in items or ():
        for pair in filter(str.strip, item.split(",")):
            speaker, sep, role = (part.strip() for part in pair.partition("="))
            if not sep or not speaker or role.lower() not in ROLES:
                raise InspectError(f"--roles {pair.strip()}: expected SPEAKER=ROLE with a role of "
                                   f"{', '.join(ROLES)}, e.g. --roles Host=user,Guest=assistant")
            roles[speaker] = role.lower()
    return roles


def load_tokenizer(name_or_path: str):
    """The tokenizer of ``tiny``, a local folder, or a model in the Hugging Face cache.

    Uses ``engine.modeling.load_tokenizer`` when that module exists (the trainer's loader,
    so inspect sees exactly the training tokenizer); else loads it here."""
    import importlib.util

    if importlib.util.find_spec("finetui.engine.modeling") is not None:
        from finetui.engine import modeling

        loader = getattr(modeling, "load_tokenizer", None)
        if loader is not None:
            return loader(name_or_path)
    return _load_tokenizer(name_or_path)


def _load_tokenizer(name_or_path: str):
    import os

    from finetui.engine import tiny

    if tiny.is_tiny(name_or_path):
        name_or_path = str(tiny.path())
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InspectError(f"--model {name_or_path}: not a model folder")
        try:
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise InspectError(f"--model {name_or_path}: cannot load its tokenizer: {_first_line(exc)}") from None
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError):
        pass
    if hub.env_offline("HF_HUB_OFFLINE"):
        raise InspectError(
            f"--model {name_or_path}: not a local folder and not in the Hugging Face cache "
            "(offline: HF_HUB_OFFLINE is set)"
        )
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise InspectError(
            f"--model {name_or_path}: not a local folder, not in the Hugging Face cache, and "
            f"not downloadable ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def inspect(
    path: str,
    *,
    format: str = "auto",
    template: str = "auto",
    model: str = "tiny",
    max_length: int = 512,
    train_on: str = "assistant",
    columns: dict[str, str] | None = None,
    dataset_dir: str | None = None,
    split: str = "train",
    subset: str | None = None,
    example: int = 0,
    strict: bool = False,
    tokenizer=None,
    long_text: str = "chunk",
    text_overlap: int = 0,
    roles: dict[str, str] | None = None,
    num_proc: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Everything ``finetui data inspect`` shows, as plain data (what ``--json`` prints).

    Raw text longer than ``max_length`` is split into windows (``long_text="chunk"``, as
    ``data.long_text`` trains it) or truncated; counts say how many records were chunked
    and how many examples they make, ``tokens_kept`` / ``tokens_total`` what is trained of
    the records' tokens. ``num_proc``: processes that render (None: one per core);
    ``progress``: a bar on stderr (None: when stderr is a terminal)."""
    from finetui.engine.data import chunking
    from finetui.engine.data import dataset as data_mod
    from finetui.engine.data import readers, render

    if max_length < 1:
        raise InspectError(f"--max-length {max_length}: must be at least 1")
    if num_proc is not None and num_proc < 1:
        raise InspectError(f"--num-proc {num_proc}: must be at least 1")
    if long_text not in chunking.LONG_TEXT:
        raise InspectError(f"--long-text {long_text}: expected {' or '.join(chunking.LONG_TEXT)}")
    if text_overlap < 0 or 2 * text_overlap >= max_length:
        raise InspectError(f"--text-overlap {text_overlap}: must be at least 0 and less than half of "
                           f"--max-length ({max_length})")
    source = _source_of(readers, path, dataset_dir, split, subset)
    bar = _Progress(source, enabled=progress)
    workers = _workers(num_proc)
    # a big source renders in fresh workers: their fork server starts now, so that its
    # imports run on another core while this process loads the tokenizer
    server = _fork_server() if workers > 1 and bar.total_bytes >= MIMALLOC_BYTES else None
    if tokenizer is None:
        tokenizer = load_tokenizer(model)
    try:
        tmpl = render.resolve_template(tokenizer, template)
    except render.TemplateError as exc:
        raise InspectError(str(exc).replace("data.template", "--template", 1)) from None
    added = render.prepare_tokenizer(tokenizer, tmpl)
    render.detect_end_token(tokenizer, tmpl)  # once, before worker processes fork
    end_id = tokenizer.convert_tokens_to_ids(tmpl.end_token) if tmpl.end_token else None
    job = _Job(tokenizer, tmpl, train_on, max_length, long_text, text_overlap, end_id)
    tally = _Tally(max_length, strict)
    wanted: list[tuple[int, str, Any]] = []  # the record --example shows

    def each(record, conv) -> None:
        index = pipeline.records
        if index == example:
            wanted.append((index, _place(record), conv))
        pipeline.add(record, conv)  # its place is made only if the report names it

    with bar, _Pipeline(job, tally, workers, bar, server=server) as pipeline:
        loaded = readers.load_records(
            path,
            format=format,
            columns=columns or None,
            dataset_dir=dataset_dir,
            split=split,
            subset=subset,
            on_error="strict" if strict else "skip",
            roles=roles or None,
            keep_raw=True,  # each() keeps only the record's place: no copy without its data
            each=each,
        )
    n_usable = pipeline.records
    # no usable record is a report too (its counts and issues say why); command() exits 1
    if n_usable and (example < 0 or example >= n_usable):
        raise InspectError(f"--example {example}: the dataset has {n_usable} usable records (0-based)")

    read_invalid = int(loaded.counts.get("invalid", 0))
    skipped = int(loaded.counts.get("skipped", 0))
    repaired = int(loaded.counts.get("repaired", 0))
    issues = [str(issue) for issue in loaded.issues] + tally.issues
    shown: dict[str, Any] | None = None
    for i, place, conv in wanted:
        try:
            rendered = chunking.render_record(conv, tokenizer, tmpl, train_on=train_on, max_length=max_length,
                                              long_text=long_text, overlap=text_overlap)
        except render.RenderError as exc:
            shown = {"index": i, "place": place, "error": clip(str(exc), MESSAGE_CHARS)}
        else:
            ex = rendered.examples[0]
            where = f"{place}#chunk1" if rendered.chunked else place
            shown = {"index": i, "place": where, "windows": len(rendered.examples), **_example_dict(ex, tokenizer)}
    summaries = tally.summaries()
    warnings = render.preflight(tokenizer, tmpl, summaries, max_length=max_length)
    if added:
        warnings.append(
            f"the tokenizer lacks the template's tokens {', '.join(added)}: training adds them "
            "(and trains the embeddings)"
        )
    source_info = dict(getattr(loaded, "source_info", {}) or {})
    return {
        "source": str(source_info.get("spec") or path),
        "source_info": source_info,
        "format": loaded.format,
        "format_requested": format,
        "model": model,
        "template": tmpl.label,
        "template_origin": tmpl.origin,
        "end_token": tmpl.end_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "added_tokens": added,
        "max_length": max_length,
        "train_on": train_on,
        "counts": {
            "records": n_usable + read_invalid + skipped,
            "ok": tally.ok,
            "invalid": read_invalid + tally.render_invalid,
            "skipped": skipped,
            "repaired": repaired,
            "truncated": tally.truncated,
            "no_trained": tally.no_trained,
            "chunked": tally.chunked,
            "examples": tally.examples,
        },
        "issues": issues[:data_mod.MAX_ISSUES],
        "issues_total": read_invalid + tally.issues_total,
        # not trained as written: one line per reason, then the first places
        "data_notes": loaded.notes(),
        # columns with values no field of the format read: [{column, records, of, example}]
        "unused_columns": loaded.column_use.to_list() if getattr(loaded, "column_use", None) else [],
        "skipped": [str(issue) for issue in loaded.skips[:data_mod.MAX_ISSUES]],
        "repaired": [str(issue) for issue in loaded.repairs[:data_mod.MAX_ISSUES]],
        "lengths": data_mod.length_stats(tally.full_lengths),
        "histogram": data_mod.histogram(tally.full_lengths, HIST_BINS),
        "total_tokens": tally.total_tokens,
        "trained_tokens": tally.trained_tokens,
        # the records' tokens before truncation or chunking, and those the examples keep
        "long_text": long_text,
        "text_overlap": text_overlap,
        "tokens_total": tally.tokens_total,
        "tokens_kept": tally.tokens_kept,
        "tokens_note": data_mod.tokens_line({"truncated": tally.truncated, "chunked": tally.chunked,
                                             "windows": tally.windows},
                                            tally.tokens_kept, tally.tokens_total, max_length, tally.text_truncated),
        "warnings": warnings,
        "example": shown,
    }


# ------------------------------------------------------------------------ rendering at scale
#
# Records stream from the reader (readers.load_records(each=...)): none is kept, only what
# the report needs of each (its token counts, a byte of flags, its notes when it has any).
# Batches of BATCH records render in ``num_proc`` forked worker processes, in order; each
# worker renders a record with chunking.render_record, as training does, and sends back a
# summary. Small datasets render in this process (the first WARMUP batches always do).

BATCH = 256
WARMUP = 2
GC_THRESHOLD = (100_000, 50, 1000)  # while records render (here and in workers): few collector passes
_job: "_Job | None" = None  # the job, in forked workers


class _Job:
    """What rendering one record needs (inherited by forked workers, not pickled)."""

    def __init__(self, tokenizer, template, train_on, max_length, long_text, overlap, end_id):
        self.tokenizer, self.template, self.train_on = tokenizer, template, train_on
        self.max_length, self.long_text, self.overlap, self.end_id = max_length, long_text, overlap, end_id

    def summarise(self, batch: list[Any]) -> list[tuple]:
        """Per conversation of ``batch``: (error, None) or (None, (full tokens, kept tokens,
        chunked, raw text, [(n_trained, n_tokens, truncated, notes, trains_end) per
        example])). The records render together, each as training renders it, and are
        counted (chunking.count_records: no examples built). Only the conversations cross
        to a worker and only these numbers come back; the places stay with the reader."""
        from finetui.engine.data import chunking, render

        counted = chunking.count_records(batch, self.tokenizer, self.template,
                                         train_on=self.train_on, max_length=self.max_length,
                                         long_text=self.long_text, overlap=self.overlap, end_id=self.end_id)
        out = []
        for conv, c in zip(batch, counted):
            if isinstance(c, render.RenderError):
                out.append((clip(str(c), MESSAGE_CHARS), None))
            else:
                out.append((None, (c.full_tokens, c.kept_tokens, c.chunked, conv.kind == "text", c.parts)))
        return out


def _render_batch(batch: list[Any]) -> list[tuple]:
    return _job.summarise(batch)


def _place(record: Any) -> str:
    """A record's ``file:line`` (a RawRecord's place; a string as it is)."""
    return str(getattr(record, "place", record))


def _set_job(pickled: bytes) -> None:
    """A fresh worker's job (workers forked from this process inherit it instead)."""
    import gc
    import pickle

    global _job
    _job = pickle.loads(pickled)
    gc.set_threshold(*GC_THRESHOLD)  # as a forked worker inherits it


def _main_is_guarded() -> bool:
    """Whether a fresh worker can prepare itself from this process's ``__main__`` without
    running it: run as a module (``python -m finetui.engine.cli``: its code is under ``if __name__
    == "__main__"``), the ``finetui`` entry point, or no main file. A script of the user's
    that calls inspect() at top level would run again in each fresh worker: forked ones
    then."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return True
    path = getattr(main, "__file__", None)
    return path is None or Path(path).name == "finetui"


MIMALLOC_BYTES = 32 << 20  # sources from this size render in workers under mimalloc


def _mimalloc_env() -> dict[str, str] | None:
    """The environment that preloads mimalloc in fresh worker processes, or None (no
    ``cmeel-mimalloc`` library, or ``FINETUI_CPU_MALLOC`` set to anything but auto or
    mimalloc). The fast tokenizer allocates and frees a few small blocks per token; under
    mimalloc it takes ~25% less CPU than under glibc. A forked worker keeps its parent's
    allocator, so these workers start from a fork server that starts with the library
    preloaded (a second or two, once: only sources of ``MIMALLOC_BYTES`` or more use it)."""
    from finetui.engine.perf import allocator

    if os.environ.get(allocator.MARKER, "auto") not in ("auto", "mimalloc"):
        return None
    library = allocator.mimalloc_library()
    if library is None:
        return None
    preloads = [p for p in os.environ.get("LD_PRELOAD", "").split() if p != str(library)]
    return {"LD_PRELOAD": " ".join([str(library), *preloads]), allocator.MARKER: "mimalloc"}


class _Tally:
    """The report's numbers, added up record by record in reading order."""

    def __init__(self, max_length: int, strict: bool):
        from array import array

        self.max_length, self.strict = max_length, strict
        self.full_lengths = array("q")  # per record, tokens before truncation or chunking
        self.n_trained = array("l")  # per example (a chunked text has several)
        self.flags = array("B")  # per example: 1 truncated, 2 trains its end token
        self.notes: dict[int, tuple[str, ...]] = {}  # per example, the few that have notes
        self.issues: list[str] = []  # the first MAX_ISSUES
        self.issues_total = 0
        self.ok = self.render_invalid = self.no_trained = self.truncated = self.text_truncated = 0
        self.chunked = self.windows = self.examples = 0
        self.total_tokens = self.trained_tokens = self.tokens_total = self.tokens_kept = 0

    def issue(self, text: str) -> None:
        from finetui.engine.data.dataset import MAX_ISSUES

        self.issues_total += 1
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(clip(text, MESSAGE_CHARS))

    def add(self, place: Any, error: str | None, summary: tuple | None) -> None:
        """One record's result; ``place``: its file:line, or its RawRecord (the place made
        only when an issue names it)."""
        from finetui.engine.data.dataset import no_trained_reason

        if error is not None:
            if self.strict:
                raise InspectError(f"{_place(place)}: {error}")
            self.render_invalid += 1
            self.issue(f"{_place(place)}: {error}")
            return
        full, kept, chunked, is_text, parts = summary
        self.full_lengths.append(full)
        self.tokens_total += full
        self.tokens_kept += kept
        if chunked:
            self.chunked += 1
            self.windows += len(parts)
        for n_trained, _, truncated, notes, trains_end in parts:
            if notes:
                self.notes[len(self.n_trained)] = notes
            self.n_trained.append(n_trained)
            self.flags.append(truncated | trains_end << 1)
        n_trained, _, truncated, _, _ = parts[0]
        self.truncated += truncated
        self.text_truncated += truncated and is_text
        if n_trained == 0:
            self.no_trained += 1
            self.issue(f"{_place(place)}: {no_trained_reason(truncated, self.max_length)}")
        else:
            self.ok += 1
            self.examples += len(parts)
            self.total_tokens += sum(part[1] for part in parts)
            self.trained_tokens += sum(part[0] for part in parts)

    def summaries(self):
        """What render.preflight reads of each example, one at a time."""
        for k, (n_trained, flags) in enumerate(zip(self.n_trained, self.flags)):
            yield {"n_trained": n_trained, "truncated": bool(flags & 1), "trains_end": bool(flags & 2),
                   "notes": self.notes.get(k, ())}


def _workers(num_proc: int | None) -> int:
    if num_proc is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return max(1, num_proc)


FORK_SERVER_PRELOAD = ["finetui.engine.data.inspection", "finetui.engine.data.chunking",
                       "transformers.tokenization_utils_tokenizers"]


def _fork_server():
    """The ``forkserver`` multiprocessing context, its server started now under mimalloc
    (_mimalloc_env) and importing what a worker needs while this process goes on; None
    where workers are forked from this process instead (no mimalloc, a main script that
    is not guarded, or no fork server here: it needs a Unix socket)."""
    import multiprocessing
    from multiprocessing import forkserver

    preload = _mimalloc_env() if _main_is_guarded() else None
    if preload is None:
        return None
    # the server's environment is its workers': a worker per core renders, and the
    # tokenizer's own threads would only compete
    preload["TOKENIZERS_PARALLELISM"] = "false"
    saved = {name: os.environ.get(name) for name in preload}
    os.environ.update(preload)
    try:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(FORK_SERVER_PRELOAD)
        forkserver.ensure_running()
    except OSError:
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return context


class _Pipeline:
    """Batches of records to render, in order: here, or in a pool of workers (forked, or
    for a big source fresh ones under mimalloc from ``server``: _fork_server)."""

    def __init__(self, job: _Job, tally: _Tally, workers: int, bar: "_Progress", server=None):
        self.job, self.tally, self.workers, self.bar = job, tally, workers, bar
        self.server = server  # the forkserver context of fresh workers, or None: forked ones
        self.records = 0  # records handed in
        self.places: list[Any] = []  # the batch's records (their places), kept here
        self.batch: list[Any] = []  # its conversations, rendered here or in a worker
        self.sent = 0
        self.pool = None
        self.pending = None
        self.gc = None

    def __enter__(self) -> "_Pipeline":
        import gc

        # what a batch allocates is freed by reference counting; the collector's passes
        # over the reader's and tokenizer's long-lived objects would only cost time
        self.gc = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLD)
        return self

    def add(self, place: Any, conv) -> None:
        self.records += 1
        self.places.append(place)
        self.batch.append(conv)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        places, batch, self.places, self.batch = self.places, self.batch, [], []
        self.sent += 1
        if self.workers <= 1 or self.sent <= WARMUP:
            self._take(places, self.job.summarise(batch))
            return
        if self.pool is None:
            self._start()
        self.pending.append((places, self.pool.apply_async(_render_batch, (batch,))))
        while len(self.pending) > 2 * self.workers:
            self._take_next()

    def _take_next(self) -> None:
        places, result = self.pending.popleft()
        self._take(places, result.get())

    def _start(self) -> None:
        import collections
        import multiprocessing

        global _job
        # a worker per core renders; the tokenizer's own threads would only compete
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        if self.server is not None:
            import pickle

            try:
                self.pool = self.server.Pool(self.workers, initializer=_set_job, initargs=(pickle.dumps(self.job),))
            except OSError:  # the server is gone: forked workers
                self.pool = None
        if self.pool is None:
            _job = self.job  # inherited by the forked workers
            self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        self.pending = collections.deque()

    def _take(self, places: list[Any], results: list[tuple]) -> None:
        add = self.tally.add
        for place, (error, summary) in zip(places, results):
            add(place, error, summary)
        self.bar.advance(len(results))

    def __exit__(self, kind, *exc) -> None:
        global _job
        try:
            if kind is None:
                self.flush()
                while self.pending:
                    self._take_next()
        finally:
            if self.gc is not None:
                import gc

                gc.set_threshold(*self.gc)
            if self.pool is not None:
                if kind is None:
                    self.pool.close()
                else:
                    self.pool.terminate()
                self.pool.join()
            _job = None


def _source_of(readers, path, dataset_dir, split, subset):
    """The resolved source (for the progress bar's size), or None."""
    try:
        return readers.resolve_source(path, dataset_dir=dataset_dir, split=split, subset=subset)
    except Exception:  # load_records says why, in its own words
        return None


class _Progress:
    """A progress bar on stderr while records render, when stderr is a terminal: bytes of
    the source's files read (the reader's position, from /proc) and records done."""

    def __init__(self, source, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.paths = [str(p) for p in (getattr(source, "paths", None) or [])]
        self.sizes = {}
        for path in self.paths:
            try:
                self.sizes[path] = os.path.getsize(path)
            except OSError:
                pass
        self.done = 0
        self.progress = None

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def __enter__(self) -> "_Progress":
        if not self.enabled:
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from finetui.engine.console import console

        total = sum(self.sizes.values()) or None
        self.progress = Progress(
            TextColumn("[bold]inspect[/]"), BarColumn(bar_width=24),
            TextColumn("{task.percentage:>3.0f}%" if total else ""),
            TextColumn("{task.fields[records]} records"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console(file=sys.stderr), transient=True,
        )
        self.task = self.progress.add_task("inspect", total=total, records="0")
        self.progress.start()
        return self

    def _position(self) -> int | None:
        """Bytes read of the source's files: the files before the open one, and the open
        one's file position (/proc/self/fdinfo); None where /proc cannot say."""
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return None
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target in self.sizes:
                try:
                    with open(f"/proc/self/fdinfo/{fd}") as fh:
                        pos = int(fh.readline().split()[1])
                except (OSError, ValueError, IndexError):
                    return None
                before = self.paths.index(target)
                return sum(self.sizes.get(p, 0) for p in self.paths[:before]) + pos
        return None

    def advance(self, records: int) -> None:
        self.done += records
        if self.progress is None:
            return
        position = self._position()
        update = {"records": f"{self.done:,}"}
        if position is not None:
            update["completed"] = position
        self.progress.update(self.task, **update)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


EXAMPLE_TAIL_CHARS = 2000  # of an example's text past what max_length keeps, shown


def _example_dict(ex, tokenizer) -> dict[str, Any]:
    trained_ids = [t for t in ex.labels if t != -100]
    text = ex.text
    shown_text = text[: ex.kept_chars + EXAMPLE_TAIL_CHARS]  # a 10 MB record is not echoed whole
    return {
        "text": shown_text,
        "text_chars": len(text),
        "trained_spans": [list(s) for s in ex.trained_spans],
        "trained_text": ex.trained_text(),
        "trained_decoded": tokenizer.decode(trained_ids, skip_special_tokens=False) if trained_ids else "",
        "input_ids": ex.input_ids,
        "labels": ex.labels,
        "n_tokens": ex.n_tokens,
        "full_tokens": ex.full_tokens,
        "n_trained": ex.n_trained,
        "truncated": ex.truncated,
        "kept_chars": ex.kept_chars,
        "notes": ex.notes,
    }


# ------------------------------------------------------------------------ printing


def print_report(result: dict[str, Any], file=None) -> None:
    from rich.text import Text

    from finetui.engine.console import console as make_console

    file = file or sys.stdout
    tty = file.isatty()
    console = make_console(file=file, highlight=False, soft_wrap=True, emoji=False, markup=False)

    def line(*parts: tuple[str, str] | str) -> None:
        text = Text()  # markup=False: data is shown literally; visible(): never as control codes
        for part in parts:
            if isinstance(part, tuple):
                text.append(visible(part[0]), style=part[1])
            else:
                text.append(visible(part))
        console.print(text)

    c = result["counts"]
    fmt = result["format"]
    fmt_note = " (detected)" if result.get("format_requested", "auto") == "auto" else ""
    line(("source    ", "bold"), result["source"])
    line(("format    ", "bold"), f"{fmt}{fmt_note}")
    template = result["template"] + (" (the tokenizer's own)" if result["template_origin"] == "tokenizer" else "")
    line(("template  ", "bold"), f"{template}, model {result['model']}, end of turn {result['end_token']}, "
         f"eos {result['eos_token']}")
    mild = "".join(f"{c[k]} {k}, " for k in ("skipped", "repaired") if c.get(k))
    chunked = f"{c['chunked']} chunked into {c['examples'] - c['ok'] + c['chunked']} windows, " if c.get("chunked") else ""
    line(("records   ", "bold"), f"{c['records']}: {c['ok']} ok, {c['invalid']} invalid, {mild}{chunked}"
         f"{c['truncated']} truncated, {c['no_trained']} with no trained token")
    lengths = result["lengths"]
    if lengths:
        line(("tokens    ", "bold"), f"min {lengths['min']}  median {_num(lengths['median'])}  "
             f"p95 {lengths['p95']}  max {lengths['max']}  (max_length {result['max_length']})")
    if result["total_tokens"]:
        share = 100 * result["trained_tokens"] / result["total_tokens"]
        line(("trained   ", "bold"), f"{result['trained_tokens']:,} of {result['total_tokens']:,} tokens "
             f"({share:.0f}%, train_on {result['train_on']})")
    if result.get("tokens_total"):
        note = result.get("tokens_note")
        kept = note.replace(" tokens kept (", " tokens (", 1) if note else (
            f"{result['tokens_kept']:,} of {result['tokens_total']:,} tokens (100%): every record fits max_length")
        line(("kept      ", "bold"), kept)

    hist = result["histogram"]
    if hist:
        console.print()
        line(("length histogram", "bold"), " (tokens per record before truncation or chunking; ", ("▒", "yellow"),
             " = over max_length)")
        top = max(b["count"] for b in hist) or 1
        lo_w = len(str(hist[-1]["hi"]))
        for b in hist:
            bar_len = max(1 if b["count"] else 0, round(BAR_WIDTH * b["count"] / top))
            over = b["lo"] > result["max_length"]
            bar = ("▒" if over else "█") * bar_len
            line(f"  {b['lo']:>{lo_w}}-{b['hi']:<{lo_w}} ", (bar, "yellow" if over else "cyan"),
                 f" {b['count']}")

    if result["issues"]:
        console.print()
        total = result["issues_total"]
        shown = result["issues"][:SHOW_ISSUES]
        line(("issues", "bold"), f" (first {len(shown)} of {total})" if total > len(shown) else "")
        for issue in shown:
            line("  ", (issue, "red"))
    if result.get("data_notes"):
        console.print()
        line(("not trained as written", "bold"))
        for note in result["data_notes"]:
            line(("  - ", "yellow bold"), (note, "yellow"))
        for name in ("skipped", "repaired"):
            places = result.get(name) or []
            for place in places[:SHOW_ISSUES]:
                line(f"  {name}: ", (place, "yellow"))
            if len(places) > SHOW_ISSUES:
                line(f"  ... {c.get(name, len(places)) - SHOW_ISSUES} more {name}")
    if result["warnings"]:
        console.print()
        line(("warnings", "bold"))
        for warning in result["warnings"]:
            line(("  ! ", "yellow bold"), (warning, "yellow"))

    ex = result["example"]
    if ex is None:
        return
    console.print()
    if "error" in ex:
        line((f"example {ex['index']}", "bold"), f" ({ex['place']}): ", (ex["error"], "red"))
        return
    marks = "green" if tty and console.color_system else f"between {OPEN_MARK} {CLOSE_MARK}"
    window = f", window 1 of {ex['windows']}" if ex.get("windows", 1) > 1 else ""
    line((f"example {ex['index']}", "bold"), f" ({ex['place']}{window}): {ex['n_tokens']} tokens, "
         f"{ex['n_trained']} trained (shown {marks})")
    console.print(_marked(ex, styled=bool(tty and console.color_system)))
    if ex["truncated"]:
        rest = ex.get("text_chars", len(ex["text"])) - ex["kept_chars"]
        line((f"[... {rest} more characters ({ex['full_tokens'] - ex['n_tokens']} tokens) over "
              f"max_length {result['max_length']}: not trained]", "yellow"))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _marked(ex: dict[str, Any], styled: bool):
    """The kept part of the rendered text, trained spans green (styled) or in « »."""
    from rich.text import Text

    text, end = ex["text"], ex["kept_chars"]
    out = Text()
    pos = 0
    for a, b in ex["trained_spans"]:
        a, b = min(a, end), min(b, end)
        if a > pos:
            out.append(visible(text[pos:a]), style="dim" if styled else "")
        if b > a:
            if styled:
                out.append(visible(text[a:b]), style="bold green")
            else:
                out.append(OPEN_MARK + visible(text[a:b]) + CLOSE_MARK)
        pos = max(pos, b)
    if pos < end:
        out.append(visible(text[pos:end]), style="dim" if styled else "")
    return out
