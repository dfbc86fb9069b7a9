"""Chat: talk to a run's result, a local model or the demo model; the base beside the
tuned model; save a conversation as a training record.

* load (ctrl+o): a run's merged model, the base plus a run's adapter, a run's full
  fine-tune, ``tiny``, or a folder / hub id. Each model lives in its own chat worker
  (``python -m engine.chat --serve``, driven by ``engine.chat_protocol.ChatClient``);
  unloading ends that process, so its memory really goes back. The worker's ``loading``
  messages show in the pane's header while it loads.
* replies stream: a thread per reply reads the worker's token messages into a buffer, and
  a 50 ms timer moves what arrived into the message widget, so a fast model costs the UI
  20 refreshes a second, not one per token. The log follows the bottom only while the
  reader is there (tui.widgets.chatlog).
* esc stops a reply (the worker's cancel: it stops after the current token), ctrl+r
  asks again, ctrl+z takes the last message back into the prompt, ctrl+l clears.
* what each model is sent lives in ``tui.chathistory.ChatHistory``: loading a different
  model in a pane starts a new conversation there (the old transcript stays above a
  separator line, but is not sent: one model's replies in another's context derail it);
  ctrl+n toggles single-turn mode (each message sent alone). Each pane's header shows the
  history its next request carries ("history 3 turns · ~412 tok", or "single-turn").
* side by side (ctrl+b): the run's base model in a second worker
  (``ChatClient(run, base=True)``), asked the same prompts; two columns, or stacked when
  the terminal is narrow.
* ctrl+s appends the conversation to a JSONL file as ``{"messages": [...]}`` (the
  OpenAI messages format the Datasets screen and the trainer read).

Faults keep the conversation: a model that cannot load, a worker that dies mid-reply (the
partial reply stays on screen, marked), a prompt the model cannot take (too long for its
context: the text goes back into the prompt box), an empty prompt. This process never
imports torch; everything heavy is in the workers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Input, Static

from engine.chat_protocol import ChatClient, ChatError, Generation
from tui.chathistory import ChatHistory, Side
from tui.safetext import safe
from tui.screens.base import FinetuiScreen, PaletteCommand
from tui.widgets.chatdialogs import UNLOAD, LoadDialog, ParamsDialog, SaveRecordDialog
from tui.widgets.chatlog import ChatLog, ChatMessage
from tui.widgets.pathinput import PathInput

FLUSH_S = 0.05  # how often streamed text reaches the screen
FLASH_S = 8.0  # how long a refusal stays in the status line
STACK_BELOW = 70  # narrower than this, side by side stacks the panes
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
DEFAULT_PARAMS: dict[str, Any] = {
    "system": "",
    "max_new_tokens": 256,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "repetition_penalty": 1.0,
    "seed": None,
    "min_new_tokens": 0,  # not in the dialog: benchmarks and tests
}
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "min_new_tokens")
RECORD_DEFAULT = "chat_records.jsonl"


def run_dir_of(target: str) -> Path | None:
    """The run folder a load target belongs to (a run id, ``last``, a run folder, or a
    run's merged/ or adapter/ folder), else None. Light: engine.runs only."""
    from engine import runs

    path = Path(target)
    if path.is_dir() and (path.parent / "config.yaml").exists() and path.name in ("merged", "adapter"):
        return path.parent.resolve()
    if (path / "config.yaml").exists():
        return path.resolve()
    if target == "tiny" or path.is_absolute() or path.exists():
        return None  # a model folder
    try:
        return runs.resolve(target).resolve()
    except (runs.RunError, OSError, NotImplementedError):
        return None


def worker_client(target: str, base: bool = False, trust_remote_code: bool = False) -> ChatClient:
    """A ChatClient for ``target``. An absolute model folder is handed to the worker as
    ``./NAME`` from its parent folder: the worker first asks engine.runs.resolve whether the
    target names a run, and that globs ``<runs dir>/<target>*``, which pathlib refuses for
    an absolute pattern (NotImplementedError) whenever the runs folder exists.
    ``trust_remote_code``: the user's own config (Settings), never the run's or adapter's."""
    path = Path(target)
    if not (path.is_absolute() and path.is_dir()) or (path / "config.yaml").exists():
        return ChatClient(target, base=base, trust_remote_code=trust_remote_code)
    env = {"FINETUI_RUNS_DIR": str(Path(os.environ.get("FINETUI_RUNS_DIR") or "runs").resolve())}
    if os.environ.get("FINETUI_CACHE"):
        env["FINETUI_CACHE"] = str(Path(os.environ["FINETUI_CACHE"]).resolve())
    client = ChatClient(f"./{path.name}", base=base, cwd=str(path.parent), env=env,
                        trust_remote_code=trust_remote_code)
    client.model = str(path)  # what its messages name
    return client


def load_choices() -> list[tuple[str, str, str]]:
    """What the load dialog offers: each run's results (merged, base + adapter, full
    fine-tune), newest first, then the demo model. Reads the runs folder (a thread)."""
    from engine import runs

    items: list[tuple[str, str, str]] = []
    for info in runs.list_runs():
        run_dir = Path(info.path).resolve()
        what = f"{info.status} · {info.method or '?'} · {info.model or '?'}"
        merged, adapter = run_dir / "merged", run_dir / "adapter"
        for folder in (merged, adapter):
            if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
                items.append((str(folder), f"{info.id} · {_folder_kind(folder)}", what))
    items.append(("tiny", "tiny", "the built-in demo model (untrained)"))
    return items


@dataclass
class Job:
    """One reply being generated. The thread appends to ``pending`` (under ``lock``); the
    UI's timer moves it into ``widget``."""

    turn: int
    widget: ChatMessage
    messages: list[dict[str, str]] = field(default_factory=list)  # what the request carried
    started: float = field(default_factory=time.monotonic)
    gen: Generation | None = None
    cancelled: bool = False
    fragments: int = 0
    pending: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> str:
        with self.lock:
            text = "".join(self.pending)
            self.pending.clear()
        return text

    def cancel(self) -> None:
        self.cancelled = True
        gen = self.gen
        if gen is not None:
            gen.cancel()


class PaneView(Vertical):
    """A model's header line over its conversation."""

    DEFAULT_CSS = """
    PaneView { width: 1fr; height: 1fr; }
    PaneView .pane-top { height: 1; background: $surface; }
    PaneView .pane-header { width: 1fr; height: 1; padding: 0 1; }
    PaneView .pane-history { width: auto; height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, side: str, empty: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.side = side
        self.empty = empty

    def compose(self):
        with Horizontal(classes="pane-top"):
            yield Static("", classes="pane-header")
            yield Static("", classes="pane-history")
        yield ChatLog(self.empty, id=f"log-{self.side}")


class Pane:
    """One model, its side of the conversation (``history``: replies by turn, where its
    conversation starts) and the widgets that show it."""

    def __init__(self, side: str, history: Side) -> None:
        self.side = side  # main | base
        self.history = history
        self.client: ChatClient | None = None
        self.state = "empty"  # empty | loading | ready | failed | crashed
        self.target = ""
        self.title = ""  # what is loaded, for headers and notes
        self.stage = ""  # the worker's latest loading message
        self.info: dict[str, Any] = {}
        self.problem = ""
        self.users: dict[int, ChatMessage] = {}
        self.reply_widgets: dict[int, ChatMessage] = {}
        self.job: Job | None = None
        self.last_job: Job | None = None
        self.view: PaneView | None = None

    @property
    def replies(self) -> dict[int, str | None]:
        return self.history.replies

    @property
    def failures(self) -> dict[int, str]:
        return self.history.failures

    @property
    def first_turn(self) -> int:
        """Turns before it are not in this pane's conversation (another model's, or asked
        before the base pane joined)."""
        return self.history.start

    @property
    def log(self) -> ChatLog:
        assert self.view is not None
        return self.view.query_one(ChatLog)

    @property
    def busy(self) -> bool:
        return self.job is not None


class ChatScreen(FinetuiScreen):
    MODE = "chat"
    AUTO_FOCUS = "#prompt"
    HELP_CLASSES = [ChatLog, LoadDialog, ParamsDialog, SaveRecordDialog, PathInput]
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("escape", "leave", "Leave prompt", show=False, id="chat.leave"),
        Binding("ctrl+o", "load", "Load", id="chat.load"),
        Binding("ctrl+b", "side_by_side", "Base|Tuned", id="chat.side_by_side"),
        Binding("ctrl+t", "params", "Params", id="chat.params"),
        Binding("ctrl+r", "retry", "Retry", id="chat.retry"),
        Binding("ctrl+z", "undo", "Undo", show=False, id="chat.undo"),
        Binding("ctrl+l", "clear", "Clear", show=False, id="chat.clear"),
        Binding("ctrl+n", "single_turn", "Single-turn", id="chat.single_turn"),
        Binding("ctrl+s", "save", "Save", id="chat.save"),
        Binding("i", "focus_prompt", "Type", show=False, id="chat.type"),
    ]
    DEFAULT_CSS = """
    ChatScreen #panes { layout: horizontal; height: 1fr; }
    ChatScreen #panes.-stacked { layout: vertical; }
    ChatScreen #pane-base { display: none; border-right: vkey $panel; }
    ChatScreen #panes.-stacked #pane-base { border-right: none; border-bottom: hkey $panel; }
    ChatScreen #panes.-compare #pane-base { display: block; }
    ChatScreen #prompt { background: $boost; }
    ChatScreen #prompt:focus { background: $primary 15%; }
    ChatScreen #chat-status { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.history = ChatHistory()
        self.main = Pane("main", self.history.side("main"))
        self.base = Pane("base", self.history.side("base"))
        self.params: dict[str, Any] = dict(DEFAULT_PARAMS)
        self.compare = False
        self.run_dir: Path | None = None  # the run the main model comes from
        self.record_path = RECORD_DEFAULT
        self._flash: tuple[Text, float] | None = None
        self._tick_n = 0
        self._timer = None

    # ------------------------------------------------------------------ layout

    def compose_body(self):
        with Container(id="panes"):
            yield PaneView("base", "", id="pane-base")
            yield PaneView("main", "Nothing loaded. ctrl+o loads a model: a run's result, tiny, or a folder.",
                           id="pane-main")
        yield Input(placeholder="message · enter send · esc stop · ^z undo · ^l clear · ? all keys", id="prompt",
                    compact=True)
        yield Static("", id="chat-status")

    def on_mount(self) -> None:
        self.main.view = self.query_one("#pane-main", PaneView)
        self.base.view = self.query_one("#pane-base", PaneView)
        self._timer = self.set_interval(FLUSH_S, self._tick, pause=True)
        self.show_headers()
        self.show_status()

    def on_screen_resume(self) -> None:
        # The dashboard's "chat with this run" (and the Eval screen's) hand a run over here.
        target = getattr(self.app, "chat_target", None)
        if target:
            self.app.chat_target = None
            self.load(str(target))
            self.prompt.focus()
        elif self.focused is None:
            self.prompt.focus()

    def on_unmount(self) -> None:
        for pane in (self.main, self.base):
            self._close_client(pane)

    def on_resize(self) -> None:
        self.query_one("#panes").set_class(self.size.width < STACK_BELOW, "-stacked")
        self.call_after_refresh(self.show_headers)  # the history line is shorter in a narrow pane

    @property
    def turns(self) -> list[str]:
        """The user's messages, by turn."""
        return self.history.turns

    @property
    def panes(self) -> list[Pane]:
        return [self.base, self.main] if self.compare else [self.main]

    @property
    def busy(self) -> bool:
        return any(p.busy for p in (self.main, self.base))

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    # ------------------------------------------------------------------ headers, status

    def label(self, pane: Pane) -> str:
        """Who speaks in a pane's replies."""
        if pane.side == "base":
            return "base"
        if self.run_dir is not None:
            return "tuned"
        return Path(pane.target).name or pane.target or "model"

    def show_headers(self) -> None:
        for pane in (self.main, self.base):
            if pane.view is not None and pane.view.is_mounted:
                pane.view.query_one(".pane-header", Static).update(safe(self.header(pane)))  # names, paths
                pane.view.query_one(".pane-history", Static).update(self.history_line(pane))

    def history_line(self, pane: Pane) -> Text:
        """How much earlier conversation the pane's next request carries."""
        narrow = pane.view is not None and pane.view.size.width < 60
        return Text(self.history.size(pane.side, self.params["system"]).describe(narrow), no_wrap=True)

    def header(self, pane: Pane) -> Text:
        colors = self.app.theme_variables
        text = Text(no_wrap=True, overflow="ellipsis")
        who = self.label(pane) if pane.state != "empty" else ""
        if pane.state == "ready":
            text.append("● ", style=f"bold {colors.get('success', 'green')}")
            text.append(who, style="bold")
            info = pane.info
            details = [pane.title]
            if info.get("params"):
                details.append(_count(info["params"]) + " params")
            if info.get("device"):
                details.append(str(info["device"]))
            if info.get("context"):
                details.append(f"ctx {info['context']}")
            text.append(" · " + " · ".join(d for d in details if d), style="dim")
        elif pane.state == "loading":
            text.append(SPINNER[self._tick_n % len(SPINNER)] + " ", style=f"bold {colors.get('accent', '')}")
            text.append(f"loading {pane.title}", style="bold")
            if pane.stage:
                text.append(f" · {pane.stage}", style="dim")
        elif pane.state in ("failed", "crashed"):
            text.append("✖ ", style=f"bold {colors.get('error', 'red')}")
            text.append(f"{pane.title}: " + ("could not load" if pane.state == "failed" else "worker stopped"),
                        style="bold")
            text.append(" · ctrl+o loads again", style="dim")
        else:
            text.append("no model · ctrl+o loads one", style="dim")
        return text

    def flash(self, message: str, error: bool = True) -> None:
        """A short message in the status line (a refusal, a hint) until the next keystroke."""
        if error:
            self.app.bell()
        self._flash = (Text(message, style="bold red" if error else "bold"), time.monotonic())
        self.show_status()

    def show_status(self) -> None:
        line = Text(no_wrap=True, overflow="ellipsis")
        if self._flash is not None and time.monotonic() - self._flash[1] < FLASH_S:
            line.append_text(self._flash[0])
        elif self.busy:
            jobs = [p for p in self.panes if p.job is not None]
            spin = SPINNER[self._tick_n % len(SPINNER)]
            elapsed = max(time.monotonic() - j.job.started for j in jobs)
            who = " + ".join(self.label(p) for p in jobs)
            line.append(f"{spin} {who} replying {elapsed:.1f}s", style="bold")
            line.append(" · esc stops", style="dim")
        else:
            p = self.params
            temp = "greedy" if p["temperature"] == 0 else f"temp {p['temperature']:g}"
            line.append(f"max {p['max_new_tokens']} · {temp} · top-p {p['top_p']:g} · "
                        f"top-k {p['top_k'] or 'off'} · rep {p['repetition_penalty']:g}")
            if p.get("seed") is not None:
                line.append(f" · seed {p['seed']}")
            system = " ".join(p["system"].split())
            line.append(" · system: ", style="dim")
            line.append(system or "(none)", style="" if system else "dim")
            line.append("  ^t edit", style="dim")
        self.query_one("#chat-status", Static).update(safe(line))

    def on_input_changed(self, event: Input.Changed) -> None:
        if self._flash is not None:
            self._flash = None
            self.show_status()

    # ------------------------------------------------------------------ the timer

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.resume()

    def _tick(self) -> None:
        """Every 50 ms while something moves: streamed text into its widget, spinners."""
        self._tick_n += 1
        for pane in (self.main, self.base):
            self._flush(pane.job)
        loading = any(p.state == "loading" for p in (self.main, self.base))
        if self._tick_n % 2 == 0:
            if loading:
                self.show_headers()
            self.show_status()
        if not self.busy and not loading and self._timer is not None:
            self._timer.pause()
            self.show_status()

    def _flush(self, job: Job | None) -> None:
        if job is not None:
            text = job.take()
            if text and job.widget.is_attached:
                job.widget.append(text)

    def _ui(self, fn, *args) -> None:
        """Run ``fn`` on the UI thread from a worker thread; quietly nothing once the app
        has gone (a reply that ends while the app shuts down)."""
        try:
            self.app.call_from_thread(fn, *args)
        except Exception:  # noqa: BLE001 - no app, no screen to update
            pass

    # ------------------------------------------------------------------ loading

    def action_load(self) -> None:
        self.run_worker(self._gather_choices, thread=True, group="chat-choices", exclusive=True)

    def _gather_choices(self) -> None:
        try:
            items, problem = load_choices(), ""
        except Exception as exc:  # noqa: BLE001 - a broken runs folder still leaves tiny and paths
            items, problem = [("tiny", "tiny", "the built-in demo model (untrained)")], f"runs: {exc}"
        self._ui(self._open_load_dialog, items, problem)

    def _open_load_dialog(self, items: list[tuple[str, str, str]], problem: str) -> None:
        current = self.main.title if self.main.state in ("ready", "loading") else None
        self.app.push_screen(LoadDialog(items, current, problem), self._after_load_dialog)

    def _after_load_dialog(self, choice: str | None) -> None:
        if choice == UNLOAD:
            self.unload()
        elif choice:
            self.load(choice)
        self.prompt.focus()

    def load(self, target: str) -> None:
        """Load ``target`` as the main model (the base pane closes: it belongs to the old
        one). A different model starts a new conversation (see _start_loading)."""
        if self.compare:
            self._set_compare(False)
        self.run_dir = None
        self._start_loading(self.main, target, base=False)

    def _start_loading(self, pane: Pane, target: str, base: bool) -> None:
        """Start ``target``'s worker in a pane. Another model than the pane's last one starts
        a new conversation there: the transcript stays on screen above a separator, but
        none of it is sent. The same model again (after a crash, an unload) keeps it."""
        self._close_client(pane)
        swap = target != pane.target
        from tui.session import trusts_remote_code

        client = worker_client(target, base=base, trust_remote_code=trusts_remote_code(self.app))
        pane.client, pane.target, pane.state, pane.stage, pane.info = client, target, "loading", "starting", {}
        pane.title = self._title(target, base)
        if swap:
            self._new_conversation(pane, f"new conversation: {pane.title}")
        self.show_headers()
        self._wake()
        self.run_worker(partial(self._load_thread, pane, client, target), thread=True, group=f"chat-load-{pane.side}")

    def _title(self, target: str, base: bool) -> str:
        path = Path(target)
        if base:
            return f"base model of {self.run_dir.name if self.run_dir else target}"
        if path.name in ("merged", "adapter") and (path.parent / "config.yaml").exists():
            return f"{path.parent.name} ({_folder_kind(path)})"
        if target != "tiny" and path.exists():
            return path.name
        return target

    def _load_thread(self, pane: Pane, client: ChatClient, target: str) -> None:
        """Thread: start the worker and wait for ``ready`` (or its error)."""
        run_dir = run_dir_of(target) if pane.side == "main" else None
        try:
            ready = client.start(on_loading=lambda m: self._ui(self._loading, pane, client, m))
        except ChatError as exc:
            self._ui(self._load_failed, pane, client, exc)
            return
        except Exception as exc:  # noqa: BLE001 - cannot even spawn: say so, keep the UI
            self._ui(self._load_failed, pane, client, ChatError("internal", f"{type(exc).__name__}: {exc}"))
            return
        self._ui(self._loaded, pane, client, ready, run_dir)

    def _loading(self, pane: Pane, client: ChatClient, message: dict[str, Any]) -> None:
        if pane.client is client:
            pane.stage = str(message.get("message") or message.get("stage") or "")
            self.show_headers()

    def _loaded(self, pane: Pane, client: ChatClient, ready: dict[str, Any], run_dir: Path | None) -> None:
        if pane.client is not client:  # unloaded or replaced meanwhile
            threading.Thread(target=client.close, kwargs={"timeout": 2}, daemon=True).start()
            return
        pane.state, pane.info, pane.stage = "ready", dict(ready.get("model") or {}), ""
        if pane.side == "base":
            pane.title = str(pane.info.get("base_model") or pane.title)
        if pane.side == "main":
            self.run_dir = run_dir
            if run_dir is not None and Path(pane.target).name not in ("merged", "adapter"):
                pane.title = f"{run_dir.name} ({pane.info.get('source', 'run')})"
        took = ready.get("load_s")
        note = f"loaded {pane.title}" + (f" in {took:.1f}s" if isinstance(took, (int, float)) else "")
        info = pane.info
        if info.get("template"):
            note += f" · template {info['template']}"
        pane.log.note(note)
        self.show_headers()
        self.show_status()

    def _load_failed(self, pane: Pane, client: ChatClient, exc: ChatError) -> None:
        if pane.client is not client or exc.kind == "closed":
            return
        pane.client = None
        pane.state, pane.problem = "failed", exc.message
        if pane.side == "main":
            self.run_dir = None
        message = f"cannot load {pane.title}: {exc.message}"
        pane.log.note(message, error=True)
        self.notify(exc.message, title=f"Load {pane.title}", severity="error", timeout=12)
        self.show_headers()
        self.show_status()

    def _new_conversation(self, pane: Pane, why: str) -> None:
        """Nothing said before goes to this pane's model any more; a separator says so
        where there was something to leave behind."""
        if self.history.restart(pane.side) and pane.view is not None and pane.view.is_mounted:
            pane.log.rule(why)

    def unload(self) -> None:
        if self.compare:
            self._set_compare(False)
        title = self.main.title
        self._close_client(self.main)
        self.main.state, self.main.info = "empty", {}
        self.run_dir = None
        if title:
            self.main.log.note(f"unloaded {title} (its worker ended; memory freed)")
        self.show_headers()
        self.show_status()

    def _close_client(self, pane: Pane) -> None:
        """End a pane's worker without blocking the UI (close waits for the process)."""
        client, pane.client = pane.client, None
        if pane.job is not None:
            pane.job.cancel()
        if client is not None:
            threading.Thread(target=client.close, kwargs={"timeout": 2}, daemon=True, name="chat-close").start()

    # ------------------------------------------------------------------ side by side

    def action_side_by_side(self) -> None:
        if self.compare:
            self._set_compare(False)
            return
        if self.busy:
            self.flash("a reply is still coming: esc stops it first")
            return
        if self.main.state != "ready" or self.run_dir is None:
            self.flash("side by side needs a run's model: ctrl+o loads one (base vs tuned of that run)")
            return
        self._set_compare(True)

    def _set_compare(self, on: bool) -> None:
        self.compare = on
        self.query_one("#panes").set_class(on, "-compare")
        base = self.base
        if on:
            base.log.clear_messages()
            base.users, base.reply_widgets = {}, {}
            self.history.restart("base")  # its own conversation, from the next turn on
            if self.turns:
                base.log.note("the base model answers from here on; earlier turns are not in its context")
            self._start_loading(base, str(self.run_dir), base=True)
        else:
            self._close_client(base)
            base.state, base.job = "empty", None
        self.show_headers()
        self.call_after_refresh(self.show_headers)  # once the panes have their new widths
        self.show_status()

    # ------------------------------------------------------------------ sending

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            return
        event.stop()
        self.send(event.value)

    def send(self, text: str) -> None:
        if not text.strip():
            self.flash("empty prompt: type a message first")
            return
        if self.busy:
            self.flash("a reply is still coming: esc stops it, then send")
            return
        problem = self._not_ready()
        if problem:
            self.flash(problem)
            return
        self.prompt.value = ""
        self._post(text)

    def _post(self, text: str) -> None:
        """A new turn: shown in every pane, asked of every model."""
        turn = self.history.add(text)
        for pane in self.panes:
            pane.users[turn] = pane.log.add("user", "you", text)
            pane.log.anchor()  # sending means: show me the answer
            self._ask(pane, turn)

    def _not_ready(self) -> str | None:
        if self.main.state == "loading" or (self.compare and self.base.state == "loading"):
            return "still loading the model: wait for ● in the header"
        if self.main.state != "ready":
            if self.main.state in ("failed", "crashed"):
                return f"{self.main.title} is not loaded ({self.main.state}): ctrl+o loads a model"
            return "no model loaded: ctrl+o loads one (a run's result, tiny, or a folder)"
        return None

    def messages_for(self, pane: Pane, turn: int) -> list[dict[str, str]]:
        """What the model sees for ``turn``: the system prompt, the earlier exchanges of
        this pane's conversation that have a reply (none in single-turn mode), and the new
        user message."""
        return self.history.messages(pane.side, turn, self.params["system"])

    def _ask(self, pane: Pane, turn: int) -> None:
        if pane.state != "ready" or pane.client is None:
            pane.log.note(f"not asked: {pane.title or 'no model'} is not loaded", error=True)
            return
        widget = pane.log.add("assistant", self.label(pane), streaming=True)
        pane.reply_widgets[turn] = widget
        self.history.asked(pane.side, turn)
        messages = self.messages_for(pane, turn)
        job = Job(turn, widget, messages)
        pane.job = job
        params = {k: self.params[k] for k in GENERATION_KEYS if self.params.get(k) is not None}
        self.run_worker(partial(self._generate_thread, pane, pane.client, job, messages, params), thread=True,
                        group=f"chat-reply-{pane.side}")
        self._wake()
        self.show_headers()
        self.show_status()

    def _generate_thread(self, pane: Pane, client: ChatClient, job: Job, messages: list[dict], params: dict) -> None:
        """Thread: send the request and collect its tokens; never touches a widget."""
        try:
            gen = client.generate(messages, **params)
            job.gen = gen
            if job.cancelled:
                gen.cancel()
            for message in gen:
                with job.lock:
                    job.pending.append(message.get("text", ""))
                    job.fragments += 1
            self._ui(self._reply_done, pane, job, gen.done or {})
        except ChatError as exc:
            self._ui(self._reply_failed, pane, job, exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the reply hanging
            self._ui(self._reply_failed, pane, job, ChatError("internal", f"{type(exc).__name__}: {exc}"))

    def _reply_done(self, pane: Pane, job: Job, done: dict[str, Any]) -> None:
        if pane.job is not job:
            return  # cleared or unloaded meanwhile: its widget is gone
        self._flush(job)
        pane.job, pane.last_job = None, job
        text = done.get("text", job.widget.text)
        reason = done.get("stop_reason")
        stats = [f"{done.get('new_tokens', 0)} tok"]
        if done.get("tokens_per_s"):
            stats.append(f"{done['tokens_per_s']:.0f} tok/s")
        if reason == "length":
            stats.append("max tokens")
        elif reason == "cancelled":
            stats.append("stopped")
        job.widget.finish(text, " · ".join(stats))
        job.widget.done = done
        tokens = (done.get("prompt_tokens") or 0) + (done.get("new_tokens") or 0)
        self.history.answered(pane.side, job.turn, text if (text or reason != "cancelled") else None,
                              job.messages, tokens if done.get("prompt_tokens") else None)
        self.show_headers()
        self.show_status()

    def _reply_failed(self, pane: Pane, job: Job, exc: ChatError) -> None:
        if pane.job is not job:
            return
        self._flush(job)
        pane.job, pane.last_job = None, job
        self.history.failed(pane.side, job.turn, exc.kind)
        if exc.kind == "input":
            # The prompt cannot be answered as given (too long for the context, ...).
            job.widget.remove()
            pane.reply_widgets.pop(job.turn, None)
            pane.log.note(f"not sent: {exc.message}", error=True)
            self._drop_unanswerable(job.turn, exc.message)
        elif exc.kind == "closed":
            job.widget.finish(problem="(unloaded)")
        else:
            job.widget.finish(problem=f"✖ {exc.message}")
            if exc.kind == "crashed" or (pane.client is not None and not pane.client.alive):
                self._worker_died(pane, exc)
            else:
                self.notify(exc.message, title=f"Reply from {self.label(pane)}", severity="error", timeout=12)
        self.show_headers()
        self.show_status()

    def _drop_unanswerable(self, turn: int, message: str) -> None:
        """A prompt every pane refused: take it off the conversation and give it back to
        the prompt box, so the user can shorten it."""
        if turn != len(self.turns) - 1:
            return
        panes = [p for p in self.panes if p.first_turn <= turn]
        if any(p.job is not None and p.job.turn == turn for p in panes):
            return  # another side is still answering
        if not all(p.failures.get(turn) == "input" or p.state != "ready" for p in panes):
            return
        text = self.history.pop()
        for pane in panes:
            widget = pane.users.pop(turn, None)
            if widget is not None:
                widget.remove()
        if not self.prompt.value:
            self.prompt.value = text
            self.prompt.cursor_position = len(text)
        self.flash(message)
        self.notify(message, title="Prompt not sent", severity="error", timeout=10)

    def _worker_died(self, pane: Pane, exc: ChatError) -> None:
        client, pane.client = pane.client, None
        if client is not None:
            threading.Thread(target=client.close, kwargs={"timeout": 1}, daemon=True).start()
        pane.state, pane.problem = "crashed", exc.message
        pane.log.note(f"the chat worker stopped: {exc.message}. The conversation is kept: ctrl+o loads the model "
                      f"again, then ctrl+r asks the last message again.", error=True)
        self.notify(exc.message, title="Chat worker stopped", severity="error", timeout=15)

    # ------------------------------------------------------------------ stop, retry, undo, clear

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.busy
        if action == "leave":
            return not self.busy
        return True

    def action_single_turn(self) -> None:
        """Single-turn mode on or off. Either way what was said before is no longer sent:
        lone prompts were never a conversation, nor is a conversation continued by them."""
        on = not self.history.single_turn
        self.history.set_single_turn(on)
        rule = "single-turn: each message is sent alone" if on else "multi-turn: a new conversation"
        for pane in self.panes:
            pane.log.rule(rule)
        self.flash("single-turn: each message goes without the earlier ones" if on
                   else "multi-turn: replies build on the conversation from here on", error=False)
        self.show_headers()

    def action_stop(self) -> None:
        for pane in self.panes:
            if pane.job is not None:
                pane.job.cancel()
        self.flash("stopping the reply…", error=False)

    def action_leave(self) -> None:
        """Esc with nothing to stop: out of the prompt box (screen keys work again) or back."""
        if self.focused is self.prompt:
            self.main.log.focus()
        else:
            self.prompt.focus()

    def action_focus_prompt(self) -> None:
        self.prompt.focus()

    def action_retry(self) -> None:
        if self.busy:
            self.flash("a reply is still coming: esc stops it first")
            return
        if not self.turns:
            self.flash("nothing to retry yet")
            return
        problem = self._not_ready()
        if problem:
            self.flash(problem)
            return
        turn = len(self.turns) - 1
        if self.main.first_turn > turn:
            # A new conversation began after it (another model, single-turn toggled): ask it
            # again as the first message of this one, below the separator.
            self._post(self.turns[turn])
            return
        for pane in self.panes:
            if pane.first_turn > turn:
                continue
            old = pane.reply_widgets.pop(turn, None)
            if old is not None:
                old.remove()
            pane.log.anchor()
            self._ask(pane, turn)

    def action_undo(self) -> None:
        if self.busy:
            self.flash("a reply is still coming: esc stops it first")
            return
        if not self.turns:
            self.flash("nothing to undo")
            return
        if self.prompt.value.strip():
            self.flash("the prompt box holds a draft: ctrl+u clears it, then ctrl+z brings the last message back")
            return
        turn = len(self.turns) - 1
        text = self.history.pop()
        for pane in (self.main, self.base):
            for widget in (pane.users.pop(turn, None), pane.reply_widgets.pop(turn, None)):
                if widget is not None:
                    widget.remove()
        self.show_headers()
        self.prompt.value = text
        self.prompt.cursor_position = len(text)
        self.prompt.focus()

    def action_clear(self) -> None:
        for pane in (self.main, self.base):
            if pane.job is not None:
                pane.job.cancel()
                pane.job = None
            pane.log.clear_messages()
            pane.users, pane.reply_widgets = {}, {}
        self.history.clear()
        self.show_headers()
        self.show_status()

    # ------------------------------------------------------------------ settings

    def action_params(self) -> None:
        self.app.push_screen(ParamsDialog(self.params), self._after_params)

    def _after_params(self, values: dict | None) -> None:
        if values:
            self.params.update(values)
            self.flash("settings apply from the next reply", error=False)
            self.show_headers()  # the system prompt counts in the history's tokens
        self.prompt.focus()

    # ------------------------------------------------------------------ save as a record

    def record_messages(self, pane: Pane) -> list[dict[str, str]]:
        """The conversation on one side as an OpenAI ``messages`` list (answered turns of
        its conversation only; in single-turn mode the last exchange, as it was asked)."""
        return self.history.record(pane.side, self.params["system"])

    def action_save(self) -> None:
        if self.busy:
            self.flash("a reply is still coming: esc stops it first")
            return
        sides = [(p.side, f"{self.label(p)} replies") for p in reversed(self.panes)
                 if any(m["role"] == "assistant" for m in self.record_messages(p))]
        if not sides:
            self.flash("nothing to save yet: a record needs a message and its reply")
            return
        main = self.main if sides[0][0] == "main" else self.base
        n = sum(1 for m in self.record_messages(main) if m["role"] == "assistant")
        summary = f"{n} exchange{'s' if n != 1 else ''}" + (" + the system prompt" if self.params["system"].strip() else "")
        summary += " · appended as one line: {\"messages\": [...]}"
        self.app.push_screen(SaveRecordDialog(self.record_path, sides, summary, self._append_record),
                             self._after_save)

    def _append_record(self, path: Path, side: str) -> str | None:
        if path.suffix != ".jsonl":
            return f"{path.name}: records are JSON lines, use a .jsonl file"
        if path.is_dir():
            return f"{path}: a folder; give a .jsonl file in it"
        if not path.parent.is_dir():
            return f"{path.parent}: no such folder"
        pane = self.main if side == "main" else self.base
        record = {"messages": self.record_messages(pane)}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            if path.exists() and path.stat().st_size > 0:
                with open(path, "rb") as fh:
                    fh.seek(-1, 2)
                    if fh.read(1) != b"\n":
                        line = "\n" + line  # the file's last line had no newline: do not glue onto it
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        self.record_path = str(path)
        self._saved = (path, len(record["messages"]))
        return None

    def _after_save(self, path: Path | None) -> None:
        if path is not None:
            _path, n = self._saved
            self.notify(f"appended a record of {n} messages to {path}", title="Saved", timeout=8)
        self.prompt.focus()

    # ------------------------------------------------------------------ palette

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Chat: load a model…", "A run's merged model, base + adapter, tiny, or a folder", self.action_load),
            ("Chat: unload", "End the model's worker and free its memory", self.unload),
            ("Chat: side by side (base vs tuned)", "Ask the run's base model the same prompts",
             self.action_side_by_side),
            ("Chat: generation settings…", "System prompt, max new tokens, temperature, top-p/k, repetition",
             self.action_params),
            ("Chat: save as a training record…", "Append the conversation to a JSONL file (messages format)",
             self.action_save),
            ("Chat: clear", "Start a new conversation (the model stays loaded)", self.action_clear),
            ("Chat: single-turn / multi-turn", "Send each message alone, or with the conversation before it",
             self.action_single_turn),
        ]


def _folder_kind(path: Path) -> str:
    """What a run's merged/ or adapter/ folder holds, as the load dialog names it."""
    if path.name == "merged":
        return "merged"
    return "base + adapter" if (path / "adapter_config.json").exists() else "full fine-tune"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
