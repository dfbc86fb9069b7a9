"""The runs registry: ``runs/<id>/`` folders, their status, and the trainer process.

Light module (stdlib, psutil, yaml via engine.config). Layout of a run folder::

    config.yaml      exactly what ran (validated, defaults filled in)
    events.jsonl     the event stream (see engine.events)
    summary.json     what the runs list shows, the events folded up to a byte offset
                     (engine.run_summary: kept by the trainer, caught up by readers)
    stdout.log       the trainer's stderr: library warnings, tracebacks
    trainer.pid      the trainer process: pid, start time and run folder (engine.trainer_pid);
                     stop and kill signal only a process matching all three
    trainer.lock     flock()ed by the trainer for its whole life: one trainer per run
    checkpoints/     HF Trainer checkpoints (checkpoint-<step>/); one counts only once it
                     holds finetui-complete.json, written last, after its files were checked
    adapter/         LoRA adapter (lora/qlora) or full model (full) at the end
    merged/          merged model (finetui merge)
    eval/            evaluation results (finetui eval)

Status comes from the events plus process liveness: a ``finished`` event decides; without
one, a live trainer process means *running* and a dead one means *failed* (it crashed or
was killed before it could say so). ``finetui runs kill`` (:func:`stop` with ``kill``)
writes the finished event itself once the trainer is gone: status *killed*.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine import atomic, run_summary
from finetui.engine.perf import allocator
from finetui.engine import events as ev
from finetui.engine import run_paths, spawn, trainer_pid
from finetui.engine.config import Config

PID_FILE = trainer_pid.PID_FILE
LOCK_FILE = "trainer.lock"
LOCK_FD_ENV = "FINETUI_RUN_LOCK_FD"  # set by launch(): the trainer inherits the held lock
COMPLETE_FILE = "finetui-complete.json"  # written last into a checkpoint folder
TRAINER_STATE = "trainer_state.json"
TRAINER_MODULE = trainer_pid.TRAINER_MODULE
TORCHRUN_MODULE = trainer_pid.TORCHRUN_MODULE  # torchrun that names a failed rank (engine/torchrun.py)


class RunError(ValueError):
    pass


class RunBusy(RunError):
    """Another trainer holds the run's lock."""


@dataclass
class RunInfo:
    id: str
    path: str
    status: str  # running | completed | stopped | killed | failed | created | unreadable
    started: float | None = None
    ended: float | None = None
    duration_s: float | None = None
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    last_loss: float | None = None
    best_eval_loss: float | None = None
    method: str | None = None
    model: str | None = None
    pid: int | None = None
    error: str | None = None
    hint: str | None = None
    checkpoints: list[str] = field(default_factory=list)  # those still on disk, oldest first
    outputs: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # events.jsonl:LINE: why, for each bad line skipped
    # running, but no event or heartbeat for longer than train.hang_after_s: seconds of silence
    hung_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("FINETUI_RUNS_DIR", "runs"))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"


def folder_name(name: str) -> str:
    """A run folder name made of safe characters (a multi-node run's fixed name)."""
    return _slug(name)


def new_run(config: Config, name: str | None = None, root: str | Path | None = None) -> Path:
    """Create ``runs/<id>/`` with its config.yaml and return the folder."""
    # --runs-dir (FINETUI_RUNS_DIR) beats the config file: the command line is the most specific.
    root = runs_dir(root or os.environ.get("FINETUI_RUNS_DIR") or config.output.runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(name or config.output.run_name or 'run')}"
    run_id, n = base, 1
    while True:
        try:
            (root / run_id).mkdir()
            break
        except FileExistsError:
            n += 1
            run_id = f"{base}-{n}"
    run_dir = root / run_id
    atomic.write_text(run_dir / "config.yaml", config.to_yaml())
    return run_dir


def resolve(run: str | Path, root: str | Path | None = None) -> Path:
    """A run id (or unique prefix), ``last`` (the newest run), or a path to a run folder
    -> the folder (``engine.targets.find_run``: a ``RunError`` naming what was not found)."""
    from finetui.engine import targets

    return targets.find_run(run, root)


def read_pid(run_dir: Path) -> int | None:
    """The pid trainer.pid records (alive or not: see trainer_alive)."""
    record = trainer_pid.read(run_dir)
    return record.pid if record is not None else None


def trainer_alive(run_dir: str | Path) -> bool:
    """Whether the run's own trainer is alive: the recorded pid, started at the recorded
    time, for this run folder (engine.trainer_pid)."""
    return trainer_pid.process(run_dir) is not None


