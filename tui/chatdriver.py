"""The Chat screen's model workers driven without Textual: a load thread per worker
(``ChatClient.start``, reading its ``loading`` messages until ``ready`` or an error), a
thread per reply (``ChatClient.generate``, its tokens into the reply's ``Job``), a worker
ended off the caller's thread, and the load dialog's choices read in a thread.

What a thread learns goes back through ``post(fn, *args)``, which runs ``fn`` where the
state lives (the screen passes ``app.call_from_thread``; tests a queue they drain). There
the driver brings the ``ChatSession`` up to date (a stale answer, from a worker unloaded or
replaced meanwhile, is dropped or its worker ended), then tells the ``ChatView`` what to
show. ``spawn(fn, group, exclusive)`` runs ``fn`` in a thread (the screen: a Textual
thread worker; by default a daemon thread). Plain Python: no Textual, no torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from finetui.engine.chat_protocol import ChatClient, ChatError
from finetui.tui.chatstate import TINY, ChatSession, Job, ModelPane, load_choices, run_dir_of, worker_client

Choices = list[tuple[str, str, str]]


class ChatView(Protocol):
    """What the driver tells whoever shows the conversation; called where the state lives."""

    def stage_changed(self, pane: ModelPane) -> None:
        """The worker said what it is loading (``pane.stage``)."""

    def model_loaded(self, pane: ModelPane, note: str) -> None:
        """The model is ready (``pane.state == "ready"``); ``note`` says what was loaded."""

    def model_failed(self, pane: ModelPane, note: str, message: str) -> None:
        """The model could not be loaded (``pane.state == "failed"``)."""

    def flush_reply(self, job: Job) -> None:
        """Show what the reply's thread put in ``job`` and was not shown yet (``job.take()``)."""

    def reply_answered(self, pane: ModelPane, job: Job, text: str, stats: str, done: dict[str, Any]) -> None:
        """A reply ended (finished, stopped or at its token limit): its text and stats line."""

    def reply_failed(self, pane: ModelPane, job: Job, then: str, message: str, note: str,
                     given_back: tuple[str, list[ModelPane]] | None) -> None:
        """A reply failed; ``then`` is ``ChatSession.reply_failed``'s verdict. ``died``: the
        worker is gone (``note`` says so, its client is being ended); ``give_back``: every
        pane refused the prompt, taken off the history: (its text, the panes that showed it)."""


def daemon_thread(fn: Callable[[], None], group: str, exclusive: bool = False) -> None:
    threading.Thread(target=fn, name=group, daemon=True).start()


