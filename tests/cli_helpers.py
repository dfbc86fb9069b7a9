"""Helpers for the tests that run the ``finetui`` command line in a subprocess
(``python -m finetui.engine.cli``), as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "finetui.engine.cli"]

# what the test process may hold that a user's shell would not: its own runs folder, fake GPU
# readings; a CLI started by a test reads neither
NOT_PASSED_ON = ("FINETUI_RUNS_DIR", "FINETUI_FAKE_GPUS")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this process's, with ``extra``, less
    :data:`NOT_PASSED_ON`."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    for name in NOT_PASSED_ON:
        env.pop(name, None)
    return env


def finetui(*argv: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``finetui ARGV...`` run to its end in ``cwd`` (the repository unless told), ``env`` added to
    :func:`cli_env`, its output captured as text."""
    return subprocess.run([*CLI, *argv], cwd=cwd, env=cli_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def inspect_runner(tiny_model_dir: Path):
    """A function that runs ``finetui data inspect ARGS...`` from the repository, offline, with
    the session's tiny model in its cache (nothing else is written by inspect)."""
    env = dict(os.environ, FINETUI_CACHE=str(Path(tiny_model_dir).parent), HF_HUB_OFFLINE="1")
    env.pop("FINETUI_DEBUG", None)

    def call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "data", "inspect", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)

    return call
