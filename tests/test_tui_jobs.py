"""tui/jobs.py without Textual: a finetui command's subprocess started through
engine.spawn, its stderr read through a pipe or a pseudo-terminal, its JSON result, and the
export dialog's fields and command."""

from __future__ import annotations

import signal
import sys
import time

from finetui.tui import jobs
from finetui.tui.screens.export import export_command, export_problem


def test_a_job_through_a_pipe_sees_no_terminal(tmp_path):
    script = ("import sys; print('[ 51%] merging', file=sys.stderr); "
              "print('tty' if sys.stderr.isatty() else 'pipe', file=sys.stderr); "
              "print('finetui: disk full', file=sys.stderr); print('noise'); print('{\"exported\": \"/x\"}')")
    seen: list[tuple[str, str]] = []
    job = jobs.Job("export", tmp_path, [sys.executable, "-c", script])
    returncode, stdout, problem = jobs.run_job(job, lambda line, kind: seen.append((line, kind)), terminal=False)
    assert (returncode, problem) == (0, None) and jobs.last_json(stdout) == {"exported": "/x"}
    assert seen == [("[ 51%] merging", "stage"), ("pipe", "dim"), ("finetui: disk full", "error")]
    assert job.errors == ["disk full"] and job.fraction == 0.51
    on_tty: list[tuple[str, str]] = []
    jobs.run_job(jobs.Job("eval", tmp_path, [sys.executable, "-c", script]), lambda *a: on_tty.append(a))
    assert ("tty", "dim") in on_tty


def test_last_json_and_a_stopped_job(tmp_path):
    assert jobs.last_json('{"a": 1}\n{"b": 2}\nbye\n') == {"b": 2}
    assert jobs.last_json("[1, 2]") is None and jobs.last_json("{broken") is None
    job = jobs.Job("export", tmp_path, [sys.executable, "-c", "import time; time.sleep(30)"])
    from finetui.engine import spawn

    job.proc = spawn.start(job.command)
    started = time.monotonic()
    jobs.signal_job(job, signal.SIGTERM)
    assert job.proc.wait(10) == -signal.SIGTERM and time.monotonic() - started < 10
    jobs.signal_job(job, signal.SIGKILL)  # ended: quietly nothing
    jobs.signal_process(None, signal.SIGKILL)


def test_the_export_dialogs_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert export_problem("", "") == (None, "enter an output folder")
    assert export_problem("file", "") == (None, "file: a file; the export is a folder")
    assert export_problem("out", "not a/valid/repo") == (None, "Hub repo not a/valid/repo: expected user/name")
    assert export_problem("out", "me/model") == (tmp_path / "out", None)
    command = export_command(tmp_path / "run", tmp_path / "out", "me/model", True, True)
    assert command[:3] == [sys.executable, "-m", "finetui.engine.cli"]
    assert command[3:] == ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--json",
                           "--push-to-hub", "me/model", "--private", "--trust-remote-code"]
