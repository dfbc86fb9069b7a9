"""Starting finetui's own worker processes (trainer, chat, eval, render, export, data create)
the same way: one place.

Light module (standard library): the UI imports it.

- ``child_env(extra)``: this process's environment plus ``extra``, with ``PYTHONUNBUFFERED=1``
  (the parent reads their lines as they come) and ``PYTHONSAFEPATH=1``: the workers are
  ``python -m finetui.engine...`` modules of the installed package, and ``-m`` would otherwise
  put the working folder first on ``sys.path``, where a checkout's ``finetui/`` (or a user's
  ``torch.py`` beside their data) would shadow what is installed;
- ``start(command, ...)``: ``subprocess.Popen`` with that environment, stdin closed unless
  asked, stdout and stderr piped unless redirected, in a new session (process group), so
  ctrl+c in the terminal goes to the UI or the CLI, and a stop signals the worker's own group.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Mapping, Sequence



def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONSAFEPATH"] = "1"
    return env


def start(command: Sequence[str], *, env: Mapping[str, str] | None = None, full_env: Mapping[str, str] | None = None,
          stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
          **popen: Any) -> subprocess.Popen:
    """``command`` started with ``child_env(env)`` (or ``full_env``, a ``child_env`` the caller
    changed further) in its own session; ``popen``: the rest of Popen's arguments (cwd, text,
    encoding, bufsize, pass_fds ...)."""
    return subprocess.Popen(list(command), stdin=stdin, stdout=stdout, stderr=stderr,
                            env=dict(full_env) if full_env is not None else child_env(env),
                            start_new_session=True, **popen)
