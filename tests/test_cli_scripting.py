"""The command line in scripts (issue 23, item 5), with real subprocess calls of the CLI:
chat --prompt prints only the answer, --json failures have one shape, shell completion,
NO_COLOR, --version, --runs-dir after the command, help for every option, runs show dates
and checkpoints on disk, `runs list | head -1` ends quietly, runs kill marks the run killed,
and `finetui train` prints a bounded number of lines."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from finetui.engine import cli, runs
from finetui.engine.json_errors import KINDS
from test_dashboard_helpers import synthetic_run
from cli_helpers import cli_env, finetui
from train_helpers import file_events, of_type, write_config

REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b"
DATE = re.compile(r"^(started|ended) +\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}$")


def _json_failure(proc: subprocess.CompletedProcess) -> dict:
    """stdout is exactly one JSON object of engine.json_errors' shape."""
    assert proc.returncode != 0, proc.stdout
    obj = json.loads(proc.stdout)
    assert set(obj) == {"ok", "error"} and obj["ok"] is False, obj
    assert set(obj["error"]) == {"kind", "message", "where"}, obj
    assert obj["error"]["kind"] in KINDS and obj["error"]["message"], obj
    return obj["error"]


# --------------------------------------------------------------------------- chat


def test_chat_prompt_prints_only_the_answer(tmp_path, finetui_cache):
    plain = finetui("chat", "tiny", "--prompt", "hi", "--max-new-tokens", "8", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    as_json = finetui("chat", "tiny", "--prompt", "hi", "--max-new-tokens", "8", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is True and answer["prompt"] == "hi" and answer["text"]
    # greedy both times: the same answer, and nothing else on stdout (no "> hi" echo)
    assert plain.stdout == answer["text"] + "\n", (plain.stdout, answer["text"])


# --------------------------------------------------------------------------- --json


def test_json_failures_have_one_shape(tmp_path):
    missing = tmp_path / "missing.jsonl"
    error = _json_failure(finetui("data", "inspect", str(missing), "--json", cwd=tmp_path))
    assert error["kind"] == "data" and error["where"] == str(missing) and str(missing) in error["message"]

    for argv in (("runs", "show", "nope", "--json"), ("runs", "export", "nope", "--json"),
                 ("eval", "nope", "--json")):
        proc = finetui(*argv, cwd=tmp_path)
        error = _json_failure(proc)
        assert error["kind"] == "run" and "nope" in error["message"], argv
        assert proc.stderr.startswith("finetui: "), proc.stderr  # people still get the line on stderr

    usage = finetui("runs", "show", "--json", "--bogus", cwd=tmp_path)
    assert usage.returncode == 2 and _json_failure(usage)["kind"] == "usage"
    assert "--bogus" in _json_failure(usage)["message"]
    # without --json a usage error stays argparse's text, stdout empty
    text = finetui("runs", "show", "--bogus", cwd=tmp_path)
    assert text.returncode == 2 and text.stdout == "" and "unrecognized arguments: --bogus" in text.stderr


def test_chat_json_failure_shape(tmp_path):
    error = _json_failure(finetui("chat", str(tmp_path / "no-model"), "--prompt", "hi", "--json", cwd=tmp_path))
    assert error["kind"] == "model", error


# --------------------------------------------------------------------------- completion, version, globals


def test_completion_scripts(tmp_path):
    bash = finetui("completion", "bash", cwd=tmp_path)
    assert bash.returncode == 0, bash.stderr
    check = subprocess.run(["bash", "-n"], input=bash.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for name in ("train", "data", "runs", "merge", "export", "chat", "eval", "completion"):
        assert re.search(rf"\b{name}\b", bash.stdout), name
    assert "--runs-dir" in bash.stdout and "kill" in bash.stdout  # options and the runs actions
    # sourced in bash, it registers a completion for finetui
    sourced = subprocess.run(["bash", "-c", f"source /dev/stdin; complete -p finetui"], input=bash.stdout,
                             capture_output=True, text=True)
    assert sourced.returncode == 0 and "finetui" in sourced.stdout, sourced.stderr
    zsh = finetui("completion", "zsh", cwd=tmp_path)
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef finetui"), zsh.stdout[:200]
    assert all(name in zsh.stdout for name in ("train", "runs", "chat", "completion"))
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=zsh.stdout, text=True).returncode == 0
    bad = finetui("completion", "fish", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_version_from_package_metadata(tmp_path):
    proc = finetui("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"finetui {metadata.version('finetui')}"


def test_runs_dir_is_accepted_after_the_command(tmp_path):
    root = tmp_path / "elsewhere"
    run_dir = synthetic_run(root, name="far", steps=4, every=2)
    for argv in (("--runs-dir", str(root), "runs", "list", "--json"),
                 ("runs", "list", "--json", "--runs-dir", str(root)),
                 ("runs", "list", f"--runs-dir={root}", "--json")):
        proc = finetui(*argv, cwd=tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert [r["id"] for r in json.loads(proc.stdout)] == [run_dir.name], argv
    proc = finetui("runs", "show", run_dir.name, "--runs-dir", str(root), cwd=tmp_path)
    assert proc.returncode == 0 and run_dir.name in proc.stdout, proc.stderr


# --------------------------------------------------------------------------- help


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("finetui",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_has_help_with_its_allowed_values():
    missing = []
    for path, parser in _parsers(cli.build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
            for choice in action.choices or ():
                if not isinstance(action, argparse._SubParsersAction):
                    assert str(choice) in text, (path, action.dest, choice)
    assert not missing, missing


def test_runs_help_describes_each_action(tmp_path):
    proc = finetui("runs", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for action in ("list", "show", "attach", "stop", "kill", "export"):
        line = next((ln for ln in proc.stdout.splitlines() if re.match(rf"^  {action}\b", ln)), None)
        assert line is not None and len(line.split()) > 3, (action, proc.stdout)
    assert "SIGKILL" in proc.stdout and "killed" in proc.stdout


# --------------------------------------------------------------------------- NO_COLOR


def _stdout_on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run the CLI with stdout on a pseudo-terminal (stderr to a pipe); what it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", *argv], cwd=cwd, env=env, stdout=slave,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    proc.communicate(timeout=300)
    assert proc.returncode == 0, proc.returncode
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_no_color_means_no_escape_sequences(tmp_path):
    argv = ["data", "inspect", "sample:finetui_faq", "--num-proc", "1"]
    coloured = _stdout_on_a_terminal(argv, {**cli_env(), "TERM": "xterm-256color"}, tmp_path)
    assert ESC in coloured and "source" in coloured  # styled on a terminal...
    env = {**cli_env(), "TERM": "xterm-256color", "NO_COLOR": "1"}
    plain = _stdout_on_a_terminal(argv, env, tmp_path)
    assert ESC not in plain and "source" in plain  # ...and not at all under NO_COLOR


def test_every_console_honours_no_color():
    """Each rich Console the engine builds comes from engine.console (NO_COLOR: no styles)."""
    direct = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "engine").rglob("*.py"))
              if path.name != "console.py"
              for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"\bConsole\(", line)]
    assert not direct, direct
    from io import StringIO

    from finetui.engine.console import console

    out = StringIO()
    os.environ["NO_COLOR"] = "1"
    try:
        console(file=out, force_terminal=True).print("[bold red]x[/]")
    finally:
        del os.environ["NO_COLOR"]
    assert out.getvalue() == "x\n"
    out = StringIO()
    console(file=out, force_terminal=True, color_system="standard").print("[bold red]x[/]")
    assert ESC in out.getvalue()


# --------------------------------------------------------------------------- runs show / list


def test_runs_show_prints_dates_and_checkpoints_on_disk(tmp_path):
    root = tmp_path / "runs"
    run_dir = synthetic_run(root, name="dated", steps=6, every=2)
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-2")  # as save_total_limit does
    proc = finetui("runs", "show", run_dir.name, "--runs-dir", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    dates = [ln for ln in lines if ln.startswith(("started", "ended"))]
    assert len(dates) == 2 and all(DATE.match(ln) for ln in dates), dates
    assert not re.search(r"\b1\d{9}\.\d+", proc.stdout), proc.stdout  # no epoch seconds
    shown = [ln.split(None, 1)[1] for ln in lines if ln.startswith("checkpoint ")]
    assert [Path(p).name for p in shown] == ["checkpoint-4", "checkpoint-6"], proc.stdout
    as_json = json.loads(finetui("runs", "show", run_dir.name, "--json", "--runs-dir", str(root),
                                 cwd=tmp_path).stdout)
    assert [Path(p).name for p in as_json["checkpoints"]] == ["checkpoint-4", "checkpoint-6"]


@pytest.mark.parametrize("json_flag", [False, True], ids=["table", "json"])
def test_runs_list_into_head_ends_quietly(tmp_path, json_flag):
    """Far more output than a pipe holds, read by `head -1`: no traceback, no message."""
    root = tmp_path / "runs"
    first = synthetic_run(root, name="a", steps=2, every=2)
    config = (first / "config.yaml").read_text()
    for i in range(900):
        folder = root / f"20260101-000000-run{i:04d}-{'x' * 40}"
        folder.mkdir()
        (folder / "config.yaml").write_text(config)
    command = f"{sys.executable} -m finetui.engine.cli runs list {'--json' if json_flag else ''} | head -1"
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=tmp_path, capture_output=True,
                          text=True, env=cli_env(FINETUI_RUNS_DIR=str(root)), timeout=300)
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.strip()
    assert proc.returncode == 141  # the CLI's status: ended by the closed pipe, quietly


# --------------------------------------------------------------------------- kill


@pytest.mark.slow
def test_runs_kill_marks_the_run_killed(tmp_path, finetui_cache):
    """A run followed by `finetui train` in the foreground, killed from another shell: the
    run is killed (not failed) in runs show/list, and the foreground CLI says so."""
    path = write_config(tmp_path, name="victim", train={"max_steps": 100000, "eval_strategy": "no",
                                                        "save_strategy": "no"})
    follower = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "train", str(path)], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = tmp_path / "runs" / follower.stdout.readline().strip()
        deadline = time.time() + 180
        while not of_type(file_events(run_dir), "step"):
            assert time.time() < deadline and follower.poll() is None, "no step"
            time.sleep(0.2)
        proc = finetui("runs", "kill", run_dir.name, cwd=tmp_path)
        assert proc.returncode == 0 and f"killed: {run_dir.name}" in proc.stdout, proc.stderr
        assert not runs.trainer_alive(run_dir)
        assert [e["status"] for e in of_type(file_events(run_dir), "finished")] == ["killed"]
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 1 and f"run {run_dir.name} was killed (finetui runs kill)" in err, err
        assert "out-of-memory" not in err
        info = json.loads(finetui("runs", "show", run_dir.name, "--json", cwd=tmp_path).stdout)
        assert info["status"] == "killed", info
        listed = finetui("runs", "list", cwd=tmp_path)
        assert re.search(rf"^{run_dir.name}\s+killed\b", listed.stdout, re.M), listed.stdout
        again = finetui("runs", "kill", run_dir.name, cwd=tmp_path)
        assert again.returncode == 1 and "has finished (killed)" in again.stderr
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.communicate()
        if "run_dir" in locals() and runs.trainer_alive(run_dir):
            runs.stop(run_dir, kill=True)


# --------------------------------------------------------------------------- train output


def test_step_lines_off_a_terminal():
    from finetui.engine.launcher import StepLines

    now = [0.0]
    lines = StepLines(clock=lambda: now[0])
    shown = [s for s in range(1, 481) if lines.wants({"step": s, "total_steps": 480})]
    assert shown == [1, *range(48, 481, 48)]
    slow = StepLines(clock=lambda: now[0])
    picked = []
    for s in range(1, 1001):
        now[0] = s * 0.5  # a step every 0.5 s: a line at least every 10 s
        if slow.wants({"step": s, "total_steps": 100000}):
            picked.append(s)
    assert picked[:3] == [1, 21, 41] and len(picked) == 50
    every = StepLines(every=1)
    assert all(every.wants({"step": s, "total_steps": 5}) for s in range(1, 6))


@pytest.mark.slow
def test_train_output_is_bounded_off_a_terminal(tmp_path, finetui_cache):
    path = write_config(tmp_path, train={"max_steps": 100, "eval_strategy": "steps", "eval_steps": 50,
                                         "save_strategy": "no", "logging_steps": 1})
    proc = finetui("train", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert steps[0].startswith("step 1/100") and steps[-1].startswith("step 100/100"), steps
    assert 2 <= len(steps) <= 15, steps
    assert len(lines) <= 40, lines
    assert sum(ln.startswith("eval ") for ln in lines) == 2  # evals are always shown
    assert lines[-1].startswith("finished: completed")

    verbose = finetui("train", str(path), "--set", "train.max_steps=12", "--set", "train.eval_strategy=no",
                      "--verbose", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert [ln.split()[1] for ln in verbose.stdout.splitlines() if ln.startswith("step ")] == \
        [f"{s}/12" for s in range(1, 13)]


@pytest.mark.slow
def test_train_on_a_terminal_shows_one_progress_line(tmp_path, finetui_cache):
    path = write_config(tmp_path, train={"max_steps": 30, "eval_strategy": "no", "save_strategy": "no",
                                         "logging_steps": 1})
    out = _stdout_on_a_terminal(["train", str(path)], {**cli_env(), "TERM": "xterm", "COLUMNS": "120"}, tmp_path)
    assert "30/30" in out and " lr " in out and "tok/s" in out and "eta" in out
    newline_ended = [ln for ln in re.split(r"\r?\n", out) if "/30" in ln and "loss" in ln]
    # the bar is redrawn in place: its states share a line or two, never one line per step
    assert len(newline_ended) <= 3, newline_ended
    assert "finished: completed" in out
