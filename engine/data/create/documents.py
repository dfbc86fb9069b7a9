"""Documents -> paragraphs with their headings and pages.

Light module: stdlib only at import time; ``pypdf`` and ``ebooklib`` (the ``docs`` extra)
are imported when a .pdf or .epub is read. Every reader yields blocks (a heading or a
paragraph, with its page where the document has pages) and :class:`Document` lays them
out as one text, ``Document.text``: paragraphs separated by a blank line, a hard-wrapped
paragraph unwrapped into one line (lists, tables of contents and code keep their lines).
Character spans (``Block.start``/``end``, a passage's ``span``) index that text.

* ``.txt``: paragraphs between blank lines; a short single line without closing
  punctuation (``CHAPTER I``, ``The River``) is a heading.
* ``.md``: ATX (``# Title``) and setext headings, fenced code kept whole, front matter
  skipped.
* ``.html`` / ``.htm``: the standard library's ``html.parser``: block elements are
  paragraphs, ``h1``-``h6`` headings; scripts, styles, navigation, headers and footers
  dropped.
* ``.epub``: ebooklib; the chapters in reading order (the spine), each as HTML.
* ``.pdf``: pypdf's layout extraction (vertical gaps become blank lines, so paragraphs
  survive), 1-based physical page numbers, the outline's titles as headings, running
  headers and footers (a line repeated on most pages, a bare page number) dropped,
  hyphenation at line ends undone.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
            ".htm": "html", ".xhtml": "html", ".pdf": "pdf", ".epub": "epub"}
DOCS_EXTRA = "pip install 'finetui[docs]'"
HEADING_MAX_CHARS = 100  # a .txt line longer than this is never a heading
RUNNING_MAX_CHARS = 60  # a running header or footer is a short line ...
RUNNING_SHARE = 0.1  # ... at an edge of at least this share of the pages (and of 3 or more)
SEPARATOR = "\n\n"


class DocumentError(ValueError):
    """A document cannot be read; the message names the file (and page) and what to do."""


@dataclass
class Block:
    """One paragraph of a document: its text (a slice of ``Document.text``), span, page
    (1-based, PDFs only) and the headings above it (outermost first)."""

    text: str
    start: int
    end: int
    page: int | None = None
    headings: tuple[str, ...] = ()
    page_end: int | None = None  # the page it ends on, when it runs over a page break
    page_break: int | None = None  # where in Document.text that page starts

    def page_at(self, offset: int) -> int | None:
        """The page the character at ``offset`` (in Document.text) is on."""
        if self.page_break is not None and offset >= self.page_break:
            return self.page_end
        return self.page

    @property
    def heading(self) -> str | None:
        return " > ".join(self.headings) or None


@dataclass
class Document:
    path: Path
    kind: str
    text: str = ""
    blocks: list[Block] = field(default_factory=list)
    pages: int | None = None
    _stack: list[tuple[int, str]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def heading(self, level: int, title: str) -> None:
        """A heading of ``level`` (1 = outermost): replaces the headings at or below it."""
        title = " ".join(title.split())
        if not title:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        self._add(title)

    def paragraph(self, text: str, page: int | None = None) -> None:
        text = text.strip()
        if not text:
            return
        start = self._add(text)
        self.blocks.append(Block(text, start, start + len(text), page, tuple(t for _, t in self._stack)))

    def continue_paragraph(self, text: str, page: int) -> bool:
        """Join ``text`` to the last paragraph when that one ends the text so far and stops
        mid-sentence (a paragraph running over a page break). False when it cannot."""
        last = self.blocks[-1] if self.blocks else None
        text = text.strip()
        if last is None or last.end != len(self.text) or not text or last.text[-1:] in ".!?:\"'’”)" \
                or "\n" in last.text or not (text[0].islower() or last.text.endswith("-")):
            return False
        joined = unwrap([last.text, text])
        self.text = self.text[:last.start] + joined
        last.page_break = last.start + len(joined) - len(text)
        last.text, last.end, last.page_end = joined, last.start + len(joined), page
        return True

    def _add(self, text: str) -> int:
        if self.text:
            self.text += SEPARATOR
        start = len(self.text)
        self.text += text
        return start


# ---------------------------------------------------------------------------- text helpers

_LEADER = re.compile(r"(\.\s*){3,}|…")
_ENDS_WITH_NUMBER = re.compile(r"\s(\d{1,4}|[ivxlc]{1,6})$", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*([-*+•]|\d{1,3}[.)])\s+")
_SPACES = re.compile(r"[ \t\u00a0]+")


def keeps_lines(lines: list[str]) -> bool:
    """Whether a paragraph's lines are its structure (a list, a table of contents, an
    index, verse of short lines) rather than a hard wrap of prose."""
    if len(lines) < 2:
        return False
    listed = sum(1 for line in lines if _LIST_ITEM.match(line) or _LEADER.search(line)
                 or _ENDS_WITH_NUMBER.search(line.rstrip()))
    if listed >= len(lines) / 2:
        return True
    return max(len(line) for line in lines) < 40


def unwrap(lines: list[str]) -> str:
    """A paragraph's lines as its text: joined into one line (a word hyphenated at a line
    end joined back) unless :func:`keeps_lines`; a list keeps one line per item (its
    wrapped lines joined), a table one line per row."""
    raw = [line for line in lines if line.strip()]
    lines = [_SPACES.sub(" ", line).strip() for line in raw]
    if lines and all(line.startswith("|") for line in lines):
        return "\n".join(lines)
    if lines and _LIST_ITEM.match(lines[0]):
        items: list[list[str]] = []
        for line in lines:
            if _LIST_ITEM.match(line) or not items:
                items.append([line])
            else:
                items[-1].append(line)
        return "\n".join(_join(item) for item in items)
    if keeps_lines(lines):
        return "\n".join(lines)
    return _join(lines)


def _join(lines: list[str]) -> str:
    out = ""
    for line in lines:
        if out.endswith("-") and len(out) > 1 and out[-2].isalpha() and line[:1].islower():
            out = out[:-1] + line
        else:
            out = f"{out} {line}" if out else line
    return out


def _paragraphs(lines: list[str]) -> list[list[str]]:
    """Lines grouped into paragraphs at blank lines."""
    out: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def _looks_like_heading(lines: list[str]) -> bool:
    if len(lines) != 1:
        return False
    line = lines[0].strip()
    if not line or len(line) > HEADING_MAX_CHARS or line[-1] in ".,;:!?\"'’”)":
        return False
    return (line[0].isupper() or line[0].isdigit()) and len(line.split()) <= 12


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text at byte {exc.start:,} (save it as UTF-8)") from None


# ---------------------------------------------------------------------------- readers


def read_text(path: Path, doc: Document) -> None:
    lines = _decode(path, path.read_bytes()).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for para in _paragraphs(lines):
        if _looks_like_heading(para):
            doc.heading(1, para[0])
        else:
            doc.paragraph(unwrap(para))


_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def read_markdown(path: Path, doc: Document) -> None:
    lines = _decode(path, path.read_bytes()).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[0].strip() == "---":  # YAML front matter
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                lines = lines[i + 1:]
                break
    para: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if para:
            doc.paragraph(unwrap(para))
            para.clear()

    for line in lines:
        if fence is not None:
            para.append(line)
            if line.strip().startswith(fence):
                doc.paragraph("\n".join(para))
                para.clear()
                fence = None
            continue
        m = _FENCE.match(line)
        if m:
            flush()
            fence = m.group(1)
            para.append(line)
            continue
        m = _ATX.match(line)
        if m:
            flush()
            doc.heading(len(m.group(1)), m.group(2))
            continue
        if para and len(para) == 1 and _SETEXT.match(line) and not _LIST_ITEM.match(para[0]):
            title = para.pop()
            doc.heading(1 if line.strip().startswith("=") else 2, title)
            continue
        if line.strip():
            para.append(line)
        else:
            flush()
    if fence is not None:  # an unclosed fence: keep what it holds
        doc.paragraph("\n".join(para))
        para.clear()
    flush()


_BLOCK_TAGS = {"p", "div", "li", "ul", "ol", "pre", "blockquote", "tr", "table", "section", "article", "main",
               "dd", "dt", "dl", "figcaption", "figure", "br", "hr", "td", "th", "caption", "address"}
_SKIP_TAGS = {"script", "style", "nav", "head", "noscript", "template", "svg", "header", "footer", "aside",
              "button", "form", "select"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HTMLBlocks(HTMLParser):
    """HTML -> headings and paragraphs on a Document."""

    def __init__(self, doc: Document):
        super().__init__(convert_charrefs=True)
        self.doc = doc
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0
        self.heading_level: int | None = None

    def flush(self) -> None:
        text = "".join(self.parts)
        self.parts = []
        if self.heading_level is not None:
            self.doc.heading(self.heading_level, text)
        elif self.pre:
            self.doc.paragraph(text.strip("\n"))
        else:
            self.doc.paragraph(" ".join(text.split()))

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS and tag not in _VOID:
            self.skip += 1
            return
        if self.skip:
            return
        if re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading_level = int(tag[1])
        elif tag in _BLOCK_TAGS:
            self.flush()
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag, attrs):
        if not self.skip and tag in _BLOCK_TAGS:
            self.flush()

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS and tag not in _VOID:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading_level = None
        elif tag in _BLOCK_TAGS:
            self.flush()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)

    def close(self):
        super().close()
        self.flush()


def _html_into(doc: Document, html: str) -> None:
    parser = _HTMLBlocks(doc)
    parser.feed(html)
    parser.close()


def read_html(path: Path, doc: Document) -> None:
    _html_into(doc, _decode(path, path.read_bytes()))


def read_epub(path: Path, doc: Document) -> None:
    try:
        import ebooklib
        from ebooklib import epub
    except ImportError:
        raise DocumentError(f"{path}: reading .epub needs ebooklib ({DOCS_EXTRA})") from None
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as exc:  # noqa: BLE001 - zip, XML and ebooklib errors alike
        raise DocumentError(f"{path}: not a readable EPUB: {exc}") from None
    for position, (idref, *_rest) in enumerate(book.spine, 1):
        item = book.get_item_with_id(idref)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        try:
            html = item.get_content().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"{path}: chapter {position} ({item.get_name()}): not UTF-8 at byte {exc.start:,}") from None
        _html_into(doc, html)


_PAGE_NUMBER = re.compile(r"^(page\s+)?[-–—]?\s*(\d{1,5}|[ivxlcdm]{1,7})\s*[-–—]?(\s+(of|/)\s+\d{1,5})?$", re.IGNORECASE)


def _outline(reader) -> dict[int, list[tuple[int, str]]]:
    """Page index -> [(level, title)] from the PDF's outline (bookmarks)."""
    found: dict[int, list[tuple[int, str]]] = {}

    def walk(items, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - a bookmark to nowhere is ignored
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            if page is not None and page >= 0 and title:
                found.setdefault(page, []).append((level, title))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a broken outline: no headings, the text still reads
        return {}
    return found


def _running_lines(pages: list[list[str]]) -> set[str]:
    """Short lines (digits masked) that open or close most pages and never stand inside a
    page's text: running headers and footers."""
    if len(pages) < 3:
        return set()
    edges: Counter = Counter()
    inside: set[str] = set()
    for lines in pages:
        content = [line for line in lines if line.strip()]
        ends = content[:1] + content[-1:]
        edges.update({_mask(line) for line in ends if len(line) <= RUNNING_MAX_CHARS})
        inside.update(_mask(line) for line in content[1:-1])
    return {line for line, n in edges.items() if n >= max(3, RUNNING_SHARE * len(pages)) and line and line not in inside}


def _mask(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.split()).lower())


