"""Helpers for the Runs screen and dashboard tests (no tests here): an isolated user
environment, synthetic runs written with engine.events.EventWriter, a fake trainer
process that speaks the event stream on a pipe, and a text dump of the screen."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs
from finetui.engine import trainer_pid

REPO = Path(__file__).resolve().parents[1]
SIZE = (80, 24)


@pytest.fixture
def dash_env(tmp_path, monkeypatch) -> Path:
    """Own XDG config dir, runs dir and working directory; no fake GPUs unless a test sets them."""
    for name in ("config", "work", "runs"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("FINETUI_FAKE_GPUS", raising=False)
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def config(**overrides) -> cfg.Config:
    c = cfg.load(REPO / "sample_data" / "quickstart.yaml")
    for key, value in overrides.items():
        c = cfg.set_value(c, key.replace("__", "."), value)
    return c


def writer(run_dir: Path) -> ev.EventWriter:
    return ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)


def step_event(w: ev.EventWriter, step: int, total: int, **extra) -> dict:
    fields = dict(step=step, total_steps=total, epoch=round(step / 16, 4), loss=6 * math.exp(-step / 40) + 0.5,
                  learning_rate=3e-3 * (1 - step / (total + 1)), grad_norm=1.0 + step % 3 / 10,
                  tokens_per_s=2000.0 + step, samples_per_s=40.0, elapsed_s=step * 0.3,
                  eta_s=(total - step) * 0.3,
                  memory={"allocated_bytes": 300_000_000, "peak_bytes": 400_000_000 + step, "rss_bytes": 5e8},
                  tokens=step * 700)
    fields.update(extra)
    return w.emit("step", **fields)


def started_event(w: ev.EventWriter, c: cfg.Config, devices=("cpu",), **extra) -> dict:
    return w.emit("run_started", config=c.to_dict(), footprint={"params_total": 332352, "params_trainable": 332352},
                  datasets={"train": 245, "test": 27}, devices=list(devices), **extra)


def synthetic_run(root: Path | None = None, name: str = "demo", steps: int = 40, total: int | None = None,
                  status: str | None = "completed", error: dict | None = None, every: int = 10,
                  **overrides) -> Path:
    """A run folder with a full event history (no process)."""
    c = config(**overrides)
    run_dir = runs.new_run(c, name=name, root=root)
    w = writer(run_dir)
    w.emit("log", level="info", message="loading tiny and sample:finetui_faq")
    if error is not None:
        w.emit("error", **error)
        w.emit("finished", status="failed", metrics={}, outputs={})
        return run_dir
    started_event(w, c)
    for s in range(1, steps + 1):
        step_event(w, s, total or steps)
        if s % every == 0:
            w.emit("eval", step=s, eval_loss=6 * math.exp(-s / 40) + 0.7, perplexity=3.0, metrics={})
            ckpt = run_dir / "checkpoints" / f"checkpoint-{s}"
            ckpt.mkdir(parents=True, exist_ok=True)
            # a checkpoint as the trainer leaves it: weights, state, then the completion marker
            (ckpt / "model.safetensors").write_bytes(_one_float_safetensors())
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": s}))
            assert runs.mark_complete(ckpt) is None
            w.emit("checkpoint", path=str(ckpt), step=s)
    if status is not None:
        w.emit("finished", status=status, metrics={"train_loss": 1.0, "steps": steps}, outputs={})
    w.close()
    return run_dir


def fake_live_pid() -> subprocess.Popen:
    """A process that engine.runs.pid_alive takes for a trainer (it runs ``-m finetui.engine.train``
    in name only: its argv says so; it sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "finetui.engine.train"])


@contextlib.contextmanager
def live_trainer(run_dir: Path) -> Iterator[subprocess.Popen]:
    """``fake_live_pid()`` recorded as ``run_dir``'s trainer (engine.trainer_pid: pid, start
    time, folder), so the run reads as running; the process is killed (and reaped) on the
    way out."""
    proc = fake_live_pid()
    trainer_pid.write(run_dir, proc.pid)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


