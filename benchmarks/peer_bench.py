"""Training speed and memory: finetui against LLaMA-Factory (the peer) and a plain
``transformers.Trainer`` + ``peft`` script, on the same SFT job, interleaved, on one machine.

    python benchmarks/peer_bench.py [--models tiny,small,smollm2] [--cutoffs 256,1024] [--rows 400]
        [--repeats 3] [--systems finetui,llamafactory,llamafactory-packing,baseline]
        [--variant NAME:key=value,...] [--out results.json]
    finetui bench [same flags]

The job (the same for every system): LoRA r8 / alpha 16 / dropout 0 on all linear layers,
ChatML template, LLaMA-Factory's ``alpaca_en_demo`` (first ``--rows`` records), cutoff
``--cutoffs`` tokens, batch 8, 1 epoch, AdamW lr 1e-3 with a cosine schedule and no warm-up,
seed 42, fp32 on the CPU, a step logged every step (so "first step" is seen when it
happens), no evaluation, no checkpoints (each saves its adapter at the end).

Models (``benchmarks/bench_models.py``): ``tiny`` and ``small`` share the tiny tokenizer;
``smollm2`` is the real SmolLM2-135M-Instruct with its own tokenizer. Every system loads
the tokenizer from the model's folder, so each model brings its own. The template is
ChatML in all three systems for every model: finetui's ``chatml``, LLaMA-Factory's
``chatml`` and the baseline's hand-written ChatML render the same text (a user turn, then
the assistant's reply ending in ``<|im_end|>``, no system turn). SmolLM2 is ChatML
natively (``<|im_start|>``/``<|im_end|>`` are single tokens, ``<|im_end|>`` is its eos), so
no system adds tokens or resizes embeddings; its own chat template would add a default
system prompt, which the job leaves out everywhere so that all three train the same tokens.

Systems:

- ``finetui``: ``python -m finetui.engine.cli train CONFIG`` (headless; the launcher starts the
  trainer process) with finetui's fast path: padding-free packing (``data.packing``) with
  attention per example, and (always on) lm_head and loss only at trained positions.
- ``llamafactory``: LLaMA-Factory 0.9.5 with its defaults, through
  ``benchmarks/peer_llamafactory.sh`` (its own venv, ``$PEER_VENV``, installed before the
  first job that needs it).
- ``llamafactory-packing``: the same with ``packing: true`` (LLaMA-Factory packs examples
  into ``cutoff``-long rows; without ``neat_packing`` they attend to each other).
- ``baseline``: ``benchmarks/baseline_plain_trainer.py`` (padding collator, no packing).
- ``--variant NAME:key=value,...``: more finetui runs with ``--set`` overrides (and
  ``env.NAME=value`` for environment variables), e.g.
  ``--variant finetui-padded:data.packing=false`` or ``--variant finetui-2threads:env.OMP_NUM_THREADS=2``;
  ``python=PATH`` runs another finetui (another checkout's or version's venv interpreter) for a
  before/after comparison in one interleaved run, e.g. ``--variant before:python=/tmp/old/bin/python``
  (its CLI module, ``finetui.engine.cli`` or an older checkout's ``engine.cli``, is found by that
  interpreter, started in the job's folder so this checkout does not shadow it).

Figures, per run:

- real tokens/s: non-pad training tokens of the epoch / the Trainer's ``train_runtime``.
  finetui counts the tokens of the batches it trained on (its step events); the baseline
  counts its own tokenised data. LLaMA-Factory reports samples/s only, so its figure is
  ``train_samples_per_second x mean real tokens per sample`` of *its own* tokenised data
  (counted once per job by running LLaMA-Factory's own preprocessing in its venv: the
  non-pad tokens, i.e. attention_mask != 0, of every training row, packed rows included).
- peak RSS: ``/usr/bin/time -v`` "Maximum resident set size" (the largest process: for
  finetui that is the trainer, started by the CLI).
- launch -> first step: wall time from starting the command to the first logged step.
- GFLOP/s: training FLOPs of the epoch / ``train_runtime``, the same estimate for every
  system (``bench_models.train_flops``): 4 x body params x real tokens + 4 x head params x
  trained tokens + 6 x LoRA params x real tokens (forward 2 per weight per token, backward
  2 for the input's gradient; frozen weights skip their own gradient, the adapters do not;
  the LM head counted only where a label is trained; attention scores left out). "of
  peak": that over this machine's matmul peak, the best GFLOP/s of float32 GEMMs
  (``benchmarks/matmul_peak.py``), probed before the first job and after the last
  (the higher of the two).
- final train loss: the Trainer's ``train_loss`` (mean over steps of each batch's mean
  per-token loss). finetui (packed or padded) and the baseline and LLaMA-Factory (default)
  put the same 8 examples in each batch, so it is the same quantity; LLaMA-Factory's
  packing makes batches of 8 cutoff-long packed rows (fewer, larger steps; cross-example
  attention), so its loss is shown but is not comparable.

Each (model, cutoff) job runs ``--repeats`` rounds of all systems in turn (A B C A B C ...);
the table shows medians with [min-max] and the ratio of medians to LLaMA-Factory's. The
results (every run, the summary, the machine) are written to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_models  # noqa: E402  (benchmarks/, put on sys.path above)

PEER_SCRIPT = BENCH / "peer_llamafactory.sh"
DATA_DIR = bench_models.DATA_DIR  # where alpaca_en_demo lives; --data-dir for one run
DATASET = "alpaca_en_demo"
DEFAULT_SYSTEMS = ("finetui", "llamafactory", "llamafactory-packing", "baseline")
REFERENCE = "llamafactory"

JOB = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, batch_size=8, epochs=1, lr=1e-3, scheduler="cosine", seed=42)

# Goals (ratios to LLaMA-Factory's medians on the same job): speed at least, the rest at most.
GOALS = {
    "tokens_per_s": (">=", 2.0, REFERENCE),
    "tokens_per_s_packing": (">=", 1.2, "llamafactory-packing"),
    "tokens_per_s_baseline": (">=", 1.3, "baseline"),
    "peak_rss_mb": ("<=", 0.8, REFERENCE),
    "first_step_s": ("<=", 0.5, REFERENCE),
    "train_loss": ("within", 0.02, REFERENCE),
}

# Counts real (non-pad) tokens of LLaMA-Factory's own tokenised training data, run with
# the peer's python. Pad positions have attention_mask 0 (packed rows are padded to cutoff).
LF_COUNT = r"""
import json, sys, yaml
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_template_and_fix_tokenizer, get_dataset
job = yaml.safe_load(open(sys.argv[1]))
model_args, data_args, training_args, finetuning_args, _ = get_train_args(job)
tm = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)["train_dataset"]
real = trained = 0
for row in ds:
    mask = row.get("attention_mask") or [1] * len(row["input_ids"])
    real += sum(1 for m in mask if m)
    trained += sum(1 for l in row["labels"] if l != -100)
