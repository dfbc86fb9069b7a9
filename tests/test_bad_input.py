"""Bad input never crashes and is never dropped silently.

Each case is written into tmp_path and read under both policies: ``skip`` (the default)
must count it and report ``file:line`` messages while keeping the good records; ``strict``
must raise DataError carrying the first issue.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from finetui.engine.data.readers import DataError, load_records

GOOD = {"question": "What is finetui?", "answer": "A terminal app for fine-tuning."}


def jsonl(*lines: str | bytes) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)


def good() -> str:
    return json.dumps(GOOD)


def sharegpt(*turns: tuple[str, str]) -> str:
    return json.dumps({"conversations": [{"from": r, "value": v} for r, v in turns]})


# name -> (file name, content, expected ok, expected issue strings relative to the file)
CASES = {
    "malformed_json_line": (
        "d.jsonl",
        jsonl(good(), '{"question": "q", "answer": ', good()),
        2,
        ["{f}:2: invalid JSON: Expecting value (column 29)"],
    ),
    "record_not_an_object": (
        "d.jsonl",
        jsonl(good(), '["a", "b"]', '"just a string"', good()),
        2,
        ["{f}:2: record is a list, not an object", "{f}:3: record is str, not an object"],
    ),
    "missing_field": (
        "d.jsonl",
        jsonl(good(), good(), json.dumps({"question": "no answer here"})),
        2,
        ["{f}:3: field 'answer': missing field"],
    ),
    "wrong_type": (
        "d.jsonl",
        jsonl(good(), json.dumps({"question": "q", "answer": {"text": "nested"}})),
        1,
        ["{f}:2: field 'answer': expected text, got an object"],
    ),
    "empty_turn": (
        "d.jsonl",
        jsonl(
            sharegpt(("human", "hi"), ("gpt", "hello")),
            # nothing is left once the empty turn's exchange is dropped (a longer
            # conversation keeps the rest: tests/test_data_fidelity.py)
            sharegpt(("human", "and?"), ("gpt", "  ")),
        ),
        1,
        ["{f}:2: field 'conversations[1].value': empty turn"],
    ),
    "no_assistant_turn": (
        "d.jsonl",
        jsonl(sharegpt(("human", "hi"), ("gpt", "hello")), sharegpt(("human", "anyone?"))),
        1,
        ["{f}:2: field 'conversations': no assistant turn"],
    ),
    "non_utf8_jsonl": (
        "d.jsonl",
        jsonl(good(), b'{"question": "caf\xe9", "answer": "ok"}', good()),
        2,
        ["{f}:2: invalid UTF-8 (byte 0xe9 at column 18)"],
    ),
    "non_utf8_json_array": (
        "d.json",
        b'[\n  {"question": "a", "answer": "b"},\n  {"question": "caf\xe9", "answer": "ok"},\n  {"question": "c", "answer": "d"}\n]\n',
        2,
        ["{f}:3: invalid UTF-8 (byte 0xe9)"],
    ),
    "non_utf8_csv": (
        "d.csv",
        b"question,answer\nq1,a1\ncaf\xe9,a2\nq3,a3\n",
        2,
        ["{f}:3: invalid UTF-8 (byte 0xe9)"],
    ),
    "json_array_broken_midway": (
        "d.json",
        b'[\n  {"question": "a", "answer": "b"},\n  {"question": "c" "answer": "d"},\n  {"question": "e", "answer": "f"}\n]\n',
        1,
        ["{f}:3: invalid JSON: Expecting ',' delimiter (column 20); the rest of the file could not be read"],
    ),
    "json_lines_in_json_file_bad_first_line": (
        "d.json",
        jsonl('{"question": "q", "answer": }', good(), good()),
        2,
        ["{f}:1: invalid JSON: Expecting value (column 29)"],
    ),
    "csv_wrong_column_count": (
        "d.csv",
        b"question,answer\nq1,a1\nq2,a2,extra\n",
        1,
        ["{f}:3: expected 2 columns, got 3"],
    ),
    "empty_file": ("d.jsonl", b"", 0, ["{f}: file is empty"]),
    "whitespace_only_file": ("d.jsonl", b"\n  \n\n", 0, ["{f}: file is empty"]),
    "empty_json_file": ("d.json", b"  \n", 0, ["{f}: file is empty"]),
    "binary_file": (
        "d.jsonl",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
        0,
        ["{f}: binary file, not text (NUL bytes in the first KB; save it as UTF-8 text)"],
    ),
    "json_scalar": ("d.json", b"42\n", 0, ["{f}:1: top-level JSON is int; expected a list of records or an object"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_counts_and_reports_file_line(tmp_path, case):
    name, content, ok, expected = CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    result = load_records(path, format="auto" if ok else "qa")
    assert result.counts == {"ok": ok, "invalid": len(expected)}
    assert [str(issue) for issue in result.issues] == [e.format(f=path) for e in expected]
    assert sum(result.issue_kinds.values()) == len(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_raises_the_first_issue(tmp_path, case):
    name, content, ok, expected = CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_records(path, format="auto" if ok else "qa", on_error="strict")
    assert str(info.value) == expected[0].format(f=path)


def test_require_records_on_a_useless_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"")
    result = load_records(path)
    with pytest.raises(DataError, match=r"no usable records: .*file is empty"):
        result.require_records()


def test_replace_policy_decodes_bad_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(b'{"question": "caf\xe9", "answer": "ok"}'))
    result = load_records(path, encoding_errors="replace", on_error="strict")
    assert result.conversations[0][1].messages[0].content == "caf\ufffd"


def test_ten_megabyte_line_loads(tmp_path):
    path = tmp_path / "big.jsonl"
    big = "x" * 10_000_000
    path.write_bytes(jsonl(good(), json.dumps({"question": "long", "answer": big}), good()))
    result = load_records(path, on_error="strict")
    assert result.counts == {"ok": 3, "invalid": 0}
    assert len(result.conversations[1][1].messages[1].content) == 10_000_000


def test_line_over_the_limit_is_reported_and_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(good(), json.dumps({"question": "long", "answer": "x" * 10_000_000}), good()))
    tracemalloc.start()
    try:
        result = load_records(path, max_line_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.counts == {"ok": 2, "invalid": 1}
    assert str(result.issues[0]) == f"{path}:2: line too long (10.0 MB > limit 1.0 MB)"
    assert [r.line for r, _ in result.conversations] == [1, 3]
    assert peak < 5_000_000, f"skipping a 10 MB line held {peak / 1e6:.1f} MB"
    with pytest.raises(DataError, match=r":2: line too long \(10\.0 MB > limit 1\.0 MB\)"):
        load_records(path, max_line_bytes=1_000_000, on_error="strict")


def test_text_block_over_the_limit(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("short\n\n" + ("y" * 100 + "\n") * 50 + "\nafter\n")
    result = load_records(path, max_line_bytes=1000)
    assert [c.text for _, c in result.conversations] == ["short", "after"]
    assert str(result.issues[0]) == f"{path}:3: block too long (over 1.0 kB)"


def test_folder_with_nothing_usable_names_the_folder(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".hidden.jsonl").write_text(good() + "\n")
    with pytest.raises(DataError) as info:
        load_records(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: no data files in this folder")


def test_empty_folder_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}: no data files"):
        load_records(tmp_path, on_error="skip")


def test_folder_with_one_bad_file_keeps_the_others(tmp_path):
    (tmp_path / "a.jsonl").write_text(good() + "\n")
    (tmp_path / "b.jsonl").write_bytes(b"")
    (tmp_path / "c.jsonl").write_bytes(b"\x00\x01binary")
    (tmp_path / "d.jsonl").write_text(good() + "\n" + good() + "\n")
    result = load_records(tmp_path)
    assert result.counts == {"ok": 3, "invalid": 2}
    assert [str(i) for i in result.issues] == [
        f"{tmp_path / 'b.jsonl'}: file is empty",
        f"{tmp_path / 'c.jsonl'}: binary file, not text (NUL bytes in the first KB; save it as UTF-8 text)",
    ]
    with pytest.raises(DataError, match="b.jsonl: file is empty"):
        load_records(tmp_path, on_error="strict")


def test_many_issues_are_all_counted_but_few_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(good() + "\n" + "not json\n" * 5000)
    result = load_records(path)
    assert result.counts == {"ok": 1, "invalid": 5000}
    assert len(result.issues) == 1000
    assert result.issue_kinds == {"invalid JSON": 5000}
    assert "5000 x invalid JSON" in result.summary()


def test_bad_tools_json_names_the_field(tmp_path):
    path = tmp_path / "d.jsonl"
    record = json.loads(sharegpt(("human", "hi"), ("gpt", "yo")))
    record["tools"] = "[{not json"
    path.write_text(json.dumps(record) + "\n")
    result = load_records(path)
    assert str(result.issues[0]).startswith(f"{path}:1: field 'tools': not valid JSON")


@contextlib.contextmanager
def _files_checked_as_for_anyone():
    """Root reads a mode-000 file: while this runs, this process's effective capabilities
    lack CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (still permitted, so they come back), and
    file modes hold for it as for any user."""
    if os.geteuid() != 0:
        yield
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()


def test_unreadable_file_is_reported(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(good() + "\n")
    path.chmod(0)
    with _files_checked_as_for_anyone():
        with pytest.raises(PermissionError):
            path.open("rb")
        result = load_records(path)
    counts, issues = result.counts, [str(i) for i in result.issues]
    assert counts == {"ok": 0, "invalid": 1}
    assert issues[0].startswith(f"{path}: cannot read: ") and "Permission denied" in issues[0], issues
