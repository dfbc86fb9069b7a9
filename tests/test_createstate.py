"""tui/createstate.py: the "dataset from documents" screen's state without Textual: the
plan (documents, output, writer), the subprocess's progress and outcome, the review."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import test_data_create

from finetui.tui import createstate as cs


def test_documents_cut_into_passages_with_boilerplate_marked(tmp_path):
    doc = test_data_create.story(tmp_path, 5)
    assert "unsupported document type '.docx'" in cs.document_problem(tmp_path / "a.docx")
    assert cs.document_problem(tmp_path / "missing.md") == f"{tmp_path / 'missing.md'}: no such file"
    assert cs.document_problem(doc) is None
    found, info = cs.read_passages([str(doc)])
    assert len(found) == 6 and info == {str(doc): "story.md (6 passages)"}
    assert [kind for _, kind in found][:2] == ["table of contents", None]
    assert cs.passages_summary(found) == "6 passages, 1 boilerplate (no question asked) · g generates"
    p = found[1][0]
    assert cs.passage_line(p, None).startswith(f"story.md #{p.index} ")
    assert f"· {len(p.text)} ch · " + " ".join(p.text.split())[:40] in cs.passage_line(p, None)
    assert cs.passage_where(p).startswith(f"story.md passage {p.index} · characters {p.start:,}-{p.end:,}")


def test_the_plan_names_its_command_and_refuses_what_cannot_start(tmp_path):
    plan = cs.Plan()
    assert plan.problem() == "add a document first (a)" and plan.heading() == "no documents → ? · smollm2 (local)"
    plan.add(tmp_path / "book.pdf")
    plan.add(tmp_path / "book.pdf")
    assert plan.docs == [str(tmp_path / "book.pdf")] and plan.out == str(tmp_path / "book.jsonl")
    assert plan.problem() is None
    assert plan.command()[:3] == [sys.executable, "-m", "finetui.engine.cli"]
    assert plan.command()[3:] == ["data", "create", str(tmp_path / "book.pdf"), "--out", plan.out,
                                  "--progress", "jsonl", "--json", "--model", "smollm2"]
    plan.base_url, plan.model = "http://127.0.0.1:8000/v1", "qwen"
    assert plan.command()[-4:] == ["--base-url", "http://127.0.0.1:8000/v1", "--model", "qwen"]
    assert plan.heading() == "book.pdf → book.jsonl · qwen @ 127.0.0.1:8000"
    assert cs.writer_problem("x.json", "", "m") == "the dataset file ends in .jsonl"
    assert cs.writer_problem("x.jsonl", "ftp://h", "m") == "the endpoint URL starts with http:// or https://"
    assert cs.writer_problem("x.jsonl", "http://h/v1", "") == "an endpoint needs the model name it serves"
    assert cs.writer_problem("x.jsonl", "", "") is None


def test_progress_from_the_event_lines_and_the_outcome():
    progress = cs.Progress()
    assert progress.counts_line() == "0 of ?: starting…"
    assert progress.take(json.dumps({"event": "passage", "total": 4, "done": 1, "status": "written",
                                     "question": "Who?"}) + "\n")
    assert progress.take(json.dumps({"event": "passage", "total": 4, "done": 2, "status": "skipped"}))
    assert not progress.take(json.dumps({"event": "note", "message": "endpoint busy, retrying"}))
    assert not progress.take("a warning\n") and not progress.take("   ")
    assert (progress.total, progress.done) == (4, 2)
    assert progress.counts_line() == "2 of 4: skipped 1, written 1"
    assert progress.last_line() == "last question: Who?"
    assert list(progress.log_tail) == ["endpoint busy, retrying", "a warning"]
    report = {"written": 3, "rejected": {"too_short": 1, "duplicate": 1}, "failed": 0}
    assert progress.finish(0, "noise\n" + json.dumps(report) + "\n") == (
        "done: 3 pairs written, 2 rejected by the gates, 0 failed · v review", False)
    assert progress.report == report
    failure = {"ok": False, "error": {"kind": "data", "message": "no passages", "where": None}}
    assert progress.finish(1, json.dumps(failure)) == ("finetui data create failed: no passages", True)
    assert progress.report is None
    assert progress.finish(-15, "")[0].startswith("stopped · g continues")
    assert progress.finish(143, "")[0].startswith("stopped")
    assert progress.finish(2, "") == ("finetui data create failed: a warning", True)
    progress.reset()
    assert progress.finish(2, "") == ("finetui data create failed: exit status 2", True)


def _pair(doc: str, passage: int, question: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": f"text {passage}"}],
            "source": {"document": doc, "passage": passage, "page": passage or None}, **extra}


def test_review_accepts_rejects_edits_and_saves_what_was_kept(tmp_path):
    out = tmp_path / "book.jsonl"
    review = cs.Review()
    assert review.load(out) == "nothing written yet: g generates"
    out.write_text("".join(json.dumps(_pair("b.md", n, f"Q{n}?", reply="raw")) + "\n" for n in (2, 0)) + '{"partial',
                   encoding="utf-8")
    (tmp_path / "book.rejected.jsonl").write_text(json.dumps(_pair("b.md", 1, "Q1", reason="not a question")) + "\n",
                                                  encoding="utf-8")
    assert review.load(out) is None
    assert [p["record"]["source"]["passage"] for p in review.pairs] == [0, 1, 2]  # by document, then passage
    assert [p["status"] for p in review.pairs] == ["pending", "rejected", "pending"]
    assert review.heading() == "pair 1/3 · pending · accepted 0 · rejected 1 · pending 2"
    assert review.where() == "b.md passage 0"
    review.decide("accepted")
    assert review.index == 1 and review.heading().startswith("pair 2/3 · rejected (not a question) · accepted 1")
    assert review.where() == "b.md passage 1 · page 1"
    review.move(5)
    assert review.index == 2
    assert review.edit("   ") == "the question is empty: write one, or esc"
    assert review.edit(" What is in passage 2? ") is None
    assert review.pair["status"] == "accepted" and cs.question_of(review.pair["record"])["content"] == "What is in passage 2?"
    review.decide("rejected")
    assert review.index == 2  # the last pair stays
    review.move(-1)
    review.decide("accepted")  # a refused pair taken after all
    target, kept = review.save(out)
    assert target == tmp_path / "book.reviewed.jsonl" and kept == 2
    saved = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["source"]["passage"] for r in saved] == [0, 1] and all("reply" not in r for r in saved)
    assert cs.Review().save(out) is None
    assert cs.reviewed_path(Path("x/data.jsonl")) == Path("x/data.reviewed.jsonl")
