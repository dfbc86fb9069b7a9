"""PagedFile (engine.data.paged): pages of big JSONL/text files without loading them."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import pytest

from finetui.engine.data.paged import SEARCH_CHUNK_BYTES, PagedFile
from finetui.engine.data.readers import DataError, RawRecord

MODERATION = "Let's keep the discussion relevant to finetui."


def faq_row(i: int) -> dict:
    answer = MODERATION if i % 7 == 0 else f"Answer {i}: " + "finetui trains models. " * (i % 5 + 1)
    return {"question": f"Question {i}, café?", "answer": answer}


@pytest.fixture
def faq_file(tmp_path) -> Path:
    path = tmp_path / "faq.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(5000):
            fh.write(json.dumps(faq_row(i)) + "\n")  # ensure_ascii: "café" is written as caf\u00e9
    return path


def test_first_page_before_any_indexing(faq_file):
    with PagedFile(faq_file, start_index=False) as paged:
        rows = paged.page(0, 20)
        assert paged.indexed_lines == 0 and paged.total is None and not paged.done
        assert [r.data for r in rows] == [faq_row(i) for i in range(20)]
        assert [r.line for r in rows] == list(range(1, 21))
        assert paged.page(3, 20)[0].data == faq_row(60)
        paged.start_index()
        assert paged.wait(30)
        assert paged.total == paged.indexed_lines == 5000 and paged.progress == 1.0


def test_every_page_matches_the_file(faq_file):
    lines = faq_file.read_text(encoding="utf-8").splitlines()
    with PagedFile(faq_file) as paged:
        assert paged.wait(30)
        seen = []
        n = 0
        while rows := paged.page(n, 64):
            seen.extend(rows)
            n += 1
        assert [r.raw for r in seen] == lines
        assert [r.index for r in seen] == list(range(5000))
        assert paged.page(10_000, 64) == []


def test_far_page_while_the_index_builds(tmp_path):
    path = tmp_path / "many.jsonl"
    with open(path, "w") as fh:
        for i in range(60_000):
            fh.write(json.dumps({"text": f"row {i}"}) + "\n")
    with PagedFile(path, chunk_bytes=64 * 1024) as paged:
        rows = paged.page(59_990 // 10, 10)
        assert [r.data["text"] for r in rows] == [f"row {i}" for i in range(59_990, 60_000)]


def test_rows_that_do_not_parse_keep_their_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"text": "ok"}\n'
        b"not json\n"
        b"\n"
        b'{"text": "caf\xe9"}\n'
        b'{"text": "' + b"x" * 2000 + b'"}\n'
        b'{"text": "last, no newline"}'
    )
    with PagedFile(path, max_line_bytes=1000) as paged:
        paged.wait(10)
        rows = paged.page(0, 10)
        assert paged.total == 6
        assert [(r.line, r.error) for r in rows] == [
            (1, None),
            (2, "invalid JSON: Expecting value (column 1)"),
            (3, "blank line"),
            (4, "invalid UTF-8 (byte 0xe9 at column 14)"),
            (5, "line too long (2.0 kB > limit 1.0 kB)"),
            (6, None),
        ]
        assert rows[-1].data == {"text": "last, no newline"}
        assert rows[0].to_record() == RawRecord(0, str(path), 1, {"text": "ok"})


def test_text_file_pages_by_line(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("alpha\n\nbeta\n")
    with PagedFile(path) as paged:
        paged.wait(10)
        assert paged.kind == "text" and paged.total == 3
        assert [r.data for r in paged.page(0, 5)] == [{"text": "alpha"}, {"text": ""}, {"text": "beta"}]


def test_json_array_is_read_whole(tmp_path):
    path = tmp_path / "small.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"},\n  {"text": "c"}\n]\n')
    with PagedFile(path) as paged:
        assert paged.done and paged.total == 3
        rows = paged.page(0, 2)
        assert [(r.line, r.data) for r in rows] == [(2, {"text": "a"}), (3, {"text": "b"})]
        assert list(paged.search("c", "text", exact=True)) == [2]


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with PagedFile(empty) as paged:
        assert paged.wait(10) and paged.total == 0 and paged.page(0, 10) == []
    with pytest.raises(DataError, match="no such file"):
        PagedFile(tmp_path / "missing.jsonl")


def test_cache_is_bounded(faq_file):
    with PagedFile(faq_file, cache_rows=100) as paged:
        paged.wait(30)
        for n in range(30):
            paged.page(n, 50)
        assert paged.cached_rows == 100
        assert paged.page(29, 50)[0].data == faq_row(29 * 50)  # served from the cache


def test_search_counts_exact_answers(faq_file):
    expected = [i for i in range(5000) if i % 7 == 0]
    with PagedFile(faq_file) as paged:
        progress = []
        found = list(paged.search(MODERATION, "answer", exact=True, progress=lambda *a: progress.append(a)))
        assert found == expected
        assert progress[-1] == (faq_file.stat().st_size, faq_file.stat().st_size, len(expected))
        assert paged.count("relevant to finetui", "answer") == len(expected)
        assert paged.count("relevant to finetui", "question") == 0


def test_search_finds_escaped_non_ascii(faq_file):
    with PagedFile(faq_file) as paged:
        assert paged.count("café", "question") == 5000
        assert paged.count("CAFÉ", "question", ignore_case=True) == 5000


def test_search_with_a_predicate_and_stop(faq_file):
    with PagedFile(faq_file) as paged:
        assert list(paged.search(lambda d: d["question"].startswith("Question 12,"))) == [12]
        stop = threading.Event()
        stop.set()
        assert list(paged.search(MODERATION, stop=stop)) == []


def test_search_across_chunk_boundaries(tmp_path):
    path = tmp_path / "big.jsonl"
    rows = 0
    with open(path, "w") as fh:
        while fh.tell() < SEARCH_CHUNK_BYTES * 2.5:
            fh.write(json.dumps({"text": f"row {rows} " + "z" * (rows % 300), "tag": "hit" if rows % 97 == 0 else "miss"}) + "\n")
            rows += 1
    with PagedFile(path) as paged:
        found = list(paged.search("hit", "tag", exact=True))
        assert found == [i for i in range(rows) if i % 97 == 0]
        paged.wait(30)
        assert all(paged.row(i).data["tag"] == "hit" for i in found[-3:])


def test_index_memory_is_flat_in_file_size(tmp_path):
    path = tmp_path / "wide.jsonl"
    line = json.dumps({"text": "w" * 2000}) + "\n"
    with open(path, "w") as fh:
        for _ in range(20_000):  # ~40 MB
            fh.write(line)
    tracemalloc.start()
    try:
        with PagedFile(path) as paged:
            paged.page(0, 50)
            assert paged.wait(60) and paged.total == 20_000
            paged.page(399, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One 4 MB read chunk plus a few copies; nowhere near the 40 MB file.
    assert peak < 16_000_000, f"indexing a {path.stat().st_size / 1e6:.0f} MB file peaked at {peak / 1e6:.1f} MB"
