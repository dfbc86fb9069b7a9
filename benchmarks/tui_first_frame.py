"""Time to the TUI's first frame, next to `python -c "import torch"`.

Starts the real `python -m finetui.engine.cli` (what `finetui` runs) on a pseudo-terminal of
80x24 and reads what it draws. Two clocks:

* first frame: the Datasets screen is drawn (its screen bar and footer are on screen);
* rows shown: the sample dataset's first record is on screen (the file has been read in
  a worker thread and the config loaded).

Then it presses q. Each figure is the median of --runs starts (wall clock from spawn, so
Python start-up is included), with an isolated XDG_CONFIG_HOME and runs folder; the CPU
the UI process had used by the first frame is printed too, as a load-independent check.

    python benchmarks/tui_first_frame.py [--runs 5] [--no-torch]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_FRAME = b"Datasets"
ROWS_SHOWN = b"What is finetui?"


def cpu_seconds(pid: int) -> float:
    """User+system CPU the process has used so far (contention on a busy box inflates
    wall time, not this)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_frame(timeout: float = 20.0) -> tuple[float, float, float]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TERM="xterm-256color", XDG_CONFIG_HOME=f"{tmp}/config",
                   FINETUI_RUNS_DIR=f"{tmp}/runs",
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli"], stdin=slave, stdout=slave, stderr=slave,
                                env=env, cwd=REPO, start_new_session=True, close_fds=True)
        os.close(slave)
        seen = b""
        elapsed = rows_at = None
        cpu = float("nan")
        try:
            while time.perf_counter() - start < timeout:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                seen += chunk
                if elapsed is None and FIRST_FRAME in seen:
                    elapsed = time.perf_counter() - start
                    try:
                        cpu = cpu_seconds(proc.pid)
                    except (OSError, IndexError, ValueError):
                        pass
                if ROWS_SHOWN in seen:
                    rows_at = time.perf_counter() - start
                    break
            if elapsed is None or rows_at is None:
                raise SystemExit(f"no first frame within {timeout}s; output tail: {seen[-400:]!r}")
            os.write(master, b"q")
            deadline = time.time() + 5
            while proc.poll() is None and time.time() < deadline:
                if select.select([master], [], [], 0.05)[0]:
                    try:
                        os.read(master, 65536)
                    except OSError:
                        break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            os.close(master)
    return elapsed, cpu, rows_at


def import_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch import comparison")
    args = parser.parse_args()
    first_frame()  # warm the file cache and bytecode, like every start after the first
    results = [first_frame() for _ in range(args.runs)]
    frames = [r[0] for r in results]
    cpus = [r[1] for r in results]
    rows = [r[2] for r in results]
    print(f"finetui first frame (80x24, pty): median {statistics.median(frames):.3f} s  "
          f"min {min(frames):.3f} s  max {max(frames):.3f} s  ({args.runs} runs; "
          f"CPU used by then: median {statistics.median(cpus):.2f} s)")
    print(f"sample dataset rows on screen:    median {statistics.median(rows):.3f} s  "
          f"min {min(rows):.3f} s  max {max(rows):.3f} s")
    bare = [import_time("pass") for _ in range(args.runs)]
    print(f"python -c pass:                   median {statistics.median(bare):.3f} s")
    if not args.no_torch:
        try:
            torch = [import_time("import torch") for _ in range(args.runs)]
        except subprocess.CalledProcessError:
            print("python -c 'import torch':        (torch not installed)")
        else:
            print(f"python -c 'import torch':        median {statistics.median(torch):.3f} s  "
                  f"min {min(torch):.3f} s  max {max(torch):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
