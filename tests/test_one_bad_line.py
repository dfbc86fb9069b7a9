"""One bad line costs one line: a bad events line, a deeply nested or NUL-holding data line,
a request line that is not UTF-8 each cost only themselves, named at file:line (or the
request's line), and the rest is read (issue 24, item 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_dashboard_helpers import dash_env, synthetic_run  # noqa: F401

from finetui.engine import chat_protocol as proto
from finetui.engine import cli, runs
from finetui.engine import events as ev
from finetui.engine.data.paged import PagedFile
from finetui.engine.data.readers import load_records
from finetui.tui.runfeed import RunFeed

REPO = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads alone raises RecursionError on it
USER = [{"role": "user", "content": "How do I start a run?"}]


def _good(i: int) -> str:
    return json.dumps({"instruction": f"question {i}?", "output": f"answer {i}."})


def _spoil_line(events: Path, line_no: int, old: str, new: str) -> None:
    lines = events.read_bytes().split(b"\n")
    assert old.encode() in lines[line_no - 1]
    lines[line_no - 1] = lines[line_no - 1].replace(old.encode(), new.encode(), 1)
    events.write_bytes(b"\n".join(lines))


def _pump_until_loaded(feed: RunFeed, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while feed.state.loading and time.monotonic() < deadline:
        feed.pump()
    assert not feed.state.loading


def test_a_bad_events_line_costs_only_itself(dash_env, capsys):
    root = dash_env / "runs"
    good = synthetic_run(root, name="good", steps=20)
    bad = synthetic_run(root, name="bad", steps=20)
    events = bad / "events.jsonl"
    # line 1 is a log, 2 run_started, 3.. steps: step 5 gets a string version
    _spoil_line(events, 7, '"v":1', '"v":"1"')
    broken = synthetic_run(root, name="broken", steps=5)
    (broken / "events.jsonl").unlink()
    (broken / "events.jsonl").mkdir()  # cannot be read at all

    assert cli.main(["runs", "list"]) == 0
    out, err = capsys.readouterr()
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert table[good.name][1] == "completed" and table[good.name][4] == "20/20"
    assert table[bad.name][1] == "completed" and table[bad.name][4] == "20/20"
    assert table[broken.name][1] == "unreadable"
    assert f'{bad.name}: events.jsonl:7: v is "1", not a schema version (an integer) (line skipped)' in err
    assert f"{broken.name}: cannot read run {broken.name}" in err

    assert cli.main(["runs", "show", bad.name]) == 0
    out = capsys.readouterr().out
    assert 'problem         events.jsonl:7: v is "1", not a schema version (an integer) (line skipped)' in out
    assert "status          completed" in out

    # The dashboard: the run's whole history but that line, and the line named in its log.
    feed = RunFeed(bad)
    _pump_until_loaded(feed)
    state = feed.state
    assert state.status == "completed" and state.steps == [s for s in range(1, 21) if s != 5]
    assert any("events.jsonl:7: v is \"1\"" in text for _t, _k, text in state.lines)

    # Wrong types inside an event are caught the same way, not in the middle of a reader.
    for field, value in (('"loss":', '"loss":"x","_":'), ('"step":', '"step":null,"_":'),
                         ('"time":', '"time":"soon","_":')):
        line, problem = ev.decode_checked(
            ev.encode(ev.make("step", "r", step=1, total_steps=2, epoch=0.5, loss=1.0, learning_rate=0.1,
                              grad_norm=1.0, tokens_per_s=1.0, samples_per_s=1.0, elapsed_s=1.0, eta_s=1.0,
                              memory={})).replace(field, value, 1))
        assert line is None and problem, (field, problem)


def test_a_deeply_nested_data_line_costs_only_itself(tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    tools = json.dumps({"instruction": "q", "output": "a", "tools": DEEP})
    path.write_text("\n".join([_good(1), _good(2), '{"instruction": ' + DEEP + "}", _good(3), tools, _good(4)]) + "\n")
    result = load_records(path)
    assert result.counts["ok"] == 4
    deep = f"{path}:3: JSON nested too deeply (more than 100 levels of [ and {{)"
    assert str(result.issues[0]) == deep

    # The dataset browser (the TUI's paged reader) shows the line as an error row.
    with PagedFile(path) as paged:
        rows = paged.page(0, 10)
    assert [r.line for r in rows if r.error] == [3]
    assert rows[2].data is None and "nested too deeply" in rows[2].error
    assert [r.data for r in rows if r.line in (1, 2, 4)] == [json.loads(_good(i)) for i in (1, 2, 3)]

    # finetui data inspect reads the rest and names the line.
    assert cli.main(["data", "inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["ok"] >= 4
    assert deep in report["issues"], report["issues"]

    # Inside a JSON array too: the elements before it are kept and the place is named.
    array = tmp_path / "deep.json"
    array.write_text("[\n" + _good(1) + ",\n" + '{"instruction": ' + DEEP + '}\n]\n')
    result = load_records(array)
    assert result.counts["ok"] == 1
    assert str(result.issues[0]).startswith(f"{array}:3: JSON nested too deeply")


def test_a_nul_byte_costs_only_its_line(tmp_path):
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_bytes(("\n".join([_good(1), '{"instruction": "a\0b", "output": "x"}', _good(2), _good(3)]) + "\n").encode())
    result = load_records(jsonl)
    assert result.counts == {"ok": 3, "invalid": 1}
    assert [str(i) for i in result.issues] == [f"{jsonl}:2: NUL byte at column 19 (binary data in a text line)"]
    with PagedFile(jsonl) as paged:
        rows = paged.page(0, 10)
    assert [r.error for r in rows] == [None, "NUL byte at column 19 (binary data in a text line)", None, None]

    text = tmp_path / "nul.txt"
    text.write_bytes(b"first document\nsecond \x00 document\nthird document\n")
    result = load_records(text, format="text")
    assert result.counts == {"ok": 2, "invalid": 1}
    assert str(result.issues[0]) == f"{text}:2: NUL byte at column 8 (binary data in a text line)"

    # A binary file is still refused whole, once.
    png = tmp_path / "image.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    assert [str(i) for i in load_records(png, on_error="skip").issues] == [
        f"{png}: binary file, not text (NUL bytes in the first KB; save it as UTF-8 text)"]


def test_the_chat_worker_answers_every_line(finetui_cache_dir):
    """A request line that is not UTF-8 is answered with an input error naming it (and its
    id); requests already sent behind a shutdown are answered as cancelled; nothing is left
    unanswered and the worker exits 0."""
    generate = [proto.encode(proto.generate_request(rid, USER, max_new_tokens=2)).encode() for rid in ("ok", "late")]
    bad = b'{"op":"generate","id":"latin1","messages":[{"role":"user","content":"caf\xe9"}]}'
    lines = [bad, generate[0], proto.encode(proto.shutdown_request()).encode(), generate[1]]
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.chat", "--serve", "tiny"], input=b"\n".join(lines) + b"\n",
                          cwd=REPO, capture_output=True, timeout=120,
                          env={**os.environ, "FINETUI_CACHE": str(finetui_cache_dir), "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [m for m in map(proto.decode, proc.stdout.decode().splitlines()) if m and m["type"] in ("done", "error")]
    by_id = {}
    for m in answers:
        assert m["id"] not in by_id, m  # exactly one final answer each
        by_id[m["id"]] = m
    assert set(by_id) == {"latin1", "ok", "late"}
    assert by_id["latin1"]["type"] == "error" and by_id["latin1"]["kind"] == "input"
    assert by_id["latin1"]["message"].startswith("request line 1 is not valid UTF-8 (byte 0xe9 at column 73)")
    assert by_id["late"]["type"] == "done" and by_id["late"]["stop_reason"] == "cancelled"
    assert by_id["late"]["new_tokens"] == 0
