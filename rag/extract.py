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

from bs4 import BeautifulSoup, NavigableString, Tag
from pypdf import PdfReader
from pypdf.errors import PyPdfError as PdfError

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf"})

_DROP_TAGS = ("script", "style", "nav", "noscript", "template", "svg", "iframe", "head")
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote",
    "pre", "ul", "ol", "dl", "dt", "dd", "table", "tr", "figure", "figcaption", "form",
    "address", "details", "summary", "hr",
})
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_WHITESPACE_MAP = str.maketrans(
    {"\t": " ", "\x0b": "\n", "\x0c": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"}
)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_HTML_SPACE = re.compile(r"\s+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class DocumentError(ValueError):
    """A document that cannot be stored (the API answers bad_request)."""


class UnsupportedFormat(DocumentError):
    """The file's type is not one we can extract text from."""


class EmptyDocument(DocumentError):
    """No text could be extracted (e.g. a scanned PDF without a text layer)."""


@dataclass(frozen=True)
class Extracted:
    """A document's normalised text, a guessed title and the dedupe key."""

    title: str
    text: str
    content_hash: str


def normalize_text(text: str) -> str:
    """NFC, `\\n` newlines, no control characters, single spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_WHITESPACE_MAP)
    text = _CONTROL_CHARS.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def content_hash(normalized_text: str) -> str:
    """sha256 hex of the normalised text: the document dedupe key."""
    return hashlib.sha256(normalized_text.encode("utf-8")).hexdigest()


def decode_bytes(data: bytes) -> str:
    """UTF-8 (with or without BOM), falling back to cp1252 for old Windows files."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def html_to_text(html: str) -> tuple[str, str | None]:
    """Readable text of an HTML page with headings as `#` lines, and its <title>."""
    soup = BeautifulSoup(html, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    for tag in soup(list(_DROP_TAGS)):
        tag.decompose()
    # Outside <pre>, a newline in HTML source is just a space.
    for string in soup.find_all(string=True):
        if type(string) is NavigableString and string.find_parent(["pre", "textarea"]) is None:
            string.replace_with(NavigableString(_HTML_SPACE.sub(" ", str(string))))
    for tag in soup.find_all(True):
        name = tag.name
        if re.fullmatch(r"h[1-6]", name):
            heading = " ".join(tag.get_text(" ", strip=True).split())
            tag.replace_with(NavigableString(f"\n\n{'#' * int(name[1])} {heading}\n\n"))
        elif name == "br":
            tag.replace_with(NavigableString("\n"))
        elif name == "li":
            tag.insert_before(NavigableString("\n- "))
        elif name in ("td", "th"):
            tag.insert_after(NavigableString(" "))
        elif name in _BLOCK_TAGS and isinstance(tag, Tag):
            tag.insert_before(NavigableString("\n\n"))
            tag.insert_after(NavigableString("\n\n"))
    return soup.get_text(), title


def pdf_to_text(data: bytes) -> tuple[str, str | None]:
    """Text of every page (pages separated by a blank line), and the PDF's title metadata."""
    reader = PdfReader(io.BytesIO(data))
    pages = [page.extract_text() or "" for page in reader.pages]
    meta_title = reader.metadata.title if reader.metadata else None
    return "\n\n".join(pages), (str(meta_title) if meta_title else None)


def guess_title(text: str, fallback: str) -> str:
    """First markdown heading, else the first line if it is short, else `fallback`."""
    match = _MD_HEADING.search(text)
    if match:
        return match.group(1).strip()[:200]
    first_line = text.split("\n", 1)[0].strip()
    if first_line and len(first_line) <= 120:
        return first_line
    return fallback


def extract(data: bytes | str, filename: str) -> Extracted:
    """Extract and normalise a document; the format comes from the file name's suffix."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFormat(f"unsupported file type {suffix or '(none)'!r}: use .txt, .md, .html or .pdf")
    meta_title: str | None = None
    if suffix == ".pdf":
        if isinstance(data, str):
            raise UnsupportedFormat("a PDF must be given as bytes")
        try:
            raw, meta_title = pdf_to_text(data)
        except (PdfError, ValueError, KeyError, TypeError) as exc:  # pypdf's errors on broken files
            raise DocumentError(f"unreadable PDF: {exc}") from exc
    else:
        raw = decode_bytes(data) if isinstance(data, bytes) else data
        if suffix in (".html", ".htm"):
            raw, meta_title = html_to_text(raw)
    text = normalize_text(raw)
    fallback = PurePath(filename).stem or "Untitled"
    title = normalize_text(meta_title) if meta_title and meta_title.strip() else guess_title(text, fallback)
    return Extracted(title=title, text=text, content_hash=content_hash(text))


def extract_file(path: str | Path) -> Extracted:
    """`extract` for a file on disk."""
    path = Path(path)
    return extract(path.read_bytes(), path.name)
