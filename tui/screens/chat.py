"""Chat: talk to a run's result, a local model or the demo model; the base beside the
tuned model; save a conversation as a training record.

* load (ctrl+o): a run's merged model, the base plus a run's adapter, a run's full
  fine-tune, ``tiny``, or a folder / hub id. Each model lives in its own chat worker
  (``python -m finetui.engine.chat --serve``, driven by ``engine.chat_protocol.ChatClient``);
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

The screen composes and plumbs (keys, widgets); what it knows and decides lives in
``tui.chatstate`` (settings, panes' models, requests, records), ``tui.chathistory`` (what
each model is sent) and ``tui.chatdriver`` (the workers' load and reply threads, what
their answers change), which tests drive without Textual. The screen is the driver's
``ChatView``: its callbacks arrive on the UI thread (``app.call_from_thread``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Container
from textual.widgets import Input, Static

from finetui.tui.chatdriver import ChatDriver
from finetui.tui.chatstate import BUSY, ChatSession, Job
from finetui.tui.safetext import safe
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.widgets.chatdialogs import UNLOAD, LoadDialog, ParamsDialog, SaveRecordDialog
from finetui.tui.widgets.chatlog import ChatLog
from finetui.tui.widgets.chatpane import Pane, PaneView, status_line
from finetui.tui.widgets.pathinput import PathInput

FLUSH_S = 0.05  # how often streamed text reaches the screen
FLASH_S = 8.0  # how long a refusal stays in the status line
STACK_BELOW = 70  # narrower than this, side by side stacks the panes


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
        self.chat = ChatSession(Pane)
        self.history = self.chat.history
        self.main: Pane = self.chat.main
        self.base: Pane = self.chat.base
        self.params: dict[str, Any] = self.chat.params
        self.driver = ChatDriver(self.chat, self, post=self._ui, spawn=self._spawn)
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
            self.driver.close(pane.release())

    def on_resize(self) -> None:
        self.query_one("#panes").set_class(self.size.width < STACK_BELOW, "-stacked")
        self.call_after_refresh(self.show_headers)  # the history line is shorter in a narrow pane

    @property
    def turns(self) -> list[str]:
        return self.chat.turns

    @property
    def panes(self) -> list[Pane]:
        return self.chat.panes

    @property
    def busy(self) -> bool:
        return self.chat.busy

    @property
    def compare(self) -> bool:
        return self.chat.compare

    @property
    def run_dir(self) -> Path | None:
        return self.chat.run_dir

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    def messages_for(self, pane: Pane, turn: int) -> list[dict[str, str]]:
        return self.chat.messages_for(pane, turn)

    # ------------------------------------------------------------------ headers, status

    def show_headers(self) -> None:
        colors = self.app.theme_variables
        for pane in (self.main, self.base):
            if pane.shown:
                pane.show_top(self.chat.label(pane) if pane.state != "empty" else "", colors, self._tick_n,
                              self.history.size(pane.side, self.params["system"]))

    def flash(self, message: str, error: bool = True) -> None:
        """A short message in the status line (a refusal, a hint) until the next keystroke."""
        if error:
            self.app.bell()
        self._flash = (Text(message, style="bold red" if error else "bold"), time.monotonic())
        self.show_status()

    def show_status(self) -> None:
        flash = self._flash[0] if self._flash is not None and time.monotonic() - self._flash[1] < FLASH_S else None
        self.query_one("#chat-status", Static).update(safe(status_line(self.chat, flash, self._tick_n)))

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
            self.flush_reply(pane.job)
        loading = any(p.state == "loading" for p in (self.main, self.base))
        if self._tick_n % 2 == 0:
            if loading:
                self.show_headers()
            self.show_status()
        if not self.busy and not loading and self._timer is not None:
            self._timer.pause()
            self.show_status()

    def flush_reply(self, job: Job | None) -> None:
        """What the reply's thread put in ``job`` since, into its widget."""
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

    def _spawn(self, fn, group: str, exclusive: bool = False) -> None:
        self.run_worker(fn, thread=True, group=group, exclusive=exclusive)

    # ------------------------------------------------------------------ loading

    def action_load(self) -> None:
        self.driver.choices(self._open_load_dialog)

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
        self.chat.run_dir = None
        self._start_loading(self.main, target, base=False)

    def _start_loading(self, pane: Pane, target: str, base: bool) -> None:
        """Start ``target``'s worker in a pane. Another model than the pane's last one starts
        a new conversation there: the transcript stays on screen above a separator, but
        none of it is sent. The same model again (after a crash, an unload) keeps it."""
        from finetui.tui.session import trusts_remote_code

        if self.driver.load(pane, target, base=base, trust_remote_code=trusts_remote_code(self.app)) and pane.shown:
            pane.log.rule(f"new conversation: {pane.title}")
        self.show_headers()
        self._wake()

    def stage_changed(self, pane: Pane) -> None:
        self.show_headers()

    def model_loaded(self, pane: Pane, note: str) -> None:
        pane.log.note(note)
        self.show_headers()
        self.show_status()

    def model_failed(self, pane: Pane, note: str, message: str) -> None:
        pane.log.note(note, error=True)
        self.notify(message, title=f"Load {pane.title}", severity="error", timeout=12)
        self.show_headers()
        self.show_status()

    def unload(self) -> None:
        if self.compare:
            self._set_compare(False)
        note = self.driver.unload()
        if note:
            self.main.log.note(note)
        self.show_headers()
        self.show_status()

    # ------------------------------------------------------------------ side by side

    def action_side_by_side(self) -> None:
        if self.compare:
            self._set_compare(False)
            return
        problem = self.chat.side_by_side_problem()
        if problem:
            self.flash(problem)
            return
        self._set_compare(True)

    def _set_compare(self, on: bool) -> None:
        self.query_one("#panes").set_class(on, "-compare")
        base = self.base
        if on:
            base.clear()
        else:
            self.driver.close(base.release())
        note = self.chat.set_compare(on)
        if note:
            base.log.note(note)
        if on:
            self._start_loading(base, str(self.run_dir), base=True)
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
        problem = self.chat.send_problem(text)
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

    def _ask(self, pane: Pane, turn: int) -> None:
        if pane.state != "ready" or pane.client is None:
            pane.log.note(f"not asked: {pane.title or 'no model'} is not loaded", error=True)
            return
        self.driver.ask(pane, turn, pane.add_reply(turn, self.chat.label(pane)))
        self._wake()
        self.show_headers()
        self.show_status()

    def reply_answered(self, pane: Pane, job: Job, text: str, stats: str, done: dict[str, Any]) -> None:
        job.widget.finish(text, stats)
        job.widget.done = done
        self.show_headers()
        self.show_status()

    def reply_failed(self, pane: Pane, job: Job, then: str, message: str, note: str,
                     given_back: tuple[str, list[Pane]] | None) -> None:
        if then in ("not_sent", "give_back"):  # the prompt cannot be answered as given (too long, ...)
            job.widget.remove()
            pane.reply_widgets.pop(job.turn, None)
            pane.log.note(f"not sent: {message}", error=True)
            if given_back is not None:
                self._give_back(job.turn, *given_back, message)
        elif then == "closed":
            job.widget.finish(problem="(unloaded)")
        else:
            job.widget.finish(problem=f"✖ {message}")
            if then == "died":
                pane.log.note(note, error=True)
                self.notify(message, title="Chat worker stopped", severity="error", timeout=15)
            else:
                self.notify(message, title=f"Reply from {self.chat.label(pane)}", severity="error", timeout=12)
        self.show_headers()
        self.show_status()

    def _give_back(self, turn: int, text: str, panes: list[Pane], message: str) -> None:
        """A prompt every pane refused (taken off the conversation): off the panes, back in
        the prompt box, so the user can shorten it."""
        for pane in panes:
            pane.drop(pane.users, turn)
        if not self.prompt.value:
            self.prompt.value = text
            self.prompt.cursor_position = len(text)
        self.flash(message)
        self.notify(message, title="Prompt not sent", severity="error", timeout=10)

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
        rule, note = self.chat.toggle_single_turn()
        for pane in self.panes:
            pane.log.rule(rule)
        self.flash(note, error=False)
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
        turn, problem = self.chat.retry_turn()
        if turn is None:
            self.flash(problem or "")
            return
        panes = self.chat.retry_panes(turn)
        if panes is None:  # asked again below the separator of a new conversation
            self._post(self.turns[turn])
            return
        for pane in panes:
            pane.drop(pane.reply_widgets, turn)
            pane.log.anchor()
            self._ask(pane, turn)

    def action_undo(self) -> None:
        problem = self.chat.undo_problem(self.prompt.value)
        if problem:
            self.flash(problem)
            return
        turn = len(self.turns) - 1
        text = self.history.pop()
        for pane in (self.main, self.base):
            pane.forget_widgets(turn)
        self.show_headers()
        self.prompt.value = text
        self.prompt.cursor_position = len(text)
        self.prompt.focus()

    def action_clear(self) -> None:
        self.chat.clear()
        for pane in (self.main, self.base):
            pane.clear()
        self.show_headers()
        self.show_status()

    # ------------------------------------------------------------------ settings, records

    def action_params(self) -> None:
        self.app.push_screen(ParamsDialog(self.params), self._after_params)

    def _after_params(self, values: dict | None) -> None:
        if values:
            self.params.update(values)
            self.flash("settings apply from the next reply", error=False)
            self.show_headers()  # the system prompt counts in the history's tokens
        self.prompt.focus()

    def action_save(self) -> None:
        if self.busy:
            self.flash(BUSY)
            return
        sides, summary = self.chat.save_choice()
        if not sides:
            self.flash("nothing to save yet: a record needs a message and its reply")
            return
        self.app.push_screen(SaveRecordDialog(self.chat.record_path, sides, summary, self._append_record),
                             self._after_save)

    def _append_record(self, path: Path, side: str) -> str | None:
        problem, self._saved = self.chat.append_record(path, side)
        return problem

    def _after_save(self, path: Path | None) -> None:
        if path is not None:
            self.notify(f"appended a record of {self._saved} messages to {path}", title="Saved", timeout=8)
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
