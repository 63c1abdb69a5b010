"""Text extraction and normalisation: real files of each supported type."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_text
from rag.extract import (
    DocumentError,
    Extracted,
    NotTextDocument,
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
    assert doc.title == "Cells"  # the page's own heading; <title> often adds the site's name
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


# ---- real pages (tests/fixtures/html, see its README) -----------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "html"


def fixture_page(name: str) -> Extracted:
    return extract_file(FIXTURES / name)


def heading_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith("#")]


def test_sphinx_page_keeps_body_code_and_version_markers_and_drops_navigation() -> None:
    doc = fixture_page("sphinx_venv.html")
    assert doc.title == "venv — Creation of virtual environments"  # not "… — Python 3.11.2 documentation"
    # The version markers are whole, each with the sentence it introduces.
    assert ("Deprecated since version 3.6: pyvenv was the recommended tool for creating virtual environments "
            "for Python 3.3 and 3.4, and is deprecated in Python 3.6.") in doc.text
    assert "Changed in version 3.5: The use of venv is now recommended" in doc.text
    # A list item's paragraph stays on its bullet (no lone "-" lines of list debris).
    assert "\n- system_site_packages – a Boolean value indicating that the system Python site-packages" in doc.text
    assert not [line for line in doc.text.split("\n") if line.strip() == "-"]
    # Code keeps its indentation, and its comments stay code.
    assert "\n        # Can't install pip without setuptools\n" in doc.text
    assert "\n    def __init__(self, *args, **kwargs):\n        self.nodist = kwargs.pop('nodist', False)\n" in doc.text
    headings = heading_lines(doc.text)
    assert "## Creating virtual environments" in headings
    assert "## An example of extending EnvBuilder" in headings
    assert not [h for h in headings if "setuptools" in h or "Download" in h]  # no `# comment` became one
    # Headerlinks, the related-pages bars, the sidebar and the footer are gone.
    assert "¶" not in doc.text
    for gone in ("Table of Contents", "Previous topic", "Next topic", "This Page", "Report a Bug",
                 "Show Source", "Python Module Index", "© Copyright", "Last updated on", "Found a bug?"):
        assert gone not in doc.text, gone


def test_sphinx_chunks_carry_their_section_and_code_never_starts_a_section() -> None:
    doc = fixture_page("sphinx_venv.html")
    chunks = chunk_text(doc.text)
    paths = {" > ".join(c.heading_path) for c in chunks}
    assert "venv — Creation of virtual environments > Creating virtual environments" in paths
    assert all(c.heading_path and c.heading_path[0] == "venv — Creation of virtual environments" for c in chunks)
    assert not [p for p in paths if "Can't install pip" in p or "Install in the virtual" in p]
    creating = next(c for c in chunks if c.heading_path[-1] == "Creating virtual environments")
    assert "python3 -m venv /path/to/new/virtual/environment" in creating.content


def test_postgres_docbook_page_keeps_body_and_query_indentation_and_drops_prev_next() -> None:
    doc = fixture_page("postgres_tutorial_join.html")
    assert doc.title == "2.6. Joins Between Tables"
    assert heading_lines(doc.text)[0] == "## 2.6. Joins Between Tables"
    assert "Queries that access multiple tables" in doc.text
    assert "```\nSELECT *\n    FROM weather w JOIN cities c ON w.city = c.name;\n```" in doc.text
    assert " San Francisco |      46 |      50 |" in doc.text  # result tables keep their columns
    assert "[4] This is only a conceptual model." in doc.text  # the footnote is content
    # The navigation header and footer: Prev, Up, Home, Next and the neighbouring pages' titles.
    assert not {"Prev", "Next", "Up", "Home"} & set(doc.text.split())
    assert "Aggregate Functions" not in doc.text and "Querying a Table" not in doc.text


def test_mkdocs_page_keeps_sections_and_code_and_drops_site_navigation() -> None:
    doc = fixture_page("mkdocs_export.html")
    assert doc.title == "Exporting grades"
    assert heading_lines(doc.text) == ["# Exporting grades", "## Export from the command line", "## Deadlines"]
    assert ("def export(course):\n    # Collect the marks of every student\n    for student in course.students:\n"
            "        if student.active:\n            yield student.marks") in doc.text
    for gone in ("Gradebook Guide", "Troubleshooting", "Previous", "Next", "Search", "Documentation built with"):
        assert gone not in doc.text, gone
    section = [c for c in chunk_text(doc.text) if "# Collect the marks" in c.content]
    assert section and section[0].heading_path == ["Exporting grades", "Export from the command line"]


def test_ordinary_page_keeps_the_article_and_drops_menu_sidebar_footer_and_cookie_banner() -> None:
    doc = fixture_page("ordinary_article.html")
    assert doc.title == "Why 0.1 + 0.2 is not 0.3"
    assert "0.1 has no exact binary representation" in doc.text
    assert "## Comparing with a tolerance" in heading_lines(doc.text)
    assert "\n    # Floats that differ only in their last bits are the same amount\n" in doc.text
    assert "# Floats" not in "\n".join(heading_lines(doc.text))
    for gone in ("Subscribe by email", "About the authors", "Popular posts", "Rebasing without fear",
                 "All rights reserved", "Privacy policy", "Accept all cookies", "Previous post", "Next post",
                 "dataLayer"):
        assert gone not in doc.text, gone


def test_a_comment_in_code_is_not_taken_for_the_title() -> None:
    doc = extract("Setup notes\n\n```sh\n# install the tools first\napt-get install make\n```\n\n# Building\n\nRun make.",
                  "setup.md")
    assert doc.title == "Building"


def test_code_in_markdown_keeps_indentation_and_prose_is_still_normalised() -> None:
    text = "# Loops\n\nA   loop:\n\n```python\nfor x in xs:\n    # not a heading\n\tprint(x)   \n```\n\nAfter   it."
    doc = extract(text, "loops.md")
    assert doc.text == "# Loops\n\nA loop:\n\n```python\nfor x in xs:\n    # not a heading\n\tprint(x)\n```\n\nAfter it."
    assert [c.heading_path for c in chunk_text(doc.text)] == [["Loops"]]


def test_deeply_nested_and_empty_html_do_not_crash() -> None:
    deep = "<div>" * 1_000 + "<p>deep text</p>" + "</div>" * 1_000
    assert extract(deep, "deep.html").text == "deep text"
    extract("<div>" * 50_000 + "x", "deeper.html")  # past the parser's depth: no text, and no crash
    assert extract("<html><body><script>x()</script></body></html>", "empty.html").text == ""
    assert extract("", "blank.html").text == ""


# ---- binary files named as text are refused -------------------------------------------

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + bytes(range(64))


def random_bytes(n: int, seed: int = 15) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("name", ["notes.txt", "notes.md", "page.html", "page.htm", "notes.markdown"])
def test_random_bytes_named_as_text_are_refused(name: str) -> None:
    with pytest.raises(NotTextDocument, match="not text"):
        extract(random_bytes(4096), name)
    # Without a single NUL byte too: the share of control characters gives it away.
    with pytest.raises(NotTextDocument, match="not text"):
        extract(random_bytes(4096).replace(b"\x00", b"a"), name)


def test_a_known_binary_format_is_named_in_the_error() -> None:
    with pytest.raises(NotTextDocument, match=r"image/png"):
        extract(PNG, "diagram.txt")
    with pytest.raises(NotTextDocument, match=r"application/zip"):
        extract(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + random_bytes(300), "slides.md")
    with pytest.raises(NotTextDocument, match="not a PDF"):
        extract(random_bytes(2000), "scan.pdf")
    assert issubclass(NotTextDocument, DocumentError)  # the API answers bad_request


def test_real_text_in_other_encodings_is_still_accepted() -> None:
    assert extract("Résumé of the café\n".encode("utf-16"), "fr.txt").text == "Résumé of the café"
    assert extract("Ünïcode".encode("utf-32"), "u.md").text == "Ünïcode"
    legacy = "Le café coûte 2 € à Noël.".encode("cp1252")
    assert extract(legacy, "menu.txt").text == "Le café coûte 2 € à Noël."
    # A log with a few colour escape sequences is still text.
    log = ("\x1b[32mOK\x1b[0m " + "step finished without errors. " * 10 + "\n").encode() * 20
    assert "step finished" in extract(log, "build-log.txt").text


_LINES = st.sampled_from(["```", "```python", "~~~", "    indented();", "\t\ttabbed", "# heading", "text  with   spaces ",
                          "", "   ", "\x0c", "a\u2028b", "caf\u0065\u0301", "  ````  ", "\x00ctrl\x07"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES, max_size=25))
def test_normalising_twice_changes_nothing(lines: list[str]) -> None:
    """The dedupe key is the hash of normalised text, and text is normalised again when it
    is stored: a second pass that changed anything would store a duplicate."""
    once = normalize_text("\n".join(lines))
    assert normalize_text(once) == once
