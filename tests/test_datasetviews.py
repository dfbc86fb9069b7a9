"""finetui.tui.widgets.datasetviews without an app: the trained tokens highlighted in a rendered
record, a long text's windows, and the token-lengths summary with its histogram."""

from __future__ import annotations

from finetui.tui.widgets.datasetviews import MAX_WINDOWS, lengths_view, marked, rendered_view


def color(name: str) -> str:
    return {"success": "green", "warning": "yellow", "primary": "blue"}[name]


def styles(text) -> list[tuple[str, str]]:
    return [(text.plain[s.start:s.end], str(s.style)) for s in text.spans]


def test_trained_spans_are_highlighted_and_the_cut_off_struck():
    answer = {"text": "user: hi\nbot: hello there", "trained_spans": [(14, 19), (20, 25)], "kept_chars": 22}
    out = marked(answer, color)
    assert out.plain.startswith("user: hi\nbot: hello there"[:22])
    spans = styles(out)
    assert ("user: hi\nbot:", "dim") in spans or ("user: hi\nbot: ", "dim") in spans
    assert ("hello", "bold green") in spans
    assert ("th", "bold green") in spans  # the second span, cut at kept_chars
    assert "✂ max_length: the rest is not trained" in out.plain
    assert ("ere", "dim strike") in spans


def test_a_record_and_its_windows():
    one = {"text": "abc", "trained_spans": [(1, 3)], "n_tokens": 3, "n_trained": 2}
    answer = {"n_tokens": 9, "n_trained": 4, "format": "text", "truncated": True, "full_tokens": 12,
              "notes": ["a note"], "unused": ["extra", "id"], "text": "abc", "trained_spans": [(0, 1)]}
    out = rendered_view(answer, {"template": "chatml", "model": "tiny"}, "data.jsonl:3", color).plain
    assert out.startswith("9 tokens, 4 trained (highlighted) · format text · template chatml · model tiny")
    assert "truncated: 12 tokens > max_length (data.long_text truncate: the rest is not trained)" in out
    assert "note: a note" in out and "not trained: columns extra, id (m: map columns)" in out
    windows = dict(answer, truncated=False, windows=[one] * (MAX_WINDOWS + 2))
    out = rendered_view(windows, {}, "/abs/data.jsonl:3", color).plain
    assert out.startswith(f"12 tokens split into {MAX_WINDOWS + 2} windows of ≤ max_length (data.long_text chunk), "
                          f"{2 * (MAX_WINDOWS + 2)} trained · format text · template ?")
    assert out.count("#chunk") == MAX_WINDOWS and "#chunk1 · 3 tokens, 2 trained ──" in out
    assert out.rstrip().endswith("… 2 more windows")


def test_lengths_summary_and_histogram():
    result = {"counts": {"records": 1200, "ok": 1190, "invalid": 10, "truncated": 3, "no_trained": 1, "skipped": 2},
              "stats": {"min": 5, "median": 40.0, "p95": 90, "max": 300}, "max_length": 128,
              "total_tokens": 1000, "trained_tokens": 250, "limited": True, "limit": 5000,
              "histogram": [{"lo": 0, "hi": 63, "count": 900}, {"lo": 64, "hi": 127, "count": 0},
                            {"lo": 128, "hi": 191, "count": 1},
                            {"lo": 192, "hi": 300, "count": 3}],
              "notes": ["a note"], "issues": [f"issue {i}" for i in range(12)]}
    out = lengths_view(result, color)
    lines = out.plain.splitlines()
    assert lines[0] == "records   1,200: 1,190 ok, 10 invalid, 2 skipped, 3 truncated, 1 with nothing to train  " \
                       "(first 5,000 records)"
    assert "tokens    min 5  median 40  p95 90  max 300  (max_length 128)" in lines
    assert "trained   250 of 1,000 tokens (25%)" in lines
    bars = [line for line in lines if line.startswith("  ")]
    assert bars == ["    0-63  " + "█" * 40 + " 900", "   64-127 " + " 0", "  128-191 █ 1", "  192-300 ▒ 3"]
    assert "issue 9" in out.plain and "issue 10" not in out.plain
