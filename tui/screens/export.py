"""Export a run from the Runs screen (``e``): a small dialog for the folder and, optionally,
a Hugging Face Hub repo; then ``finetui export RUN --out DIR --json [--push-to-hub REPO
[--private]]`` runs as a subprocess (it needs torch, which this process never imports) and
its progress lines (``[ 51%] merging``) show in the dialog's log; at the end, the folder (and
the repo's URL) or the one-line reason it failed.

enter starts (the folder, or the repo field); esc closes, or stops a running export (SIGTERM
to its process group, SIGKILL 5 s later).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, RichLog, Static

from finetui.tui import jobs
from finetui.tui.widgets.dialogs import DIALOG_CSS
from finetui.tui.widgets.pathinput import PathInput

REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
ROW_CSS = (".field-row { height: 1; }\n"
           ".field-row Label { width: 14; color: $text-muted; }\n"
           ".field-row Input { width: 1fr; }\n")
LINE_STYLES = {"error": "bold red", "stage": "bold", "dim": "dim"}


def export_command(run_dir: Path, out: Path, repo: str | None, private: bool, trust: bool) -> list[str]:
    command = jobs.cli_command("export", str(run_dir), "--out", str(out), "--json")
    if repo:
        command += ["--push-to-hub", repo] + (["--private"] if private else [])
    return command + (["--trust-remote-code"] if trust else [])


def export_problem(raw: str, repo: str) -> tuple[Path | None, str | None]:
    """The dialog's fields -> (the output folder, absolute) or the problem with them."""
    if not raw:
        return None, "enter an output folder"
    out = Path(os.path.expanduser(raw))
    if not out.is_absolute():
        out = Path.cwd() / out
    if out.exists() and not out.is_dir():
        return None, f"{raw}: a file; the export is a folder"
    if repo and not REPO_ID.match(repo):
        return None, f"Hub repo {repo}: expected user/name"
    return out, None


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
        self.job: jobs.Job | None = None
        self.running = False
        self.stopped = False
        self.result: dict | None = None
        self.folder: Path | None = None
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
        raw = self.query_one("#export-out", PathInput).value.strip()
        repo = self.query_one("#export-repo", Input).value.strip()
        out, problem = export_problem(raw, repo)
        if out is None:
            self.query_one("#export-error", Static).update(Text(problem or ""))
            return
        from finetui.tui.session import trusts_remote_code

        private = self.query_one("#export-private", Checkbox).value
        self.start(export_command(self.run_dir, out, repo or None, private, trusts_remote_code(self.app)))

    # ------------------------------------------------------------------ the subprocess

    def start(self, command: list[str]) -> None:
        self.running, self.stopped, self.result = True, False, None
        self.job = jobs.Job("export", self.run_dir, command)
        self.write(self.job.shown_command, "bold")
        self.query_one("#export-hint", Static).update("exporting · esc stops")
        threading.Thread(target=self._run, args=(self.job,), daemon=True, name="finetui-export").start()

    @property
    def proc(self):
        return self.job.proc if self.job is not None and self.running else None

    def _run(self, job: jobs.Job) -> None:
        returncode, stdout, problem = jobs.run_job(job, lambda line, kind: self._ui(self.progress, line, kind),
                                                   terminal=False)
        self._ui(self.finished, returncode, stdout, problem)

    def _ui(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except Exception:  # noqa: BLE001 - the app is gone
            pass

    def write(self, line: str, style: str = "") -> None:
        from finetui.tui.safetext import safe

        self.lines.append(line)
        self.query_one("#export-log", RichLog).write(safe(Text(line, style=style)))

    def progress(self, line: str, kind: str) -> None:
        if kind == "stage" and (m := jobs.STEP.match(line)) is not None:
            line = f"{m.group(1):>3}% {m.group(2)}"
        self.write(line, LINE_STYLES[kind])

    def finished(self, code: int | None, stdout: str, problem: str | None) -> None:
        self.running = False
        took = time.monotonic() - self.job.started
        hint = self.query_one("#export-hint", Static)
        error = self.query_one("#export-error", Static)
        if self.stopped:
            error.update(Text(f"export stopped after {took:.0f}s"))
            hint.update("enter export again · esc close")
            return
        self.result = jobs.last_json(stdout) if code == 0 else None
        if self.result is None:
            reason = problem or "; ".join(self.job.errors) or f"exited with status {code}"
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
        jobs.signal_process(self.proc, signal.SIGKILL)

    def action_close(self) -> None:
        proc = self.proc
        if self.running and proc is not None:
            self.stopped = True
            jobs.signal_process(proc, signal.SIGTERM)
            self.set_timer(5.0, lambda: jobs.signal_process(proc, signal.SIGKILL))
            return
        self.dismiss(self.folder)
