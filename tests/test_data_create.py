"""`finetui data create`: documents -> passages -> questions -> a dataset finetui trains on.

The documents are made here: PDFs with fpdf2 (an outline, page-number footers, paragraphs
of known lengths and marker words on known pages), Markdown, HTML, EPUB. The question
writer is exercised against a real HTTP server on 127.0.0.1 that speaks the OpenAI chat
completions API (the remote side; the client under test is finetui's), and against the
built-in models through engine.chat.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetui.engine import cli
from finetui.engine.data.create import documents, passages, quality
from finetui.engine.data.create.store import repair_tail
from finetui.engine.data.create.writers import PromptTemplate
from test_real_model import smollm2, smollm2_dir  # noqa: F401 - fixtures: the built-in smollm2, fetched once

REPO = Path(__file__).resolve().parents[1]
INTERVIEW = REPO / "tests" / "data" / "fidelity" / "interview_transcript.txt"

WORDS = ("river bank stone mill water bridge village harvest winter summer lantern market orchard miller "
         "ferry storm meadow chapel forge weaver shepherd letter journey island harbour granary beacon "
         "valley candle library merchant cartwright tailor quarry spring autumn saddle compass garden").split()


def sentences(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def paragraph_of(rng: random.Random, chars: int) -> str:
    text = ""
    while len(text) < chars:
        text = f"{text} {sentences(rng, 1)}".strip()
    return text


def make_pdf(path: Path, chapters: list[tuple[str, list[str]]], toc: bool = False) -> None:
    """A PDF with one outline entry per chapter, each chapter on a new page, and the page
    number in the footer of every page."""
    from fpdf import FPDF

    class Book(FPDF):
        def footer(self):
            self.set_y(-15)
            self.set_font("Helvetica", size=9)
            self.cell(0, 10, str(self.page_no()), align="C")

    pdf = Book()
    pdf.set_auto_page_break(True, margin=20)
    if toc:
        pdf.add_page()
        pdf.start_section("Contents", level=0)
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 10, "Contents", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for k, (title, _) in enumerate(chapters):
            pdf.cell(0, 6, f"{title} {'.' * 20} {k * 3 + 2}", new_x="LMARGIN", new_y="NEXT")
    for title, paras in chapters:
        pdf.add_page()
        pdf.start_section(title, level=0)
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for text in paras:
            pdf.multi_cell(0, 5, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    pdf.output(str(path))


# ---------------------------------------------------------------------------- passages


def test_pdf_passages_follow_the_seed_limits_with_headings_and_pages(tmp_path):
    rng = random.Random(4)
    short = [paragraph_of(rng, 60) for _ in range(3)]  # merged: together < 300
    long = paragraph_of(rng, 4500)  # split: > 2,000, over a page break
    chapters = [
        ("Chapter 1: The Mill", [*short, paragraph_of(rng, 900), "MARKERONE " + paragraph_of(rng, 700)]),
        ("Chapter 2: The Ferry", [paragraph_of(rng, 1500), long, paragraph_of(rng, 100)]),
        ("Chapter 3: The Harbour", ["MARKERTHREE " + paragraph_of(rng, 1200)]),
    ]
    pdf = tmp_path / "book.pdf"
    make_pdf(pdf, chapters)
    doc = documents.read(pdf)
    ps = passages.passages(doc)
    assert doc.pages == 4
    for p in ps:
        assert doc.text[p.start:p.end] == p.text
        assert len(p.text) <= passages.MAX_CHARS
        assert not re.search(r"^\d+$", p.text, re.MULTILINE), "a footer page number is in a passage"
    # three short paragraphs are one passage, not three
    first = ps[0]
    assert first.heading == "Chapter 1: The Mill" and first.page == 1
    assert all(s in first.text for s in short) and len(first.text) >= passages.MIN_CHARS
    # the 4,500-character paragraph became pieces of at most 2,000 that end at sentence ends
    ferry = [p for p in ps if p.heading == "Chapter 2: The Ferry"]
    pieces = [p for p in ferry if p.text[:60] in long]
    assert len(pieces) == 3 and pieces[0].text.startswith(long[:60]) and long[-60:] in pieces[-1].text
    assert all(p.text.rstrip().endswith(".") for p in ferry)
    # the short last paragraph of chapter 2 joined the passage before it
    assert all(len(p.text) >= passages.MIN_CHARS for p in ferry)
    assert (ferry[0].page, ferry[-1].page, ferry[-1].page_end) == (2, 2, 3)  # the paragraph runs onto page 3
    marker = next(p for p in ps if "MARKERTHREE" in p.text)
    assert marker.heading == "Chapter 3: The Harbour" and marker.page == doc.pages
    assert next(p for p in ps if "MARKERONE" in p.text).page in (1, 2)
    # the limits are settings
    small = passages.passages(doc, min_chars=100, max_chars=500)
    assert len(small) > len(ps) and all(len(p.text) <= 500 for p in small)
    assert [p.index for p in ps] == list(range(len(ps)))


def test_running_headers_of_one_chapter_are_dropped():
    """A manual's chapter 4 spans 12 of its 36 pages, each opening with "Chapter 4: Function
    reference N" (libtasn1's manual does): a running header, though not on most pages."""
    pages = [[f"Chapter 4: Function reference {k + 9}", f"int asn1_call_{k} (node) [Function]", "Returns: zero."]
             for k in range(12)]
    pages += [[f"The {WORDS[k]} section opens with prose.", "Returns: zero.", f"Body of {WORDS[k]}.", "Returns: zero."]
              for k in range(24)]
    running = documents._running_lines(pages)
    assert running == {"chapter #: function reference #"}  # "Returns: zero." also stands inside pages


