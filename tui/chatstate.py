"""What the Chat screen knows and decides, without Textual: the generation settings and
their rules, which model each pane holds (its worker, its state, its reply in flight),
what each model is sent (``tui.chathistory``), what the load dialog offers, and a
conversation saved as a training record. Plain Python (no Textual, no torch): tests drive
it without an app, and the screen only shows it and plumbs keys, threads and widgets.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine.chat_protocol import ChatClient, Generation
from finetui.tui.chathistory import ChatHistory, Message, Side

RECORD_DEFAULT = "chat_records.jsonl"
BUSY = "a reply is still coming: esc stops it first"
TINY = ("tiny", "tiny", "the built-in demo model (untrained)")

# ---------------------------------------------------------------------------- generation settings

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
FIELDS: tuple[tuple[str, str, str], ...] = (
    # key, label, rule shown when refused
    ("system", "system prompt", ""),
    ("max_new_tokens", "max new tokens", "an integer >= 1"),
    ("temperature", "temperature", "a number >= 0 (0 = greedy)"),
    ("top_p", "top p", "a number in (0, 1]"),
    ("top_k", "top k", "an integer >= 0 (0 = off)"),
    ("repetition_penalty", "repetition penalty", "a number > 0 (1 = off)"),
    ("seed", "seed", "an integer, or empty for none"),
)


def parse_params(raw: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """Typed generation settings from the dialog's text, or the first problem. The same
    rules as the worker (engine.chat.check_params), checked here so a typo never reaches it."""
    out: dict[str, Any] = {"system": raw.get("system", "")}
    checks: dict[str, tuple[type, Callable[[float], bool]]] = {
        "max_new_tokens": (int, lambda v: v >= 1),
        "temperature": (float, lambda v: v >= 0),
        "top_p": (float, lambda v: 0 < v <= 1),
        "top_k": (int, lambda v: v >= 0),
        "repetition_penalty": (float, lambda v: v > 0),
        "seed": (int, lambda v: True),
    }
    rules = {key: rule for key, _label, rule in FIELDS}
    for key, (kind, ok) in checks.items():
        text = raw.get(key, "").strip()
        if key == "seed" and not text:
            out[key] = None
            continue
        try:
            value = kind(float(text)) if kind is float else int(text)
        except ValueError:
            return out, f"{key}: {text or '(empty)'} is not {rules[key]}"
        if not ok(value):
            return out, f"{key}: {text} must be {rules[key]}"
        out[key] = value
    return out, None


def generation_request(params: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings a request carries (the set ones; the system prompt goes in
    the messages)."""
    return {k: params[k] for k in GENERATION_KEYS if params.get(k) is not None}


def params_summary(params: dict[str, Any]) -> tuple[str, str]:
    """The settings as the status line shows them: (``max 256 · greedy · top-p 1 · ...``,
    the system prompt on one line, "" for none)."""
    temp = "greedy" if params["temperature"] == 0 else f"temp {params['temperature']:g}"
    line = (f"max {params['max_new_tokens']} · {temp} · top-p {params['top_p']:g} · "
            f"top-k {params['top_k'] or 'off'} · rep {params['repetition_penalty']:g}")
    if params.get("seed") is not None:
        line += f" · seed {params['seed']}"
    return line, " ".join(params["system"].split())


# ---------------------------------------------------------------------------- what to load


def run_dir_of(target: str) -> Path | None:
    """The run a load target belongs to (``engine.targets.run_dir_of``; imported when asked)."""
    from finetui.engine import targets

    return targets.run_dir_of(target)


def worker_client(target: str, base: bool = False, trust_remote_code: bool = False) -> ChatClient:
    """A ChatClient for ``target``. An absolute model folder is handed to the worker as
    ``./NAME`` from its parent folder: the worker first asks engine.targets whether the
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


def folder_kind(path: Path) -> str:
    """What a run's merged/ or adapter/ folder holds, as the load dialog names it."""
    if path.name == "merged":
        return "merged"
    return "base + adapter" if (path / "adapter_config.json").exists() else "full fine-tune"


def load_choices() -> list[tuple[str, str, str]]:
    """What the load dialog offers: each run's results (merged, base + adapter, full
    fine-tune), newest first, then the demo model. Reads the runs folder (a thread)."""
    from finetui.engine import runs

    items: list[tuple[str, str, str]] = []
    for info in runs.list_runs():
        run_dir = Path(info.path).resolve()
        what = f"{info.status} · {info.method or '?'} · {info.model or '?'}"
        for folder in (run_dir / "merged", run_dir / "adapter"):
            if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
                items.append((str(folder), f"{info.id} · {folder_kind(folder)}", what))
    items.append(TINY)
    return items


