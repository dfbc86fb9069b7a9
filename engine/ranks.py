"""Every rank of a run under torchrun: where each event comes from, what each node's
hardware reads, and the reader that adds the ranks' streams up for the dashboard.

Light module (standard library; ``engine.hardware`` and its NVML/psutil are loaded in the
sampler thread only), so the UI reads rank streams without torch.

Writing (engine/train.py, one process per rank):

* every event of a rank carries :func:`identity`: ``rank`` (global), ``local_rank``,
  ``node_rank`` and ``hostname``; global rank 0 writes ``events.jsonl``, rank R
  ``events.rank<R>.jsonl``, all in the one run folder (shared storage across nodes);
* every rank writes a ``rank_step`` event at each logged step (engine.callbacks.RankTiming):
  its wall seconds per step, the seconds per step of its own forward passes (``own_s``,
  before it waits for the others in the gradient all-reduce), its own tokens/s and memory;
* each node's local rank 0 samples the node (GPUs through NVML, CPU/RAM through psutil)
  every :data:`HARDWARE_EVERY_S` into its stream as ``hardware`` events
  (:class:`HardwareSampler`): a dashboard on any machine shows every GPU of every node;
* every rank runs the heartbeat (engine.heartbeat), so a rank that is alive and making
  progress is never silent for long.

Reading: :class:`RankFollower` reads every ``events.rank*.jsonl`` from where it left off
(whole lines only, bounded bytes per call, as the run feed reads events.jsonl);
:class:`RankBoard` adds every rank's events up (rank 0's come from events.jsonl through the
run feed): the slowest rank, the global throughput, the silent ranks, one row per GPU per node.

A rank is *silent* when its stream has had no sign of life (any event but a ``hardware``
reading, which a thread of its own writes even while the rank hangs) for the run's
``train.hang_after_s`` (engine.heartbeat, default 600 s) while the run is running: it is dead
or hung, and the dashboard names it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetui.engine import events as ev

HARDWARE_EVERY_S = 5.0  # each node's local rank 0 samples its GPUs and host this often
RANK_FILE = re.compile(r"^events\.rank(\d+)\.jsonl$")
MAX_READ = 4 << 20  # bytes per rank file per read: a long history arrives in slices
SLOWEST_MARGIN = 0.05  # a rank is the slowest when its step time is this much above the fastest's


# --------------------------------------------------------------------------- writing


def identity(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """This process's place in a torchrun job (rank, local_rank, node_rank, hostname), or None
    for one process (its events stay as they were)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return {"rank": int(env.get("RANK", "0")), "local_rank": int(env.get("LOCAL_RANK", "0")),
                "node_rank": int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))),
                "hostname": socket.gethostname()}
    except ValueError:
        return None


class HardwareSampler:
    """A daemon thread that writes a ``hardware`` event (engine.events.EventWriter.sample:
    a reading, not a sign of life) every ``every_s`` seconds: the node's GPUs (NVML, every
    GPU this process can see) and its CPU and RAM (psutil)."""

    def __init__(self, events, every_s: float = HARDWARE_EVERY_S) -> None:
        self.events = events
        self.every_s = every_s
        self.samples = 0
        self._backend = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finetui hardware", daemon=True)

    def start(self) -> "HardwareSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def reading(self) -> dict[str, Any]:
        from finetui.engine import hardware

        if self._backend is None:
            self._backend = hardware.gpu_backend()
        problem = self._backend.problem
        try:
            gpus = [g.to_dict() for g in self._backend.read()]
        except Exception as exc:  # noqa: BLE001 - a driver hiccup is a reading
            gpus, problem = [], f"NVML read failed: {exc}"
        try:
            h = hardware.read_host(os.getpid())
            host = {"cpu_percent": h.cpu_percent, "ram_used_bytes": h.ram_used_bytes,
                    "ram_total_bytes": h.ram_total_bytes, "process_rss_bytes": h.process_rss_bytes}
        except Exception:  # noqa: BLE001
            host = {}
        return {"gpus": gpus, "host": host, "problem": problem}

    def _run(self) -> None:
        while True:
            try:
                if self.events.sample("hardware", **self.reading()) is None:
                    return  # the finished event went out
                self.samples += 1
            except Exception:  # noqa: BLE001 - readings must never take training down
                pass
            if self._stop.wait(self.every_s):
                return


def start_sampler(events, env: dict[str, str] | None = None,
                  every_s: float = HARDWARE_EVERY_S) -> HardwareSampler | None:
    """The hardware sampler, on each node's local rank 0 of a torchrun job only."""
    me = identity(env)
    if me is None or me["local_rank"] != 0:
        return None
    return HardwareSampler(events, every_s).start()


