"""``trainer.pid``: which process is a run's trainer, exactly.

Light module (stdlib, psutil). A pid alone names a process only while it lives: once the
trainer has ended its number can go to any other process, another run's trainer included.
So the record holds the pid, the process's start time (psutil ``create_time``) and the run
folder it was started for::

    {"pid": 4242, "create_time": 1764963000.53, "run_dir": "/abs/runs/20261205-101500-demo"}

A process is the run's trainer only when all three match: the pid is alive (not a
zombie), it started at the recorded time, and the record was written for this very folder
(a copied run folder holds the original's record, whose trainer is not the copy's). A
record from before this format (a bare pid) matches only a process whose command line runs
``engine.train`` with ``--run-dir`` naming this folder.

Signals go only to a matching process, through a pidfd where the kernel has them (the pid
cannot be reused between the check and the signal); a kill takes the whole process group
only when the trainer leads its own group (engine.runs.launch starts it in a new session),
and otherwise the trainer and its descendants one by one.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from finetui.engine import atomic

PID_FILE = "trainer.pid"
TRAINER_MODULE = "finetui.engine.train"
TORCHRUN_MODULE = "finetui.engine.torchrun"  # torch.distributed.run, reporting a failed rank
START_TOLERANCE_S = 0.05  # create_time is in clock ticks (1/100 s); the same process reads the same


@dataclass
class Record:
    pid: int
    create_time: float | None = None  # None: a bare pid from an older finetui
    run_dir: str | None = None


def start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone already, or no access
        return None


def write(run_dir: str | Path, pid: int) -> Record:
    """Record ``pid`` as the trainer of ``run_dir`` (written whole: engine.atomic)."""
    run_dir = Path(run_dir)
    record = Record(pid=pid, create_time=start_time(pid), run_dir=os.path.realpath(run_dir))
    atomic.write_text(run_dir / PID_FILE, json.dumps({"pid": record.pid, "create_time": record.create_time,
                                                      "run_dir": record.run_dir}))
    return record


def read(run_dir: str | Path) -> Record | None:
    """The run's record, or None when there is none or it cannot be read."""
    try:
        text = (Path(run_dir) / PID_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text.isdigit():
        return Record(pid=int(text))
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, created, folder = data.get("pid"), data.get("create_time"), data.get("run_dir")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if not (isinstance(created, (int, float)) and not isinstance(created, bool)):
        created = None
    return Record(pid=pid, create_time=created, run_dir=folder if isinstance(folder, str) else None)


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _runs_this_folder(proc, run_dir: Path) -> bool:
    """Whether a process's command line is ``... -m finetui.engine.train ... --run-dir <run_dir>``."""
    try:
        argv = proc.cmdline()
        cwd = proc.cwd()
    except Exception:  # noqa: BLE001
        return False
    modules = {argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-m"}
    if TRAINER_MODULE not in modules:
        return False
    for i, arg in enumerate(argv):
        if arg == "--run-dir" and i + 1 < len(argv):
            folder = argv[i + 1]
        elif arg.startswith("--run-dir="):
            folder = arg.split("=", 1)[1]
        else:
            continue
        return _same_folder(os.path.join(cwd, folder), run_dir)
    return False


def matches(record: Record, run_dir: str | Path):
    """The live process the record names, when it is this run's trainer; else None."""
    try:
        import psutil

        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if record.create_time is None:
            return proc if _runs_this_folder(proc, Path(run_dir)) else None
        if abs(proc.create_time() - record.create_time) > START_TOLERANCE_S:
            return None  # the pid went to another process after the trainer ended
        if record.run_dir is not None:
            return proc if _same_folder(record.run_dir, run_dir) else None
        return proc if _runs_this_folder(proc, Path(run_dir)) else None
    except Exception:  # noqa: BLE001 - gone, or not ours to look at
        return None


def process(run_dir: str | Path):
    """The run's trainer process (psutil.Process) when it is alive, else None."""
    record = read(run_dir)
    return matches(record, run_dir) if record is not None else None


def _stop_targets(proc) -> list:
    """Who gets the SIGTERM. Under torchrun, its workers themselves: torchrun would
    forward the signal but SIGKILL them 30 s later, cutting a slow checkpoint short; when
    the workers end on their own, torchrun exits cleanly."""
    try:
        command = " ".join(proc.cmdline())
        if "torch.distributed.run" in command or TORCHRUN_MODULE in command:
            workers = [c for c in proc.children() if TRAINER_MODULE in " ".join(c.cmdline())]
            if workers:
                return workers
    except Exception:  # noqa: BLE001
        pass
    return [proc]


def _send(pid: int, sig: int, pidfd: int | None) -> None:
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, sig)
    else:
        os.kill(pid, sig)


def send(run_dir: str | Path, kill: bool = False) -> bool:
    """SIGTERM (stop: checkpoint, finished event, exit) or SIGKILL to the run's own trainer;
    False when no process is the run's trainer (nothing is signalled)."""
    proc = process(run_dir)
    if proc is None:
        return False
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            return False  # gone since the check
    try:
        record = read(run_dir)
        if record is None or matches(record, run_dir) is None:
            return False  # with the pidfd held, the pid can no longer change hands
        if not kill:
            for target in _stop_targets(proc):
                _send(target.pid, signal.SIGTERM, pidfd if target.pid == proc.pid else None)
            return True
        if os.getpgid(proc.pid) == proc.pid:  # the trainer leads its own group: all of it
            os.killpg(proc.pid, signal.SIGKILL)
            return True
        try:
            descendants = proc.children(recursive=True)
        except Exception:  # noqa: BLE001
            descendants = []
        _send(proc.pid, signal.SIGKILL, pidfd)
        for child in descendants:
            try:
                child.send_signal(signal.SIGKILL)  # psutil checks the pid is still that child
            except Exception:  # noqa: BLE001 - ended on its own
                pass
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
