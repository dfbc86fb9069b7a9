"""Honest reports: what a dataset loses is said before anything trains.

`finetui data inspect` exits 1 when no record is usable, and with --json every error is a
JSON object (error, place) on stdout; `finetui train` prints the data report's line (read,
kept, skipped by reason, truncated) before its first step; the run dashboard shows the
same line under the numbers, within 80 columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import finetui, inspect_runner
from test_dashboard import open_dashboard
from test_dashboard_helpers import SIZE, config, dash_env, screen_text, started_event, step_event, writer  # noqa: F401
from test_train_cli import the_run
from train_helpers import write_config

from finetui.engine import runs

QA = {"question": "What is finetui?", "answer": "A terminal app for fine-tuning."}


@pytest.fixture
def inspect_cli(tiny_model_dir):
    return inspect_runner(tiny_model_dir)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------- inspect


def test_inspect_exits_1_when_no_record_is_usable_and_says_why(inspect_cli, tmp_path):
    path = write_jsonl(tmp_path / "replies_empty.jsonl", [{"question": f"q{i}", "answer": ""} for i in range(3)])
    proc = inspect_cli(str(path))
    assert proc.returncode == 1, proc.stdout
    assert "records   3: 0 ok, 3 invalid" in proc.stdout  # the report is still shown
    assert proc.stderr.strip() == (
        f"finetui: {path}: no usable record (3 read: 3 invalid, 0 skipped, 0 with no trained token); "
        f"first: {path}:1: field 'answer': empty text"
    )

    proc = inspect_cli(str(path), "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["counts"]["ok"] == 0 and result["counts"]["invalid"] == 3
    assert result["ok"] is False and result["error"]["kind"] == "data"
    assert result["error"]["where"] == f"{path}:1" and "no usable record" in result["error"]["message"]

    # records that read but train no token (no assistant reply within max_length) too
    path = write_jsonl(tmp_path / "long_prompt.jsonl", [{"question": "word " * 300, "answer": "ok"}])
    proc = inspect_cli(str(path), "--json", "--max-length", "16")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["counts"] == {**result["counts"], "records": 1, "ok": 0, "no_trained": 1}
    assert result["error"]["where"] == f"{path}:1"

    good = write_jsonl(tmp_path / "good.jsonl", [QA, {"question": "q", "answer": ""}])
    assert inspect_cli(str(good)).returncode == 0


def test_inspect_json_errors_are_json_on_stdout(inspect_cli, tmp_path):
    missing = tmp_path / "missing.jsonl"
    proc = inspect_cli(str(missing), "--json")
    assert proc.returncode == 1 and proc.stderr == ""
    assert json.loads(proc.stdout) == {"ok": False, "error": {"kind": "data", "message": f"{missing}: no such file or folder",
                                                              "where": str(missing)}}

    proc = inspect_cli(str(write_jsonl(tmp_path / "d.jsonl", [QA])), "--json", "--max-length", "0")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == {"kind": "data", "message": "--max-length 0: must be at least 1",
                                                "where": "--max-length 0"}

    bad = write_jsonl(tmp_path / "bad.jsonl", [QA, '{"question": "q", "answer": '])
    proc = inspect_cli(str(bad), "--json", "--strict")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["where"] == f"{bad}:2" and error["message"].startswith(f"{bad}:2: invalid JSON")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    error = json.loads(inspect_cli(str(empty), "--json").stdout)["error"]
    assert error["where"] == str(empty) and "file is empty" in error["message"]


# --------------------------------------------------------------------------- train


def test_data_line_names_kept_skipped_and_reasons():
    from finetui.engine.events import data_line, event_lines

    data = {"counts": {"records": 999, "ok": 974, "invalid": 20, "skipped": 5, "repaired": 2, "truncated": 317,
                       "no_trained": 0},
            "reasons": {"empty text": 20, "undesirable reply": 5}}
    assert data_line(data) == ("data: 999 read · 974 kept · 25 skipped (empty text 20, undesirable reply 5) · "
                               "2 repaired · 317 truncated")
    assert data_line(data, reasons=1) == "data: 999 read · 974 kept · 25 skipped (empty text 20, 1 more) · " \
                                         "2 repaired · 317 truncated"
    assert data_line({"counts": {"records": 3, "ok": 3}}) == "data: 3 read · 3 kept"
    assert data_line(None) is None
    started = {"type": "run_started", "footprint": {}, "datasets": {}, "devices": ["cpu"], "data": data}
    assert event_lines(started)[1].startswith("data: 999 read")


@pytest.mark.slow
def test_train_prints_kept_and_skipped_with_reasons_before_training(tmp_path, finetui_cache):
    records = [{"question": f"What is item {i}?", "answer": f"Item {i} is a thing."} for i in range(60)]
    records[7] = {"question": "empty reply", "answer": ""}
    records[30] = '{"question": "cut off", "answer": '
    data = write_jsonl(tmp_path / "faq.jsonl", records)
    path = write_config(tmp_path, data={"path": str(data), "format": "qa", "max_samples": None},
                        train={"max_steps": 1, "eval_strategy": "no", "save_strategy": "no"})
    proc = finetui("train", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert lines[at] == "data: 60 read · 58 kept · 2 skipped (empty text 1, invalid JSON 1)"
    assert lines[at - 1].startswith("started: ")
    assert at < next(i for i, line in enumerate(lines) if line.startswith("step 1/1"))
    started = next(e for e in map(json.loads, (the_run(tmp_path) / "events.jsonl").read_text().splitlines())
                   if e["type"] == "run_started")
    assert started["data"]["reasons"] == {"empty text": 1, "invalid JSON": 1}


# --------------------------------------------------------------------------- dashboard


async def test_dashboard_shows_the_data_line_within_80_columns(dash_env):
    from finetui.tui.app import FinetuiApp

    c = config()
    run_dir = runs.new_run(c, name="data")
    w = writer(run_dir)
    started_event(w, c, data={
        "format": "alpaca", "template": "tokenizer",
        "counts": {"records": 12345, "ok": 12000, "invalid": 300, "skipped": 45, "truncated": 4000, "no_trained": 0},
        "reasons": {"empty text": 280, "undesirable reply": 45, "invalid JSON": 20},
    })
    step_event(w, 1, 10)
    w.close()
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        dash = await open_dashboard(pilot, app, run_dir.name)
        await pilot.pause(0.6)
        rows = screen_text(app).splitlines()
        (row,) = [r for r in rows if "data: " in r]
        assert row.strip() == "data: 12,345 read · 12,000 kept · 345 skipped (empty text 280, 2 more)"
        assert len(row.rstrip()) <= 80
        assert dash.query_one("#data").display