def test_markdown_html_and_epub_headings(tmp_path):
    md = tmp_path / "guide.md"
    md.write_text("---\ntitle: x\n---\n# Guide\n\nThe introduction runs over a first long line that\nwraps onto a second one.\n\n## Install\n\n"
                  "```\npip install\n\nfinetui\n```\n\nSetext\n------\n\n- one\n- two\n", encoding="utf-8")
    doc = documents.read(md)
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("Guide", "The introduction runs over a first long line that wraps onto a second one."),
        ("Guide > Install", "```\npip install\n\nfinetui\n```"),
        ("Guide > Setext", "- one\n- two"),
    ]
    html = tmp_path / "page.html"
    html.write_text("<html><head><title>t</title><style>p{}</style></head><body><nav>Home | About</nav>"
                    "<h1>Title</h1><p>First <b>para</b>graph.</p><script>x()</script><h2>Sub</h2>"
                    "<ul><li>item one</li><li>item two</li></ul><footer>(c) 2026</footer></body></html>")
    doc = documents.read(html)
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("Title", "First paragraph."), ("Title > Sub", "item one"), ("Title > Sub", "item two")]

    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id1")
    book.set_title("A Book")
    book.set_language("en")
    chapters = []
    for k in range(2):
        ch = epub.EpubHtml(title=f"Chapter {k + 1}", file_name=f"ch{k + 1}.xhtml", lang="en")
        ch.content = f"<h1>Chapter {k + 1}</h1><p>Words of chapter {k + 1}.</p>"
        book.add_item(ch)
        chapters.append(ch)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = chapters
    path = tmp_path / "book.epub"
    epub.write_epub(str(path), book)
    doc = documents.read(path)
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("Chapter 1", "Words of chapter 1."), ("Chapter 2", "Words of chapter 2.")]


def test_bad_documents_are_named(tmp_path):
    with pytest.raises(documents.DocumentError, match=r"x\.docx: unsupported document type '\.docx'"):
        documents.read(tmp_path / "x.docx")
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"not a pdf at all")
    with pytest.raises(documents.DocumentError, match="broken.pdf: not a readable PDF"):
        documents.read(bad)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(documents.DocumentError, match=r"latin.txt: not UTF-8 text at byte 3"):
        documents.read(latin)
    with pytest.raises(ValueError, match=r"\{answer\}"):
        PromptTemplate("Q for {passage} and {answer}", "my.txt")


def test_quality_gates():
    assert quality.boilerplate("Contents\nIntroduction ........ 1\nThe Mill ....... 5\nThe Ferry ...... 9") \
        == "table of contents"
    assert quality.boilerplate("apples, 12, 45\nbridges, 3\ncandles, 7-9\ndogs, 100") == "index"
    assert quality.boilerplate("Anything at all here.", "Book > Index") == "index"
    assert quality.boilerplate("The miller crossed the river at dawn. " * 5) is None
    assert quality.clean_question('Question: "What does the miller do at dawn?"') == "What does the miller do at dawn?"
    assert quality.clean_question("Sure! Here is one:\n\n1. Why did the ferry stop?") == "Why did the ferry stop?"
    assert quality.question_problem("") == quality.EMPTY
    assert quality.question_problem("Why " + "very " * 80 + "long?") == quality.OVERLONG
    assert quality.question_problem("The passage is about a river.") == quality.NOT_QUESTION
    assert quality.question_problem("Why did the ferry stop?") is None
    dups = quality.NearDuplicates(0.8)
    dups.add("What did the miller do when the river froze in winter?", "a passage 1")
    assert dups.match("What did the miller do when the river froze in winter ?") == "a passage 1"
    assert dups.match("Why did the ferry stop running during the storm?") is None


