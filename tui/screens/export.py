"""Export a run from the Runs screen (``e``): a small dialog for the folder and, optionally,
a Hugging Face Hub repo; then ``finetui export RUN --out DIR --json [--push-to-hub REPO
[--private]]`` runs as a subprocess (it needs torch, which this process never imports) and
its progress lines (``[ 51%] merging``) show in the dialog's log; at the end, the folder (and
the repo's URL) or the one-line reason it failed.

enter starts (the folder, or the repo field); esc closes, or stops a running export (SIGTERM
to its process group, SIGKILL 5 s later).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, RichLog, Static

from finetui.tui.widgets.dialogs import DIALOG_CSS
from finetui.tui.widgets.pathinput import PathInput

STEP = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")
REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
REPO_ROOT = str(Path(__file__).resolve().parents[2])
ROW_CSS = (".field-row { height: 1; }\n"
           ".field-row Label { width: 14; color: $text-muted; }\n"
           ".field-row Input { width: 1fr; }\n")


def export_command(run_dir: Path, out: Path, repo: str | None, private: bool, trust: bool) -> list[str]:
    command = [sys.executable, "-m", "finetui.engine.cli", "export", str(run_dir), "--out", str(out), "--json"]
    if repo:
        command += ["--push-to-hub", repo] + (["--private"] if private else [])
    return command + (["--trust-remote-code"] if trust else [])


class ExportScreen(ModalScreen[Path | None]):
    """The export dialog and its log; dismissed with the exported folder (None if none)."""

    BINDINGS = [Binding("escape", "close", "Close / stop", id="export.close")]
    DEFAULT_CSS = ("ExportScreen { align: center middle; }\n"
                   "ExportScreen .dialog { width: 76; max-width: 100%; }\n"
                   "ExportScreen #export-log { height: 8; border: none; background: $surface; }\n"
                   + ROW_CSS + DIALOG_CSS)

    def __init__(self, run_dir: Path, out: str) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.initial_out = out
        self.proc: subprocess.Popen | None = None
        self.running = False
        self.stopped = False
        self.result: dict | None = None
        self.folder: Path | None = None
        self.errors: list[str] = []
        self.lines: list[str] = []  # what the log shows, for tests and copy

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(Text(f"Export {self.run_dir.name}"), classes="dialog-title")
            yield Static(Text("The merged model (safetensors, tokenizer, chat template, generation config) and a "
                              "model card README.md; a Hub repo (user/name) also uploads it.", style="dim"))
            with Horizontal(classes="field-row"):
                yield Label("folder")
                yield PathInput(self.initial_out, id="export-out", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("Hub repo")
                yield Input("", id="export-repo", compact=True, placeholder="optional: user/name")
            yield Checkbox("private repo", id="export-private", compact=True)
            yield Static("", classes="dialog-error", id="export-error")
            yield RichLog(id="export-log", wrap=True, markup=False, max_lines=500)
            yield Static("enter export · tab next field · esc close", classes="dialog-hint", id="export-hint")

    def on_mount(self) -> None:
        field = self.query_one("#export-out", PathInput)
        field.focus()
        field.cursor_position = len(field.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#export-error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.running:
            return
        error = self.query_one("#export-error", Static)
        raw = self.query_one("#export-out", PathInput).value.strip()
        repo = self.query_one("#export-repo", Input).value.strip()
        if not raw:
            error.update("enter an output folder")
            return
        out = Path(os.path.expanduser(raw))
        if not out.is_absolute():
            out = Path.cwd() / out
        if out.exists() and not out.is_dir():
            error.update(Text(f"{raw}: a file; the export is a folder"))
            return
        if repo and not REPO_ID.match(repo):
            error.update(Text(f"Hub repo {repo}: expected user/name"))
            return
        from finetui.tui.session import trusts_remote_code

        private = self.query_one("#export-private", Checkbox).value
        self.start(export_command(self.run_dir, out, repo or None, private, trusts_remote_code(self.app)))

    # ------------------------------------------------------------------ the subprocess

    def start(self, command: list[str]) -> None:
        self.running, self.stopped, self.result, self.errors = True, False, None, []
        self.write(f"$ finetui {' '.join(command[3:])}", "bold")
        self.query_one("#export-hint", Static).update("exporting · esc stops")
        self.started = time.monotonic()
        threading.Thread(target=self._run, args=(command,), daemon=True, name="finetui-export").start()

    def _run(self, command: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True, env=env, text=True,
                                         errors="replace")
        except OSError as exc:
            self._ui(self.finished, None, "", f"cannot start: {exc}")
            return
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.read()), daemon=True)
        reader.start()
        for line in self.proc.stderr:
            if line.strip():
                self._ui(self.progress, line.rstrip())
        code = self.proc.wait()
        reader.join()
        self._ui(self.finished, code, "".join(out), None)

    def _ui(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except Exception:  # noqa: BLE001 - the app is gone
            pass

    def write(self, line: str, style: str = "") -> None:
        from finetui.tui.safetext import safe

        self.lines.append(line)
        self.query_one("#export-log", RichLog).write(safe(Text(line, style=style)))

    def progress(self, line: str) -> None:
        if line.startswith("finetui: "):
            self.errors.append(line.removeprefix("finetui: "))
            self.write(line, "bold red")
        elif (m := STEP.match(line)) is not None:
            self.write(f"{m.group(1):>3}% {m.group(2)}", "bold")
        else:
            self.write(line, "dim")

    def finished(self, code: int | None, stdout: str, problem: str | None) -> None:
        self.running = False
        self.proc = None
        took = time.monotonic() - self.started
        hint = self.query_one("#export-hint", Static)
        error = self.query_one("#export-error", Static)
        if self.stopped:
            error.update(Text(f"export stopped after {took:.0f}s"))
            hint.update("enter export again · esc close")
            return
        line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), "")
        try:
            self.result = json.loads(line) if code == 0 else None
        except ValueError:
            self.result = None
        if self.result is None:
            reason = problem or "; ".join(self.errors) or f"exited with status {code}"
            error.update(Text(f"export failed: {reason}"))
            self.notify(reason, title="Export failed", severity="error", timeout=15)
            hint.update("enter try again · esc close")
            return
        self.folder = Path(self.result["exported"])
        self.write(f"exported to {self.folder} ({len(self.result.get('files', []))} files, {took:.0f}s)", "bold")
        if self.result.get("pushed"):
            self.write(f"pushed: {self.result['pushed']}", "bold")
        self.notify(str(self.result.get("pushed") or self.folder), title="Exported", timeout=12)
        hint.update("esc close")

    def on_unmount(self) -> None:
        if self.proc is not None:
            self._signal(self.proc, signal.SIGKILL)

    def action_close(self) -> None:
        proc = self.proc
        if self.running and proc is not None:
            self.stopped = True
            self._signal(proc, signal.SIGTERM)
            self.set_timer(5.0, lambda: self._signal(proc, signal.SIGKILL))
            return
        self.dismiss(self.folder)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
