"""Plain text out of uploaded documents (.txt, .md, .html, .pdf), normalised.

Normalising before hashing means the same document uploaded twice, with CRLF line ends,
a BOM or trailing spaces, gets the same content hash and is stored once. Headings are kept
as markdown `#` lines so the chunker can follow the document's structure whatever the
input format was.
"""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePath

from pypdf import PdfReader, apply_configuration
from pypdf.errors import LimitReachedError
from pypdf.errors import PyPdfError as PdfError

from rag.fences import FenceState, classify
from rag.html import main_content
from rag.sniff import NotText, decode_text

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf"})

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_LINE_BREAKS = str.maketrans({"\x0b": "\n", "\x0c": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"})
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class DocumentError(ValueError):
    """A document that cannot be stored (the API answers bad_request)."""


class UnsupportedFormat(DocumentError):
    """The file's type is not one we can extract text from."""


class NotTextDocument(UnsupportedFormat):
    """A .txt/.md/.html file whose content is binary (an image, an archive, random bytes)."""


class EmptyDocument(DocumentError):
    """No text could be extracted (e.g. a scanned PDF without a text layer)."""


class DocumentTooLarge(DocumentError):
    """The document expands past a cap (text, pages, one page's text, chunks): `too_large`."""


# One page's content stream may decompress to at most this much. A text-heavy page is a few
# KB and a dense vector figure a few MB; a decompression bomb is tens of MB from a few KB.
MAX_PAGE_CONTENT_BYTES = 8_000_000


@dataclass(frozen=True)
class DocumentLimits:
    """Caps on what one document may expand to (text, pages, one page's text, chunks); 0
    turns a cap off.

    Checked while extracting (page by page, and within a page as its text is produced), so
    a small file that expands to gigabytes is refused after reading just past the cap,
    never extracted in full first."""

    max_text_chars: int = 0
    max_pages: int = 0
    max_page_chars: int = 0
    max_chunks: int = 0  # checked by the chunker (rag/chunking.py), as chunks are made

    def check_text(self, length: int) -> None:
        if self.max_text_chars and length > self.max_text_chars:
            raise DocumentTooLarge(f"the document has more than {self.max_text_chars:,} characters of text")


class _PageTextBudget:
    """pypdf text visitor that stops a page's extraction once its text passes the budget."""

    def __init__(self, budget: int, failure: str) -> None:
        self.budget, self.failure, self.seen = budget, failure, 0

    def __call__(self, text: str, *_: object) -> None:
        self.seen += len(text)
        if self.seen > self.budget:
            raise DocumentTooLarge(self.failure)


def _page_budget(limits: DocumentLimits, page_number: int, so_far: int) -> _PageTextBudget | None:
    """The visitor for one page: its own cap, or what is left of the document's, if smaller."""
    left = limits.max_text_chars - so_far if limits.max_text_chars else None
    if limits.max_page_chars and (left is None or limits.max_page_chars <= left):
        return _PageTextBudget(limits.max_page_chars,
                               f"page {page_number} has more than {limits.max_page_chars:,} characters of text")
    if left is not None:
        return _PageTextBudget(max(left, 0), f"the document has more than {limits.max_text_chars:,} characters "
                                             f"of text (reached on page {page_number})")
    return None


@dataclass(frozen=True)
class Extracted:
    """A document's normalised text, a guessed title and the dedupe key."""

    title: str
    text: str
    content_hash: str


def _normalize_line(line: str) -> str:
    return _SPACES.sub(" ", _CONTROL_CHARS.sub("", line.replace("\t", " "))).strip()


def normalize_text(text: str) -> str:
    """NFC, `\\n` newlines, no control characters, single spaces, at most one blank line.

    Inside fenced code (rag/fences.py) a line keeps its indentation and inner spaces and
    loses only trailing ones: Python without its indentation is not Python, and the fences
    are what tells the chunker that a `# comment` there is not a heading. A prose line is
    judged as it will be stored (normalised), so every later reader sees the same fences."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_LINE_BREAKS)
    lines: list[str] = []
    fences = FenceState()
    for line in text.split("\n"):
        if not fences.in_code:
            line = _normalize_line(line)
            fences.feed(line)
        else:
            line = _CONTROL_CHARS.sub("", line).rstrip()  # judged as stored: normalising twice is a no-op
            if fences.feed(line) == "close":
                line = line.strip()
        lines.append(line)
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def content_hash(normalized_text: str) -> str:
    """sha256 hex of the normalised text: the document dedupe key."""
    return hashlib.sha256(normalized_text.encode("utf-8")).hexdigest()


def decode_bytes(data: bytes) -> str:
    """The text of a .txt/.md/.html file; `NotTextDocument` if its content is not text."""
    try:
        return decode_text(data)
    except NotText as exc:
        raise NotTextDocument(str(exc)) from None


def html_to_text(html: str) -> tuple[str, str | None]:
    """The page's main content with headings as `#` lines and code fenced (rag/html.py),
    and its title."""
    page = main_content(html)
    return page.text, page.title


def pdf_to_text(data: bytes, limits: DocumentLimits | None = None) -> tuple[str, str | None]:
    """Text of every page (pages separated by a blank line), and the PDF's title metadata.

    Pages are extracted one at a time and the caps checked as the text grows, so a
    decompression bomb stops within a page of the cap: pypdf's own limit bounds what one
    content stream may decompress to, and a visitor stops a page whose text passes what is
    left of the document's budget or the per-page cap."""
    limits = limits or DocumentLimits()
    with apply_configuration(zlib_maximum_output_length=MAX_PAGE_CONTENT_BYTES,
                             lzw_maximum_output_length=MAX_PAGE_CONTENT_BYTES,
                             run_length_maximum_output_length=MAX_PAGE_CONTENT_BYTES,
                             brotli_maximum_output_length=MAX_PAGE_CONTENT_BYTES):
        reader = PdfReader(io.BytesIO(data))
        page_count = len(reader.pages)
        if limits.max_pages and page_count > limits.max_pages:
            raise DocumentTooLarge(f"the PDF has {page_count:,} pages, more than {limits.max_pages:,}")
        pages: list[str] = []
        total = 0
        for number, page in enumerate(reader.pages, start=1):
            visitor = _page_budget(limits, number, total)
            try:
                text = page.extract_text(visitor_text=visitor) or ""
            except LimitReachedError as exc:
                raise DocumentTooLarge(
                    f"page {number}'s content is over {MAX_PAGE_CONTENT_BYTES:,} bytes: {exc}") from exc
            total += len(text) + 2
            limits.check_text(total)
            pages.append(text)
        meta_title = reader.metadata.title if reader.metadata else None
    return "\n\n".join(pages), (str(meta_title) if meta_title else None)


def _first_heading(text: str) -> str | None:
    """The first markdown heading outside fenced code (a `# comment` in code is not one)."""
    for line, kind in classify(text.split("\n")):
        if kind == "text" and (match := _MD_HEADING.match(line)):
            return match.group(1).strip()
    return None


def guess_title(text: str, fallback: str) -> str:
    """First markdown heading, else the first line if it is short, else `fallback`."""
    if heading := _first_heading(text):
        return heading[:200]
    first_line = text.split("\n", 1)[0].strip()
    if first_line and len(first_line) <= 120:
        return first_line
    return fallback


def extract(data: bytes | str, filename: str, limits: DocumentLimits | None = None) -> Extracted:
    """Extract and normalise a document; the format comes from the file name's suffix.

    `DocumentTooLarge` when it expands past `limits`."""
    limits = limits or DocumentLimits()
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFormat(f"unsupported file type {suffix or '(none)'!r}: use .txt, .md, .html or .pdf")
    meta_title: str | None = None
    if suffix == ".pdf":
        if isinstance(data, str):
            raise UnsupportedFormat("a PDF must be given as bytes")
        if b"%PDF-" not in data[:1024]:
            raise NotTextDocument("the file is named .pdf but is not a PDF")
        try:
            raw, meta_title = pdf_to_text(data, limits)
        except DocumentTooLarge:
            raise
        except (PdfError, ValueError, KeyError, TypeError) as exc:  # pypdf's errors on broken files
            raise DocumentError(f"unreadable PDF: {exc}") from exc
    else:
        raw = decode_bytes(data) if isinstance(data, bytes) else data
        limits.check_text(len(raw))  # HTML markup only shrinks when its text is taken out
        if suffix in (".html", ".htm"):
            raw, meta_title = html_to_text(raw)
    text = normalize_text(raw)
    fallback = PurePath(filename).stem or "Untitled"
    title = normalize_text(meta_title) if meta_title and meta_title.strip() else guess_title(text, fallback)
    return Extracted(title=title, text=text, content_hash=content_hash(text))


def extract_file(path: str | Path, limits: DocumentLimits | None = None) -> Extracted:
    """`extract` for a file on disk."""
    path = Path(path)
    return extract(path.read_bytes(), path.name, limits)
