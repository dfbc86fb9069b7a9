"""`finetui train CONFIG [--set key=value ...] [--detach] [--resume RUN_ID [--checkpoint STEP]] [--nproc N] [--name NAME] [--allow-drops] [--force] [--verbose | --log-steps N]`.

Several nodes: ``--nnodes N --node-rank R --rdzv HOST:PORT [--rdzv-id ID]`` on each node
(torchrun's c10d rendezvous; :func:`multinode_run`).

Light module (no torch): validates the config, checks the model and the data are there and
fit (engine.startcheck: ``data.max_length`` within the model's context, the memory estimate
within the free RAM/VRAM, unless ``--force``), checks the data (engine.data.dropcheck: when
more than ``data.max_drop_fraction`` of the records would be dropped it stops and says how
many and why, unless ``--allow-drops``), and only then creates the run folder, starts the trainer
(``engine.runs.launch``: its own session, so it outlives this command) and follows its
event pipe: on a terminal one progress line (a bar with step, loss, lr, tokens/s and ETA)
with evals, checkpoints, logs and errors above it; otherwise plain lines, a step line at the
first and last step and every 10% of the run or 10 s (``--log-steps N``: every N steps;
``--verbose``: every step, on a terminal too).

stdout's first line is the run id, so scripts can ``ID=$(finetui train --detach c.yaml)``.
Exit status: 0 completed or stopped, 1 failed (the error event's message and hint on
stderr), 2 an invalid config (one line per problem, naming the key) or data that would lose
too many records, or a run beyond the model's context or the free memory. Ctrl-C detaches:
the run goes on. A trainer that dies by a signal is named: SIGKILL is "killed (SIGKILL) —
often the out-of-memory killer", with what to lower (engine.errors.exit_problem).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs
from finetui.engine.events import event_lines
from finetui.engine.units import format_duration
from finetui.engine.visible import visible

CUDA_ONLY_OPTIMIZERS = ("paged_adamw_32bit", "adamw_8bit")


def _no_gpu_visible() -> bool:
    """NVML says no NVIDIA GPU (cheap; no torch). Unknown counts as "maybe a GPU"."""
    from finetui.engine.hardware import NvmlBackend

    backend = NvmlBackend()
    return not backend.read() and backend.problem is not None


def preflight(config: cfg.Config) -> None:
    """Problems we can see before starting a process that takes seconds to import torch."""
    if config.train.optimizer in CUDA_ONLY_OPTIMIZERS and config.model.device != "cuda" and _no_gpu_visible():
        raise cfg.ConfigError([
            f"train.optimizer: {config.train.optimizer} needs a CUDA GPU (bitsandbytes' paged and 8-bit "
            "optimizers) and none is visible; use adamw_torch on the CPU"
        ])
    if config.model.device == "cuda" and _no_gpu_visible():
        raise cfg.ConfigError(["model.device: cuda was asked for but no CUDA GPU is visible (use auto or cpu)"])


def check_drops(config: cfg.Config) -> None:
    """Stop (ConfigError) when the data would lose more than data.max_drop_fraction of its
    records: how many, the top reasons with file:line, how to go on. Reads and normalises
    the records (no tokenizer)."""
    from finetui.engine.data import dropcheck

    lines = dropcheck.refusal(config.data)
    if lines:
        raise cfg.ConfigError([*lines, f"hint: {dropcheck.START_ANYWAY}"])


def check_start(config: cfg.Config, args) -> None:
    """The model and the data are there (else the trainer would fail at once, leaving a
    failed run behind), and the run fits the model's context and the free memory unless
    --force (engine.startcheck). Raises ConfigError, one line per problem."""
    from finetui.engine import startcheck

    problems = startcheck.package_problems(config)
    problems += [p for p in [startcheck.model_problem(config)] if p] + startcheck.data_problems(config)
    if problems:
        raise cfg.ConfigError(problems)
    if getattr(args, "force", False):
        return
    over = startcheck.limits(config, nproc=max(1, getattr(args, "nproc", 1) or 1))
    if over:
        raise cfg.ConfigError([*over, f"hint: {startcheck.FORCE_HINT}"])


def _prepare_model(config: cfg.Config) -> None:
    """A built-in not fetched yet or a GGUF file not converted yet is done here, in the
    foreground, where its progress shows, rather than inside the trainer (whose stderr goes
    to stdout.log). engine.gguf (torch, transformers) is imported only when there is work."""
    from finetui.engine import model_catalog

    name = config.model.name_or_path
    if not (model_catalog.builtin(name) or model_catalog.is_gguf(name) or config.model.gguf_file):
        return
    from finetui.engine import gguf

    if gguf.needs_preparing(config.model):
        gguf.prepare(config.model)


def prepare_run(args) -> tuple[Path, bool]:
    """A new run folder from CONFIG (+ --set), or the run to resume. Returns (run_dir, resume)."""
    if args.resume:
        if args.config:
            raise cfg.ConfigError([f"finetui train: --resume continues {args.resume} with its own config.yaml; "
                                   "drop CONFIG (change settings with --set)"])
        run_dir = runs.resolve(args.resume)
        runs.check_free(run_dir)  # a trainer holds the run: it names the run and its pid
        if runs.trainer_alive(run_dir):
            raise runs.RunError(f"run {run_dir.name} is still running (`finetui runs attach {run_dir.name}`)")
        # A completed run goes on only when asked: --force, or a checkpoint picked by hand.
        forced = getattr(args, "force", False) or getattr(args, "checkpoint", None) is not None
        refusal = None if forced else runs.completed_refusal(run_dir)
        if refusal:
            raise runs.RunError(refusal)
        config = cfg.load(run_dir / "config.yaml", args.overrides)  # still valid?
        check_start(config, args)
        if args.overrides:  # e.g. more steps: config.yaml keeps saying exactly what ran
            cfg.save(config, run_dir / "config.yaml")
        step = getattr(args, "checkpoint", None)
        if step is not None:
            path = run_dir / "checkpoints" / f"checkpoint-{step}"
            if not path.is_dir():
                have = ", ".join(p.name.split("-")[-1] for p in runs.checkpoints(run_dir)) or "none"
                raise cfg.ConfigError([f"--checkpoint {step}: run {run_dir.name} has no checkpoint-{step} "
                                       f"(checkpoints: {have})"])
        elif runs.last_checkpoint(run_dir) is None:
            print(f"finetui: run {run_dir.name} has no complete checkpoint: it starts again at step 0",
                  file=sys.stderr)
        return run_dir, True
    if getattr(args, "checkpoint", None) is not None:
        raise cfg.ConfigError(["finetui train: --checkpoint STEP goes with --resume RUN_ID"])
    if not args.config:
        raise cfg.ConfigError(["finetui train: give a CONFIG.yaml (see sample_data/quickstart.yaml) "
                               "or --resume RUN_ID"])
    config = cfg.load(args.config, args.overrides)
    preflight(config)
    check_start(config, args)
    if not getattr(args, "allow_drops", False):
        check_drops(config)
    _prepare_model(config)
    name = getattr(args, "name", None) or config.output.run_name or Path(args.config).stem
    return runs.new_run(config, name=name), False


def _runs_root(config: cfg.Config) -> Path:
    """Where runs.new_run would put the run: --runs-dir / $FINETUI_RUNS_DIR, else output.runs_dir."""
    import os

    return runs.runs_dir(os.environ.get("FINETUI_RUNS_DIR") or config.output.runs_dir)


def per_gpu_line(run_dir: Path, world_size: int, nnodes: int = 1) -> str:
    """One process's memory under the run's distributed.strategy (engine.footprint.per_device)."""
    from finetui.engine import footprint
    from finetui.engine.units import format_bytes

    try:
        config = cfg.load(run_dir / "config.yaml")
        share = footprint.for_config(footprint.estimate(config), config, world_size, nnodes)
    except (footprint.FootprintError, cfg.ConfigError, OSError, ValueError) as exc:
        return f"memory per process: no estimate ({exc})"
    offload = f", {format_bytes(share.offloaded_bytes)} offloaded to CPU" if share.offloaded_bytes else ""
    return (f"memory per process ({share.strategy}, {world_size} processes): about "
            f"{format_bytes(share.total_bytes)}{offload}")


NODE_WAIT_S = 600.0  # how long another node waits for node 0 to create the run folder


def multinode_run(args) -> tuple[Path, bool, list[str]]:
    """``--nnodes N --node-rank R --rdzv HOST:PORT [--rdzv-id ID]``: the run folder every
    node uses, whether it resumes, and torchrun's arguments. The folder is
    ``RUNS_DIR/<name>-<ID>`` (or the --resume run), on storage every node sees: node 0 checks
    the config and creates it; the other nodes wait for its config.yaml."""
    from finetui.engine import distributed

    nnodes, node_rank = args.nnodes, args.node_rank
    if not 0 <= node_rank < nnodes:
        raise cfg.ConfigError([f"--node-rank {node_rank}: expected 0 to {nnodes - 1} (--nnodes {nnodes})"])
    rdzv_id = getattr(args, "rdzv_id", None) or "finetui"
    try:
        torchrun = distributed.torchrun_arguments(max(1, args.nproc or 1), nnodes, node_rank, args.rdzv, rdzv_id)
    except ValueError as exc:
        raise cfg.ConfigError([str(exc)]) from None
    if node_rank == 0:
        if args.resume:
            run_dir, resume = prepare_run(args)
            return run_dir, resume, torchrun
        if not args.config:
            raise cfg.ConfigError(["finetui train: give a CONFIG.yaml or --resume RUN_ID"])
        config = cfg.load(args.config, args.overrides)
        preflight(config)
        check_start(config, args)
        _prepare_model(config)
        name = getattr(args, "name", None) or config.output.run_name or Path(args.config).stem
        run_dir = _runs_root(config) / runs.folder_name(f"{name}-{rdzv_id}")
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            raise cfg.ConfigError([f"run folder {run_dir} exists: give each multi-node job its own --rdzv-id "
                                   "(e.g. the scheduler's job id), or --resume it"]) from None
        cfg.save(config, run_dir / "config.yaml")
        return run_dir, False, torchrun
    if args.resume:
        run_dir = runs.resolve(args.resume)
    else:
        if not args.config:
            raise cfg.ConfigError(["finetui train: give the same CONFIG.yaml as node 0, or --resume RUN_ID"])
        config = cfg.load(args.config, args.overrides)
        name = getattr(args, "name", None) or config.output.run_name or Path(args.config).stem
        run_dir = _runs_root(config) / runs.folder_name(f"{name}-{rdzv_id}")
    deadline = time.monotonic() + NODE_WAIT_S
    while not (run_dir / "config.yaml").exists():
        if time.monotonic() > deadline:
            raise cfg.ConfigError([f"node {node_rank}: node 0 did not create {run_dir} within {NODE_WAIT_S:.0f} s; "
                                   "is the runs folder on storage both nodes see (--runs-dir)?"])
        time.sleep(0.2)
    return run_dir, bool(args.resume), torchrun


def command(args) -> int:
    nnodes = max(1, getattr(args, "nnodes", 1) or 1)
    torchrun = None
    try:
        if nnodes > 1:
            run_dir, resume, torchrun = multinode_run(args)
        else:
            run_dir, resume = prepare_run(args)
    except cfg.ConfigError as exc:
        for problem in exc.problems:
            print(visible(problem), file=sys.stderr)
        return 2
    node_rank = getattr(args, "node_rank", 0) if torchrun else 0
    world_size = nnodes * max(1, getattr(args, "nproc", 1) or 1)
    if world_size > 1 and node_rank == 0:
        print(per_gpu_line(run_dir, world_size, nnodes), file=sys.stderr)
    try:
        proc = runs.launch(run_dir, resume=resume, nproc=max(1, getattr(args, "nproc", 1) or 1),
                           checkpoint=getattr(args, "checkpoint", None), torchrun=torchrun, node_rank=node_rank)
    except runs.RunBusy as exc:
        print(f"finetui: {exc}", file=sys.stderr)
        return 1
    print(run_dir.name, flush=True)
    if node_rank > 0:  # node 0 speaks for the run; this node's ranks write events.rank<R>.jsonl
        proc.stdout.close()
        print(f"node {node_rank}: training with node 0 ({args.rdzv}); its log: "
              f"{run_dir / f'stdout.node{node_rank}.log'}", file=sys.stderr)
        code = proc.wait()
        if code != 0:
            print(f"finetui: node {node_rank}'s torchrun exited with status {code}", file=sys.stderr)
        return 0 if code == 0 else 1
    if args.detach:
        proc.stdout.close()  # the trainer notices nothing: it keeps writing events.jsonl
        print(f"detached: follow with `finetui runs attach {run_dir.name}`, "
              f"stop with `finetui runs stop {run_dir.name}`", file=sys.stderr)
        return 0
    seen_errors: list[dict[str, Any]] = []
    try:
        verbose, log_steps = bool(getattr(args, "verbose", False)), getattr(args, "log_steps", None)
        finished = follow(proc.stdout, fancy=sys.stdout.isatty() and not verbose and log_steps is None,
                          errors=seen_errors, events_path=run_dir / "events.jsonl",
                          every=1 if verbose else log_steps)
    except KeyboardInterrupt:
        print(f"\ndetached; the run continues — `finetui runs attach {run_dir.name}`", file=sys.stderr)
        return 0
    finally:
        proc.stdout.close()
    code = proc.wait()
    return report_end(run_dir, finished, code, seen_errors[-1] if seen_errors else None)


def report_end(run_dir: Path, finished: dict[str, Any] | None, code: int,
               piped_error: dict[str, Any] | None = None) -> int:
    """Exit status from the finished event; the error's message and hint on stderr (the
    one the pipe carried, which reaches us even when the disk had no room for it)."""
    error = piped_error or next(
        (e for e in reversed(ev.read_file(run_dir / "events.jsonl")) if e.get("type") == "error"), None)
    if finished is None and code == -9:
        finished = _killed_event(run_dir)  # `finetui runs kill` writes it once the trainer is gone
    if finished is None:
        from finetui.engine import errors

        killed = errors.exit_problem(code, run_dir.name)
        if killed is not None:
            print(f"finetui: trainer {killed[0]}; see {run_dir / 'stdout.log'}", file=sys.stderr)
            print(f"hint: {killed[1]}", file=sys.stderr)
        else:
            print(f"finetui: trainer exited with status {code} without a finished event; "
                  f"see {run_dir / 'stdout.log'}", file=sys.stderr)
        if piped_error is not None:
            _print_error(piped_error)
        return 1
    status = finished.get("status")
    if status in ("completed", "stopped"):
        return 0
    if status == "killed":
        print(f"finetui: run {run_dir.name} was killed (finetui runs kill); continue it with "
              f"`finetui train --resume {run_dir.name}`", file=sys.stderr)
        return 1
    if error is not None:
        _print_error(error)
    else:
        print(f"finetui: run failed; see {run_dir / 'stdout.log'}", file=sys.stderr)
    return 1


def _killed_event(run_dir: Path, wait_s: float = 2.0) -> dict[str, Any] | None:
    """The finished event with status killed, when it is (or within ``wait_s`` becomes) the
    run's last event: the trainer was ended by ``finetui runs kill``, not by the system."""
    deadline = time.monotonic() + wait_s
    while True:
        last = runs.last_finished(run_dir)
        if last is not None and last.get("status") == "killed":
            return last
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _print_error(error: dict[str, Any]) -> None:
    print(visible(f"finetui: {error.get('kind')} error: {error.get('message')}"), file=sys.stderr)
    if error.get("hint"):
        print(visible(f"hint: {error['hint']}"), file=sys.stderr)