def read_pdf(path: Path, doc: Document) -> None:
    try:
        import pypdf
    except ImportError:
        raise DocumentError(f"{path}: reading .pdf needs pypdf ({DOCS_EXTRA})") from None
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"{path}: the PDF is encrypted with a password (decrypt it first)")
        n_pages = len(reader.pages)
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf's errors are many
        raise DocumentError(f"{path}: not a readable PDF: {exc}") from None
    doc.pages = n_pages
    outline = _outline(reader)
    pages: list[list[str]] = []
    for i, page in enumerate(reader.pages):
        try:
            text = page.extract_text(extraction_mode="layout")
        except Exception:  # noqa: BLE001 - layout mode fails on some fonts: plain mode then
            try:
                text = page.extract_text()
            except Exception as exc:  # noqa: BLE001
                raise DocumentError(f"{path}, page {i + 1}: the text cannot be extracted: {exc}") from None
        pages.append([_SPACES.sub(" ", line).strip() for line in (text or "").splitlines()])
    if not any(line for lines in pages for line in lines):
        raise DocumentError(f"{path}: no text on any of its {n_pages} pages (a scanned PDF needs OCR first)")
    running = _running_lines(pages)
    for i, lines in enumerate(pages):
        content = [j for j, line in enumerate(lines) if line]
        titles = list(outline.get(i, []))
        drop = {j for j in content[:1] + content[-1:]
                if _mask(lines[j]) in running and not any(_fold(lines[j]) == _fold(t) for _, t in titles)}
        for j in content[:1] + content[-1:]:
            if _PAGE_NUMBER.match(lines[j]):
                drop.add(j)
        lines = ["" if j in drop else line for j, line in enumerate(lines)]
        paras = _paragraphs(lines)
        on_page = {_fold(line) for para in paras for line in para}
        for level, title in [t for t in titles if _fold(t[1]) not in on_page]:
            doc.heading(level, title)  # a bookmark whose title is no line of the page opens it
        pending = [t for t in titles if _fold(t[1]) in on_page]
        first = True
        for para in paras:
            if first and not titles and doc.continue_paragraph(unwrap(para), i + 1):
                first = False
                continue
            first = False
            kept: list[str] = []
            for line in para:
                match = next((t for t in pending if _fold(t[1]) == _fold(line)), None)
                if match is None:
                    kept.append(line)
                    continue
                if kept:
                    doc.paragraph(unwrap(kept), page=i + 1)
                    kept = []
                pending.remove(match)
                doc.heading(*match)
            if kept:
                doc.paragraph(unwrap(kept), page=i + 1)


def _fold(line: str) -> str:
    return " ".join(line.split()).casefold()


READERS = {"text": read_text, "markdown": read_markdown, "html": read_html, "epub": read_epub, "pdf": read_pdf}


def kind_of(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted({s for s in SUFFIXES if s not in (".text", ".markdown", ".xhtml")}))
        raise DocumentError(f"{path}: unsupported document type {path.suffix or '(no suffix)'!r}; "
                            f"finetui data create reads {known}")
    return kind


def read(path: str | Path) -> Document:
    """Read one document. Raises DocumentError naming the file (and page)."""
    path = Path(path)
    kind = kind_of(path)
    if not path.exists():
        raise DocumentError(f"{path}: no such file")
    if path.is_dir():
        raise DocumentError(f"{path}: is a folder (name the documents in it, e.g. {path}/*.pdf)")
    doc = Document(path, kind)
    try:
        READERS[kind](path, doc)
    except OSError as exc:
        raise DocumentError(f"{path}: {exc.strerror or exc}") from None
    if not doc.blocks:
        raise DocumentError(f"{path}: no text found in the document")
    return doc