# --------------------------------------------------------------------------- reading


def rank_files(run_dir: str | Path) -> dict[int, Path]:
    """The other ranks' streams in a run folder, by global rank."""
    out: dict[int, Path] = {}
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return out
    for name in entries:
        m = RANK_FILE.match(name)
        if m:
            out[int(m.group(1))] = Path(run_dir) / name
    return out


class RankFollower:
    """Reads every ``events.rank<R>.jsonl`` of a run folder incrementally: each call
    returns the whole lines appended since the last (a partial last line waits for its
    newline), at most :data:`MAX_READ` bytes per file; new rank files are picked up as
    they appear. Bad lines are counted in ``skipped`` and passed over."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.offsets: dict[int, int] = {}
        self._pending: dict[int, bytes] = {}
        self.skipped = 0
        self.caught_up = False  # every file was read to its end at the last call

    def read(self, budget: int = MAX_READ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        caught_up = True
        for rank, path in sorted(rank_files(self.run_dir).items()):
            start = self.offsets.get(rank, 0)
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < start:  # replaced or cut short: read it again
                        start, self._pending[rank] = 0, b""
                    fh.seek(start)
                    data = fh.read(budget)
            except OSError:
                continue
            self.offsets[rank] = start + len(data)
            caught_up = caught_up and self.offsets[rank] >= size
            if not data:
                continue
            *lines, self._pending[rank] = (self._pending.get(rank, b"") + data).split(b"\n")
            for raw in lines:
                event, problem = ev.decode_checked(raw)
                if event is not None:
                    event.setdefault("rank", rank)  # the file says whose it is
                    out.append(event)
                elif problem is not None:
                    self.skipped += 1
        self.caught_up = caught_up
        return out


@dataclass
class RankInfo:
    """What one rank's stream adds up to."""

    rank: int
    local_rank: int | None = None
    node_rank: int | None = None
    host: str | None = None
    alive_time: float | None = None  # its last sign of life (any event but a reading)
    last_step: dict[str, Any] | None = None  # its latest rank_step event
    phase: str | None = None  # of its latest heartbeat
    finished: str | None = None  # the status of its finished event (until it starts again)
    finished_time: float | None = None
    error: str | None = None  # its error event's message

    @property
    def step_time(self) -> float | None:
        """Seconds per step that tell the slowest rank: its own forward time (own_s), else
        its wall time per step."""
        s = self.last_step or {}
        for key in ("own_s", "step_s"):
            v = s.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        return None

    @property
    def device(self) -> str | None:
        return (self.last_step or {}).get("device")

    def where(self) -> str:
        """``rank 1 (node 0, host-a)``."""
        bits = [f"node {self.node_rank}" if self.node_rank is not None else None, self.host]
        shown = ", ".join(b for b in bits if b)
        return f"rank {self.rank}" + (f" ({shown})" if shown else "")


@dataclass
class NodeInfo:
    """A node's latest hardware reading (from its local rank 0's stream)."""

    node_rank: int | None
    host: str | None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    host_reading: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    time: float | None = None


@dataclass
class HwRow:
    """One row of the per-node hardware table: a GPU of a node (``gpu`` set), or a node
    without GPUs (CPU and RAM), with the ranks that run on it."""

    node: NodeInfo
    gpu: dict[str, Any] | None
    ranks: list[RankInfo]


