"""Talk to a model: the chat worker process and `finetui chat`.

Heavy module (torch, transformers, peft): worker processes and the CLI only. The TUI talks
to the worker through :mod:`engine.chat_protocol` (the JSON-lines protocol and
``ChatClient``), never by importing this module.

- ``python -m finetui.engine.chat --serve MODEL_OR_RUN [--base]`` (also ``finetui chat X --serve``):
  the worker. Loads one model, says ``ready``, then answers ``generate`` requests one at a
  time, streaming ``token`` fragments; the main thread keeps reading stdin so ``cancel``
  stops a reply mid-way. It ends on ``shutdown`` or when its stdin closes (the UI died).
- ``finetui chat MODEL_OR_RUN --prompt TEXT [--prompt ...]``: one-shot answers.
- ``finetui chat MODEL_OR_RUN``: an interactive chat on the terminal (Ctrl-C stops a reply,
  Ctrl-D quits).

What gets loaded (:func:`load`): for a run, its merged model if there is one, else its base
plus its LoRA adapter (or the full fine-tuned model in ``adapter/``); with ``--base``, the
run's base alone. Anything else is a model: ``tiny``, a folder (a model, or an adapter
folder whose ``adapter_config.json`` names its base), or a Hugging Face id already in the
local cache. A run's prompts are rendered with the template the run was trained with
(``data.template`` of its config.yaml, resolved the same way as in training), and
generation stops at that template's end-of-turn token.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetui.engine import chat_protocol as proto
from finetui.engine.json_errors import json_error
from finetui.engine.visible import json_text, visible


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do."""


class InputError(ValueError):
    """The request cannot be answered as given (empty prompt, too long, bad params)."""


# ---------------------------------------------------------------------------- loading