def test_repair_tail_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_tail(path) == len(b'{"c": ')
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert repair_tail(path) == 0


# ---------------------------------------------------------------------------- a fake endpoint


class FakeOpenAI:
    """A chat completions server on 127.0.0.1: the question it writes names the first
    words of the passage it was sent; the first request gets a 429 (Retry-After: 0)."""

    def __init__(self, delay: float = 0.0, first_429: bool = True, status: int | None = None):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.delay = delay
        self.first_429 = first_429
        self.status = status
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    n = len(fake.requests)
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if fake.status:
                    return self._send(fake.status, {"error": {"message": "invalid api key"}})
                if fake.first_429 and n == 0:
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                time.sleep(fake.delay)
                prompt = body["messages"][0]["content"]
                passage = prompt.split('Passage:\n"""\n', 1)[1].split('\n"""', 1)[0]
                words = passage.split()
                if "\nQuestion: " in prompt:  # the rewrite of --answer rewrite
                    asked = prompt.split("\nQuestion: ", 1)[1].split("\n", 1)[0]
                    reply = "" if "EMPTYANSWER" in passage else f"In short, {' '.join(words[:5])}. ({len(asked)})"
                elif "NOTQUESTION" in passage:
                    reply = "Sure. This passage is about a river."
                elif "DUPLICATE" in passage:
                    reply = "What happened at the old mill by the river?"
                else:
                    reply = f"Question: What does the passage that opens with {' '.join(words[:7])} tell us?"
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                              "finish_reason": "stop"}]})

            def _send(self, code, obj, headers=None):
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def create(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    rc = cli.main(["data", "create", *argv, "--json"])
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    return rc, report, err


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def story(tmp_path: Path, n: int = 8, seed: int = 1) -> Path:
    rng = random.Random(seed)
    parts = ["# Contents\n\nThe Mill ........ 1\nThe Ferry ........ 4\nThe Harbour ........ 9\n"]
    for k in range(n):
        if k % 3 == 0:
            parts.append(f"# Part {k // 3 + 1}\n")
        parts.append(paragraph_of(rng, 400 + 37 * k) + "\n")
    path = tmp_path / "story.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def test_endpoint_writes_a_dataset_with_sources_retries_and_gates(tmp_path, capsys, monkeypatch):
    doc = story(tmp_path, 8)
    text = doc.read_text(encoding="utf-8").replace("\n# Part 2\n", "\n# Part 2\n\nNOTQUESTION " + "x " * 160 + "\n")
    text += "\nDUPLICATE one " + paragraph_of(random.Random(7), 500) + "\n\nDUPLICATE two " \
        + paragraph_of(random.Random(8), 500) + "\n"
    doc.write_text(text, encoding="utf-8")
    expected = passages.passages(documents.read(doc))
    monkeypatch.setenv("MY_KEY", "sk-test")
    out = tmp_path / "ds.jsonl"
    with FakeOpenAI() as server:
        rc, report, err = create([str(doc), "--out", str(out), "--base-url", server.url, "--model", "fake-1",
                                  "--api-key-env", "MY_KEY", "--retry-wait", "0.01", "--concurrency", "3",
                                  "--system", "You answer from the book."], capsys)
    assert rc == 0, err
    prose = [p for p in expected if not quality.boilerplate(p.text, p.heading)]
    assert report["boilerplate"] == {"table of contents": 1}
    assert report["rejected"] == {"not a question": 1, "near-duplicate question": 1}
    assert report["retries"] == 1 and report["failed"] == 0
    # one 429 then one request per prose passage; the key travels as a bearer token
    assert len(server.requests) == len(prose) + 1
    assert {h.get("Authorization") for h in server.headers} == {"Bearer sk-test"}
    assert {r["model"] for r in server.requests} == {"fake-1"}
    # the previous passage is the prompt's context
    second = next(r["messages"][0]["content"] for r in server.requests
                  if f'Passage:\n"""\n{prose[1].text}\n"""' in r["messages"][0]["content"])
    assert f'Previous passage (context):\n"""\n{prose[0].text}\n"""' in second
    records = lines(out)
    assert len(records) == len(prose) - 2 == report["written"]
    by_index = {p.index: p for p in expected}
    for rec in records:
        system, user, assistant = rec["messages"]
        src = rec["source"]
        p = by_index[src["passage"]]
        assert system == {"role": "system", "content": "You answer from the book."}
        first_words = " ".join(p.text.split()[:7])
        assert user == {"role": "user", "content": f"What does the passage that opens with {first_words} tell us?"} \
            or (user["content"] == "What happened at the old mill by the river?" and "DUPLICATE one" in p.text)
        assert assistant == {"role": "assistant", "content": p.text}
        assert src["document"] == "story.md" and src["span"] == [p.start, p.end] and src["heading"] == p.heading
    assert [r["source"]["passage"] for r in records] == sorted(r["source"]["passage"] for r in records)
    rejected = lines(tmp_path / "ds.rejected.jsonl")
    assert sorted(r["reason"] for r in rejected) == ["near-duplicate question", "not a question"]
    dup = next(r for r in rejected if r["reason"] == "near-duplicate question")
    assert "passage" in dup["duplicate_of"]
    # finetui reads the result as a messages dataset with every record usable
    from finetui.engine.data.readers import load_records

    loaded = load_records(out)
    assert loaded.format == "messages" and loaded.counts["ok"] == len(records) and loaded.counts["invalid"] == 0
    # the same command again: nothing left to do, nothing sent
    with FakeOpenAI() as again:
        rc, report, _ = create([str(doc), "--out", str(out), "--base-url", again.url, "--model", "fake-1",
                                "--api-key-env", "MY_KEY", "--system", "You answer from the book."], capsys)
    assert rc == 0 and again.requests == [] and report["new_written"] == 0 and len(lines(out)) == len(records)
    # records lost from the dataset (a file restored from a backup) are made again, not skipped
    kept = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(kept[:-2]) + "\n", encoding="utf-8")
    with FakeOpenAI(first_429=False) as again:
        rc, report, _ = create([str(doc), "--out", str(out), "--base-url", again.url, "--model", "fake-1",
                                "--system", "You answer from the book."], capsys)
    assert rc == 0 and len(again.requests) == 2 and report["new_written"] == 2
    assert any("2 record(s) the progress file notes are not in it" in line for line in report["repaired"])
    assert [json.loads(line)["source"]["hash"] for line in out.read_text().splitlines()] == \
        [r["source"]["hash"] for r in records]
    # other settings on the same file are refused, naming the setting
    rc = cli.main(["data", "create", str(doc), "--out", str(out), "--base-url", again.url, "--model", "fake-1",
                   "--max-chars", "900"])
    assert rc == 1 and "max_chars: 2000 -> 900" in capsys.readouterr().err