def pid_alive(pid: int | None, run_dir: str | Path | None = None) -> bool:
    """Whether ``pid`` is a live trainer: with ``run_dir``, exactly that run's trainer
    (trainer_alive, and the pid is the recorded one); without, a process running
    ``-m finetui.engine.train`` (a pid seen by other means, e.g. a process this UI started)."""
    if not pid:
        return False
    if run_dir is not None:
        record = trainer_pid.read(run_dir)
        return record is not None and record.pid == pid and trainer_pid.matches(record, run_dir) is not None
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = proc.cmdline()
        return any(a == "-m" and b == TRAINER_MODULE for a, b in zip(argv, argv[1:]))
    except Exception:
        return False


def summarize(run_dir: str | Path, events: list[dict[str, Any]] | None = None) -> RunInfo:
    """Everything the runs list shows, from the run's summary (engine.run_summary: kept by
    the trainer, brought up to date from the end of events.jsonl, rebuilt from it when
    missing) or from ``events`` when given, and the process table. A bad events line is
    skipped and named in ``problems``."""
    run_dir = Path(run_dir)
    if events is None:
        summary = run_summary.load(run_dir)
    else:
        summary = run_summary.Summary()
        for e in events:
            summary.apply(e)
    info = RunInfo(id=run_dir.name, path=str(run_dir), status="created")
    cfg: dict[str, Any] = {}
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        info.method = (cfg.get("method") or {}).get("type")
        info.model = (cfg.get("model") or {}).get("name_or_path")
    except Exception:
        pass
    info.started = summary.started
    info.step, info.total_steps, info.epoch = summary.step, summary.total_steps, summary.epoch
    info.last_loss, info.best_eval_loss = summary.last_loss, summary.best_eval_loss
    # paths in the records are relative to the run folder (older ones absolute: re-anchored)
    # only those still on disk (train.save_total_limit deletes older ones; a user may too)
    info.checkpoints = [path for path in (str(run_paths.resolve(run_dir, p)) for p in summary.checkpoints if p)
                        if os.path.isdir(path)]
    info.error, info.hint = summary.error, summary.hint
    info.ended = summary.last_time
    info.problems = summary.problem_lines()
    info.pid = read_pid(run_dir)
    finished = summary.finished
    if finished is not None:
        info.status = finished.get("status") or "failed"
        info.outputs = {name: str(run_paths.resolve(run_dir, path)) if isinstance(path, str) else path
                        for name, path in (finished.get("outputs") or {}).items()}
        info.ended = finished.get("time")
    elif trainer_alive(run_dir):
        info.status = "running"
        info.ended = time.time()
        info.hung_s = _silence(run_dir, summary.last_time, cfg)
    elif summary.events or info.pid:
        info.status = "failed"
        info.error = info.error or "trainer process ended without a finished event (killed or crashed)"
    if info.started and info.ended:
        info.duration_s = max(0.0, info.ended - info.started)
    return info


def _silence(run_dir: Path, last_time: float | None, cfg: Any) -> float | None:
    """Seconds the running trainer has said nothing (no event, no heartbeat), counted from
    its last event or from its start when later (a resumed run's last event is from the
    session before), when that is over the run's train.hang_after_s; else None."""
    from finetui.engine import heartbeat

    record = trainer_pid.read(run_dir)
    since = max([t for t in (last_time, record.create_time if record else None) if t is not None], default=None)
    return heartbeat.silence(since, heartbeat.hang_after(cfg if isinstance(cfg, dict) else None))


def unreadable(run_dir: Path, exc: BaseException) -> RunInfo:
    """What the list shows for a run folder that could not be read at all."""
    why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else (exc.strerror or str(exc))
    return RunInfo(id=run_dir.name, path=str(run_dir), status="unreadable",
                   error=f"cannot read run {run_dir.name}: {why}")


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run, newest first; one that cannot be read is listed as unreadable, never
    hiding the others."""
    root = runs_dir(root)
    if not root.exists():
        return []
    dirs = [p for p in root.iterdir() if (p / "config.yaml").exists()]
    infos = []
    for path in sorted(dirs, key=lambda p: p.name, reverse=True):
        try:
            infos.append(summarize(path))
        except Exception as exc:  # noqa: BLE001 - one broken run never hides the others
            infos.append(unreadable(path, exc))
    return infos


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder, oldest first, complete or not."""
    return sorted(
        (p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )


def _safetensors_problem(path: Path) -> str | None:
    """Whether a .safetensors file is whole: its header parses and the file is exactly as
    long as the header's last tensor says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} has a garbled header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if len(ends) != len([k for k in header if k != "__metadata__"]):
        return f"{path.name} has a garbled header"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def checkpoint_problem(path: str | Path, marker_required: bool = True) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete: its
    completion marker is there (written last by the trainer), trainer_state.json parses,
    every weight file is a whole safetensors file, and every file the marker lists has
    the size it had when the checkpoint was finished."""
    path = Path(path)
    marker = path / COMPLETE_FILE
    listed: dict[str, int] = {}
    if marker.exists():
        try:
            listed = json.loads(marker.read_text(encoding="utf-8")).get("files") or {}
        except (OSError, ValueError, AttributeError):
            return f"{COMPLETE_FILE} is garbled"
    elif marker_required:
        return f"no {COMPLETE_FILE} (the save did not finish)"
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "global_step" not in state:
            return f"{TRAINER_STATE} is garbled"
    except FileNotFoundError:
        return f"{TRAINER_STATE} is missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{TRAINER_STATE} is garbled"
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not any(path.glob("*.bin")) and not (path / "pytorch_model_fsdp_0" / ".metadata").is_file():
        return "no weight files"  # (FSDP's sharded state dict: a torch.distributed.checkpoint folder)
    for file in weights:
        problem = _safetensors_problem(file)
        if problem:
            return problem
    for name, size in listed.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, {size} when saved"
    return None


def mark_complete(path: str | Path) -> str | None:
    """Called by the trainer once a checkpoint is saved: check it and, when it is whole,
    write its completion marker (atomically, last). Returns the problem otherwise."""
    path = Path(path)
    problem = checkpoint_problem(path, marker_required=False)
    if problem:
        return problem
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != COMPLETE_FILE}
    atomic.write_text(path / COMPLETE_FILE, json.dumps({"files": files}, indent=1))
    return None