# --------------------------------------------------------------------------- following


STEP_LINES = 10  # off a terminal, by default: a step line every 1/STEP_LINES of the run...
STEP_LINE_S = 10.0  # ...or when this long has passed since the last one


class StepLines:
    """Which step events get a line off a terminal: the first and the last, then every
    ``every`` steps when given (1: all), else every 1/STEP_LINES of the run or
    STEP_LINE_S seconds since the last line, whichever comes first."""

    def __init__(self, every: int | None = None, clock=time.monotonic):
        self.every, self.clock = every, clock
        self.last_at: float | None = None
        self.last_step: int | None = None

    def wants(self, event: dict[str, Any]) -> bool:
        step, total = event.get("step"), event.get("total_steps")
        if not isinstance(step, int):
            return False
        now = self.clock()
        if self.every is not None:
            due = step % self.every == 0
        else:
            stride = max(1, total // STEP_LINES) if isinstance(total, int) and total > 0 else None
            due = (stride is not None and step % stride == 0) or \
                  (self.last_at is not None and now - self.last_at >= STEP_LINE_S)
        due = due or self.last_step is None or step == total
        if due:
            self.last_at, self.last_step = now, step
        return due


def follow(pipe: IO[bytes], fancy: bool = False, out: IO[str] | None = None,
           errors: list[dict[str, Any]] | None = None, events_path: Path | None = None,
           every: int | None = None) -> dict[str, Any] | None:
    """Print the events arriving on the trainer's pipe until it closes. Returns the
    ``finished`` event (None if the trainer died without one); ``error`` events are also
    appended to ``errors``. Events the pipe dropped while we were not reading (this
    process suspended: the trainer never waits for us) are read from ``events_path``.
    Off a terminal, step events get a line as :class:`StepLines` decides (``every``: 1
    for all of them); every other event always gets its lines."""
    out = out or sys.stdout
    if fancy:
        return _follow_progress(pipe, errors, events_path)
    steps = StepLines(every)
    finished = None
    for event in ev.pipe_events(pipe, events_path):
        if event.get("type") == "error" and errors is not None:
            errors.append(event)
        if event.get("type") == "step" and not steps.wants(event):
            continue
        for line in event_lines(event):
            print(line, file=out, flush=True)
        if event.get("type") == "finished":
            finished = event
    return finished


def _follow_progress(pipe: IO[bytes], errors: list[dict[str, Any]] | None = None,
                     events_path: Path | None = None) -> dict[str, Any] | None:
    """One progress line for steps (a bar, step/total, loss, lr, tokens/s, ETA); other
    events print above it. NO_COLOR: no colours or styles (engine.console)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from finetui.engine.console import console as make_console

    console = make_console()
    progress = Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}  eta {task.fields[eta]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task("train", total=None, loss="-", lr="-", speed="-", eta="-")
    finished = None
    with progress:
        for event in ev.pipe_events(pipe, events_path):
            kind = event.get("type")
            if kind == "error" and errors is not None:
                errors.append(event)
            if kind == "step":
                loss, lr = event.get("loss"), event.get("learning_rate")
                speed = event.get("tokens_per_s")
                eta = event.get("eta_s")
                progress.update(
                    task,
                    completed=event.get("step", 0),
                    total=event.get("total_steps"),
                    loss=f"{loss:.4g}" if isinstance(loss, (int, float)) else "-",
                    lr=f"{lr:.3g}" if isinstance(lr, (int, float)) else "-",
                    speed=f"{speed:,.0f} tok/s" if isinstance(speed, (int, float)) else "-",
                    eta=format_duration(eta),
                )
                continue
            for line in event_lines(event):
                style = "red" if kind == "error" else "dim" if kind in ("log", "checkpoint") else None
                progress.console.print(line, style=style, markup=False, highlight=False)
            if kind == "finished":
                finished = event
    return finished