def test_answers_rewritten_by_the_writer(tmp_path, capsys):
    doc = story(tmp_path, 4)
    text = doc.read_text(encoding="utf-8") + "\nNOTQUESTION " + "y " * 160 + "\n\nEMPTYANSWER " \
        + paragraph_of(random.Random(9), 400) + "\n"
    doc.write_text(text, encoding="utf-8")
    out = tmp_path / "rw.jsonl"
    with FakeOpenAI(first_429=False) as server:
        rc, report, err = create([str(doc), "--out", str(out), "--base-url", server.url, "--model", "m",
                                  "--answer", "rewrite"], capsys)
    assert rc == 0, err
    assert report["rejected"] == {"not a question": 1, "empty answer": 1}
    records = lines(out)
    assert len(records) == 4 == report["written"]
    # two requests a pair, one for the passage whose question was refused
    assert len(server.requests) == 2 * 5 + 1
    by_index = {p.index: p for p in passages.passages(documents.read(doc))}
    for rec in records:
        user, assistant = rec["messages"]
        words = " ".join(by_index[rec["source"]["passage"]].text.split()[:5])
        assert assistant["content"] == f"In short, {words}. ({len(user['content'])})"
        assert rec["source"]["answer"] == "rewrite"
    rc = cli.main(["data", "create", str(doc), "--out", str(out), "--base-url", server.url, "--model", "m"])
    assert rc == 1 and "answer: 'rewrite" in capsys.readouterr().err
    bad = tmp_path / "bad_rewrite.txt"
    bad.write_text("Rewrite {passage}", encoding="utf-8")
    rc = cli.main(["data", "create", str(doc), "--out", str(tmp_path / "x.jsonl"), "--base-url", server.url,
                   "--model", "m", "--answer", "rewrite", "--rewrite-prompt", str(bad)])
    assert rc == 1 and "no {question} placeholder" in capsys.readouterr().err