print("LF_COUNT " + json.dumps({"samples": len(ds), "real_tokens": real, "trained_tokens": trained}))
"""


# ----------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def max_rss_kb(time_output: str) -> int | None:
    for line in time_output.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1])
    return None


def run_timed(cmd: list[str], *, env: dict[str, str], cwd: Path, log_file: Path, timeout: float):
    """Run ``cmd`` under ``/usr/bin/time -v``; return (start, end, exit code, max RSS kB).
    The CPU seconds (user + system, the command and the children it waited for) are in
    ``cpu_seconds(log_file)``."""
    tfile = log_file.with_suffix(".time")
    start = time.time()
    with open(log_file, "wb") as out:
        try:
            code = subprocess.run(["/usr/bin/time", "-v", "-o", str(tfile), *cmd], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    end = time.time()
    rss = max_rss_kb(tfile.read_text()) if tfile.exists() else None
    return start, end, code, rss


def cpu_seconds(log_file: Path) -> float | None:
    """User + system CPU seconds of a ``run_timed`` command (a figure that another process on
    the machine changes less than the wall time: for before/after runs on a busy machine)."""
    tfile = log_file.with_suffix(".time")
    if not tfile.exists():
        return None
    times = {}
    for line in tfile.read_text().splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("User time (seconds)", "System time (seconds)"):
            times[key] = float(value)
    return round(sum(times.values()), 2) if len(times) == 2 else None


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\n"
            "out = {}\n"
            "for n in ('torch','transformers','peft','accelerate','datasets','llamafactory'):\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except Exception:  # noqa: BLE001 - versions are informative only
        return {}


# ----------------------------------------------------------------------------- systems


class Job:
    def __init__(self, model: str, model_dir: Path, cutoff: int, rows: int, work: Path,
                 data_dir: Path = DATA_DIR):
        self.model, self.model_dir, self.cutoff, self.rows = model, model_dir, cutoff, rows
        self.data_dir = Path(data_dir)
        self.name = f"{model}-c{cutoff}-r{rows}"
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)

    def lf_yaml(self, packing: bool, out_dir: Path) -> dict:
        job = {
            "model_name_or_path": str(self.model_dir),
            "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "lora_rank": JOB["lora_r"], "lora_alpha": JOB["lora_alpha"], "lora_dropout": JOB["lora_dropout"],
            "lora_target": "all",
            "dataset": DATASET, "dataset_dir": str(self.data_dir), "template": "chatml",
            "cutoff_len": self.cutoff, "max_samples": self.rows, "preprocessing_num_workers": 1,
            "output_dir": str(out_dir), "overwrite_output_dir": True,
            "logging_steps": 1, "save_steps": 100000,
            "per_device_train_batch_size": JOB["batch_size"], "gradient_accumulation_steps": 1,
            "learning_rate": JOB["lr"], "num_train_epochs": JOB["epochs"], "lr_scheduler_type": JOB["scheduler"],
            "report_to": "none", "seed": JOB["seed"],
        }
        if packing:
            job["packing"] = True
        return job

    def finetui_yaml(self, runs_dir: Path) -> dict:
        return {
            "model": {"name_or_path": str(self.model_dir)},
            "method": {"type": "lora", "lora_r": JOB["lora_r"], "lora_alpha": JOB["lora_alpha"],
                       "lora_dropout": JOB["lora_dropout"], "target_modules": "all-linear"},
            "data": {"path": f"{self.data_dir}/dataset_info.json:{DATASET}", "template": "chatml",
                     "max_length": self.cutoff, "max_samples": self.rows, "test_size": 0, "packing": True},
            "train": {"epochs": JOB["epochs"], "batch_size": JOB["batch_size"], "learning_rate": JOB["lr"],
                      "lr_scheduler": JOB["scheduler"], "warmup_ratio": 0.0, "seed": JOB["seed"],
                      "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1},
            "output": {"runs_dir": str(runs_dir)},
        }


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """``NAME:key=value,key=value`` -> (name, --set overrides, env)."""
    name, _, rest = text.partition(":")
    sets, env = [], {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, _, value = item.partition("=")
        if key.startswith("env."):
            env[key[4:]] = value
        elif key == "python":
            env[PYTHON_KEY] = value
        else:
            sets.append(f"{key}={value}")
    return name.strip(), sets, env


PYTHON_KEY = "\0python"  # parse_variant's python=PATH, kept with the variant's environment


def finetui_cli(python: str, cwd: Path) -> list[str]:
    """The command that runs ``python``'s finetui CLI: ``finetui.engine.cli``, or ``engine.cli``
    for a checkout from before the package had one import name."""
    probe = subprocess.run([python, "-c", "import importlib.util as u; print(bool(u.find_spec('finetui') and u.find_spec('finetui.engine')))"],
                           cwd=cwd, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise SystemExit(f"--variant python={python}: cannot run it: {probe.stderr.strip()[-300:]}")
    return [python, "-m", "finetui.engine.cli" if probe.stdout.strip() == "True" else "engine.cli"]


def run_finetui(job: Job, tag: str, sets: list[str], extra_env: dict[str, str], args) -> dict:
    runs_dir = job.work / "runs"
    config = write_yaml(job.work / "finetui.yaml", job.finetui_yaml(runs_dir))
    extra_env = dict(extra_env)
    python = extra_env.pop(PYTHON_KEY, None)
    env = dict(os.environ, **extra_env)
    cwd = job.work if python else ROOT
    cli = finetui_cli(python, cwd) if python else [sys.executable, "-m", "finetui.engine.cli"]
    cmd = [*cli, "train", str(config), "--name", tag]
    for s in sets:
        cmd += ["--set", s]
    logf = job.work / f"{tag}.log"
    start, end, code, rss = run_timed(cmd, env=env, cwd=cwd, log_file=logf, timeout=args.timeout)
    result = {"wall_s": round(end - start, 3), "exit_code": code, "peak_rss_kb": rss, "cpu_s": cpu_seconds(logf)}
    run_id = next((ln.strip() for ln in logf.read_text(errors="replace").splitlines() if ln.strip()), "")
    events_file = runs_dir / run_id / "events.jsonl"
    if not events_file.exists():
        result["error"] = f"no events file (see {logf})"
        return result
    events = [json.loads(ln) for ln in events_file.read_text().splitlines() if ln.strip()]
    steps = [e for e in events if e["type"] == "step"]
    finished = next((e for e in events if e["type"] == "finished"), None)
    started = next((e for e in events if e["type"] == "run_started"), None)
    if not steps or finished is None or finished.get("status") != "completed":
        result["error"] = f"run did not complete (see {events_file})"
        return result
    metrics = finished["metrics"]
    runtime = metrics.get("train_runtime_s") or steps[-1]["elapsed_s"]
    tokens = steps[-1]["tokens"]
    result.update({
        "first_step_s": round(steps[0]["time"] - start, 3),
        "train_runtime_s": runtime,
        "train_loss": metrics["train_loss"],
        "samples": started["datasets"]["train"] if started else None,
        "real_tokens": tokens,
        "trained_tokens": (started or {}).get("data", {}).get("trained_tokens"),
        "tokens_per_s": tokens / runtime,
        "run_dir": str(runs_dir / run_id),
    })
    result["train_samples_per_second"] = round(result["samples"] / runtime, 3) if result["samples"] else None
    return result


def peer_python(args) -> Path:
    return Path(args.peer_venv) / "bin" / "python"


def ensure_peer(args) -> None:
    """Install LLaMA-Factory into ``args.peer_venv`` unless it is there (the peer script's
    ``--install``: once per machine, minutes). Everything that runs the peer's python (the
    token count, its versions) must come after this."""
    if (Path(args.peer_venv) / "bin" / "llamafactory-cli").exists() and peer_python(args).exists():
        return
    log(f"bench: installing LLaMA-Factory into {args.peer_venv} (once; a few minutes) ...")
    env = dict(os.environ, PEER_VENV=str(args.peer_venv))
    proc = subprocess.run(["bash", str(args.peer_script), "--install"], env=env, capture_output=True, text=True,
                          timeout=max(args.timeout, 1800))
    if proc.returncode != 0 or not peer_python(args).exists():
        raise SystemExit(f"installing LLaMA-Factory into {args.peer_venv} failed "
                         f"({args.peer_script} --install, exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")


def lf_count(job: Job, packing: bool, args) -> dict:
    """Real tokens of LLaMA-Factory's own tokenised data for this job (cached per job)."""
    cache = job.work / f"lf-count-{'packing' if packing else 'default'}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    cfg = write_yaml(job.work / f"lf-count-{'packing' if packing else 'default'}.yaml",
                     job.lf_yaml(packing, job.work / "lf-count-out"))
    proc = subprocess.run([str(peer_python(args)), "-c", LF_COUNT, str(cfg)], capture_output=True, text=True, cwd=job.work,
                          timeout=args.timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LF_COUNT ")), None)
    if line is None:
        raise SystemExit(f"counting LLaMA-Factory's tokens failed:\n{proc.stderr[-3000:]}")
    counted = json.loads(line[len("LF_COUNT "):])
    cache.write_text(json.dumps(counted))
    return counted


def run_llamafactory(job: Job, tag: str, packing: bool, args) -> dict:
    ensure_peer(args)  # the count below runs the peer's python
    counted = lf_count(job, packing, args)
    cfg = write_yaml(job.work / f"{tag}.yaml", job.lf_yaml(packing, job.work / f"{tag}-out"))
    out = job.work / f"{tag}.json"
    out.unlink(missing_ok=True)
    # Unbuffered, so the first step's log line reaches the peer script when it is printed.
    env = dict(os.environ, PEER_VENV=str(args.peer_venv), PYTHONUNBUFFERED="1")
    logf = job.work / f"{tag}.log"
    start = time.time()
    with open(logf, "wb") as fh:
        try:
            code = subprocess.run(["bash", str(args.peer_script), str(cfg), str(out)], stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, cwd=job.work, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    result = {"exit_code": code}
    if not out.exists():
        result["error"] = f"peer script wrote no result (see {logf})"
        result["wall_s"] = round(time.time() - start, 3)
        return result
    peer = json.loads(out.read_text())
    result.update(peer)
    if peer.get("exit_code") or not peer.get("train_runtime_s"):
        result["error"] = f"peer run failed (see {logf})"
        return result
    per_sample = counted["real_tokens"] / counted["samples"]
    result.update({
        "samples": counted["samples"],
        "real_tokens": counted["real_tokens"],
        "trained_tokens": counted["trained_tokens"],
        "real_tokens_per_sample": round(per_sample, 2),
        "tokens_per_s": peer["train_samples_per_second"] * per_sample,
    })
    return result


def run_baseline(job: Job, tag: str, extra_env: dict[str, str], args) -> dict:
    out = job.work / f"{tag}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_plain_trainer.py"),
           "--model", str(job.model_dir), "--data", str(job.data_dir / f"{DATASET}.json"),
           "--rows", str(job.rows), "--cutoff", str(job.cutoff), "--batch-size", str(JOB["batch_size"]),
           "--lr", str(JOB["lr"]), "--seed", str(JOB["seed"]),
           "--output-dir", str(job.work / f"{tag}-out"), "--out", str(out)]
    start, end, code, rss = run_timed(cmd, env=dict(os.environ, **extra_env), cwd=job.work,
                                      log_file=job.work / f"{tag}.log", timeout=args.timeout)
    result = {"wall_s": round(end - start, 3), "exit_code": code, "peak_rss_kb": rss}
    if code != 0 or not out.exists():
        result["error"] = f"baseline failed (see {job.work / (tag + '.log')})"
        return result
    base = json.loads(out.read_text())
    result.update({
        "first_step_s": round(base["first_step_time"] - start, 3) if base.get("first_step_time") else None,
        "train_runtime_s": base["train_runtime_s"],
        "train_samples_per_second": base["train_samples_per_second"],
        "train_loss": base["train_loss"],
        "samples": base["samples"],
        "real_tokens": base["real_tokens"],
        "trained_tokens": base["trained_tokens"],
        "tokens_per_s": base["real_tokens"] / base["train_runtime_s"],
    })
    return result