def model_title(target: str, base: bool, run_dir: Path | None) -> str:
    """How headers and notes name what a pane loads."""
    path = Path(target)
    if base:
        return f"base model of {run_dir.name if run_dir else target}"
    if path.name in ("merged", "adapter") and (path.parent / "config.yaml").exists():
        return f"{path.parent.name} ({folder_kind(path)})"
    if target != "tiny" and path.exists():
        return path.name
    return target


def count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# ---------------------------------------------------------------------------- a pane's model


@dataclass
class Job:
    """One reply being generated. The thread appends to ``pending`` (under ``lock``); the
    UI's timer moves it into ``widget`` (whatever shows it); ``shown``: all it took so far."""

    turn: int
    widget: Any
    messages: list[Message] = field(default_factory=list)  # what the request carried
    started: float = field(default_factory=time.monotonic)
    gen: Generation | None = None
    cancelled: bool = False
    fragments: int = 0
    pending: list[str] = field(default_factory=list)
    shown: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, text: str) -> None:
        with self.lock:
            self.pending.append(text)
            self.fragments += 1

    def take(self) -> str:
        with self.lock:
            text = "".join(self.pending)
            self.pending.clear()
        self.shown += text
        return text

    def cancel(self) -> None:
        self.cancelled = True
        gen = self.gen
        if gen is not None:
            gen.cancel()


def reply_outcome(done: dict[str, Any], shown: str) -> tuple[str, str, str | None, int | None]:
    """A finished reply from the worker's ``done``: (its text, its stats line, what the
    history keeps (None: a reply stopped before its first token), the request's tokens
    plus the reply's where the worker counted them)."""
    text = done.get("text", shown)
    reason = done.get("stop_reason")
    stats = [f"{done.get('new_tokens', 0)} tok"]
    if done.get("tokens_per_s"):
        stats.append(f"{done['tokens_per_s']:.0f} tok/s")
    if reason == "length":
        stats.append("max tokens")
    elif reason == "cancelled":
        stats.append("stopped")
    tokens = (done.get("prompt_tokens") or 0) + (done.get("new_tokens") or 0)
    kept = text if (text or reason != "cancelled") else None
    return text, " · ".join(stats), kept, tokens if done.get("prompt_tokens") else None


class ModelPane:
    """One model and its side of the conversation (``history``: replies by turn, where its
    conversation starts): its worker, what the worker said about the model, the reply in
    flight."""

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
        self.job: Job | None = None
        self.last_job: Job | None = None

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
    def busy(self) -> bool:
        return self.job is not None

    def details(self) -> list[str]:
        """What the header says after the name of a loaded model."""
        info = self.info
        out = [self.title]
        if info.get("params"):
            out.append(count(info["params"]) + " params")
        if info.get("device"):
            out.append(str(info["device"]))
        if info.get("context"):
            out.append(f"ctx {info['context']}")
        return [d for d in out if d]

    def start(self, client: ChatClient, target: str, run_dir: Path | None) -> bool:
        """A worker for ``target`` is starting. True when it is another model than the
        pane's last one (which starts a new conversation there)."""
        swap = target != self.target
        self.client, self.target, self.state, self.stage, self.info = client, target, "loading", "starting", {}
        self.title = model_title(target, self.side == "base", run_dir)
        return swap

    def ready(self, ready: dict[str, Any], run_dir: Path | None) -> str:
        """The worker said ``ready``; returns the note the pane shows."""
        self.state, self.info, self.stage = "ready", dict(ready.get("model") or {}), ""
        if self.side == "base":
            self.title = str(self.info.get("base_model") or self.title)
        elif run_dir is not None and Path(self.target).name not in ("merged", "adapter"):
            self.title = f"{run_dir.name} ({self.info.get('source', 'run')})"
        took = ready.get("load_s")
        note = f"loaded {self.title}" + (f" in {took:.1f}s" if isinstance(took, (int, float)) else "")
        if self.info.get("template"):
            note += f" · template {self.info['template']}"
        return note

    def release(self) -> ChatClient | None:
        """Let go of the worker (the caller ends it) and cancel the reply in flight."""
        client, self.client = self.client, None
        if self.job is not None:
            self.job.cancel()
        return client

    def load_failed(self, message: str) -> str:
        """The worker could not load the model; returns the note the pane shows."""
        self.client, self.state, self.problem = None, "failed", message
        return f"cannot load {self.title}: {message}"

    def worker_died(self, message: str) -> tuple[ChatClient | None, str]:
        """The worker stopped mid-reply: (its client, for the caller to end; the note)."""
        client, self.client = self.client, None
        self.state, self.problem = "crashed", message
        return client, (f"the chat worker stopped: {message}. The conversation is kept: ctrl+o loads the model "
                        f"again, then ctrl+r asks the last message again.")


