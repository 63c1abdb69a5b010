"""Text extraction and normalisation: real files of each supported type."""
from __future__ import annotations

import hashlib

import pytest

from rag.extract import (
    DocumentError,
    UnsupportedFormat,
    content_hash,
    extract,
    extract_file,
    normalize_text,
)


def make_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A minimal valid one-page PDF whose text layer holds `lines` (Helvetica, ASCII)."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops += [f"({esc(line)}) Tj", "T*"]
    ops.append("ET")
    stream = "\n".join(ops).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    if title:
        objects.append(f"<< /Title ({esc(title)}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    info = b" /Info %d 0 R" % len(objects) if title else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info, xref)
    return bytes(out)


def test_normalize_unifies_newlines_spaces_controls_and_unicode() -> None:
    raw = "\ufeffCafe\u0301  au   lait\r\nline two\t\tend\x00\x07\r\r\r\n\n\nnext para  \n"
    assert normalize_text(raw) == "Café au lait\nline two end\n\nnext para"
    assert normalize_text("a\u00a0b\u2003c") == "a b c"


def test_same_text_with_different_line_endings_has_same_hash() -> None:
    a = extract(b"Title\r\n\r\nBody text.  \r\n", "a.txt")
    b = extract("Title\n\nBody text.\n", "b.txt")
    assert a.content_hash == b.content_hash == hashlib.sha256(b"Title\n\nBody text.").hexdigest()
    assert content_hash(a.text) == a.content_hash
    assert extract("Title\n\nOther text.", "c.txt").content_hash != a.content_hash


def test_txt_title_is_first_short_line_and_bad_utf8_falls_back() -> None:
    doc = extract("Photosynthesis basics\n\nPlants turn light into sugar.", "notes.txt")
    assert doc.title == "Photosynthesis basics"
    assert extract(b"caf\xe9 menu", "menu.txt").text == "café menu"  # cp1252 fallback
    assert extract("x" * 500, "long-notes.txt").title == "long-notes"


def test_markdown_keeps_headings_and_takes_title_from_first_heading() -> None:
    doc = extract("Intro line\n\n# Install Guide\n\n## On Linux\n\nRun   apt.\n", "guide.md")
    assert doc.title == "Install Guide"
    assert doc.text == "Intro line\n\n# Install Guide\n\n## On Linux\n\nRun apt."


def test_html_drops_script_style_nav_and_keeps_headings() -> None:
    html = """<!doctype html><html><head><title>Cell Biology</title>
      <style>body { color: red }</style><script>var secret = 1;</script></head>
      <body><nav><a href="/">Home</a> | <a href="/x">Menu</a></nav>
      <h1>Cells</h1><p>A cell is the <b>basic unit</b>
      of life.</p><h2>Organelles</h2><ul><li>Nucleus</li><li>Mitochondria</li></ul>
      <p>Line one<br>Line two</p><script>alert(1)</script></body></html>"""
    doc = extract(html.encode(), "cells.html")
    assert doc.title == "Cell Biology"
    assert doc.text == (
        "# Cells\n\nA cell is the basic unit of life.\n\n## Organelles\n\n- Nucleus\n- Mitochondria"
        "\n\nLine one\nLine two"
    )
    for gone in ("secret", "alert", "color", "Home", "Menu"):
        assert gone not in doc.text


def test_html_without_title_uses_first_heading() -> None:
    assert extract("<h2>Only heading</h2><p>text</p>", "page.htm").title == "Only heading"


def test_pdf_text_and_title_metadata() -> None:
    pdf = make_pdf(["Newton's first law: an object stays at rest", "unless a force (push) acts on it."],
                   title="Mechanics 101")
    doc = extract(pdf, "mechanics.pdf")
    assert doc.title == "Mechanics 101"
    assert "Newton's first law: an object stays at rest" in doc.text
    assert "unless a force (push) acts on it." in doc.text
    assert doc.content_hash == content_hash(doc.text)


def test_pdf_without_metadata_titles_from_first_line(tmp_path) -> None:
    path = tmp_path / "waves.pdf"
    path.write_bytes(make_pdf(["Waves and sound", "Sound is a longitudinal wave."]))
    doc = extract_file(path)
    assert doc.title == "Waves and sound"
    assert doc.text.startswith("Waves and sound")


def test_broken_pdf_and_unknown_type_are_document_errors() -> None:
    with pytest.raises(DocumentError):
        extract(b"%PDF-1.4 this is not really a pdf", "broken.pdf")
    with pytest.raises(UnsupportedFormat):
        extract(b"PK\x03\x04", "slides.pptx")
    with pytest.raises(UnsupportedFormat):
        extract("text", "scan.pdf")  # a PDF must be bytes
