"""What the Eval screen knows and decides, without Textual: a run's saved results, the
comparison table (tuned against base, with the deltas), the ``finetui eval`` and
``finetui merge`` subprocesses (their command lines, their progress lines, their outcome).
Plain Python (no Textual, no torch), so tests drive it without an app; the screen only
shows it.
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
from typing import Any, Protocol

from finetui.engine import spawn
from finetui.engine.units import format_bytes

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
MERGE_STEP = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")
BAR_LINE = re.compile(r"\d+%\|")  # a tqdm bar: the last one is kept, not every redraw
MODELS = ("base", "tuned")


# ---------------------------------------------------------------------------- reading


def read_results(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str | None]:
    """A run's saved evaluation: (summary, rows, problem). (None, [], None) when there is
    none yet."""
    folder = run_dir / "eval"
    summary_path = folder / "results.json"
    if not summary_path.exists():
        return None, [], None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, [], f"{summary_path}: cannot read ({exc})"
    rows: list[dict[str, Any]] = []
    problem = None
    try:
        with open(folder / "results.jsonl", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        problem = f"results.jsonl line {n}: not JSON (skipped)"
    except OSError:
        problem = "results.jsonl is missing: metrics only"
    return summary, rows, problem


def run_choices() -> list[tuple[str, str, str]]:
    """(run folder, id, description) for every run, newest first."""
    from finetui.engine import runs

    items = []
    for info in runs.list_runs():
        run_dir = Path(info.path)
        done = "evaluated" if (run_dir / "eval" / "results.json").exists() else "not evaluated"
        has = "merged" if (run_dir / "merged" / "config.json").exists() else \
            "adapter" if (run_dir / "adapter").is_dir() else "no result yet"
        items.append((str(run_dir.resolve()), info.id,
                      f"{info.status} · {info.method or '?'} · {info.model or '?'} · {has} · {done}"))
    return items


def default_run() -> Path | None:
    """The newest run with a result to evaluate (adapter/), else the newest run."""
    from finetui.engine import runs

    found = runs.list_runs()
    for info in found:
        if (Path(info.path) / "adapter").is_dir():
            return Path(info.path).resolve()
    return Path(found[0].path).resolve() if found else None


def folder_summary(path: Path) -> str:
    try:
        files = [p for p in path.iterdir() if p.is_file()]
    except OSError:
        return ""
    size = sum(p.stat().st_size for p in files)
    shards = sum(1 for p in files if p.suffix == ".safetensors")
    return f"{len(files)} files, {shards} safetensors shard{'s' if shards != 1 else ''}, {format_bytes(size)}"


def fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    return "—" if value is None else pattern.format(value)


# ---------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class MetricRow:
    """One line of the metrics table: a value per model, and tuned − base ("" when either
    side lacks it, or only one model was evaluated)."""

    label: str
    values: list[str]
    delta: str


def models_in(result: dict[str, Any] | None) -> list[str]:
    """Which of base / tuned the result holds, in that order."""
    metrics = (result or {}).get("metrics", {})
    return [n for n in MODELS if n in metrics]


def metric_rows(result: dict[str, Any]) -> list[MetricRow]:
    """The metrics table of a saved or fresh evaluation: eval loss, perplexity, exact
    match; accuracy when the targets are class labels; refusal rates when the split has a
    refusal line."""
    metrics = result.get("metrics", {})
    names = models_in(result)

    def delta(key: str, pattern: str) -> str:
        if len(names) != 2:
            return ""
        a, b = metrics["base"].get(key), metrics["tuned"].get(key)
        return "" if a is None or b is None else pattern.format(b - a)

    def em(n: str) -> str:
        m = metrics[n]
        if m.get("exact_match") is None:
            return "—"
        return f"{m['n_exact']}/{m['n_generated']} ({100 * m['exact_match']:.0f}%)"

    rows = [
        MetricRow("eval loss", [fmt(metrics[n].get("eval_loss")) for n in names], delta("eval_loss", "{:+.4f}")),
        MetricRow("perplexity", [fmt(metrics[n].get("perplexity"), "{:.2f}") for n in names],
                  delta("perplexity", "{:+.2f}")),
        MetricRow("exact match", [em(n) for n in names], delta("exact_match", "{:+.0%}")),
    ]
    if result.get("labels"):
        labels = ", ".join(result["labels"][:6]) + (" …" if len(result["labels"]) > 6 else "")
        rows.append(MetricRow(f"accuracy ({labels})", [fmt(metrics[n].get("accuracy"), "{:.1%}") for n in names],
                              delta("accuracy", "{:+.1%}")))
    if result.get("refusal") is not None:
        def rate(n: str, hits: str, of: str, key: str) -> str:
            m = metrics[n]
            return "—" if m.get(key) is None else f"{m[hits]}/{m[of]} ({100 * m[key]:.0f}%)"

        rows.append(MetricRow("refusals, off-topic",
                              [rate(n, "n_refused", "n_off_topic", "refusal_rate") for n in names],
                              delta("refusal_rate", "{:+.0%}")))
        rows.append(MetricRow("false refusals",
                              [rate(n, "n_false_refusals", "n_in_domain", "false_refusal_rate") for n in names],
                              delta("false_refusal_rate", "{:+.0%}")))
    return rows


def result_heading(result: dict[str, Any]) -> str:
    """The line above the metrics: which split, how many examples, when, how long."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result["created"])) if result.get("created") else "?"
    of = f"{result.get('examples')}" + (
        f" of {result['split_size']}" if result.get("split_size", 0) > result.get("examples", 0) else "")
    split = "held-out test split" if result.get("split", "test") == "test" else f"{result['split']} split"
    head = f"{split} · {of} examples · evaluated {when}"
    if result.get("total_s"):
        head += f" in {result['total_s']:.0f}s"
    return head


