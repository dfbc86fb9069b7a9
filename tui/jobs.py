"""A finetui command run as a subprocess from a screen (``finetui eval``, ``merge``,
``export``, ``data create``), without Textual: started the one way workers start
(``engine.spawn.start``), its stderr read line by line as it comes (through a
pseudo-terminal where the command prints its progress only to a terminal), sorted for the
log (``finetui: `` errors, ``· stage`` lines, ``[ 51%] step`` lines, progress-bar redraws
that only move the stage), its JSON result taken from stdout, stopped through its own
process group. Plain Python: tests drive it without an app.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine import spawn

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
STEP = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")  # engine.merge / engine.export progress: [ 51%] merging
BAR_LINE = re.compile(r"\d+%\|")  # a tqdm bar: the last one is kept, not every redraw


def cli_command(*args: str) -> list[str]:
    """``finetui ARGS`` as this interpreter runs it (``Job.shown_command`` drops the first three)."""
    return [sys.executable, "-m", "finetui.engine.cli", *args]


def last_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object a ``--json`` command printed last on stdout, or None."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), "")
    try:
        result = json.loads(line)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


@dataclass
class Job:
    """A command running as a subprocess."""

    kind: str  # eval | merge | export
    run_dir: Path
    command: list[str]
    out: Path | None = None
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.monotonic)
    stage: str = "starting"
    fraction: float | None = None
    errors: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    stopped: bool = False
    bar: str = ""  # the latest progress-bar redraw

    @property
    def shown_command(self) -> str:
        return f"$ finetui {' '.join(self.command[3:])}"

    def take_line(self, raw: str) -> tuple[str, str] | None:
        """One line of the child's stderr: (line, kind) for the log, kind one of error |
        stage | dim; None for what the log does not show (blank lines, progress-bar
        redraws, which move the stage instead)."""
        line = ANSI.sub("", raw).rstrip()
        if not line.strip():
            return None
        if BAR_LINE.search(line):
            self.bar = line
            self.stage = line.strip()[:60]
            return None
        self.tail = (self.tail + [line])[-20:]
        if line.startswith("finetui: "):
            self.errors.append(line.removeprefix("finetui: "))
            return line, "error"
        if line.startswith("· "):
            self.stage = line[2:]
            return line, "stage"
        if (m := STEP.match(line)) is not None:
            self.fraction, self.stage = int(m.group(1)) / 100, m.group(2)
            return line, "stage"
        return line, "dim"

    def failure(self, returncode: int | None, problem: str | None) -> str | None:
        """Why the job failed, or None when it did not."""
        if not problem and returncode == 0:
            return None
        return problem or "; ".join(self.errors) or (self.tail[-1] if self.tail else "") \
            or f"exited with status {returncode}"

    def status(self, elapsed: float | None = None) -> str:
        """``evaluating 12s · tuned: generating 27 replies`` (the bar is drawn by the screen)."""
        elapsed = time.monotonic() - self.started if elapsed is None else elapsed
        return f"{elapsed:.0f}s · {self.stage}"


def _open_stderr() -> tuple[int | None, int | None]:
    """A pseudo-terminal for the child's stderr (the evaluator prints its progress only to a
    terminal), or (None, None) where there is none."""
    try:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # plain \n line ends
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        return master, slave
    except (ImportError, OSError):
        return None, None


def run_job(job: Job, on_line: Callable[[str, str], None], terminal: bool = True) -> tuple[int | None, str, str | None]:
    """Run the job's subprocess to its end (call it from a thread): each stderr line the
    log shows goes to ``on_line(line, kind)`` as it comes; ``terminal``: stderr is a
    pseudo-terminal where there is one, else a pipe. Returns (returncode, stdout, problem),
    problem set when it could not even start."""
    master, slave = _open_stderr() if terminal else (None, None)
    try:
        job.proc = spawn.start(job.command, stderr=slave if slave is not None else subprocess.PIPE, cwd=os.getcwd())
    except OSError as exc:
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)
        return None, "", f"cannot start: {exc}"
    if slave is not None:
        os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(job.proc.stdout.read()), daemon=True)
    reader.start()

    def line(raw: str) -> None:
        taken = job.take_line(raw)
        if taken is not None:
            on_line(*taken)

    if master is not None:
        _read_pty(master, line)
    else:
        for raw in job.proc.stderr:
            line(raw.decode("utf-8", errors="replace"))
    returncode = job.proc.wait()
    reader.join()
    return returncode, b"".join(out).decode("utf-8", errors="replace"), None


def _read_pty(master: int, line: Callable[[str], None]) -> None:
    pending = ""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            pending += chunk.decode("utf-8", errors="replace")
            *lines, pending = re.split(r"\r\n|\r|\n", pending)
            for one in lines:
                line(one)
    finally:
        os.close(master)
    if pending:
        line(pending)


def signal_job(job: Job | None, sig: int) -> None:
    """Signal the job's process group, quietly nothing once it has ended."""
    signal_process(job.proc if job is not None else None, sig)


def signal_process(proc: subprocess.Popen | None, sig: int) -> None:
    """Signal a process group started by ``engine.spawn.start``; nothing once it has ended."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
