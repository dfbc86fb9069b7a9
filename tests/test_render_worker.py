"""finetui.engine.data.render_worker: the JSON-lines render server the dataset browser uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_worker(requests: list[dict], *args: str, timeout: float = 180) -> list[dict]:
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    out = subprocess.run([sys.executable, "-m", "finetui.engine.data.render_worker", *args], input=stdin,
                         capture_output=True, text=True, cwd=REPO, timeout=timeout)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_render_lengths_and_errors(finetui_cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    answers = run_worker([
        {"id": 1, "op": "render", "record": {"question": "What is finetui?", "answer": "A TUI."}},
        {"id": 2, "op": "render", "record": {"foo": 1}},
        {"id": 3, "op": "lengths", "path": str(bad)},
        {"id": 4, "op": "render", "record": {"question": "q"}, "format": "qa"},
    ], "--model", "tiny", "--max-length", "64")
    assert answers[0]["type"] == "ready" and answers[0]["end_token"] == "<|im_end|>"
    by_id = {a.get("id"): a for a in answers[1:] if a["type"] != "progress"}
    r = by_id[1]
    assert r["type"] == "rendered" and r["format"] == "qa"
    trained = "".join(r["text"][a:b] for a, b in r["trained_spans"])
    assert trained == "A TUI.<|im_end|>"
    assert by_id[2]["type"] == "error" and "cannot tell this record's format" in by_id[2]["message"]
    lengths = by_id[3]
    assert lengths["type"] == "lengths" and lengths["counts"]["ok"] == 1 and lengths["counts"]["invalid"] == 1
    assert any("bad.jsonl:2" in issue for issue in lengths["issues"])
    assert by_id[4]["type"] == "error" and "answer" in by_id[4]["message"]


def test_unknown_model_is_a_fatal_line(tmp_path):
    answers = run_worker([], "--model", str(tmp_path / "missing"))
    assert answers and answers[0]["type"] == "fatal" and "missing" in answers[0]["message"]
