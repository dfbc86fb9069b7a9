"""Question writers: the prompt template, an OpenAI-compatible endpoint, a local model.

Light module at import time (stdlib only: ``urllib`` for HTTP); the local writer imports
:mod:`engine.chat` (torch, transformers) when it loads its model.

* :class:`PromptTemplate`: a text file with ``{passage}``, ``{previous}``, ``{document}``,
  ``{heading}`` and ``{page}`` placeholders (``{{`` and ``}}`` are literal braces); the
  default, ``question_prompt.txt`` beside this module, asks for the one question a curious
  interviewer would ask, given the previous passage as context.
* :class:`EndpointWriter`: ``POST {base_url}/chat/completions`` (vLLM, llama.cpp's
  server, Ollama, hosted APIs). Safe to call from several threads. A 429, a 5xx, a reset
  connection or a timeout is retried with exponential backoff (the server's
  ``Retry-After`` when it gives one); any other refusal (401, 404 ...) stops the run.
* :class:`LocalWriter`: any model ``finetui chat`` loads (a built-in such as ``smollm2``,
  a run's result, a folder), through :func:`engine.chat.load`: the same template and stop
  tokens; prompts are generated in batches (left padding, greedy), as evaluation does.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable

DEFAULT_TEMPLATE = Path(__file__).with_name("question_prompt.txt")
DEFAULT_REWRITE_TEMPLATE = Path(__file__).with_name("answer_prompt.txt")
PLACEHOLDERS = ("passage", "previous", "document", "heading", "page")
REWRITE_PLACEHOLDERS = (*PLACEHOLDERS, "question")
NO_PREVIOUS = "(none: this is the first passage)"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BODY_CHARS = 300  # of an endpoint's error body quoted in a message


class WriterError(RuntimeError):
    """A question could not be written. ``fatal``: no other passage will fare better (bad
    key, unknown model, wrong URL), so the run stops."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


# ---------------------------------------------------------------------------- prompt


