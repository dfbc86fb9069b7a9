"""engine/spawn.py: workers start with the same environment, session and pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from finetui.engine import spawn

REPORT = ("import json, os, sys; "
          "print(json.dumps({'sid': os.getsid(0), 'pgid': os.getpgid(0), 'pid': os.getpid(), "
          "'path': os.environ.get('PYTHONPATH'), 'unbuffered': os.environ.get('PYTHONUNBUFFERED'), "
          "'extra': os.environ.get('FINETUI_SPAWN_TEST'), 'stdin': sys.stdin.read()}))")


def test_child_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = spawn.child_env({"A": "1"})
    assert env["A"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"] == "/elsewhere"  # the user's own, untouched: the workers are installed modules
    assert "A" not in os.environ  # the parent's environment is left alone


def test_start_new_session_env_and_pipes():
    proc = spawn.start([sys.executable, "-c", REPORT], env={"FINETUI_SPAWN_TEST": "yes"}, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen["sid"] == seen["pid"] == seen["pgid"] != os.getsid(0)  # its own session and group
    assert seen["path"] == os.environ.get("PYTHONPATH")
    assert seen["unbuffered"] == "1" and seen["extra"] == "yes"
    assert seen["stdin"] == ""  # stdin closed unless asked


def test_start_with_a_full_env_and_stdin_pipe():
    env = spawn.child_env()
    env.pop("PYTHONUNBUFFERED")
    proc = spawn.start([sys.executable, "-c", REPORT], full_env=env, stdin=subprocess.PIPE, text=True)
    out, _ = proc.communicate("hello", timeout=60)
    seen = json.loads(out)
    assert seen["unbuffered"] is None and seen["stdin"] == "hello"


def test_workers_import_the_installed_package_whatever_the_working_folder(tmp_path):
    """``python -m finetui...`` started in a folder that holds its own ``finetui/`` (a source
    checkout under a plain install) or a ``torch.py``: the worker still runs the installed code."""
    (tmp_path / "finetui").mkdir()
    (tmp_path / "finetui" / "__init__.py").write_text("raise SystemExit('the folder shadowed the installed finetui')\n")
    (tmp_path / "torch.py").write_text("raise SystemExit('the folder shadowed torch')\n")
    proc = spawn.start([sys.executable, "-m", "finetui.engine.cli", "--version"], cwd=tmp_path, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("finetui ")
    code = "import importlib.util as u; print(u.find_spec('torch').origin)"
    proc = spawn.start([sys.executable, "-c", code], cwd=tmp_path, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and str(tmp_path) not in out, out + err
