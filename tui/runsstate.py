"""What the Runs screen reads and decides, without Textual: the runs folder's listing (each
run summarised once, re-read only when its files change), the two marked runs, the columns
that fit a width and the text of each cell, and the refusals of the actions (resume a
running run, delete one, export one without an adapter). Plain Python, so tests drive it
without an app; the screen only shows it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from finetui.engine import runs
from finetui.engine.units import format_duration

RELOAD_S = 2.0  # a running run: the list is read again this often
# (key, label, width incl. one space of gap); run and model share what is left
FIXED_COLUMNS = (("mark", "", 2), ("status", "status", 12), ("run", "run", 0), ("started", "started", 12),
                 ("time", "time", 8), ("steps", "steps", 10), ("eval", "best ev", 8), ("method", "method", 7),
                 ("model", "model", 0))
LIVE = ("running", "created")  # statuses whose summary changes without their files' stat changing


def column_widths(width: int) -> list[tuple[str, str, int]]:
    """Columns that fit ``width`` cells. Run and model share what the fixed ones leave
    (run 60%); when that is too little, model, started, method, time and eval are dropped
    in that order."""
    cols = list(FIXED_COLUMNS)
    for drop in ("model", "started", "method", "time", "eval"):
        free = width - sum(w for _k, _l, w in cols)
        needed = 20 if any(k == "model" for k, _l, _w in cols) else 12
        if free >= needed:
            break
        cols = [c for c in cols if c[0] != drop]
    free = max(width - sum(w for _k, _l, w in cols), 12)
    if any(k == "model" for k, _l, _w in cols):
        run_w = max(12, int(free * 0.6))
        model_w = free - run_w
    else:
        run_w, model_w = free, 0
    return [(k, label, w or (run_w if k == "run" else model_w)) for k, label, w in cols]


def run_name(run_id: str) -> str:
    """The name part of ``20250101-120000-name`` (the time is its own column)."""
    parts = run_id.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return parts[2]
    return run_id


def started_text(info: runs.RunInfo) -> str:
    """``12-05 21:03``: the run's start in local time, else the time in its folder name."""
    when = info.started
    if when is None:
        parts = info.id.split("-", 2)
        if len(parts) >= 2 and len(parts[0]) == 8 and parts[0].isdigit():
            return f"{parts[0][4:6]}-{parts[0][6:8]} {parts[1][:2]}:{parts[1][2:4]}"
        return "-"
    return time.strftime("%m-%d %H:%M", time.localtime(when))


def cell_value(info: runs.RunInfo, key: str, width: int, number=str) -> str:
    """The text of one plain column (run, started, time, steps, eval, method, model) cut to
    ``width``; ``number`` formats the best eval loss."""
    if key == "run":
        return run_name(info.id)
    if key == "started":
        return started_text(info)
    if key == "time":
        return format_duration(info.duration_s)
    if key == "steps":
        return f"{info.step}/{info.total_steps}" if info.total_steps else (str(info.step) if info.step else "-")
    if key == "eval":
        return number(info.best_eval_loss) if info.best_eval_loss is not None else "-"
    if key == "method":
        return info.method or "-"
    value = info.model or "-"
    if len(value) > width - 1:
        value = "…" + value[-(width - 2):]  # the end of a path or hub id says most
    return value


def status_counts(infos: list[runs.RunInfo]) -> dict[str, int]:
    """How many runs have each status, in the order of first appearance."""
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.status] = counts.get(info.status, 0) + 1
    return counts


def last_checkpoint_step(info: runs.RunInfo) -> str | None:
    """The step of the run's last checkpoint (``checkpoint-40`` -> ``40``)."""
    return Path(info.checkpoints[-1]).name.split("-")[-1] if info.checkpoints else None


def file_key(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (0, 0) when it is not there."""
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0


class RunsList:
    """The runs folder as the screen shows it: the runs, newest first, the two marked ones,
    a problem reading the folder. :meth:`read` is blocking (a worker thread); :meth:`take`
    hands its answer over on the UI thread."""

    def __init__(self) -> None:
        self.infos: list[runs.RunInfo] = []
        self.marked: list[str] = []  # at most two run ids, oldest first
        self.problem: str | None = None
        self.root = str(runs.runs_dir())
        self.loaded = False
        self._cache: dict[str, tuple[tuple, runs.RunInfo]] = {}  # worker thread only
        self._reading = threading.Lock()  # one reader at a time: worker threads cannot be cancelled

    # ------------------------------------------------------------------ reading (a thread)

    def read(self, root: Path | None = None) -> tuple[list[runs.RunInfo], str | None, str]:
        """(runs, problem, root): an unreadable folder is a problem, never an exception."""
        root = runs.runs_dir() if root is None else root
        try:
            with self._reading:
                infos = self.scan(root)
            problem = None
        except Exception as exc:  # an unreadable runs folder must not take the UI down
            infos, problem = [], f"cannot list runs in {root}/: {exc}"
        return infos, problem, str(root)

    def scan(self, root: Path) -> list[runs.RunInfo]:
        """Every run in ``root``, newest first. A finished run whose events and pid files did
        not change is not summarised again; one that cannot be read is listed as unreadable."""
        if not root.exists():
            return []
        out = []
        seen = set()
        for path in sorted((p for p in root.iterdir() if (p / "config.yaml").exists()),
                           key=lambda p: p.name, reverse=True):
            seen.add(path.name)
            key = tuple(file_key(path / name) for name in ("events.jsonl", runs.PID_FILE))
            cached = self._cache.get(path.name)
            if cached is not None and cached[0] == key and cached[1].status not in LIVE:
                out.append(cached[1])
                continue
            try:
                info = runs.summarize(path)
            except Exception as exc:  # noqa: BLE001 - one broken run never hides the others
                info = runs.unreadable(path, exc)
            self._cache[path.name] = (key, info)
            out.append(info)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return out

    # ------------------------------------------------------------------ the UI thread

    def take(self, infos: list[runs.RunInfo], problem: str | None, root: str) -> None:
        """A read's answer; marks of runs that are gone are dropped."""
        self.infos, self.problem, self.root, self.loaded = infos, problem, root, True
        ids = {i.id for i in infos}
        self.marked = [m for m in self.marked if m in ids]

    @property
    def running(self) -> bool:
        return any(i.status == "running" for i in self.infos)

    def find(self, run_id: str | None) -> runs.RunInfo | None:
        return next((i for i in self.infos if i.id == run_id), None)

    def path(self, run_id: str) -> Path:
        info = self.find(run_id)
        return Path(info.path) if info is not None else Path(self.root) / run_id

    def toggle_mark(self, run_id: str) -> None:
        """Mark a run, or unmark it; a third mark drops the oldest."""
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
            del self.marked[:-2]

    def compare_pair(self, current: str | None) -> tuple[Path, Path] | None:
        """The two runs to compare: the two marked, or the one marked and the selected one."""
        pair = list(self.marked)
        if len(pair) == 1 and current is not None and current not in pair:
            pair.append(current)
        if len(pair) != 2:
            return None
        return self.path(pair[0]), self.path(pair[1])


def export_problem(info: runs.RunInfo) -> str | None:
    """Why a run cannot be exported yet (None when it can)."""
    if not (Path(info.path) / "adapter").is_dir():
        return f"{info.id} has no adapter/ yet (saved when training ends or is stopped)"
    return None
