"""Big and bad inputs are cheap: a 10 MB value is never echoed whole, and a 10 MB record
costs about what a small one does.

Messages quote at most formats.SHOW_CHARS (200) characters of a value from the data, then
``… (N chars)``. `finetui data inspect` on a file with 10 MB records stays within a bound
of the same file without them (peak RSS of the subprocess, measured by a parent process
that runs nothing else: ``resource.getrusage(RUSAGE_CHILDREN)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetui.engine.data.readers import DataError, load_records

REPO = Path(__file__).resolve().parents[1]
BIG = 10_000_000
GOOD = {"question": "What is finetui?", "answer": "A terminal app for fine-tuning."}
SAID = f"… ({BIG:,} chars)"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return path


# --------------------------------------------------------------------------- messages


def test_a_ten_megabyte_role_is_not_echoed(tmp_path):
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    bad = {"conversations": [{"from": "x" * BIG, "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": turns}, bad, {"conversations": turns}])
    result = load_records(path)
    assert result.counts == {"ok": 2, "invalid": 1}
    (issue,) = [str(i) for i in result.issues]
    assert issue.startswith(f"{path}:2: field 'conversations[0].from': unknown role 'xxxx")
    assert SAID in issue and len(issue) < 600
    with pytest.raises(DataError) as info:
        load_records(path, on_error="strict")
    assert SAID in str(info.value) and len(str(info.value)) < 600


def test_a_ten_megabyte_key_is_not_echoed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"k" * BIG: "v"}, {"other": 1}])
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert "cannot tell the format from the keys seen (kkkk" in message and len(message) < 1200


def test_a_ten_megabyte_column_name_is_not_echoed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "c" * BIG: "an unused value"}])
    result = load_records(path)
    assert result.counts == {"ok": 2, "invalid": 0}
    (line,) = [n for n in result.notes() if "not trained" in n]
    assert SAID in line and len(line) < 1000
    assert all(len(entry["column"]) < 300 for entry in result.column_use.to_list())


# --------------------------------------------------------------------------- inspect


def peak_rss_mb(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    """Peak RSS of ``finetui`` ARGS, from a parent process that runs only it."""
    code = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, p.stdout, p.stderr]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "finetui.engine.cli", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=True)
    kib, rc, stdout, stderr = json.loads(out.stdout)
    return kib / 1024, subprocess.CompletedProcess(args, rc, stdout, stderr)


@pytest.fixture
def env(tiny_model_dir):
    env = dict(os.environ, FINETUI_CACHE=str(Path(tiny_model_dir).parent), HF_HUB_OFFLINE="1")
    env.pop("FINETUI_DEBUG", None)
    return env


@pytest.mark.slow
def test_inspect_of_ten_megabyte_records_is_short_and_small(tmp_path, env):
    """A 10 MB reply, a 10 MB raw text and a 10 MB role: the report is a few KB and the
    inspect process grows by less than 600 MB over the same file without them (it grew by
    about 2.6 GB)."""
    small = [GOOD] * 20
    big = [
        *small[:5],
        {"question": "Summarise this.", "answer": "word " * (BIG // 5)},
        *small[5:10],
        {"question": "r" * BIG, "answer": "fine"},
        *small[10:],
        {"question": "Who?", "answer": "me", "c" * BIG: "unused"},
    ]
    base_mb, proc = peak_rss_mb(["data", "inspect", str(write_jsonl(tmp_path / "small.jsonl", small))], env)
    assert proc.returncode == 0, proc.stderr
    big_path = write_jsonl(tmp_path / "big.jsonl", big)
    for extra in ([], ["--json"]):
        peak_mb, proc = peak_rss_mb(["data", "inspect", str(big_path), *extra], env)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout) + len(proc.stderr) < 20_000, (len(proc.stdout), proc.stdout[:2000])
        assert peak_mb - base_mb < 600, f"inspect grew by {peak_mb - base_mb:.0f} MB ({base_mb:.0f} -> {peak_mb:.0f})"
    result = json.loads(proc.stdout)
    assert result["counts"]["records"] == 23 and result["counts"]["truncated"] == 2
    assert result["lengths"]["max"] > 1_000_000  # the long reply is counted, not cut off

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "Short text."}, {"text": "word " * (BIG // 5)}])
    peak_mb, proc = peak_rss_mb(["data", "inspect", str(text), "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert peak_mb - base_mb < 600, f"inspect grew by {peak_mb - base_mb:.0f} MB ({base_mb:.0f} -> {peak_mb:.0f})"
    result = json.loads(proc.stdout)
    assert result["counts"]["chunked"] == 1 and result["counts"]["examples"] > 1000


# --------------------------------------------------------------------------- a million records


def _array_cases() -> dict[str, bytes]:
    records = [{"q": "caf\u00e9 \u4e2d\u6587 \U0001F600 " * (i % 4), "a": 'x"y\\z\n' * (i % 3), "n": i * 1.5,
                "l": [1, [2, {"k": None}]]} for i in range(30)]
    pretty = json.dumps(records, indent=2, ensure_ascii=False).encode()
    return {
        "pretty": pretty,
        "one_line": json.dumps(records, ensure_ascii=False).encode(),
        "bom_crlf": b"\xef\xbb\xbf" + pretty.replace(b"\n", b"\r\n"),
        "numbers": b"[1, 22, 333, 4444.5e3, -7, true, null, \"s\"]",
        "empty": b"  [ ]  ",
        "bad_syntax": pretty[:-40] + b'}, {"q": 1,, }]',
        "unterminated": pretty[:-2],
        "missing_comma": b'[{"a": 1}\n {"b": 2}]',
        "bad_bytes": b'[{"a": "ok"},\n {"a": "caf\xe9"},\n {"a": "after"}]',
    }


@pytest.mark.parametrize("name", list(_array_cases()))
def test_a_json_array_read_in_chunks_reads_as_the_whole_file(tmp_path, monkeypatch, name):
    """Records, lines and issues as reading the whole file gives, however the chunks cut
    (a character, a number, a string, an escape)."""
    from finetui.engine.data import readers

    path = tmp_path / "d.json"
    path.write_bytes(_array_cases()[name])

    def read(stream: bool, chunk: int):
        monkeypatch.setattr(readers, "JSON_CHUNK_BYTES", chunk)
        if not stream:
            monkeypatch.setattr(readers, "_starts_array", lambda p: False)
        issues: list = []
        rows = list(readers._read_json(path, str(path), issues.append, 1 << 30, "strict", "train"))
        monkeypatch.undo()
        return rows, [str(i) for i in issues]

    whole = read(False, 1 << 22)
    for chunk in (1, 3, 7, 64, 1 << 22):
        assert read(True, chunk) == whole, chunk


def test_a_big_json_array_is_not_held_in_memory(tmp_path):
    import tracemalloc

    from finetui.engine.data.readers import iter_records

    path = tmp_path / "big.json"
    record = {"instruction": "Describe a process of making crepes.", "input": "", "output": "Mix, rest, cook. " * 10}
    with open(path, "w") as fh:
        fh.write("[\n" + ",\n".join(json.dumps({**record, "n": i}) for i in range(120_000)) + "\n]\n")
    assert path.stat().st_size > 30_000_000
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_records(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 120_000
    assert peak < 30_000_000, f"reading a {path.stat().st_size / 1e6:.0f} MB array held {peak / 1e6:.0f} MB"


def test_render_many_is_render_of_each(tiny_model_dir, shared_datasets):
    """The batched path ``finetui data inspect`` takes renders exactly what render (the
    trainer's) does, on markers and markerless templates, tool calls and raw text."""
    from transformers import AutoTokenizer

    from finetui.engine.data import chunking, readers, render

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    root = shared_datasets / "llamafactory"
    convs = [c for f in ("alpaca_en_demo.json", "dataset_info.json:glaive_toolcall_en_demo", "c4_demo.jsonl")
             for _, c in readers.load_records(str(root / f)).conversations[:120]]
    templates = ["auto", "qa", str(REPO / "tests/data/chat_templates/llama3_1.jinja"),
                 str(REPO / "tests/data/chat_templates/gpt_oss.jinja")]
    for name in templates:
        template = render.resolve_template(tok, name)
        render.prepare_tokenizer(tok, template)
        for train_on, max_length in (("assistant", 256), ("all", 64)):
            one = []
            for conv in convs:
                try:
                    one.append(render.render(conv, tok, template, train_on=train_on, max_length=max_length).to_dict())
                except render.RenderError as exc:
                    one.append(str(exc))
            many = [str(x) if isinstance(x, render.RenderError) else x.to_dict()
                    for x in render.render_many(convs, tok, template, train_on=train_on, max_length=max_length)]
            assert many == one, (name, train_on)
            records = chunking.render_records(convs, tok, template, train_on=train_on, max_length=max_length)
            assert [len(r.examples) for r in records] == [
                len(chunking.render_record(c, tok, template, train_on=train_on, max_length=max_length).examples)
                for c in convs]


def test_inspect_keeps_no_record(tmp_path, tiny_model_dir):
    """Python memory for 12,000 records is about that for 2,000: records are not kept."""
    import tracemalloc

    from transformers import AutoTokenizer

    from finetui.engine.data.inspection import inspect

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    peaks = {}
    for n in (2_000, 12_000):
        path = write_jsonl(tmp_path / f"{n}.jsonl", [{"question": f"Question {i}: what is item {i}?",
                                                        "answer": f"Item {i} is a thing. " * 8} for i in range(n)])
        inspect(str(path), tokenizer=tok)  # warm
        tracemalloc.start()
        try:
            result = inspect(str(path), tokenizer=tok)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result["counts"]["ok"] == n
    assert peaks[12_000] - peaks[2_000] < 4_000_000, peaks


def test_inspect_with_workers_reports_what_one_process_does(tmp_path, tiny_model_dir, shared_datasets):
    from transformers import AutoTokenizer

    from finetui.engine.data.inspection import inspect

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = str(shared_datasets / "llamafactory" / "alpaca_en_demo.json")
    one = inspect(path, tokenizer=tok, num_proc=1, progress=False, example=700)
    two = inspect(path, tokenizer=tok, num_proc=2, progress=False, example=700)
    assert one == two and one["counts"]["records"] == 999


@pytest.mark.slow
def test_inspect_shows_a_progress_bar_on_a_terminal(tmp_path, env):
    """stderr on a terminal (a pty) gets a progress bar; the report goes to stdout."""
    import pty

    path = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 3000)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "data", "inspect", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty closed
            break
        if not chunk:
            break
        seen += chunk
    stdout, _ = proc.communicate(timeout=300)
    os.close(leader)
    assert proc.returncode == 0
    assert b"inspect" in seen and b"records" in seen and b"%" in seen, seen[-500:]
    assert stdout.startswith("source ")