class RankBoard:
    """Every rank's stream added up. Plain data, no I/O: the run feed applies rank 0's
    events (from events.jsonl) and :class:`RankFollower`'s; a ``run_started`` of rank 0
    starts a session (:meth:`new_session`), after which ranks beyond its world size are
    forgotten and silence is counted from its start at the earliest."""

    def __init__(self) -> None:
        self.ranks: dict[int, RankInfo] = {}
        self.nodes: dict[tuple[Any, Any], NodeInfo] = {}
        self.world_size: int | None = None
        self.session_start: float | None = None
        self.version = 0

    def new_session(self, world_size: Any, when: float | None) -> None:
        self.world_size = world_size if isinstance(world_size, int) and world_size > 0 else None
        self.session_start = when
        if self.world_size is not None:
            for r in [r for r in self.ranks if r >= self.world_size]:
                del self.ranks[r]
        self.version += 1

    def apply(self, event: dict[str, Any]) -> None:
        rank = event.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            return
        if self.world_size is not None and rank >= self.world_size:
            return  # a rank of an earlier session on more processes (a resume on fewer)
        kind = event.get("type")
        when = event.get("time")
        info = self.ranks.get(rank)
        if info is None:
            info = self.ranks[rank] = RankInfo(rank)
        for name, attr in (("local_rank", "local_rank"), ("node_rank", "node_rank"), ("hostname", "host")):
            if event.get(name) is not None:
                setattr(info, attr, event[name])
        if kind == "hardware":
            key = (info.node_rank, info.host)
            node = self.nodes.get(key) or NodeInfo(info.node_rank, info.host)
            node.gpus = [g for g in (event.get("gpus") or []) if isinstance(g, dict)]
            node.host_reading = event.get("host") or {}
            node.problem = event.get("problem")
            node.time = when
            self.nodes[key] = node
        else:
            if info.finished is not None and kind != "finished":
                info.finished = info.error = None  # a new session of this rank
            if isinstance(when, (int, float)):
                info.alive_time = max(info.alive_time or when, when)
            if kind == "rank_step":
                info.last_step = event
            elif kind == "heartbeat":
                info.phase = event.get("phase")
            elif kind == "error":
                info.error = event.get("message")
            elif kind == "finished":
                info.finished, info.finished_time = str(event.get("status") or "failed"), when
        self.version += 1

    # ------------------------------------------------------------------ derived

    @property
    def multi(self) -> bool:
        """More than one rank: the dashboard shows the ranks."""
        return (self.world_size or 0) > 1 or len(self.ranks) > 1

    def expected(self) -> list[int]:
        """The ranks of the session: 0 .. world size - 1 once rank 0 said it, else those heard from."""
        return list(range(self.world_size)) if self.world_size else sorted(self.ranks)

    def slowest(self) -> RankInfo | None:
        """The rank the others wait for: the highest step time (:attr:`RankInfo.step_time`)
        among ranks that reported one, when at least two did and it is more than
        :data:`SLOWEST_MARGIN` above the fastest (else the ranks keep pace: None)."""
        timed = [i for i in self.ranks.values() if i.step_time is not None]
        if len(timed) < 2:
            return None
        slow = max(timed, key=lambda i: (i.step_time, -i.rank))
        fast = min(i.step_time for i in timed)
        return slow if slow.step_time > fast * (1 + SLOWEST_MARGIN) else None

    def step_times(self) -> tuple[float, float] | None:
        """(fastest, slowest) step time over the ranks that reported one."""
        times = [i.step_time for i in self.ranks.values() if i.step_time is not None]
        return (min(times), max(times)) if times else None

    def global_tokens_per_s(self) -> float | None:
        """The run's throughput: the sum of every rank's own tokens/s at its latest logged
        step, once every rank of the session has reported one (else None)."""
        total = 0.0
        for r in self.expected():
            info = self.ranks.get(r)
            value = ((info.last_step or {}) if info else {}).get("tokens_per_s")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None
            total += float(value)
        return total

    def silent(self, after_s: float, now: float | None = None) -> list[tuple[int, float]]:
        """(rank, seconds) of every rank of the session with no sign of life for more than
        ``after_s`` seconds (a rank never heard from counts from the session's start), the
        longest silent first. A rank that finished this session is not silent. The caller
        asks only while the run is running."""
        now = time.time() if now is None else now
        out = []
        for r in self.expected():
            info = self.ranks.get(r)
            if info is not None and info.finished is not None and \
                    (self.session_start is None or (info.finished_time or 0) >= self.session_start):
                continue
            since = max([t for t in ((info.alive_time if info else None), self.session_start) if t is not None],
                        default=None)
            if since is not None and now - since > after_s:
                out.append((r, now - since))
        return sorted(out, key=lambda pair: (-pair[1], pair[0]))

    def hw_rows(self) -> list[HwRow]:
        """One row per GPU per node (a node without GPUs: one row), nodes in node order;
        each with the ranks that run there (on that GPU when a rank's device says which)."""
        rows = []
        for key in sorted(self.nodes, key=lambda k: (k[0] if isinstance(k[0], int) else -1, str(k[1]))):
            node = self.nodes[key]
            here = sorted((i for i in self.ranks.values() if (i.node_rank, i.host) == key), key=lambda i: i.rank)
            if not here:
                continue  # its ranks belong to an earlier session
            if not node.gpus:
                rows.append(HwRow(node, None, here))
                continue
            for gpu in node.gpus:
                index = gpu.get("index")
                on = [i for i in here if _device_index(i) == index]
                if not on and not any(_device_index(i) is not None for i in here):
                    on = [i for i in here if i.local_rank == index]  # cuda:LOCAL_RANK, as torchrun sets up
                rows.append(HwRow(node, gpu, on))
        return rows


def _device_index(info: RankInfo) -> int | None:
    device = info.device or ""
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None