def test_endpoint_refusal_stops_with_the_reason(tmp_path, capsys):
    doc = story(tmp_path, 3)
    with FakeOpenAI(status=401) as server:
        rc = cli.main(["data", "create", str(doc), "--out", str(tmp_path / "o.jsonl"), "--base-url", server.url,
                       "--model", "m", "--api-key-env", "NO_SUCH_VARIABLE_SET"])
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 401" in err and "--api-key-env" in err
    assert len(server.requests) <= 4  # stopped, not one refusal per passage
    rc = cli.main(["data", "create", str(doc), "--out", str(tmp_path / "o.txt"), "--base-url", "http://x/v1",
                   "--model", "m"])
    assert rc == 1 and "--out" in capsys.readouterr().err
    # nothing listening: the run stops after the first passages fail, it does not try every one
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cli.main(["data", "create", str(story(tmp_path, 8)), "--out", str(tmp_path / "down.jsonl"), "--base-url",
                   f"http://127.0.0.1:{port}/v1", "--model", "m", "--retries", "1", "--retry-wait", "0.01",
                   "--concurrency", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "the first 3 passages all failed" in err and "Connection refused" in err
    assert (tmp_path / "down.jsonl").read_text() == ""


def test_killed_run_resumes_without_duplicates(tmp_path, finetui_cache):
    doc = story(tmp_path, 14, seed=3)
    out = tmp_path / "ds.jsonl"
    expected = [p for p in passages.passages(documents.read(doc)) if not quality.boilerplate(p.text, p.heading)]
    with FakeOpenAI(delay=0.25, first_429=False) as server:
        argv = [sys.executable, "-m", "finetui.engine.cli", "data", "create", str(doc), "--out", str(out), "--base-url",
                server.url, "--model", "m", "--concurrency", "1", "--json"]
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = lines(out)
        assert 3 <= len(before) < len(expected), "the kill came too late to test anything"
        with open(out, "a", encoding="utf-8") as fh:  # a write the kill cut short
            fh.write('{"messages": [{"role": "user", "content": "Wha')
        sent_first = len(server.requests)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("cut short" in line for line in report["repaired"])
    records = lines(out)
    hashes = [r["source"]["hash"] for r in records]
    assert len(hashes) == len(set(hashes)) == len(expected)
    assert [r["source"]["passage"] for r in records] == [p.index for p in expected]
    assert records[: len(before)] == before
    # the second run asked only for what the first did not finish
    assert len(server.requests) - sent_first == len(expected) - len(before)


def test_transcript_becomes_a_conversation_with_roles(tmp_path, capsys):
    out = tmp_path / "talk.jsonl"
    rc, report, err = create([str(INTERVIEW), "--out", str(out), "--roles", "Interviewer=user,Dr. Okafor=assistant"],
                             capsys)
    assert rc == 0, err
    records = lines(out)
    assert len(records) == 2 == report["written"]
    for rec in records:
        roles = [m["role"] for m in rec["messages"]]
        assert roles[0] == "user" and "assistant" in roles
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert rec["source"]["document"] == "interview_transcript.txt"
        assert rec["source"]["place"].startswith(str(INTERVIEW))
    first = records[0]["messages"]
    assert first[0]["content"].startswith("Thanks for joining") or first[0]["content"]
    rc = cli.main(["data", "create", str(INTERVIEW), "--out", str(tmp_path / "b.jsonl"), "--roles", "Host=user"])
    assert rc == 1 and "no role" in capsys.readouterr().err
    # rows of a diarised podcast, grouped by episode: the episode with an unmapped speaker is named, not lost silently
    podcast = INTERVIEW.with_name("podcast_transcript.jsonl")
    rc, report, err = create([str(podcast), "--out", str(tmp_path / "pod.jsonl"), "--roles", "Host=user,Guest=assistant"],
                             capsys)
    assert rc == 0 and report["written"] == 1
    assert len(report["issues"]) == 1 and "'Producer' has no role" in report["issues"][0]
    assert "podcast_transcript.jsonl:14" in report["issues"][0]
    rc, report, err = create([str(podcast), "--out", str(tmp_path / "pod.jsonl"), "--roles",
                              "Host=user,Guest=assistant,Producer=user", "--overwrite"], capsys)
    assert rc == 0 and report["written"] == 2 and report["issues"] == []
    episodes = lines(tmp_path / "pod.jsonl")
    assert episodes[0]["messages"][1]["content"].startswith("Thanks for having me.")


def test_local_model_writes_records_in_the_training_format(tmp_path, capsys, finetui_cache):
    doc = story(tmp_path, 3)
    out = tmp_path / "tiny.jsonl"
    rc, report, err = create([str(doc), "--out", str(out), "--model", "tiny", "--max-tokens", "12"], capsys)
    assert rc == 0, err
    rejected = tmp_path / "tiny.rejected.jsonl"
    made = lines(out) + (lines(rejected) if rejected.exists() else [])
    assert len(made) == 3 == report["written"] + sum(report["rejected"].values())
    for rec in made:
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
        assert isinstance(rec["messages"][0]["content"], str)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_30_page_pdf_becomes_a_dataset_a_run_trains_on(tmp_path, capsys, finetui_cache):
    rng = random.Random(30)
    chapters = [(f"Chapter {k + 1}: The {WORDS[k].capitalize()}",
                 [paragraph_of(rng, rng.choice((150, 700, 1200, 2600))) for _ in range(7)]) for k in range(15)]
    pdf = tmp_path / "book.pdf"
    make_pdf(pdf, chapters, toc=True)
    doc = documents.read(pdf)
    assert 28 <= doc.pages <= 36
    out = tmp_path / "book.jsonl"
    with FakeOpenAI(first_429=False) as server:
        rc, report, err = create([str(pdf), "--out", str(out), "--base-url", server.url, "--model", "m",
                                  "--concurrency", "4"], capsys)
    assert rc == 0, err
    assert report["boilerplate"] == {"table of contents": 1}
    records = lines(out)
    assert len(records) == report["written"] >= 60
    assert {r["source"]["page"] for r in records} >= set(range(3, doc.pages, 3))
    runs_dir = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(runs_dir), "train",
         str(REPO / "sample_data" / "quickstart.yaml"), "--name", "book", "--set", f"data.path={out}",
         "--set", "data.format=messages", "--set", "data.test_path=null", "--set", "data.test_size=0.1",
         "--set", "data.max_length=256", "--set", "train.max_steps=6", "--set", "train.eval_steps=3",
         "--set", "train.save_steps=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in runs_dir.iterdir() if (p / "config.yaml").exists()]
    from finetui.engine import events as ev

    events = ev.read_file(run_dir / "events.jsonl")
    started = next(e for e in events if e["type"] == "run_started")
    finished = events[-1]
    assert finished["type"] == "finished" and finished["status"] == "completed"
    assert started["datasets"]["train"] + started["datasets"]["test"] == len(records)
    assert started["config"]["data"]["path"] == str(out)


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_writes_questions_in_the_training_format(tmp_path, capsys, smollm2):
    doc = story(tmp_path, 3)
    out = tmp_path / "smol.jsonl"
    rc, report, err = create([str(doc), "--out", str(out), "--model", "smollm2", "--max-tokens", "48"], capsys)
    assert rc == 0, err
    rejected = tmp_path / "smol.rejected.jsonl"
    made = lines(out) + (lines(rejected) if rejected.exists() else [])
    assert len(made) == 3 == report["written"] + sum(report["rejected"].values())
    assert report["writer"] == "smollm2 (local)"
    expected = {p.index: p.text for p in passages.passages(documents.read(doc))}
    for rec in made:
        user, assistant = rec["messages"]
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": expected[rec["source"]["passage"]]}
    for rec in lines(out):
        assert rec["messages"][0]["content"].strip()
    # --answer rewrite: a second batched generation writes the reply from the passage
    rc, report, err = create([str(doc), "--out", str(tmp_path / "rw.jsonl"), "--model", "smollm2", "--max-tokens", "48",
                              "--answer", "rewrite"], capsys)
    assert rc == 0, err
    rewritten = lines(tmp_path / "rw.jsonl")
    assert rewritten and len(rewritten) == report["written"]
    for rec in rewritten:
        assert rec["source"]["answer"] == "rewrite"
        assert rec["messages"][1]["content"].strip() and rec["messages"][1]["content"] != expected[rec["source"]["passage"]]