_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class PromptTemplate:
    """A prompt template file, checked when it is read: every ``{name}`` is a known
    placeholder and ``{passage}`` is among them."""

    def __init__(self, text: str, where: str, placeholders: tuple[str, ...] = PLACEHOLDERS,
                 required: tuple[str, ...] = ("passage",)):
        self.text = text
        self.where = where
        names: set[str] = set()
        for m in _FIELD.finditer(text):
            name = m.group(1)
            if name is None:
                continue
            if name not in placeholders:
                line = text.count("\n", 0, m.start()) + 1
                raise ValueError(
                    f"{where}:{line}: unknown placeholder {{{name}}}; the template may use "
                    + ", ".join("{" + p + "}" for p in placeholders) + " (write {{ and }} for literal braces)")
            names.add(name)
        for name in required:
            if name not in names:
                raise ValueError(f"{where}: the template has no {{{name}}} placeholder: the writer would not see "
                                 f"the {name}")

    @classmethod
    def load(cls, path: str | Path | None = None, *, option: str = "--prompt", default: Path = DEFAULT_TEMPLATE,
             placeholders: tuple[str, ...] = PLACEHOLDERS, required: tuple[str, ...] = ("passage",)) -> "PromptTemplate":
        path = Path(path) if path else default
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{option} {path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{option} {path}: not UTF-8 text at byte {exc.start:,}") from None
        return cls(text, str(path), placeholders, required)

    @classmethod
    def load_rewrite(cls, path: str | Path | None = None) -> "PromptTemplate":
        """The template that asks for the answer rewritten from the passage."""
        return cls.load(path, option="--rewrite-prompt", default=DEFAULT_REWRITE_TEMPLATE,
                        placeholders=REWRITE_PLACEHOLDERS, required=("passage", "question"))

    def render(self, passage: Any, previous: Any | None, question: str = "") -> str:
        values = {
            "question": question,
            "passage": passage.text,
            "previous": previous.text if previous is not None else NO_PREVIOUS,
            "document": passage.document,
            "heading": passage.heading or "(none)",
            "page": "" if passage.page is None else str(passage.page),
        }

        def fill(m: re.Match) -> str:
            if m.group(0) == "{{":
                return "{"
            if m.group(0) == "}}":
                return "}"
            return values[m.group(1)]

        return _FIELD.sub(fill, self.text)

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------- endpoint


@dataclass
class EndpointWriter:
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 128
    timeout: float = 120.0
    retries: int = 6
    backoff: float = 1.0  # seconds before the first retry, doubled at each
    max_backoff: float = 60.0
    on_retry: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        url = self.base_url.strip().rstrip("/")
        if not re.match(r"^https?://", url):
            raise ValueError(f"--base-url {self.base_url!r}: expected an http:// or https:// URL, e.g. "
                             "http://127.0.0.1:8000/v1")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.retried = 0
        self._lock = threading.Lock()
        self.stopped = threading.Event()  # set: retries give up at once (the run is ending)

    @property
    def label(self) -> str:
        return f"{self.model} at {self.url}"

    def ask(self, prompt: str) -> str:
        """The model's reply to one user message. Raises WriterError."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            wait: float | None = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._reply(raw)
            except urllib.error.HTTPError as exc:
                detail = _body(exc)
                if exc.code not in RETRY_STATUS:
                    raise WriterError(f"{self.url}: HTTP {exc.code} {exc.reason}{detail}{_hint(exc.code)}",
                                      fatal=exc.code in (400, 401, 403, 404, 405, 422)) from None
                reason = f"HTTP {exc.code}"
                wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException) as exc:
                reason = _one_line(getattr(exc, "reason", None) or exc)
            if attempt >= self.retries or self.stopped.is_set():
                raise WriterError(f"{self.url}: {reason}, still after {attempt} retries")
            delay = self.backoff * (2 ** attempt) * random.uniform(0.75, 1.25)
            delay = min(self.max_backoff, wait if wait is not None else delay)
            attempt += 1
            with self._lock:
                self.retried += 1
            if self.on_retry:
                self.on_retry(f"{reason}: retry {attempt} of {self.retries} in {delay:.1f} s")
            self.stopped.wait(delay)

    def _reply(self, raw: bytes) -> str:
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            text = raw[:BODY_CHARS].decode("utf-8", errors="replace")
            raise WriterError(f"{self.url}: the reply is not an OpenAI chat completion "
                              f"(no choices[0].message.content): {text!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""


def _body(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read()[:BODY_CHARS].decode("utf-8", errors="replace").strip()
    except Exception:  # noqa: BLE001
        return ""
    return f": {' '.join(text.split())}" if text else ""


def _hint(code: int) -> str:
    return {
        401: " (check the key: --api-key-env names the environment variable that holds it)",
        403: " (the key is not allowed to use this model)",
        404: " (check --base-url, usually ending in /v1, and --model)",
    }.get(code, "")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _one_line(exc: Any) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------- local


@dataclass
class _Prompt:
    index: int
    prompt_ids: list[int]


class LocalWriter:
    """A model on this machine, loaded once; prompts answered in batches."""

    def __init__(self, model: str, max_new_tokens: int = 64, batch_size: int = 8):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.chat: Any = None

    @property
    def label(self) -> str:
        return f"{self.model} (local)"

    def load(self, progress: Callable[[str, str], None] | None = None) -> None:
        from finetui.engine import chat

        try:
            self.chat = chat.load(self.model, progress=progress)
        except chat.ModelLoadError as exc:
            raise WriterError(f"--model {self.model}: {exc}", fatal=True) from None

    def ask_many(self, prompts: list[str]) -> list[str | WriterError]:
        """Replies to several user messages, in order (greedy, batched); a prompt that
        does not fit the model's context gets a WriterError in its place."""
        from finetui.engine.evaluate import generate_greedy

        if self.chat is None:
            self.load()
        items, out = [], {}
        room = self.chat.context - self.max_new_tokens
        for i, prompt in enumerate(prompts):
            ids = self.chat.prompt_ids([{"role": "user", "content": prompt}])
            if len(ids) > room:
                out[i] = WriterError(f"the prompt is {len(ids)} tokens; {self.model} has room for {room} "
                                     f"(context {self.chat.context}): lower --max-chars or shorten --prompt")
            else:
                items.append(_Prompt(i, ids))
        if items:
            out.update(generate_greedy(self.chat, items, self.max_new_tokens, self.batch_size))
        return [out.get(i, "") for i in range(len(prompts))]