def resumable_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint, and the newer ones skipped with the reason each.

    Checkpoints from before finetui wrote completion markers (no checkpoint of the run has
    one) are judged by their files alone."""
    found = checkpoints(run_dir)
    marked = any((p / COMPLETE_FILE).exists() for p in found)
    skipped: list[tuple[Path, str]] = []
    for path in reversed(found):
        problem = checkpoint_problem(path, marker_required=marked)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (see resumable_checkpoint)."""
    return resumable_checkpoint(run_dir)[0]


# --------------------------------------------------------------------------- one trainer per run


def _lock_message(run_dir: Path) -> str:
    pid = read_pid(run_dir)
    who = f"trainer pid {pid}" if pid else "another trainer"
    return (f"run {run_dir.name} is in use by {who} (it holds {run_dir / LOCK_FILE}); "
            f"`finetui runs attach {run_dir.name}` to follow it, `finetui runs stop {run_dir.name}` to stop it")


def take_lock(run_dir: str | Path) -> int:
    """Lock the run folder (flock on trainer.lock, released when the holder ends, however
    it ends) and return the open file descriptor; RunBusy when another trainer holds it."""
    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusy(_lock_message(run_dir)) from None
    return fd


def is_locked(run_dir: str | Path) -> bool:
    """Whether a trainer holds the run's lock now."""
    try:
        fd = take_lock(run_dir)
    except RunBusy:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def check_free(run_dir: str | Path) -> None:
    """RunBusy (naming the run and the live trainer's pid) when a trainer holds the run."""
    if is_locked(run_dir):
        raise RunBusy(_lock_message(Path(run_dir)))


def trainer_command(run_dir: Path, resume: bool = False, nproc: int = 1, checkpoint: int | None = None,
                    torchrun: list[str] | None = None) -> list[str]:
    """The trainer's command line; ``torchrun``: torchrun's own arguments (several nodes:
    engine.distributed.torchrun_arguments) instead of one node's ``--standalone``."""
    args = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    if torchrun:
        return [sys.executable, "-m", TORCHRUN_MODULE, *torchrun, "-m", TRAINER_MODULE, *args]
    if nproc > 1:
        return [sys.executable, "-m", TORCHRUN_MODULE, "--standalone",
                f"--nproc_per_node={nproc}", "-m", TRAINER_MODULE, *args]
    return [sys.executable, "-m", TRAINER_MODULE, *args]


def completed_refusal(run_dir: str | Path) -> str | None:
    """Why a run must not be resumed without --force (the CLI) or at all (the TUI): its
    last session completed, and a resume would append a new session to a finished run.
    None otherwise. Asked by `finetui train --resume` and the TUI's resume."""
    run_dir = Path(run_dir)
    summary = run_summary.load(run_dir)
    if (summary.finished or {}).get("status") != "completed":
        return None
    steps = f" at step {summary.step}/{summary.total_steps}" if summary.total_steps else ""
    return (f"run {run_dir.name} completed{steps}: resuming it would start a new session of a finished run; "
            f"`finetui train --resume {run_dir.name} --force` resumes it anyway (e.g. with --set train.epochs=N)")


