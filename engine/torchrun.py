"""``python -m finetui.engine.torchrun [torchrun's arguments] -m finetui.engine.train --run-dir D ...``:
torchrun (torch.distributed.run, its elastic agent) as finetui starts it for several
processes, which says on the run's record which rank failed and why.

torchrun already ends the whole job when one rank dies: its agent notices the dead worker
(every ``--monitor-interval``, 0.1 s), stops the others (SIGTERM, then SIGKILL after its grace
period) and raises ``ChildFailedError`` naming every failed rank. A rank blocked in a
collective with the dead one gets a connection error from gloo/NCCL, or gives up after the
process group's timeout (``distributed.timeout_s``), so nothing waits forever.

What it cannot do is tell the run: a rank killed by a signal (the out-of-memory killer's
SIGKILL, a segfault) writes nothing, and rank 0 then reports only that a peer went away.
Here the agent's own account becomes an ``error`` event and a ``finished`` event (status
failed) naming the rank that failed first and how, with ``failed_rank``, ``failed_node``,
``exit_code`` and ``signal`` fields, on node 0 in the run's events.jsonl (and its pipe and
summary.json); the failed rank's own stream events.rank<R>.jsonl gets the same pair. When
rank 0 failed first with an error of its own, it has said so already and nothing is added.

Heavy at import of torch.distributed.run (torchrun imports torch anyway).
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from typing import Any

from finetui.engine import events as ev

PEER_TEXTS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
              "timeout", "socket", "nccl", "gloo")


def _run_dir(script_args: list[str]) -> Path | None:
    for i, arg in enumerate(script_args[:-1]):
        if arg == "--run-dir":
            return Path(script_args[i + 1])
    return None


def _stream(run_dir: Path, rank: int) -> Path:
    return run_dir / ("events.jsonl" if rank == 0 else f"events.rank{rank}.jsonl")


def _last_error(run_dir: Path, rank: int) -> dict[str, Any] | None:
    """The newest error event in the rank's own stream, if it wrote one."""
    return next((e for e in reversed(ev.read_file(_stream(run_dir, rank))) if e.get("type") == "error"), None)


def _by_signal(failure) -> bool:
    """Ended by a signal torchrun did not send itself (its teardown sends SIGTERM)."""
    return failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM


def _peer_error(error: dict[str, Any] | None) -> bool:
    message = str((error or {}).get("message") or "").lower()
    return any(text in message for text in PEER_TEXTS)


def root_cause(failures: dict[int, Any], run_dir: Path | None) -> tuple[int, Any, dict[str, Any] | None]:
    """(rank, torchrun's ProcessFailure, its own error event or None) of the rank that failed
    first: one killed by a signal before one that exited with an error (that error is
    usually a lost peer), an error of its own before a lost peer, then the earliest error
    event (its time is to the millisecond; torchrun's are to the second), then the lowest rank."""
    def order(item):
        rank, failure = item
        error = _last_error(run_dir, rank) if run_dir is not None and failure.exitcode > 0 else None
        klass = 0 if _by_signal(failure) else 1 if failure.exitcode > 0 and not _peer_error(error) else \
            2 if failure.exitcode > 0 else 3
        when = (error or {}).get("time") or failure.timestamp
        return klass, when, rank

    rank, failure = min(failures.items(), key=order)
    error = _last_error(run_dir, rank) if run_dir is not None and failure.exitcode > 0 else None
    return rank, failure, error


def signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _waited_for(failures: dict[int, Any], run_dir: Path, rank: int) -> tuple[int, str] | None:
    """(rank, its message) of another failed rank whose own error is a collective's timeout."""
    for other, failure in sorted(failures.items()):
        if other != rank and failure.exitcode > 0:
            error = _last_error(run_dir, other)
            message = str((error or {}).get("message") or "")
            if "timed out" in message.lower() or "timeout" in message.lower():
                return other, message[:200]
    return None


def describe(rank: int, failure, node_rank: int, error: dict[str, Any] | None, run: str,
             waited: tuple[int, str] | None = None) -> tuple[str, str]:
    """(message, hint) for the rank that failed first (``waited``: the rank that timed out
    waiting for it, and what it said)."""
    from finetui.engine import errors

    where = f"rank {rank} (node {node_rank}, local rank {failure.local_rank}, pid {failure.pid})"
    resume = f"`finetui train --resume {run}` continues from the newest complete checkpoint"
    if failure.exitcode < 0 and waited is not None:
        # another rank gave up waiting for it in a collective: it hung, and torchrun's
        # teardown killed it
        return (f"{where} stopped answering: rank {waited[0]} gave up waiting for it after distributed.timeout_s "
                f"({waited[1]}); torchrun ended it ({signal_name(failure.exitcode)}) and the other ranks",
                f"a rank that hangs (a stuck data loader, a deadlock, a stopped process) holds every other "
                f"one; see stdout.log in the run folder; {resume}")
    if failure.exitcode < 0:
        killed = errors.exit_problem(failure.exitcode, run)
        what, hint = killed if killed else (f"ended by signal {-failure.exitcode}", resume)
        return f"{where} was {what}; torchrun stopped the other ranks", hint
    if error is not None:
        return (f"{where} failed first: {error.get('message')}; torchrun stopped the other ranks",
                error.get("hint") or resume)
    return (f"{where} exited with status {failure.exitcode}; torchrun stopped the other ranks",
            f"see stdout.log in the run folder; {resume}")


def report(run_dir: Path, failures: dict[int, Any], node_rank: int, stream=None) -> dict[str, Any] | None:
    """Write the failure on the run's record (node 0) and in the failed rank's own stream;
    return the error event's fields, or None when rank 0 had already said it all."""
    from finetui.engine import run_summary

    if not failures:
        return None
    rank, failure, error = root_cause(failures, run_dir)
    if rank == 0 and failure.exitcode > 0 and error is not None and not _peer_error(error):
        return None  # rank 0's own error event and finished event tell it
    waited = _waited_for(failures, run_dir, rank) if failure.exitcode < 0 else None
    message, hint = describe(rank, failure, node_rank, error, run_dir.name, waited)
    sig = signal_name(failure.exitcode) if failure.exitcode < 0 else None
    fields = {"kind": (error or {}).get("kind") or "internal", "message": message, "hint": hint,
              "failed_rank": rank, "failed_node": node_rank, "failed_host": socket.gethostname(),
              "exit_code": failure.exitcode, "signal": sig}
    finished = {"status": "failed", "metrics": {}, "outputs": {"checkpoints": "checkpoints"},
                "failed_rank": rank, "exit_code": failure.exitcode, "signal": sig}
    writers = []
    if rank != 0 and failure.exitcode < 0:  # it could not end its own stream
        writers.append(ev.EventWriter(run_dir.name, _stream(run_dir, rank), stream=None,
                                      identity={"rank": rank, "local_rank": failure.local_rank,
                                                "node_rank": node_rank, "hostname": socket.gethostname()}))
    if node_rank == 0:
        record = ev.EventWriter(run_dir.name, run_dir / "events.jsonl", stream=stream)
        record.after_emit = run_summary.Keeper(run_dir)
        writers.append(record)
    for writer in writers:
        try:
            writer.emit("error", **fields)
            writer.emit("finished", **finished)
        finally:
            writer.close()
    return fields


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        print(str(exc), file=sys.stderr)  # torchrun's own account, in stdout.log as before
        run_dir = _run_dir(list(args.training_script_args))
        if run_dir is not None and run_dir.is_dir():
            report(run_dir, exc.failures, int(args.node_rank or 0), stream=sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