@dataclass
class ChatModel:
    """A loaded model ready to answer: tokenizer, template, stop tokens, context size."""

    model: Any
    tokenizer: Any
    template: str  # the configured name: auto, tokenizer, chatml, qa, alpaca, plain, or a .jinja path
    chat_template: str | None  # the Jinja source actually applied (None: the tokenizer's own)
    eos_token_ids: list[int]
    context: int
    info: dict[str, Any] = field(default_factory=dict)
    render_kwargs: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ prompts

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of the prompt for the next assistant turn, rendered exactly as in
        training (same template, same BOS handling)."""
        return render_prompt(self.tokenizer, messages, self.chat_template, self.render_kwargs)

    # ------------------------------------------------------------------ generation

    def warmup(self) -> None:
        """One short generation, so the first real reply does not pay for lazy set-up
        (kernel selection, allocator growth, the generation machinery's first call)."""
        try:
            self.generate([{"role": "user", "content": "hi"}], {"max_new_tokens": 2})
        except Exception:  # noqa: BLE001 - a real request will report the problem
            pass

    def generate(
        self,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Answer one conversation. Streams text fragments to ``on_token`` (called from
        inside generate()); returns the ``done`` fields (text, counts, timings,
        stop_reason). Runs in the calling thread: set ``cancel`` from another thread to
        stop after the current token. Raises InputError."""
        import torch
        from transformers import StoppingCriteriaList

        params = check_params(params)
        check_messages(messages)
        started = time.perf_counter()
        try:
            ids = self.prompt_ids(messages)
        except Exception as exc:  # jinja's raise_exception: roles must alternate, ...
            raise InputError(f"the chat template cannot render this conversation: {_one_line(exc)}") from None
        n_prompt = len(ids)
        if n_prompt == 0:
            raise InputError("empty prompt: the template rendered no tokens")
        if n_prompt >= self.context:
            raise InputError(
                f"prompt is {n_prompt} tokens but the model's context is {self.context} tokens "
                f"(leave room for the reply: shorten the conversation or the system prompt)"
            )
        max_new = min(params["max_new_tokens"], self.context - n_prompt)
        cancel = cancel or threading.Event()
        device = _device_of(self.model)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        gen_config = self.generation_config(params, max_new)
        streamer = _Streamer(self.tokenizer, on_token, skip_prompt=True, skip_special_tokens=True)
        if params.get("seed") is not None:
            torch.manual_seed(int(params["seed"]))
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=gen_config,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_CancelFlag(cancel)]),
            )
        ended = time.perf_counter()
        new_ids = sequences[0, n_prompt:].tolist()
        if cancel.is_set():
            stop_reason = "cancelled"
        elif new_ids and new_ids[-1] in self.eos_token_ids:
            stop_reason = "eos"
        else:
            stop_reason = "length"
        elapsed = ended - started
        first = streamer.first_token_at
        return {
            "text": self.tokenizer.decode(new_ids, skip_special_tokens=True),
            "prompt_tokens": n_prompt,
            "new_tokens": len(new_ids),
            "time_to_first_token_s": round(first - started, 4) if first else None,
            "tokens_per_s": round(len(new_ids) / elapsed, 2) if elapsed > 0 else None,
            "elapsed_s": round(elapsed, 4),
            "stop_reason": stop_reason,
        }

    def generation_config(self, params: dict[str, Any], max_new_tokens: int):
        gc = copy.deepcopy(self.model.generation_config)
        sample = params["temperature"] > 0
        gc.do_sample = sample
        gc.max_new_tokens = max_new_tokens
        gc.max_length = None
        gc.min_new_tokens = min(params["min_new_tokens"], max_new_tokens) or None
        if sample:
            gc.temperature = params["temperature"]
            gc.top_p = params["top_p"]
            gc.top_k = params["top_k"] or None
        else:  # greedy: sampling knobs would only draw warnings
            gc.temperature = gc.top_p = gc.top_k = None
        gc.repetition_penalty = params["repetition_penalty"]
        gc.eos_token_id = list(self.eos_token_ids)
        if gc.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            gc.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        return gc


def _device_of(model: Any):
    try:
        return model.device
    except AttributeError:
        return next(model.parameters()).device


def _streamer_class():
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        """Hands each new piece of text to ``on_text`` from inside generate(), token by
        token, and notes when the first new token arrived.

        A TextStreamer rather than a TextIteratorStreamer read by another thread: the hop
        through a queue to a second thread cost 8% of tiny's decoding speed (1090 vs 1179
        tok/s, bare generate 1202; benchmarks/chat_speed.py), and the caller already runs
        generate() off the thread that must stay responsive (the worker's stdin reader).

        Text comes out token by token, not word by word as in TextStreamer (a reply without
        spaces, such as code, CJK or a confused model, would otherwise arrive in one piece
        at the end). Incremental detokenisation as in text-generation-inference: decode a
        short window before and after the newest token and emit the difference, holding it
        back while it ends in an incomplete UTF-8 sequence; two short decodes per token
        instead of decoding the whole reply again.
        """

        def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None, **kwargs: Any):
            super().__init__(tokenizer, **kwargs)
            self.on_text = on_text
            self.first_token_at: float | None = None
            self._prefix = 0  # window start (index in token_cache)
            self._read = 0  # tokens already turned into text

        def put(self, value):
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.token_cache.extend(value.tolist())
            before = self.tokenizer.decode(self.token_cache[self._prefix:self._read], **self.decode_kwargs)
            after = self.tokenizer.decode(self.token_cache[self._prefix:], **self.decode_kwargs)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                self._prefix, self._read = self._read, len(self.token_cache)
                self.on_finalized_text(after[len(before):])

        def end(self):
            tail = ""
            if len(self.token_cache) > self._read:
                before = self.tokenizer.decode(self.token_cache[self._prefix:self._read], **self.decode_kwargs)
                after = self.tokenizer.decode(self.token_cache[self._prefix:], **self.decode_kwargs)
                tail = after[len(before):]
            self.token_cache, self._prefix, self._read = [], 0, 0
            self.next_tokens_are_prompt = True
            self.on_finalized_text(tail, stream_end=True)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text and self.on_text is not None:
                self.on_text(text)

    return Streamer


def _Streamer(*args: Any, **kwargs: Any):
    global _STREAMER
    if _STREAMER is None:
        _STREAMER = _streamer_class()
    return _STREAMER(*args, **kwargs)


_STREAMER = None


class _CancelFlag:
    """A StoppingCriteria that stops every sequence once ``event`` is set (checked after
    each new token, so a cancel costs at most one more forward pass)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def check_params(raw: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(proto.PARAMS)
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InputError("params must be an object")
    unknown = sorted(set(raw) - set(params))
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(params)})")
    params.update({k: v for k, v in raw.items() if v is not None})

    def number(key: str, kind: type, ok: Callable[[float], bool], rule: str) -> None:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
            raise InputError(f"{key} must be {'an integer' if kind is int else 'a number'} (got {value!r})")
        params[key] = kind(value)
        if not ok(params[key]):
            raise InputError(f"{key} must be {rule} (got {value!r})")

    number("max_new_tokens", int, lambda v: v >= 1, ">= 1")
    number("min_new_tokens", int, lambda v: v >= 0, ">= 0")
    number("temperature", float, lambda v: v >= 0, ">= 0 (0 = greedy)")
    number("top_p", float, lambda v: 0 < v <= 1, "in (0, 1]")
    number("top_k", int, lambda v: v >= 0, ">= 0 (0 = off)")
    number("repetition_penalty", float, lambda v: v > 0, "> 0 (1 = off)")
    if params.get("seed") is not None:
        number("seed", int, lambda v: True, "an integer")
    return params


def check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InputError("empty prompt: no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content") or "", str):
            raise InputError(f"messages[{i}] must be an object with a role and a text content")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise InputError(f"messages[{i}].role {m['role']!r} is not system, user, assistant or tool")
    if all(m["role"] == "system" for m in messages):
        raise InputError("empty prompt: only a system message")
    last = messages[-1]
    if not (last.get("content") or "").strip() and not last.get("tool_calls"):
        raise InputError("empty prompt: the last message has no text")


