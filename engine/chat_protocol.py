"""The chat worker's JSON-lines protocol, and :class:`ChatClient`, which drives a worker.

Light module (stdlib only): the TUI imports it, so it must never pull in torch. The worker
itself is ``python -m finetui.engine.chat --serve MODEL_OR_RUN [--base]`` (engine/chat.py); one
process holds one model, and unloading a model means ending that process, so its memory
(VRAM included) really goes back.

Requests, one JSON object per line on the worker's stdin::

    {"op": "generate", "id": "1", "messages": [{"role": "user", "content": "Hi"}],
     "params": {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                "repetition_penalty": 1.0}}     (also min_new_tokens, seed)
    {"op": "cancel", "id": "1"}
    {"op": "shutdown"}

Responses, one JSON object per line on its stdout::

    {"type": "loading", "stage": "tokenizer" | "model" | "adapter" | "template", "message": ...}
    {"type": "ready", "v": 1, "model": {...}, "load_s": 1.2}
    {"type": "token", "id": "1", "text": "Hello "}              (streamed fragments)
    {"type": "done", "id": "1", "text": "Hello there.", "prompt_tokens": 12, "new_tokens": 4,
     "time_to_first_token_s": 0.05, "tokens_per_s": 80.1, "elapsed_s": 0.1,
     "stop_reason": "eos" | "length" | "cancelled"}
    {"type": "error", "id": "1" | null, "kind": "model" | "input" | "oom" | "internal",
     "message": "..."}

Generation requests run one at a time, in arrival order; a ``cancel`` for a request that is
still queued answers ``done`` with ``stop_reason: cancelled`` and no tokens. An ``error``
with ``id: null`` and ``kind: model`` before ``ready`` means the model could not be loaded;
the worker then exits with status 2. Every request gets exactly one final answer (``done``
or ``error``) for its id. A line that is not valid UTF-8, or not a request, is answered with
an ``input`` error naming it (``request line N ...``, with the request's id when it can be
read); requests already sent after a ``shutdown`` are answered as cancelled, like the
queued ones.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from finetui.engine import spawn
from finetui.engine.events import decode_object_line

VERSION = 1

OPS = ("generate", "cancel", "shutdown")
TYPES = ("loading", "ready", "token", "done", "error")
STOP_REASONS = ("eos", "length", "cancelled")
ERROR_KINDS = ("model", "input", "oom", "internal")
PARAMS: dict[str, Any] = {
    "max_new_tokens": 128,
    "temperature": 0.0,  # 0 = greedy
    "top_p": 1.0,
    "top_k": 0,  # 0 = off
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,  # > 0 suppresses the end-of-turn token until then (benchmarks)
    "seed": None,  # sampling seed, for reproducible samples
}


# ---------------------------------------------------------------------------- encode/decode


def encode(message: dict[str, Any]) -> str:
    """One line of the protocol (no trailing newline)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def decode(line: str | bytes) -> dict[str, Any] | None:
    """Parse one line. None for blank lines and for anything that is not a protocol object
    (a stray print from a library), so one bad line cannot stop a reader."""
    message = decode_object_line(line)
    if message is None or not ("type" in message or "op" in message):
        return None
    return message


