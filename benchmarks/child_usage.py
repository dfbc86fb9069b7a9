"""What one command costs, measured from outside: wall time, CPU time and peak RSS of the
command and every process it starts, for the benchmarks that time a ``finetui`` command line
(inspect_scale, runs_list_scale).

The command runs under a fresh parent that runs nothing else, so the parent's
``resource.getrusage(RUSAGE_CHILDREN)`` is the command's alone; the parent is a subreaper,
so workers a fork server started (orphans once it exits) are reaped and counted too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PARENT = (
    "import ctypes, json, os, resource, subprocess, sys, time\n"
    # a subreaper: workers a fork server started (orphans once it exits) are reaped here too,
    # so RUSAGE_CHILDREN holds the CPU time and peak RSS of every process of the run
    "ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[2:], cwd=sys.argv[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
    "wall = time.perf_counter() - t\n"
    "while True:\n"
    "    try:\n"
    "        os.waitpid(-1, 0)\n"
    "    except ChildProcessError:\n"
    "        break\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'wall_s': wall, 'cpu_s': u.ru_utime + u.ru_stime, 'peak_rss_mb': u.ru_maxrss / 1024,"
    " 'rc': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr[-2000:]}))\n"
)


PARTS = {"engine": "engine", "tui": "tui", "themes": "themes", "sample_data": "sample_data"}


def import_path(repo: Path) -> str:
    """A PYTHONPATH under which ``import finetui`` is ``repo``'s code: a folder holding a
    ``finetui`` package laid out as installed (repo/finetui's files, and its parts linked
    from repo/engine, repo/tui, ...: pyproject's package-dir). PYTHONPATH=repo alone is not
    enough: ``finetui.engine`` is not under repo/finetui, and an editable install of another
    checkout would supply it. ``measure`` runs the command with PYTHONSAFEPATH=1 so that
    the working directory (a checkout) does not come first."""
    repo = Path(repo).resolve()
    if not (repo / "finetui" / "__init__.py").exists():
        return str(repo)  # a checkout from before the one import name: its folders import as they are
    import hashlib
    import tempfile

    tree = Path(tempfile.gettempdir()) / f"finetui-import-{hashlib.sha1(str(repo).encode()).hexdigest()[:12]}"
    package = tree / "finetui"
    package.mkdir(parents=True, exist_ok=True)
    for item in (repo / "finetui").iterdir():
        if item.suffix == ".py" and not (package / item.name).exists():
            (package / item.name).symlink_to(item)
    for name, folder in PARTS.items():
        if (repo / folder).is_dir() and not (package / name).exists():
            (package / name).symlink_to(repo / folder, target_is_directory=True)
    return str(tree)


def assert_runs_checkout(repo: Path, env: dict[str, str]) -> None:
    """Stop unless ``finetui.engine`` imports from ``repo`` under ``env`` (as measure runs)."""
    code = "import os, finetui.engine as e; print(os.path.realpath(e.__file__))"
    found = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONSAFEPATH": "1"}, cwd=str(repo),
                           capture_output=True, text=True, check=True).stdout.strip()
    if not found.startswith(str(Path(repo).resolve()) + os.sep):
        raise SystemExit(f"{repo}: finetui.engine imports from {found}, not from this checkout")


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run ``command`` in ``cwd``: {wall_s, cpu_s, peak_rss_mb, rc, stdout, stderr (its last
    2,000 characters)}."""
    # PYTHONSAFEPATH: `python -m` would put the working directory first on sys.path, and a
    # checkout's own finetui/ there (without its engine/ inside) hides import_path's tree
    env = {**env, "PYTHONSAFEPATH": "1"}
    out = subprocess.run([sys.executable, "-c", _PARENT, str(cwd), *command], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def machine_line() -> str:
    """The Python version, the cores this process may use and the load average now."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"(python {sys.version.split()[0]}, {cores} cores, load average {os.getloadavg()[0]:.1f} at the end)"