# ---------------------------------------------------------------------------- templates


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], chat_template: str | None,
                  render_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The generation prompt's token ids. Templates without an ``add_generation_prompt``
    branch (qa, alpaca, plain) already end where the reply starts."""
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        **(render_kwargs or {}),
    )
    if hasattr(out, "keys"):  # some versions still hand back a BatchEncoding
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def resolve_template(tokenizer: Any, name: str) -> tuple[Any, str, dict[str, Any]]:
    """(render.Template, Jinja source, extra render variables) for a configured
    ``data.template``, resolved exactly as training resolves it."""
    from finetui.engine.data import render

    try:
        template = render.resolve_template(tokenizer, name)
    except render.TemplateError as exc:
        raise ModelLoadError(str(exc)) from None
    kwargs_of = getattr(render, "template_kwargs", None) or getattr(render, "_template_kwargs")
    return template, template.source, dict(kwargs_of(tokenizer, template))


def end_of_turn_ids(tokenizer: Any, model: Any, template: Any) -> list[int]:
    """Token ids that end a reply: the template's end-of-turn token and eos (as training
    set them), plus whatever the model's generation config already stops at."""
    from finetui.engine.data import render

    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(render.generation_eos_ids(tokenizer, template))
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    add(getattr(tokenizer, "eos_token_id", None))
    if not ids:
        raise ModelLoadError("the model has no end-of-turn token (no eos_token in its tokenizer or generation config)")
    return ids


# ---------------------------------------------------------------------------- loading


def as_run(target: str) -> Path | None:
    """The run folder ``target`` names (id, unique prefix, ``last``, a run folder), or None
    when it names no run (then it is a model): ``engine.targets.named_run``."""
    from finetui.engine import targets

    try:
        return targets.named_run(target)
    except targets.NotFound as exc:
        raise ModelLoadError(str(exc)) from None


def _run_config(run_dir: Path):
    from finetui.engine import config as cfg

    try:
        return cfg.load(run_dir / "config.yaml")
    except cfg.ConfigError as exc:
        raise ModelLoadError(f"run {run_dir.name}: {exc}") from None