def eval_summary(result: dict[str, Any], took: float) -> str:
    """What a finished evaluation says in the status line."""
    tuned = result.get("metrics", {}).get("tuned", {})
    summary = f"evaluated {result.get('examples')} examples in {took:.0f}s: tuned loss {fmt(tuned.get('eval_loss'))}"
    if tuned.get("exact_match") is not None:
        summary += f", exact match {tuned['n_exact']}/{tuned['n_generated']}"
    return summary


def parse_eval_output(stdout: str) -> dict[str, Any] | None:
    """The JSON result ``finetui eval --json`` printed last, or None."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), "")
    try:
        result = json.loads(line)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def merge_output(stdout: str, asked: Path | None) -> Path | None:
    """The folder ``finetui merge`` printed last (else the one asked for)."""
    printed = next((ln.strip() for ln in reversed(stdout.splitlines()) if ln.strip()), "")
    return Path(printed) if printed else asked


# ---------------------------------------------------------------------------- subprocesses


class EvalChoice(Protocol):
    compare_base: bool
    limit: int | None
    max_new_tokens: int


def eval_command(run_dir: Path, options: EvalChoice, trust_remote_code: bool = False) -> list[str]:
    command = [sys.executable, "-m", "finetui.engine.cli", "eval", str(run_dir), "--json",
               "--max-new-tokens", str(options.max_new_tokens)]
    if options.compare_base:
        command.append("--compare-base")
    if options.limit is not None:
        command += ["--limit", str(options.limit)]
    return command + (["--trust-remote-code"] if trust_remote_code else [])


def merge_command(run_dir: Path, out: Path, shard_size: str, trust_remote_code: bool = False) -> list[str]:
    return [sys.executable, "-m", "finetui.engine.cli", "merge", str(run_dir), "--out", str(out),
            "--shard-size", shard_size, *(["--trust-remote-code"] if trust_remote_code else [])]


@dataclass
class Job:
    """An evaluation or a merge running as a subprocess."""

    kind: str  # eval | merge
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
        if (m := MERGE_STEP.match(line)) is not None:
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


def run_job(job: Job, on_line: Callable[[str, str], None]) -> tuple[int | None, str, str | None]:
    """Run the job's subprocess to its end (call it from a thread): each stderr line the
    log shows goes to ``on_line(line, kind)`` as it comes. Returns (returncode, stdout,
    problem), problem set when it could not even start."""
    master, slave = _open_stderr()
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
    proc = job.proc if job is not None else None
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