# ---------------------------------------------------------------------------- the conversation


class ChatSession:
    """Everything the Chat screen shows, but the widgets: two panes (``main``; ``base``
    side by side), the history they share, the settings, and where records are saved.
    ``pane``: the class of the panes (the screen's adds its widgets)."""

    def __init__(self, pane: type[ModelPane] = ModelPane) -> None:
        self.history = ChatHistory()
        self.main = pane("main", self.history.side("main"))
        self.base = pane("base", self.history.side("base"))
        self.params: dict[str, Any] = dict(DEFAULT_PARAMS)
        self.compare = False
        self.run_dir: Path | None = None  # the run the main model comes from
        self.record_path = RECORD_DEFAULT

    @property
    def turns(self) -> list[str]:
        """The user's messages, by turn."""
        return self.history.turns

    @property
    def panes(self) -> list[ModelPane]:
        """The panes on screen, left to right."""
        return [self.base, self.main] if self.compare else [self.main]

    @property
    def busy(self) -> bool:
        return any(p.busy for p in (self.main, self.base))

    def pane(self, side: str) -> ModelPane:
        return self.main if side == "main" else self.base

    def label(self, pane: ModelPane) -> str:
        """Who speaks in a pane's replies."""
        if pane.side == "base":
            return "base"
        if self.run_dir is not None:
            return "tuned"
        return Path(pane.target).name or pane.target or "model"

    def not_ready(self) -> str | None:
        """Why nothing can be sent now, or None."""
        if self.main.state == "loading" or (self.compare and self.base.state == "loading"):
            return "still loading the model: wait for ● in the header"
        if self.main.state != "ready":
            if self.main.state in ("failed", "crashed"):
                return f"{self.main.title} is not loaded ({self.main.state}): ctrl+o loads a model"
            return "no model loaded: ctrl+o loads one (a run's result, tiny, or a folder)"
        return None

    def side_by_side_problem(self) -> str | None:
        """Why the base model cannot join now, or None."""
        if self.busy:
            return BUSY
        if self.main.state != "ready" or self.run_dir is None:
            return "side by side needs a run's model: ctrl+o loads one (base vs tuned of that run)"
        return None

    # ------------------------------------------------------------------ what is sent

    def messages_for(self, pane: ModelPane, turn: int) -> list[Message]:
        """What the model sees for ``turn``: the system prompt, the earlier exchanges of
        this pane's conversation that have a reply (none in single-turn mode), and the new
        user message."""
        return self.history.messages(pane.side, turn, self.params["system"])

    def ask(self, pane: ModelPane, turn: int, widget: Any) -> tuple[Job, dict[str, Any]]:
        """A request for ``turn`` on a pane: its job (the reply shows in ``widget``) and
        the sampling settings it carries."""
        self.history.asked(pane.side, turn)
        job = Job(turn, widget, self.messages_for(pane, turn))
        pane.job = job
        return job, generation_request(self.params)

    def answered(self, pane: ModelPane, job: Job, done: dict[str, Any], shown: str) -> tuple[str, str]:
        """A reply ended; returns (its text, its stats line)."""
        pane.job, pane.last_job = None, job
        text, stats, kept, tokens = reply_outcome(done, shown)
        self.history.answered(pane.side, job.turn, kept, job.messages, tokens)
        return text, stats

    def failed(self, pane: ModelPane, job: Job, kind: str) -> None:
        pane.job, pane.last_job = None, job
        self.history.failed(pane.side, job.turn, kind)

    def unanswerable(self, turn: int) -> bool:
        """True when every pane that was asked the last turn refused it as given (too long
        for its context, ...): it leaves the conversation, back to the prompt box."""
        if turn != len(self.turns) - 1:
            return False
        panes = [p for p in self.panes if p.first_turn <= turn]
        if any(p.job is not None and p.job.turn == turn for p in panes):
            return False  # another side is still answering
        return all(p.failures.get(turn) == "input" or p.state != "ready" for p in panes)

    def send_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be sent now, or None."""
        if not text.strip():
            return "empty prompt: type a message first"
        if self.busy:
            return "a reply is still coming: esc stops it, then send"
        return self.not_ready()

    def undo_problem(self, draft: str) -> str | None:
        """Why ctrl+z cannot take the last message back into the prompt box (holding
        ``draft``), or None."""
        if self.busy:
            return BUSY
        if not self.turns:
            return "nothing to undo"
        if draft.strip():
            return "the prompt box holds a draft: ctrl+u clears it, then ctrl+z brings the last message back"
        return None

    def toggle_single_turn(self) -> tuple[str, str]:
        """Single-turn mode on or off: (the rule each pane draws, the status line's note).
        Either way what was said before is no longer sent."""
        on = not self.history.single_turn
        self.history.set_single_turn(on)
        if on:
            return "single-turn: each message is sent alone", "single-turn: each message goes without the earlier ones"
        return "multi-turn: a new conversation", "multi-turn: replies build on the conversation from here on"

    def reply_failed(self, pane: ModelPane, job: Job, kind: str) -> str:
        """A reply failed (``kind`` from the worker's error): what the screen does about it.
        ``give_back``: every pane refused the prompt as given, it goes back to the prompt box;
        ``not_sent``: this pane refused it; ``closed``: unloaded meanwhile; ``died``: the
        worker is gone; ``error``: the reply failed, the worker lives."""
        self.failed(pane, job, kind)
        if kind == "input":
            return "give_back" if self.unanswerable(job.turn) else "not_sent"
        if kind == "closed":
            return "closed"
        if kind == "crashed" or (pane.client is not None and not pane.client.alive):
            return "died"
        return "error"

    def retry_turn(self) -> tuple[int | None, str | None]:
        """The turn ctrl+r asks again, or why nothing can be."""
        if self.busy:
            return None, BUSY
        if not self.turns:
            return None, "nothing to retry yet"
        problem = self.not_ready()
        return (None, problem) if problem else (len(self.turns) - 1, None)

    def set_compare(self, on: bool) -> str | None:
        """The base model joins (its own conversation from the next turn on) or leaves; the
        note its pane shows when it joins after earlier turns."""
        self.compare = on
        if not on:
            self.base.state, self.base.job = "empty", None
            return None
        self.history.restart("base")
        return "the base model answers from here on; earlier turns are not in its context" if self.turns else None

    def unloaded(self) -> str | None:
        """The main model was unloaded (its worker released): the note, None if nothing was loaded."""
        title = self.main.title
        self.main.state, self.main.info = "empty", {}
        self.run_dir = None
        return f"unloaded {title} (its worker ended; memory freed)" if title else None

    def retry_panes(self, turn: int) -> list[ModelPane] | None:
        """The panes that ask ``turn`` again; None when a new conversation began after it
        (another model, single-turn toggled): then it is posted again as the first message
        of this one."""
        if self.main.first_turn > turn:
            return None
        return [p for p in self.panes if p.first_turn <= turn]

    def clear(self) -> None:
        """A new conversation with the models kept: replies in flight cancelled, history gone."""
        for pane in (self.main, self.base):
            if pane.job is not None:
                pane.job.cancel()
                pane.job = None
        self.history.clear()

    # ------------------------------------------------------------------ save as a record

    def record_messages(self, pane: ModelPane) -> list[Message]:
        """The conversation on one side as an OpenAI ``messages`` list (answered turns of
        its conversation only; in single-turn mode the last exchange, as it was asked)."""
        return self.history.record(pane.side, self.params["system"])

    def save_choice(self) -> tuple[list[tuple[str, str]], str]:
        """What the save dialog offers: the sides with a reply to save ((side, label),
        the main model first) and a summary of what gets appended; ([], "") for none."""
        sides = [(p.side, f"{self.label(p)} replies") for p in reversed(self.panes)
                 if any(m["role"] == "assistant" for m in self.record_messages(p))]
        if not sides:
            return [], ""
        n = sum(1 for m in self.record_messages(self.pane(sides[0][0])) if m["role"] == "assistant")
        summary = f"{n} exchange{'s' if n != 1 else ''}" + (" + the system prompt" if self.params["system"].strip() else "")
        return sides, summary + " · appended as one line: {\"messages\": [...]}"

    def append_record(self, path: Path, side: str) -> tuple[str | None, int]:
        """Append one side's conversation to a JSONL file as ``{"messages": [...]}``:
        (a problem or None, how many messages were written)."""
        if path.suffix != ".jsonl":
            return f"{path.name}: records are JSON lines, use a .jsonl file", 0
        if path.is_dir():
            return f"{path}: a folder; give a .jsonl file in it", 0
        if not path.parent.is_dir():
            return f"{path.parent}: no such folder", 0
        record = {"messages": self.record_messages(self.pane(side))}
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
            return f"{path}: {exc.strerror or exc}", 0
        self.record_path = str(path)
        return None, len(record["messages"])
