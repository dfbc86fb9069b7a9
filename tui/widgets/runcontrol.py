"""A run's controls shared by the Runs screen and the dashboard: the key a binding has now,
a run's config into Settings (as is, or with the likely fix), its config.yaml in a dialog,
and resuming it from this UI."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text

from finetui.engine import runs
from finetui.tui.widgets.dialogs import ConfirmDialog


def apply_to_settings(app, run_dir: Path, overrides: dict[str, Any] | None = None, note: str = "") -> str | None:
    """Load a run's config.yaml (plus overrides) into ``app.settings_state`` and go to
    Settings. Returns a problem, or None."""
    from finetui.engine import config as cfg

    path = run_dir / "config.yaml"
    try:
        base = cfg.load(path)
        config = base
        for key, value in (overrides or {}).items():
            config = cfg.set_value(config, key, value)
    except cfg.ConfigError as exc:
        return str(exc)
    state = app.settings_state
    state.config, state.base_path, state.base_config = config, path, base
    state.origin = f"run {run_dir.name}" + (f" ({note})" if note else "")
    app.action_goto("settings")

    def reload() -> None:
        screen = app.screen
        if getattr(screen, "MODE", "") == "settings" and hasattr(screen, "reload_form") and screen.is_mounted:
            screen.reload_form()

    app.call_after_refresh(reload)
    return None


def app_key(app, binding_id: str, default: str) -> str:
    """The key a binding has now (after the user's keymap), as shown to the user."""
    key_for = getattr(app, "key_for", None)
    return key_for(binding_id, default) if callable(key_for) else default


def show_config(screen, run_dir: Path) -> None:
    """The run's config.yaml in a dialog; enter loads it into Settings."""
    try:
        text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    except OSError as exc:
        screen.notify(f"cannot read {run_dir / 'config.yaml'}: {exc}", severity="error")
        return
    body = Text(text.rstrip())

    def done(ok: bool | None) -> None:
        if ok:
            problem = apply_to_settings(screen.app, run_dir)
            if problem:
                screen.app.notify(problem, title="config", severity="error", timeout=10)
            else:
                screen.app.notify(f"config of {run_dir.name} loaded; Start (g) makes a new run", title="Settings")

    screen.app.push_screen(ConfirmDialog(f"{run_dir.name}/config.yaml", body, verb="load into Settings"), done)


def resume_run(screen, run_dir: Path) -> None:
    """Start the trainer again with --resume (from the last checkpoint), from this UI."""
    last = runs.last_checkpoint(run_dir)
    if last is None:
        screen.notify("no checkpoint yet: the run starts again at step 0", title="Resume", severity="warning")
    _launch_resume(screen, run_dir)


def _launch_resume(screen, run_dir: Path) -> None:
    app = screen.app
    screen.run_worker(partial(_resume_in_thread, app, run_dir), thread=True, group="run-control")


def _resume_in_thread(app, run_dir: Path) -> None:
    try:
        if runs.trainer_alive(run_dir):
            raise runs.RunError(f"run {run_dir.name} is still running")
        refusal = runs.completed_refusal(run_dir)  # a completed run is never resumed from here
        if refusal:
            raise runs.RunError(refusal)
        proc = runs.launch(run_dir, resume=True)
    except Exception as exc:
        app.call_from_thread(app.notify, f"could not resume: {exc}", title="Resume", severity="error", timeout=10)
        return
    app.call_from_thread(app.run_launched, run_dir, proc)


def confirm_kill(screen, run_id: str, last_checkpoint: Path | None, kill) -> None:
    """Ask before SIGKILL (no checkpoint, no finished event); ``kill()`` when confirmed."""
    body = Text()
    body.append(f"SIGKILL to the trainer of {run_id} and its children.\n\n", style="bold")
    body.append("No checkpoint is saved and no finished event is written; ")
    body.append(f"resume later from {last_checkpoint.name}." if last_checkpoint else "there is no checkpoint yet.")
    body.append("\nStop (graceful: checkpoint, then exit) is ")
    body.append(app_key(screen.app, "dashboard.stop", "S"), style="bold")
    body.append(".")
    screen.app.push_screen(ConfirmDialog(f"Kill run {run_id}?", body, verb="kill"),
                           lambda ok: kill() if ok else None)


def signal_trainer(screen, run_dir: Path, feed, kill: bool) -> None:
    """Stop (SIGTERM: checkpoint, then exit) or kill the run's trainer, from a thread worker;
    the screen tells how it went. A kill from here is marked on the feed's state first (the
    feed may see the exit at once): the dashboard then does not take it for the OOM killer."""
    app = screen.app
    if kill and feed is not None:
        with feed.lock:
            feed.state.killed_here = True
    try:
        sent = runs.stop(run_dir, kill=kill)
    except Exception as exc:
        sent, problem = False, str(exc)
    else:
        problem = None if sent else "the trainer process is not running"
    if kill and not sent and feed is not None:
        with feed.lock:
            feed.state.killed_here = False
    if sent:
        message = "killed" if kill else "stopping: a checkpoint is being saved, then the trainer exits"
        app.call_from_thread(screen.notify, message, title="Kill" if kill else "Stop")
    else:
        app.call_from_thread(screen.notify, problem or "not sent", title="Kill" if kill else "Stop", severity="error")
