"""The UI side of ``engine.data.render_worker``: one subprocess, requests with callbacks.

The tokenizer (transformers) is loaded in that process, never here. Answers arrive on a
reader thread and are handed to the UI thread with ``app.call_from_thread``, so callbacks
may touch widgets. One client serves one (model, template, max_length, train_on, long_text,
text_overlap, roles); the
screen makes a new one when those settings change and closes the old one (ending the
process frees its memory).
"""

from __future__ import annotations

import collections
import itertools
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from finetui.engine import spawn

Callback = Callable[[dict[str, Any]], None]


class RenderClient:
    def __init__(self, app, model: str, template: str = "auto", max_length: int = 512,
                 train_on: str = "assistant", long_text: str = "chunk", text_overlap: int = 0,
                 roles: tuple[tuple[str, str], ...] | dict[str, str] = (),
                 on_state: Callable[[str, str], None] | None = None):
        self.app = app
        roles = tuple(sorted(dict(roles).items()))
        self.key = (model, template, max_length, train_on, long_text, text_overlap, roles)
        self.model = model
        self.on_state = on_state  # (state, message): starting | ready | failed
        self.state = "new"
        self.message = ""
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._callbacks: dict[int, Callback] = {}
        self._outbox: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.proc: subprocess.Popen | None = None
        self.args = ["--model", model, "--template", template, "--max-length", str(max_length),
                     "--train-on", train_on, "--long-text", long_text, "--text-overlap", str(text_overlap),
                     "--roles", json.dumps(dict(roles), ensure_ascii=False)]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.proc is not None:
            return
        try:
            self.proc = spawn.start(  # its own session: ctrl+c in the terminal goes to the UI, not here
                [sys.executable, "-m", "finetui.engine.data.render_worker", *self.args],
                stdin=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
            )
        except OSError as exc:
            self._set_state("failed", f"cannot start the render worker: {exc}")
            return
        self._set_state("starting", f"loading the tokenizer of {self.model}…")
        threading.Thread(target=self._read_stdout, name="render-worker-out", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="render-worker-err", daemon=True).start()
        threading.Thread(target=self._write_stdin, name="render-worker-in", daemon=True).start()

    def close(self) -> None:
        proc, self.proc = self.proc, None
        self._callbacks.clear()
        if proc is None:
            return
        self._outbox.put(None)  # closes stdin: the worker ends by itself
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ requests

    def request(self, op: str, callback: Callback, **fields: Any) -> int:
        """Send a request; ``callback(answer)`` runs on the UI thread for every answer with
        this id (progress lines too). Returns the id."""
        self.start()
        rid = next(self._ids)
        self._callbacks[rid] = callback
        self._outbox.put(json.dumps({"id": rid, "op": op, **fields}, ensure_ascii=False, default=str))
        if self.state == "failed":
            self._deliver({"type": "error", "id": rid, "message": self.message})
        return rid

    def cancel(self, rid: int) -> None:
        self._callbacks.pop(rid, None)
        if self.proc is not None:
            self._outbox.put(json.dumps({"op": "cancel", "target": rid}))

    # ------------------------------------------------------------------ threads

    def _write_stdin(self) -> None:
        proc = self.proc
        while proc is not None:
            line = self._outbox.get()
            try:
                if line is None:
                    proc.stdin.close()
                    return
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                return

    def _read_stderr(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for line in proc.stderr:
            if line.strip():
                self._stderr_tail.append(line.rstrip())

    def _read_stdout(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printed something; not ours
            self._post(message)
        proc.wait()
        if self.proc is proc:  # not closed by us: it died
            tail = next((l for l in reversed(self._stderr_tail) if l.strip()), "")
            self._post({"type": "exited", "message": f"render worker exited ({proc.returncode})"
                        + (f": {tail}" if tail else "")})

    def _post(self, message: dict[str, Any]) -> None:
        try:
            self.app.call_from_thread(self._deliver, message)
        except Exception:
            pass  # the app is shutting down

    # ------------------------------------------------------------------ UI thread

    def _set_state(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        if self.on_state:
            self.on_state(state, message)

    def _deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready":
            self.info = message
            self._set_state("ready", f"model {message.get('model')}, template {message.get('template')}")
            return
        if kind in ("fatal", "exited"):
            if not (kind == "exited" and self.state == "failed"):  # the worker's own reason stays
                self._set_state("failed", message.get("message", "render worker failed"))
            for rid, callback in list(self._callbacks.items()):
                callback({"type": "error", "id": rid, "message": self.message})
            self._callbacks.clear()
            return
        callback = self._callbacks.get(message.get("id"))
        if callback is None:
            return
        if kind not in ("progress",):
            self._callbacks.pop(message.get("id"), None)
        callback(message)