def load(target: str, base: bool = False, progress: Callable[[str, str], None] | None = None,
         trust_remote_code: bool = False) -> ChatModel:
    """Load what ``target`` names for chatting. Raises ModelLoadError with a clear line.
    ``trust_remote_code``: the user's ``--trust-remote-code`` (engine.modeling.load_for_inference)."""
    progress = progress or (lambda stage, message: None)
    started = time.perf_counter()
    target = str(target)
    run_dir = as_run(target)
    template_name = "auto"
    info: dict[str, Any] = {"name": target}
    if run_dir is not None:
        config = _run_config(run_dir)
        template_name = config.data.template
        info.update(run_id=run_dir.name, base_model=config.model.name_or_path)
    else:
        if base:
            raise ModelLoadError(f"--base needs a run; {target!r} is a model, not a run")
        from finetui.engine.targets import is_run_dir

        parent = Path(target).resolve().parent
        if Path(target).is_dir() and is_run_dir(parent):
            # A run's merged/ or adapter/ folder: same template as the run.
            template_name = _run_config(parent).data.template
            info.update(run_id=parent.name)
    model, tokenizer, where = _load_weights(target, run_dir, base, progress, trust_remote_code)
    info.update(where)
    progress("template", f"template {template_name}")
    template, chat_template, render_kwargs = resolve_template(tokenizer, template_name)
    eos = end_of_turn_ids(tokenizer, model, template)
    context = _context_length(model, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    threads = cpu_threads(model, params)
    info.update(
        template=template_name if template_name == template.label else f"{template_name} ({template.label})",
        eos=[tokenizer.convert_ids_to_tokens(i) for i in eos],
        eos_token_ids=eos,
        context=context,
        params=params,
        device=str(_device_of(model)),
        dtype=str(getattr(model, "dtype", "")).replace("torch.", ""),
        threads=threads,
        load_s=round(time.perf_counter() - started, 3),
    )
    return ChatModel(model, tokenizer, template_name, chat_template, eos, context, info, render_kwargs)


def cpu_threads(model: Any, params: int) -> int | None:
    """Intra-op threads for inference on a CPU (None: on a GPU, left alone).

    Decoding one token is a chain of small matrix-vector products: below ~100M
    parameters a second thread buys nothing, and when the cores are shared (a trainer
    running beside the chat, as it often is) OpenMP threads that spin at every barrier
    make it up to 10x slower (measured: tiny, 2 cores, one trainer beside it: 1 thread
    ~1100 tok/s, 2 threads 60-300 tok/s). So: one thread per ~100M parameters, at most
    half the cores. ``OMP_NUM_THREADS`` overrides.
    """
    import torch

    if _device_of(model).type != "cpu":
        return None
    wanted = os.environ.get("OMP_NUM_THREADS")
    if wanted and wanted.isdigit() and int(wanted) > 0:
        n = int(wanted)
    else:
        n = max(1, min((os.cpu_count() or 2) // 2, params // 100_000_000))
    torch.set_num_threads(n)
    return n


def _context_length(model: Any, tokenizer: Any) -> int:
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10_000_000:
        return value
    return 2048


def _load_weights(target: str, run_dir: Path | None, base: bool, progress: Callable[[str, str], None],
                  trust_remote_code: bool = False):
    """(model, tokenizer, info) through engine.modeling, so chat, eval and merge load a
    run's result the same way (merged, else base + adapter, else full, else checkpoint)."""
    from finetui.engine import modeling
    from finetui.engine.errors import ModelError

    what = f"run {run_dir.name}" + (" (base model)" if base else "") if run_dir else target
    progress("model", f"loading {what}")
    try:
        model, tokenizer = modeling.load_for_inference(str(run_dir) if run_dir else target, use_adapter=not base,
                                                       trust_remote_code=trust_remote_code)
    except (ModelError, OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(_load_message(exc)) from None
    model.eval()
    return model, tokenizer, {"source": _source_of(model, run_dir, base), "path": _path_of(model)}


def _load_message(exc: BaseException) -> str:
    """One clear line; an adapter whose tensors do not fit the base says so."""
    text = _one_line(exc).removeprefix("model.name_or_path: ")
    cause = exc.__cause__ or exc.__context__
    detail = str(cause) if cause is not None else str(exc)
    if "size mismatch" in detail:
        first = next((ln.strip() for ln in detail.splitlines() if "size mismatch" in ln), "")
        where = text.split(": cannot load the adapter", 1)[0]
        return (f"the adapter in {where} does not fit its base model (trained on a different model "
                f"or size?): {first}")
    return text


def _source_of(model: Any, run_dir: Path | None, base: bool) -> str:
    if run_dir is None:
        return "adapter" if type(model).__name__.startswith("Peft") else "model"
    if base:
        return "base"
    if (run_dir / "merged" / "config.json").exists():
        return "merged"
    if type(model).__name__.startswith("Peft"):
        return "adapter" if (run_dir / "adapter").is_dir() else "checkpoint"
    return "full" if (run_dir / "adapter" / "config.json").exists() else "checkpoint"


def _path_of(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", ""))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------- worker


class _Output:
    """Protocol lines to the real stdout, one writer at a time. fd 1 itself is pointed at
    stderr so a stray print from a library cannot corrupt the stream."""

    def __init__(self) -> None:
        fd = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        sys.stdout = sys.stderr
        self._stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(proto.encode(message) + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True  # nobody listens: the reader loop ends on stdin EOF


@dataclass
class _Job:
    id: str
    messages: Any
    params: Any
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued | running | finished


class _TokenSender:
    """Sends a reply's text as ``token`` messages, at most one per ``interval`` seconds:
    the first piece goes at once (time to first token is untouched) and a model slower
    than 1/interval tokens/s sends every token on its own, but a fast one does not make
    the reader parse a JSON line per token. Measured on tiny (2 shared cores): a message
    per token held the worker at 0.86x bare generate; the client's parsing competed
    for the same cores."""

    def __init__(self, out: "_Output", rid: str, interval: float = 0.015):
        self.out, self.rid, self.interval = out, rid, interval
        self.pending: list[str] = []
        self.last = 0.0

    def __call__(self, text: str) -> None:
        self.pending.append(text)
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            self.out.send({"type": "token", "id": self.rid, "text": "".join(self.pending)})
            self.pending.clear()
        self.last = now if now is not None else time.perf_counter()


class _LineReader:
    """Lines of the worker's stdin as bytes, from its file descriptor: a line that is not
    UTF-8 reaches the worker (which answers it) instead of stopping a text reader, and
    :meth:`waiting` hands over the lines already sent without waiting for more."""

    def __init__(self, stdin) -> None:
        stream = getattr(stdin, "buffer", stdin)
        self.fd = stream.fileno()
        self.buf = b""
        self.scanned = 0  # buf[:scanned] holds no newline
        self.eof = False
        self.line_no = 0

    def _read(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def readline(self) -> bytes | None:
        """The next line (its newline included), the last bytes at EOF, or None at EOF."""
        while True:
            nl = self.buf.find(b"\n", self.scanned)
            if nl >= 0:
                line, self.buf, self.scanned = self.buf[:nl + 1], self.buf[nl + 1:], 0
                self.line_no += 1
                return line
            self.scanned = len(self.buf)
            if self.eof:
                line, self.buf, self.scanned = self.buf, b"", 0
                if line:
                    self.line_no += 1
                return line or None
            self._read()

    def waiting(self) -> list[bytes]:
        """The whole lines sent so far and not read yet, without waiting for more."""
        import select

        try:
            while not self.eof and select.select([self.fd], [], [], 0)[0]:
                self._read()
        except (OSError, ValueError):
            pass
        *lines, self.buf = self.buf.split(b"\n")
        self.scanned = 0
        return [line for line in lines if line.strip()]


class Worker:
    """Serves one loaded model: a thread runs jobs in order; the caller's thread reads
    requests (so cancel and shutdown are seen while a reply is being generated)."""

    def __init__(self, chat: ChatModel, out: _Output):
        self.chat = chat
        self.out = out
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.known: dict[str, _Job] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run_jobs, name="chat-jobs", daemon=True)

    def serve(self, stdin) -> None:
        """Answer request lines until ``shutdown`` or the end of stdin. Every line gets an
        answer: one that is not valid UTF-8 or not a request is an ``input`` error naming
        the problem (with the request's id when it can be read), and requests sent after
        ``shutdown`` are answered as cancelled like the queued ones."""
        self.thread.start()
        reader = _LineReader(stdin)
        try:
            while True:
                raw = reader.readline()
                if raw is None:
                    break
                if self.request_line(raw, reader.line_no) == "shutdown":
                    break
        finally:
            self.stop()
            for raw in reader.waiting():  # sent after shutdown: never started
                message = proto.decode(raw)
                if message and message.get("op") == "generate" and message.get("id") is not None:
                    self._done_cancelled(_Job(str(message["id"]), None, None))

    def request_line(self, raw: bytes, line_no: int) -> str | None:
        """One line of stdin: answered with an error, or handled."""
        if not raw.strip():
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = proto.decode(raw.decode("utf-8", errors="replace"))
            rid = message.get("id") if message else None
            self.out.send(proto.error(
                "input", f"request line {line_no} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                         f"{exc.start + 1}): send requests as UTF-8 JSON", None if rid is None else str(rid)))
            return None
        message = proto.decode(line)
        if message is None or "op" not in message:
            self.out.send(proto.error("input", f"request line {line_no} is not a request (expected a JSON object "
                                               f"with an op): {line.strip()[:80]}"))
            return None
        try:
            return self.handle(message)
        except Exception as exc:  # noqa: BLE001 - one odd request never silences the worker
            rid = message.get("id")
            self.out.send(proto.error("input", f"request line {line_no}: {type(exc).__name__}: {_one_line(exc)}",
                                      None if rid is None else str(rid)))
            return None

    def handle(self, message: dict[str, Any]) -> str | None:
        op = message.get("op")
        rid = message.get("id")
        rid = None if rid is None else str(rid)
        if op == "generate":
            if rid is None:
                self.out.send(proto.error("input", "generate needs an id"))
                return None
            with self.lock:
                if rid in self.known and self.known[rid].state != "finished":
                    self.out.send(proto.error("input", f"request {rid} is already in progress", rid))
                    return None
                job = _Job(rid, message.get("messages"), message.get("params"))
                self.known[rid] = job
            self.jobs.put(job)
        elif op == "cancel":
            with self.lock:
                job = self.known.get(rid) if rid is not None else None
                if job is None or job.state == "finished":
                    return None  # already answered: nothing to do
                job.cancel.set()
                if job.state == "queued":
                    job.state = "finished"  # answered now; the job thread skips it
                    self._done_cancelled(job)
        elif op == "shutdown":
            return "shutdown"
        else:
            self.out.send(proto.error("input", f"unknown op {op!r} (known: {', '.join(proto.OPS)})", rid))
        return None

    def stop(self) -> None:
        """Shutdown or stdin closed: the running reply stops after its current token,
        queued ones are answered as cancelled without starting."""
        with self.lock:
            for job in self.known.values():
                if job.state == "queued":
                    job.state = "finished"
                    self._done_cancelled(job)
                job.cancel.set()
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _done_cancelled(self, job: _Job) -> None:
        self.out.send({"type": "done", "id": job.id, "text": "", "prompt_tokens": 0, "new_tokens": 0,
                       "time_to_first_token_s": None, "tokens_per_s": None, "elapsed_s": 0.0,
                       "stop_reason": "cancelled"})

    def _run_jobs(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self.lock:
                if job.state != "queued":
                    continue
                job.state = "running"
            tokens = _TokenSender(self.out, job.id)
            try:
                done = self.chat.generate(job.messages, job.params, on_token=tokens, cancel=job.cancel)
                tokens.flush()
                answer = {"type": "done", "id": job.id, **done}
            except InputError as exc:
                answer = proto.error("input", str(exc), job.id)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive one bad request
                answer = proto.error(_error_kind(exc), f"{type(exc).__name__}: {_one_line(exc)}", job.id)
                if answer["kind"] == "oom":
                    answer["message"] = "out of memory while generating: " + answer["message"] + \
                        " (lower max_new_tokens or shorten the conversation)"
                    _free_cuda()
            with self.lock:
                job.state = "finished"
            self.out.send(answer)


def _error_kind(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "oom"
    return "internal"


def _free_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _quiet_libraries() -> None:
    """Keep the terminal (and the worker's stderr) to what matters: no progress bars, no
    deprecation chatter, no note that an optional CPU 4-bit kernel package is absent."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass


def serve(target: str, base: bool = False, stdin=None, trust_remote_code: bool = False) -> int:
    """The worker's main: load, say ready, answer until shutdown or stdin EOF."""
    out = _Output()
    stdin = stdin or sys.stdin
    _quiet_libraries()
    started = time.perf_counter()
    try:
        chat = load(target, base, progress=lambda stage, msg: out.send({"type": "loading", "stage": stage, "message": msg}),
                    trust_remote_code=trust_remote_code)
    except ModelLoadError as exc:
        out.send(proto.error("model", str(exc)))
        return 2
    except Exception as exc:  # noqa: BLE001
        out.send(proto.error(_error_kind(exc) if _error_kind(exc) == "oom" else "model",
                             f"cannot load {target}: {type(exc).__name__}: {_one_line(exc)}"))
        return 2
    out.send({"type": "loading", "stage": "warmup", "message": "first forward pass"})
    chat.warmup()
    out.send({"type": "ready", "v": proto.VERSION, "model": chat.info,
              "load_s": round(time.perf_counter() - started, 3)})
    Worker(chat, out).serve(stdin)
    return 0


# ---------------------------------------------------------------------------- CLI


def _params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
    }


def _conversation(system: str | None, history: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + history + [{"role": "user", "content": prompt}]


def command(args: argparse.Namespace) -> int:
    if getattr(args, "serve", False):
        return serve(args.model, base=args.base, trust_remote_code=args.trust_remote_code)
    _quiet_libraries()
    params = _params_from_args(args)
    check_params(params)  # refuse bad flags before loading anything
    tty = sys.stderr.isatty()
    if tty:
        print(f"loading {args.model}…", file=sys.stderr, flush=True)
    chat = load(args.model, base=args.base, trust_remote_code=args.trust_remote_code)  # ModelLoadError: one line
    if tty:
        i = chat.info
        print(visible(f"{i.get('source')} model, {i['params']:,} params on {i['device']}, template {i['template']}, "
                      f"stops at {' '.join(i['eos'])} ({i['load_s']:.1f}s)"), file=sys.stderr, flush=True)
    if args.prompt:
        return _one_shot(chat, args, params)
    return _repl(chat, args, params)


def _one_shot(chat: ChatModel, args: argparse.Namespace, params: dict[str, Any]) -> int:
    status = 0
    for prompt in args.prompt:
        messages = _conversation(args.system, [], prompt)
        if args.json:
            try:
                done = chat.generate(messages, params)
                print(json_text({"ok": True, "prompt": prompt, **done}), flush=True)
            except InputError as exc:  # engine.json_errors' shape, with the prompt it is about
                print(json_text({"prompt": prompt, **json_error("input", str(exc), "--prompt")}), flush=True)
                status = 1
            continue
        if sys.stderr.isatty():  # the answer alone goes to stdout: `answer=$(finetui chat ... --prompt ...)`
            print(f"> {visible(prompt)}", file=sys.stderr, flush=True)
        try:  # the model's tokens are shown, never obeyed by the terminal (engine.visible)
            done = chat.generate(messages, params, on_token=lambda t: print(visible(t), end="", flush=True))
        except InputError as exc:
            print(f"finetui: {visible(exc)}", file=sys.stderr)
            status = 1
            continue
        print(flush=True)  # the answer's line ends (an empty reply is an empty line)
        if sys.stderr.isatty():
            print(("(empty reply)\n" if not done["text"] else "") + _stats(done), file=sys.stderr, flush=True)
    return status


def _stats(done: dict[str, Any]) -> str:
    return (f"  [{done['new_tokens']} tokens, {done['tokens_per_s'] or 0:.1f} tok/s, "
            f"first token {done['time_to_first_token_s'] or 0:.2f}s, {done['stop_reason']}]")


def _repl(chat: ChatModel, args: argparse.Namespace, params: dict[str, Any]) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    print("Chat: type a message; /reset clears the conversation; Ctrl-C stops a reply; Ctrl-D quits.",
          file=sys.stderr)
    history: list[dict[str, Any]] = []
    while True:
        try:
            prompt = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not prompt.strip():
            continue
        if prompt.strip() == "/reset":
            history.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        messages = _conversation(args.system, history, prompt)
        cancel = threading.Event()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["done"] = chat.generate(messages, params, cancel=cancel,
                                               on_token=lambda t: print(visible(t), end="", flush=True))
            except Exception as exc:  # noqa: BLE001
                result["error"] = exc

        print("bot> ", end="", flush=True)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while thread.is_alive():
            try:
                thread.join(timeout=0.1)
            except KeyboardInterrupt:
                cancel.set()  # stop this reply, keep the chat
        print()
        if "error" in result:
            print(f"finetui: {visible(result['error'])}", file=sys.stderr)
            continue
        done = result["done"]
        print(_stats(done), file=sys.stderr)
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": done["text"]}]


def main(argv: list[str] | None = None) -> int:
    """``python -m finetui.engine.chat ...``: the same arguments as ``finetui chat``."""
    from finetui.engine import cli
    from finetui.engine.perf import import_cache

    import_cache.install()
    argv = sys.argv[1:] if argv is None else argv
    args = cli.build_parser().parse_args(["chat", *argv])
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except (ModelLoadError, InputError) as exc:
        print(f"finetui: {visible(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