def launch(run_dir: str | Path, resume: bool = False, nproc: int = 1,
           env: dict[str, str] | None = None, checkpoint: int | None = None,
           torchrun: list[str] | None = None, node_rank: int = 0) -> subprocess.Popen:
    """Start the trainer for a run folder in its own session (survives our death).

    stdout is a pipe carrying the event stream; stderr goes to stdout.log; stdin is closed.
    The run's lock is taken here and handed to the trainer, which holds it for its whole
    life: RunBusy when another trainer has the run. (Whether a completed run may be resumed
    is asked before: completed_refusal.)
    """
    run_dir = Path(run_dir).resolve()
    if node_rank > 0:
        # another node of a multi-node run (``torchrun`` given): node 0 holds the lock and
        # writes the pid; this node's torchrun logs to stdout.node<R>.log
        return _launch_locked(run_dir, None, resume, nproc, env, checkpoint, torchrun, node_rank)
    lock_fd = take_lock(run_dir)
    try:
        return _launch_locked(run_dir, lock_fd, resume, nproc, env, checkpoint, torchrun)
    finally:
        os.close(lock_fd)  # the trainer has its own copy of the locked file


def _launch_locked(run_dir: Path, lock_fd: int | None, resume: bool, nproc: int, env: dict[str, str] | None,
                   checkpoint: int | None, torchrun: list[str] | None = None,
                   node_rank: int = 0) -> subprocess.Popen:
    full_env = spawn.child_env(env)
    device, hidden, kernels = _model(run_dir)
    full_env = allocator.trainer_env(device, full_env, hidden, kernels)  # mimalloc for CPU training
    if lock_fd is not None:
        full_env[LOCK_FD_ENV] = str(lock_fd)
    log = open(run_dir / ("stdout.log" if node_rank == 0 else f"stdout.node{node_rank}.log"), "ab")
    proc = spawn.start(
        trainer_command(run_dir, resume=resume, nproc=nproc, checkpoint=checkpoint, torchrun=torchrun),
        full_env=full_env,
        stderr=log,
        cwd=os.getcwd(),
        pass_fds=(lock_fd,) if lock_fd is not None else (),
    )
    log.close()
    if node_rank == 0:
        trainer_pid.write(run_dir, proc.pid)  # pid, start time, folder: stop signals only this process
    return proc


def _model(run_dir: Path) -> tuple[str, int | None, str]:
    """The run's (model.device, hidden size, train.kernels); (auto, None, auto) when the
    config cannot be read (the trainer reports that)."""
    from finetui.engine import config as config_mod

    try:
        config = config_mod.load(run_dir / "config.yaml")
    except Exception:  # noqa: BLE001 - the trainer turns a bad config into an error event
        return "auto", None, "auto"
    model = config.model
    return model.device, allocator.hidden_size(model.name_or_path, model.revision), config.train.kernels


def stop(run_dir: str | Path, kill: bool = False) -> bool:
    """Ask the run's trainer to stop (SIGTERM: checkpoint + finished event) or kill it
    (SIGKILL; its process group only when the trainer leads it). Only the run's own
    trainer is signalled (engine.trainer_pid: pid, start time and folder match); False when
    it is not alive. A run whose last session has finished is refused (RunError): its pid
    may belong to another process by now."""
    run_dir = Path(run_dir)
    finished = last_finished(run_dir)
    if finished is not None:
        raise RunError(f"run {run_dir.name} has finished ({finished.get('status') or 'failed'}): "
                       f"it has no trainer to {'kill' if kill else 'stop'}")
    if not kill:
        return trainer_pid.send(run_dir)
    if not trainer_pid.send(run_dir, kill=True):
        return False
    if _gone(run_dir):
        mark_killed(run_dir)
    return True


KILL_WAIT_S = 10.0


def _gone(run_dir: Path, timeout: float = KILL_WAIT_S) -> bool:
    """Wait until the run has no live trainer (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while trainer_pid.process(run_dir) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def mark_killed(run_dir: str | Path) -> None:
    """The ``finished`` event (status killed) a killed trainer could not write, appended to
    its events.jsonl (after a torn last line, on a line of its own: engine.events)."""
    run_dir = Path(run_dir)
    writer = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=None)
    try:
        writer.emit("finished", status="killed", metrics={}, outputs={},
                    message="killed (SIGKILL) by finetui runs kill: no checkpoint was saved at the end")
    finally:
        writer.close()


def last_finished(run_dir: str | Path, tail_bytes: int = 65536) -> dict[str, Any] | None:
    """The ``finished`` event when it is the last event of events.jsonl (the run's last
    session ended), else None. Reads only the file's last ``tail_bytes``."""
    try:
        with open(Path(run_dir) / "events.jsonl", "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            lines = fh.read().split(b"\n")
    except OSError:
        return None
    for raw in reversed(lines[1:] if size > tail_bytes else lines):  # the first may be cut
        event = ev.decode(raw)
        if event is not None:
            return event if event.get("type") == "finished" else None
    return None


def delete(run_dir: str | Path) -> None:
    import shutil

    run_dir = Path(run_dir)
    if trainer_alive(run_dir):
        raise RunError(f"run {run_dir.name} is still running: stop it first")
    shutil.rmtree(run_dir)
