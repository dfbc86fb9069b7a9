"""What the Eval screen knows and decides, without Textual: a run's saved results, the
comparison table (tuned against base, with the deltas), the ``finetui eval`` and
``finetui merge`` subprocesses (their command lines and outcome; ``tui.jobs`` runs them).
Plain Python (no Textual, no torch), so tests drive it without an app; the screen only
shows it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from finetui.engine.units import format_bytes
from finetui.tui.jobs import Job, cli_command, last_json
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
    return last_json(stdout)


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
    command = cli_command("eval", str(run_dir), "--json", "--max-new-tokens", str(options.max_new_tokens))
    if options.compare_base:
        command.append("--compare-base")
    if options.limit is not None:
        command += ["--limit", str(options.limit)]
    return command + (["--trust-remote-code"] if trust_remote_code else [])


def merge_command(run_dir: Path, out: Path, shard_size: str, trust_remote_code: bool = False) -> list[str]:
    return cli_command("merge", str(run_dir), "--out", str(out), "--shard-size", shard_size,
                       *(["--trust-remote-code"] if trust_remote_code else []))


# ---------------------------------------------------------------------------- what the screen does next


def busy_problem(job: Job | None) -> str | None:
    """Why another evaluation or merge cannot start now, or None."""
    return f"a {job.kind} is running: S stops it" if job is not None else None


def export_offer(run_dir: Path) -> tuple[str, str]:
    """The export dialog's title and note for a run: (merge its LoRA adapter | link its full
    fine-tune). Raises ``engine.targets.NotFound`` when the run has no adapter/ yet."""
    from finetui.engine import targets

    adapter = targets.run_adapter(run_dir)
    if (adapter / "adapter_config.json").exists():
        return (f"Export {run_dir.name}: merge its LoRA adapter into the base model",
                "An ordinary model folder (safetensors, tokenizer): AutoModelForCausalLM.from_pretrained loads it.")
    return (f"Export {run_dir.name}: its full fine-tune as a model folder",
            "A full fine-tune is already a plain model: its files are linked (or copied) into the folder.")


@dataclass
class Outcome:
    """How a finished evaluation or merge ends on screen: the status message and its colour
    (success | warning | error), a notification (title, text) for a failure or a merge,
    lines for the log before the message ((text, colour or style)), and a fresh result with
    its rows when the evaluated run is the one on screen."""

    message: str
    color: str
    notify: tuple[str, str] | None = None
    log: list[tuple[str, str]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def job_outcome(job: Job, returncode: int | None, stdout: str, problem: str | None, shown: Path | None,
                took: float) -> Outcome:
    """What a finished job means; ``shown``: the run on screen now."""
    if job.stopped:
        return Outcome(f"{job.kind} stopped after {took:.0f}s", "warning")
    reason = job.failure(returncode, problem)
    if reason is not None:
        title = "Evaluation failed" if job.kind == "eval" else "Export failed"
        return Outcome(f"{job.kind} failed: {reason}", "error", (title, reason))
    if job.kind == "eval":
        result = parse_eval_output(stdout)
        if result is None:
            return Outcome("evaluation finished but printed no JSON result (see the log)", "error")
        rows = result.pop("rows", [])
        if job.run_dir != shown:
            return Outcome(f"evaluated {job.run_dir.name} ({took:.0f}s); o shows it", "success")
        log = [(f"note: {note}", "warning") for note in result.get("notes", [])]
        saved = result.get("saved", {}).get("results")
        if saved:
            log.append((f"saved {saved}", "dim"))
        return Outcome(eval_summary(result, took), "success", log=log, result=result, rows=rows)
    out = merge_output(stdout, job.out)
    if out is None or not (out / "config.json").exists():
        return Outcome(f"merge finished but {out} holds no config.json (see the log)", "error")
    job.fraction = 1.0
    log = [(f"merged model: {out} ({folder_summary(out)})", "bold"),
           (f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r}); Chat (c, ctrl+o) can load it too", "dim")]
    return Outcome(f"exported to {out} in {took:.0f}s", "success", ("Export", f"merged model in {out}"), log)