# ----------------------------------------------------------------------------- summary


FIGURES = (
    ("tokens_per_s", "real tok/s", "{:,.0f}"),
    ("gflops", "GFLOP/s", "{:,.1f}"),
    ("peak_fraction", "of peak", "{:.1%}"),
    ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
    ("first_step_s", "first step s", "{:.1f}"),
    ("train_loss", "train loss", "{:.4f}"),
)


def add_flops(run: dict, counts: dict[str, int], peak_gflops: float | None) -> None:
    """GFLOP/s of a finished run (the job's FLOPs over its train_runtime) and its fraction
    of the matmul peak."""
    if run.get("error") or not run.get("real_tokens") or not run.get("train_runtime_s"):
        return
    flops = bench_models.train_flops(counts, run["real_tokens"], run.get("trained_tokens"))
    run["train_flops"] = flops
    run["gflops"] = flops / run["train_runtime_s"] / 1e9
    if peak_gflops:
        run["peak_fraction"] = run["gflops"] / peak_gflops


def matmul_peak(seconds: float) -> dict | None:
    """This machine's float32 matmul peak (``benchmarks/matmul_peak.py``, finetui's torch)."""
    if seconds <= 0:
        return None
    cmd = [sys.executable, str(BENCH / "matmul_peak.py"), "--seconds", str(seconds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        log(f"bench: matmul probe failed ({exc})")
        return None


def summarize(runs: list[dict]) -> dict:
    """{system: {figure: {median, min, max, n}}} over the successful runs."""
    out: dict[str, dict] = {}
    for system in dict.fromkeys(r["system"] for r in runs):
        ok = [r for r in runs if r["system"] == system and not r.get("error")]
        figs: dict[str, dict] = {"runs_ok": len(ok), "runs": sum(1 for r in runs if r["system"] == system)}
        for key, _, _ in FIGURES + (("wall_s", "", ""), ("train_runtime_s", "", ""), ("train_flops", "", "")):
            values = [r[key] for r in ok if r.get(key) is not None]
            if key == "peak_rss_mb":
                values = [r["peak_rss_kb"] / 1024 for r in ok if r.get("peak_rss_kb")]
            if values:
                figs[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                             "n": len(values)}
        for key in ("samples", "real_tokens", "trained_tokens"):
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                figs[key] = values[0]
        out[system] = figs
    return out


def ratio(summary: dict, system: str, key: str, ref: str = REFERENCE) -> float | None:
    try:
        return summary[system][key]["median"] / summary[ref][key]["median"]
    except (KeyError, ZeroDivisionError):
        return None


NO_RATIO = {"peak_fraction"}  # its ratio is the GFLOP/s one


def table(job_name: str, summary: dict, repeats: int) -> str:
    lines = [f"### {job_name} ({repeats} interleaved repeats; median [min-max]; x = ratio of medians to {REFERENCE})",
             "",
             "| system | " + " | ".join(f"{title} | x" for _, title, _ in FIGURES) + " |",
             "|---|" + "---:|---:|" * len(FIGURES)]
    for system, figs in summary.items():
        cells = []
        for key, _, fmt in FIGURES:
            f = figs.get(key)
            if not f:
                cells += ["-", "-"]
                continue
            text = fmt.format(f["median"])
            if f["n"] > 1:
                text += " [" + fmt.format(f["min"]) + "-" + fmt.format(f["max"]) + "]"
            r = None if key in NO_RATIO else ratio(summary, system, key)
            cells += [text, f"{r:.2f}" if r is not None else "-"]
        failed = figs["runs"] - figs["runs_ok"]
        label = system + (f" ({failed} failed)" if failed else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(summary: dict, system: str = "finetui") -> list[dict]:
    out = []
    for name, (op, target, ref) in GOALS.items():
        key = name.split("_packing")[0].split("_baseline")[0] if name.startswith("tokens_per_s") else name
        if system not in summary or ref not in summary:
            continue
        r = ratio(summary, system, key, ref)
        if r is None:
            continue
        met = r >= target if op == ">=" else r <= target if op == "<=" else abs(r - 1) <= target
        goal = f"{op} {target}x" if op != "within" else f"within {target:.0%}"
        out.append({"goal": f"{key} vs {ref} {goal}", "ratio": round(r, 3), "met": met})
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="finetui bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small", help="comma list of tiny, small, smollm2")
    p.add_argument("--cutoffs", default="256,1024", help="comma list of cutoff lengths (tokens)")
    p.add_argument("--rows", type=int, default=400, help="alpaca_en_demo records to train on")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per job")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma list of systems (and variants) to run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...",
                   help="an extra finetui system with --set overrides (env.VAR=value sets the environment); "
                        "it runs after the listed systems unless named in --systems")
    p.add_argument("--jobs", help="only these jobs, e.g. tiny:256,small:1024 (default: every model x cutoff)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: WORK/results.json)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    p.add_argument("--models-dir", type=Path, default=None, help="where the bench models are saved")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="folder with LLaMA-Factory's dataset_info.json and alpaca_en_demo.json")
    p.add_argument("--probe-seconds", type=float, default=5.0,
                   help="seconds of float32 GEMMs to measure the matmul peak, before and after the jobs (0: skip)")
    p.add_argument("--peer-script", type=Path, default=PEER_SCRIPT)
    p.add_argument("--peer-venv", type=Path, default=Path(os.environ.get("PEER_VENV", "/tmp/peer-llamafactory")))
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--max-load", type=float, default=None,
                   help="before each run wait (up to 2 min) until the 1-minute load average is below this")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def wait_for_quiet(max_load: float | None) -> None:
    if max_load is None:
        return
    deadline = time.time() + 120
    while load_average() > max_load and time.time() < deadline:
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = {name: (sets, env) for name, sets, env in map(parse_variant, args.variant)}
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems += [v for v in variants if v not in systems]
    unknown = [s for s in systems if s not in DEFAULT_SYSTEMS and s not in variants]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}: use {', '.join(DEFAULT_SYSTEMS)} or --variant")
    if any(s.startswith("llamafactory") for s in systems) and not args.peer_script.exists():
        raise SystemExit(f"peer script not found: {args.peer_script} (--peer-script)")
    if not (args.data_dir / "dataset_info.json").exists():
        raise SystemExit(f"data not found: {args.data_dir}/dataset_info.json (--data-dir; "
                         "by default tests/data/datasets/llamafactory in the repository)")
    pairs = [(m.strip(), int(c)) for m in args.models.split(",") for c in args.cutoffs.split(",")]
    if args.jobs:
        pairs = [(j.split(":")[0], int(j.split(":")[1])) for j in args.jobs.split(",")]
    plan = [f"{m} cutoff {c}: " + " ".join(systems) + f" x{args.repeats}" for m, c in pairs]
    if args.dry_run:
        print("\n".join(plan))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="finetui-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out_path = args.out or work / "results.json"
    if any(s.startswith("llamafactory") for s in systems):
        ensure_peer(args)  # before anything runs the peer's python
    probes = [p for p in [matmul_peak(args.probe_seconds)] if p]
    if probes:
        log(f"bench: matmul peak {probes[0]['best_gflops']:.1f} GFLOP/s (float32 {probes[0]['best_shape']}, "
            f"{probes[0]['threads']} threads)")
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": {"finetui": versions(sys.executable),
                     "peer": versions(str(peer_python(args))) if peer_python(args).exists() else {}},
        "job": dict(JOB, rows=args.rows, dataset=DATASET, template="chatml", target="all-linear"),
        "argv": sys.argv[1:] if argv is None else argv,
        "jobs": {},
    }
    log(f"bench: work folder {work}; " + "; ".join(plan))
    began = time.time()
    for model, cutoff in pairs:
        job = Job(model, bench_models.ensure(model, args.models_dir), cutoff, args.rows, work, args.data_dir)
        counts = bench_models.flop_params(job.model_dir, JOB["lora_r"])
        runs: list[dict] = []
        for rep in range(args.repeats):
            for system in systems:
                tag = f"{system}-{rep}"
                wait_for_quiet(args.max_load)
                load = load_average()
                log(f"[{time.time() - began:6.0f}s] {job.name} {tag} (load {load:.2f}) ...")
                if system == "finetui":
                    r = run_finetui(job, tag, [], {}, args)
                elif system in variants:
                    sets, env = variants[system]
                    r = run_finetui(job, tag, sets, env, args)
                elif system == "llamafactory":
                    r = run_llamafactory(job, tag, False, args)
                elif system == "llamafactory-packing":
                    r = run_llamafactory(job, tag, True, args)
                else:
                    r = run_baseline(job, tag, {}, args)
                r.update(system=system, repeat=rep, load_before=round(load, 2), load_after=round(load_average(), 2))
                if r.get("peak_rss_kb"):
                    r["peak_rss_mb"] = round(r["peak_rss_kb"] / 1024, 1)
                add_flops(r, counts, probes[0]["best_gflops"] if probes else None)
                runs.append(r)
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                         if k in ("tokens_per_s", "gflops", "peak_rss_mb", "first_step_s", "train_loss", "wall_s",
                                  "error")}
                log(f"        {shown}")
        summary = summarize(runs)
        results["jobs"][job.name] = {"model": model, "cutoff": cutoff, "rows": args.rows,
                                     "params": bench_models.params(job.model_dir), "flop_params": counts,
                                     "model_dir": str(job.model_dir),
                                     "runs": runs, "summary": summary, "goals": goals(summary)}
        results["matmul_peak"] = {"probes": probes}
        out_path.write_text(json.dumps(results, indent=1))
    probes += [p for p in [matmul_peak(args.probe_seconds)] if p]
    peak = max((p["best_gflops"] for p in probes), default=None)
    results["matmul_peak"] = {"best_gflops": peak, "probes": probes}
    if peak:  # the fraction against the higher of the two probes
        for job in results["jobs"].values():
            for r in job["runs"]:
                if r.get("gflops"):
                    r["peak_fraction"] = r["gflops"] / peak
            job["summary"] = summarize(job["runs"])
    results["total_s"] = round(time.time() - began, 1)
    out_path.write_text(json.dumps(results, indent=1))

    print(f"finetui bench, {results['date']}, {results['machine'].get('cpu', '?')} "
          f"({results['machine'].get('cores')} cores), {args.rows} rows of {DATASET}, "
          f"LoRA r8 all-linear, batch 8, 1 epoch")
    if peak:
        print(f"matmul peak: {peak:,.1f} GFLOP/s (float32 GEMMs, best of "
              + ", ".join(f"{p['best_gflops']:,.1f}" for p in probes) + "; benchmarks/matmul_peak.py)")
    print("GFLOP/s: (4 x body x real tokens + 4 x head x trained tokens + 6 x LoRA x real tokens) / train "
          "runtime; frozen weights skip their weight gradient (bench_models.train_flops)")
    for name, job in results["jobs"].items():
        print()
        c = job["flop_params"]
        print(table(f"{name} ({job['params'] / 1e6:.1f}M params: body {c['body'] / 1e6:.1f}M, head "
                    f"{c['head'] / 1e6:.1f}M, LoRA {c['lora'] / 1e6:.2f}M)", job["summary"], args.repeats))
        for g in job["goals"]:
            print(f"- {'met' if g['met'] else 'NOT met'}: finetui {g['goal']} (x{g['ratio']:.2f})")
    print(f"\nresults: {out_path}  ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