def generate_request(id: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise ValueError(f"unknown generation parameter(s): {', '.join(sorted(unknown))} (known: {', '.join(PARAMS)})")
    return {"op": "generate", "id": str(id), "messages": list(messages),
            "params": {k: v for k, v in params.items() if v is not None}}


def cancel_request(id: str) -> dict[str, Any]:
    return {"op": "cancel", "id": str(id)}


def shutdown_request() -> dict[str, Any]:
    return {"op": "shutdown"}


def error(kind: str, message: str, id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "id": id, "kind": kind, "message": message}


# ---------------------------------------------------------------------------- client


class ChatError(RuntimeError):
    """An ``error`` answer from the worker (kind: model, input, oom, internal), or a worker
    that died (kind: crashed) or did not answer in time (kind: timeout)."""

    def __init__(self, kind: str, message: str, id: str | None = None):
        self.kind = kind
        self.message = message
        self.id = id
        super().__init__(message)


class WorkerCrashed(ChatError):
    def __init__(self, message: str, returncode: int | None = None, stderr_tail: str = ""):
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__("crashed", message)


_EOF = object()  # reader thread -> queues: the worker's stdout closed


def worker_command(model: str, base: bool = False, python: str | None = None,
                   trust_remote_code: bool = False) -> list[str]:
    """``trust_remote_code``: the user's own choice (their config, --trust-remote-code);
    without it the worker never runs code shipped with a model."""
    cmd = [python or sys.executable, "-m", "finetui.engine.chat", "--serve", str(model)]
    return cmd + (["--base"] if base else []) + (["--trust-remote-code"] if trust_remote_code else [])


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "closed its output"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


class Generation:
    """One request in flight: iterate it for ``token`` messages; the iteration ends after
    ``done`` (kept in :attr:`done`). Raises :class:`ChatError` on an ``error`` answer or
    :class:`WorkerCrashed` if the worker dies first. ``cancel()`` is safe from any thread."""

    def __init__(self, client: "ChatClient", id: str, timeout: float | None):
        self.client = client
        self.id = id
        self.timeout = timeout
        self.done: dict[str, Any] | None = None
        self.tokens: list[str] = []
        self._queue: queue.Queue = queue.Queue()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.done is None:
            message = self._next()
            if message.get("type") == "token":
                self.tokens.append(message.get("text", ""))
                yield message
            elif message.get("type") == "done":
                self.done = message
                self.client._forget(self.id)
            elif message.get("type") == "error":
                self.client._forget(self.id)
                raise ChatError(message.get("kind", "internal"), message.get("message", ""), self.id)

    def _next(self) -> dict[str, Any]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                message = self._queue.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    self.client._forget(self.id)
                    raise ChatError("timeout", f"no answer to request {self.id} in {self.timeout:g}s", self.id) from None
                if self.client._crash is not None:  # belt and braces: the reader always wakes us
                    raise self.client._crash
                continue
            if message is _EOF:
                raise self.client._crash or WorkerCrashed("chat worker ended")
            return message

    def result(self) -> dict[str, Any]:
        """Wait for the end; return the ``done`` message."""
        for _ in self:
            pass
        assert self.done is not None
        return self.done

    def cancel(self) -> None:
        if self.done is None:
            self.client.cancel(self.id)


class ChatClient:
    """Spawns and drives one chat worker.

    >>> with ChatClient("last") as chat:           # doctest: +SKIP
    ...     info = chat.start(on_loading=print)     # blocks until ready; raises ChatError(kind=model)
    ...     gen = chat.generate([{"role": "user", "content": "Hi"}], max_new_tokens=32)
    ...     for token in gen:
    ...         print(token["text"], end="")
    ...     print(gen.done["tokens_per_s"])

    The worker runs in its own session (a Ctrl-C in the terminal or a TUI crash does not
    reach it through signals; it ends when its stdin closes). Its stderr (library warnings,
    tracebacks) is kept: the last lines are in crash messages, and the whole of it goes to
    ``stderr_path`` when given.
    """

    def __init__(
        self,
        model: str,
        *,
        base: bool = False,
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        command: list[str] | None = None,
        stderr_path: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
    ):
        self.model = str(model)
        self.base = base
        self.command = command or worker_command(self.model, base=base, python=python,
                                                 trust_remote_code=trust_remote_code)
        self.env = env
        self.cwd = cwd
        self.stderr_path = Path(stderr_path) if stderr_path else None
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, Any] | None = None
        self.loading: list[dict[str, Any]] = []
        self._control: queue.Queue = queue.Queue()  # messages without a request id
        self._pending: dict[str, Generation] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._crash: WorkerCrashed | None = None
        self._closing = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def spawn(self) -> None:
        """Start the worker process (does not wait for it to load)."""
        if self.proc is not None:
            return
        self.proc = spawn.start(
            self.command,
            env=self.env,
            stdin=subprocess.PIPE,
            cwd=self.cwd,
            bufsize=-1,  # buffered: readline on a raw pipe would read byte by byte
        )
        for target in (self._read_stdout, self._read_stderr):
            t = threading.Thread(target=target, name=f"chat-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def start(self, timeout: float | None = None, on_loading: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Spawn the worker if needed and wait until the model is loaded. Returns the
        ``ready`` message. Raises ChatError (kind model: the model cannot be loaded;
        timeout) or WorkerCrashed."""
        self.spawn()
        if self.ready is not None:
            return self.ready
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = self._control.get(timeout=wait)
            except queue.Empty:
                self.close(timeout=1)
                raise ChatError("timeout", f"chat worker did not load {self.model} in {timeout:g}s") from None
            if message is _EOF:
                raise self._crash or WorkerCrashed("chat worker ended before it was ready")
            kind = message.get("type")
            if kind == "loading":
                self.loading.append(message)
                if on_loading:
                    on_loading(message)
            elif kind == "ready":
                self.ready = message
                return message
            elif kind == "error":
                # The worker exits by itself after a load error; give a loaded machine
                # time for that before falling back to signals.
                self.close(timeout=15)
                raise ChatError(message.get("kind", "internal"), message.get("message", ""))

    def close(self, timeout: float = 5.0) -> int | None:
        """Ask the worker to shut down; after ``timeout`` s terminate, then kill, its
        process group. Returns the exit status. Generations still being iterated raise
        ChatError with kind 'closed'."""
        proc = self.proc
        if proc is None:
            return None
        self._closing = True
        if proc.poll() is None:
            try:
                self.send(shutdown_request())
            except ChatError:
                pass
            try:
                if proc.stdin:
                    proc.stdin.close()
            except OSError:
                pass
            for sig, wait in ((None, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                if sig is not None:
                    try:
                        os.killpg(proc.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for t in self._threads:
            t.join(timeout=2)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        return proc.returncode

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._crash is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stderr_tail(self, lines: int = 10) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    # ------------------------------------------------------------------ requests

    def send(self, message: dict[str, Any]) -> None:
        """Write one request line. Raises WorkerCrashed if the worker is gone."""
        if self.proc is None or self.proc.stdin is None:
            raise ChatError("closed", "chat worker not started (call start())")
        if self._crash is not None:
            raise self._crash
        data = (encode(message) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                if self._closing:
                    raise ChatError("closed", "chat worker is closed") from None
                self._wait_for_reader()
                raise self._crash or WorkerCrashed(
                    f"chat worker {_describe_exit(self.proc.poll())}", self.proc.poll(), self.stderr_tail()
                ) from None

    def generate(self, messages: list[dict[str, Any]], *, id: str | None = None,
                 timeout: float | None = None, **params: Any) -> Generation:
        """Send a generate request now; iterate the returned Generation for its tokens.
        ``params``: max_new_tokens, temperature (0 = greedy), top_p, top_k,
        repetition_penalty."""
        if self.ready is None:
            self.start()
        rid = str(id) if id is not None else f"r{next(self._ids)}"
        request = generate_request(rid, messages, **params)
        gen = Generation(self, rid, timeout)
        with self._lock:
            if self._crash is not None:
                raise self._crash
            self._pending[rid] = gen
        try:
            self.send(request)
        except ChatError:
            self._forget(rid)
            raise
        return gen

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """generate() and wait: returns the ``done`` message."""
        return self.generate(messages, **kwargs).result()

    def cancel(self, id: str) -> None:
        try:
            self.send(cancel_request(id))
        except ChatError:
            pass  # a dead worker generates nothing; its Generation already raises

    # ------------------------------------------------------------------ threads

    def _forget(self, id: str) -> None:
        with self._lock:
            self._pending.pop(id, None)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            message = decode(raw)
            if message is None:
                continue
            rid = message.get("id")
            with self._lock:
                gen = self._pending.get(str(rid)) if rid is not None else None
            if gen is not None:
                gen._queue.put(message)
            elif rid is None:
                self._control.put(message)
            # else: an answer to a request nobody waits for any more (timed out): drop it
        # EOF: the worker is gone (or going). Wake everybody with a clear error.
        try:
            returncode = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            returncode = None
        for t in self._threads:
            if t.name.endswith("_read_stderr"):
                t.join(timeout=1)
        if self._closing:
            self._crash = WorkerCrashed("chat worker was closed", returncode, self.stderr_tail())
            self._crash.kind = "closed"
        else:
            tail = self.stderr_tail(3)
            detail = f": {tail.splitlines()[-1]}" if tail else ""
            self._crash = WorkerCrashed(
                f"chat worker for {self.model} {_describe_exit(returncode)}{detail}", returncode, self.stderr_tail()
            )
        with self._lock:
            pending = list(self._pending.values())
        for gen in pending:
            gen._queue.put(_EOF)
        self._control.put(_EOF)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        log = open(self.stderr_path, "ab") if self.stderr_path else None
        try:
            for raw in self.proc.stderr:
                if log:
                    log.write(raw)
                    log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    self._stderr.append(line)
        finally:
            if log:
                log.close()

    def _wait_for_reader(self) -> None:
        for t in self._threads:
            if t.name.endswith("_read_stdout"):
                t.join(timeout=6)