def call_here(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


class ChatDriver:
    """Starts and ends the workers of ``chat``'s panes and asks them for replies."""

    def __init__(self, chat: ChatSession, view: ChatView, post: Callable[..., None] = call_here,
                 spawn: Callable[..., None] = daemon_thread) -> None:
        self.chat, self.view, self.post, self.spawn = chat, view, post, spawn

    # ------------------------------------------------------------------ the load dialog

    def choices(self, then: Callable[[Choices, str], None]) -> None:
        """Read what the load dialog offers in a thread; ``then(items, problem)`` is posted
        (a broken runs folder still leaves tiny and paths, and says why)."""
        def gather() -> None:
            try:
                items, problem = load_choices(), ""
            except Exception as exc:  # noqa: BLE001 - see above
                items, problem = [TINY], f"runs: {exc}"
            self.post(then, items, problem)

        self.spawn(gather, "chat-choices", True)

    # ------------------------------------------------------------------ workers

    def close(self, client: ChatClient | None, timeout: float = 2) -> None:
        """End a worker without blocking the caller (close waits for the process)."""
        if client is not None:
            threading.Thread(target=client.close, kwargs={"timeout": timeout}, daemon=True, name="chat-close").start()

    def load(self, pane: ModelPane, target: str, base: bool = False, trust_remote_code: bool = False) -> bool:
        """Start ``target``'s worker in a pane, ending the one it had. True when it is another
        model than the pane's last one: a new conversation starts there (the caller draws
        the separator); the same model again (after a crash, an unload) keeps it."""
        self.close(pane.release())
        client = worker_client(target, base=base, trust_remote_code=trust_remote_code)
        new = bool(pane.start(client, target, self.chat.run_dir) and self.chat.history.restart(pane.side))
        self.spawn(partial(self._load_thread, pane, client, target), f"chat-load-{pane.side}")
        return new

    def unload(self) -> str | None:
        """End the main model's worker: the note its pane shows, None if nothing was loaded."""
        self.close(self.chat.main.release())
        return self.chat.unloaded()

    def _load_thread(self, pane: ModelPane, client: ChatClient, target: str) -> None:
        """Thread: start the worker and wait for ``ready`` (or its error)."""
        run_dir = run_dir_of(target) if pane.side == "main" else None
        try:
            ready = client.start(on_loading=lambda m: self.post(self._loading, pane, client, m))
        except ChatError as exc:
            self.post(self._load_failed, pane, client, exc)
            return
        except Exception as exc:  # noqa: BLE001 - cannot even spawn: say so, keep the UI
            self.post(self._load_failed, pane, client, ChatError("internal", f"{type(exc).__name__}: {exc}"))
            return
        self.post(self._loaded, pane, client, ready, run_dir)

    def _loading(self, pane: ModelPane, client: ChatClient, message: dict[str, Any]) -> None:
        if pane.client is client:
            pane.stage = str(message.get("message") or message.get("stage") or "")
            self.view.stage_changed(pane)

    def _loaded(self, pane: ModelPane, client: ChatClient, ready: dict[str, Any], run_dir: Path | None) -> None:
        if pane.client is not client:  # unloaded or replaced meanwhile
            self.close(client)
            return
        if pane.side == "main":
            self.chat.run_dir = run_dir
        self.view.model_loaded(pane, pane.ready(ready, run_dir))

    def _load_failed(self, pane: ModelPane, client: ChatClient, exc: ChatError) -> None:
        if pane.client is not client or exc.kind == "closed":
            return
        note = pane.load_failed(exc.message)
        if pane.side == "main":
            self.chat.run_dir = None
        self.view.model_failed(pane, note, exc.message)

    # ------------------------------------------------------------------ replies

    def ask(self, pane: ModelPane, turn: int, widget: Any) -> Job:
        """Ask the pane's model for ``turn`` (it must be ready); the reply shows in ``widget``."""
        job, params = self.chat.ask(pane, turn, widget)
        self.spawn(partial(self._generate_thread, pane, pane.client, job, params), f"chat-reply-{pane.side}")
        return job

    def _generate_thread(self, pane: ModelPane, client: ChatClient, job: Job, params: dict) -> None:
        """Thread: send the request and collect its tokens; never touches a widget."""
        try:
            gen = client.generate(job.messages, **params)
            job.gen = gen
            if job.cancelled:
                gen.cancel()
            for message in gen:
                job.put(message.get("text", ""))
            self.post(self._reply_done, pane, job, gen.done or {})
        except ChatError as exc:
            self.post(self._reply_failed, pane, job, exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the reply hanging
            self.post(self._reply_failed, pane, job, ChatError("internal", f"{type(exc).__name__}: {exc}"))

    def _reply_done(self, pane: ModelPane, job: Job, done: dict[str, Any]) -> None:
        if pane.job is not job:
            return  # cleared or unloaded meanwhile: its widget is gone
        self.view.flush_reply(job)
        text, stats = self.chat.answered(pane, job, done, job.shown)
        self.view.reply_answered(pane, job, text, stats, done)

    def _reply_failed(self, pane: ModelPane, job: Job, exc: ChatError) -> None:
        if pane.job is not job:
            return
        self.view.flush_reply(job)
        then = self.chat.reply_failed(pane, job, exc.kind)
        note, given_back = "", None
        if then == "died":
            client, note = pane.worker_died(exc.message)
            self.close(client, timeout=1)
        elif then == "give_back":  # the prompt leaves the conversation, back to the prompt box
            panes = [p for p in self.chat.panes if p.first_turn <= job.turn]
            given_back = (self.chat.history.pop(), panes)
        self.view.reply_failed(pane, job, then, exc.message, note, given_back)