FAKE_TRAINER = textwrap.dedent('''
    """A stand-in for engine.train: the event stream on stdout and events.jsonl, SIGTERM =
    checkpoint + finished(stopped), SIGHUP ignored. argv: run_dir steps interval [--resume]"""
    import os, signal, sys, time
    from pathlib import Path
    from finetui.engine import events as ev

    run_dir = Path(sys.argv[1]); total = int(sys.argv[2]); interval = float(sys.argv[3])
    resume = "--resume" in sys.argv
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    w = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=sys.stdout)
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")) \\
        if resume and (run_dir / "checkpoints").is_dir() else []
    start = ckpts[-1] if ckpts else 0
    w.emit("log", level="info", message="fake trainer loading")
    w.emit("run_started", config={"train": {"batch_size": 4, "save_steps": 5}}, footprint={}, datasets={},
           devices=["cpu"], resumed_from=f"checkpoint-{start}" if start else None)
    def save(step):
        p = run_dir / "checkpoints" / f"checkpoint-{step}"
        p.mkdir(parents=True, exist_ok=True)
        w.emit("checkpoint", path=str(p), step=step)
    for step in range(start + 1, total + 1):
        time.sleep(interval)
        w.emit("step", step=step, total_steps=total, epoch=step / 10, loss=5.0 / step, learning_rate=1e-3,
               grad_norm=1.0, tokens_per_s=1000.0, samples_per_s=10.0, elapsed_s=step * interval,
               eta_s=(total - step) * interval, memory={"peak_bytes": 1000 + step}, tokens=step * 100)
        if step % 5 == 0:
            save(step)
        if stop:
            save(step)
            w.emit("finished", status="stopped", metrics={"steps": step}, outputs={})
            sys.exit(0)
    w.emit("finished", status="completed", metrics={"steps": total}, outputs={})
''')


def fake_launch(tmp_path: Path, steps: int = 20, interval: float = 0.05):
    """A replacement for engine.runs.launch that starts FAKE_TRAINER the same way
    (own session, stdout a pipe, stdin closed, trainer.pid written)."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)

    def launch(run_dir, resume: bool = False, nproc: int = 1, env=None):
        run_dir = Path(run_dir)
        full_env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(run_dir), str(steps), str(interval),
             *(["--resume"] if resume else []), "finetui.engine.train"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(run_dir / "stdout.log", "ab"),
            start_new_session=True, env=full_env)
        trainer_pid.write(run_dir, proc.pid)
        return proc

    return launch


def _one_float_safetensors() -> bytes:
    """A whole safetensors file holding one float32 (no torch in the UI tests' process)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.0)


def screen_text(app) -> str:
    """The screen as plain text, one line per row (what capture-pane would show)."""
    from rich.console import Console

    console = Console(width=app.size.width, record=True, file=io.StringIO(), color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def widget_text(widget, width: int | None = None) -> str:
    """What a widget renders, as plain text (at its own width unless told)."""
    from rich.console import Console

    console = Console(width=width or max(widget.size.width, 20), record=True, file=io.StringIO(),
                      color_system=None)
    console.print(widget.render())
    return console.export_text()


async def launch_on_dashboard(pilot, app, run_dir: Path):
    """Start ``run_dir``'s trainer (runs.launch) and hand it to the app as Start does; wait for
    the Dashboard. Returns (the trainer process, the DashboardScreen)."""
    from finetui.tui.screens.dashboard import DashboardScreen

    proc = runs.launch(run_dir)
    app.run_launched(run_dir, proc)
    await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=10)
    return proc, app.screen


async def wait_for(pilot, predicate, timeout: float = 10.0, step: float = 0.05) -> float:
    """Pause until predicate() is true; returns the seconds it took; fails on timeout."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(step)
