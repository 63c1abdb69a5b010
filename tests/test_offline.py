"""The offline (no-model) tutor on real text: whole sentences from Python's documentation
(tests/fixtures/python_docs, PSF licence), code kept as code, no list debris, a closing
question without page titles, and a plain "nothing found" with a person offered."""
from __future__ import annotations

import re
from pathlib import Path

from rag.embeddings import HashingEmbedder
from rag.offline import MODEL_NAME, TEMPLATES, nothing_found, offline_answer, question_kind, stream_offline
from rag.passages import split_sentences, units
from rag.prompts import Passage

DOCS = Path(__file__).parent / "fixtures" / "python_docs"
VENV = (DOCS / "venv_creating.md").read_text()
IPADDRESS = (DOCS / "ipaddress_operators.md").read_text()
FLOATS = (DOCS / "floatingpoint.md").read_text()
VENV_TITLE = "venv — Creation of virtual environments — Python 3.11.2 documentation"
DEPRECATED = ("Deprecated since version 3.6: pyvenv was the recommended tool for creating virtual environments "
              "for Python 3.3 and 3.4, and is deprecated in Python 3.6.")
embed = HashingEmbedder().embed


def passage(content: str, title: str, confidence: float, n: int = 1) -> Passage:
    return Passage(f"c{n}", f"d{n}", title, content, confidence)


def quoted(text: str) -> str:
    """The block-quoted text of an answer, quote marks removed."""
    return "\n".join(line[2:] if line.startswith("> ") else "" for line in text.splitlines() if line.startswith(">"))


# ---- cutting a passage into what can be quoted ---------------------------------------------

def test_version_markers_decimals_and_paths_stay_inside_their_sentence() -> None:
    texts = [u.text for u in units(VENV)]
    assert DEPRECATED in texts
    assert "Changed in version 3.5: The use of venv is now recommended for creating virtual environments." in texts
    assert ("It also creates an (initially empty) lib/pythonX.Y/site-packages subdirectory "
            "(on Windows, this is Lib\\site-packages).") in texts
    assert not any(re.match(r"^\d", t) for t in texts)  # no "6: pyvenv was ..." fragments
    assert split_sentences("Use e.g. venv or i.e. a tool. Then 0.1 + 0.2 is 0.30000000000000004.") == [
        "Use e.g. venv or i.e. a tool.", "Then 0.1 + 0.2 is 0.30000000000000004."]
    assert split_sentences("Bonjour M. Dupont. Comment ça va ?", "fr") == ["Bonjour M. Dupont.", "Comment ça va ?"]


def test_headings_titles_and_table_of_contents_are_never_quoted() -> None:
    texts = [u.text for u in units(VENV)]
    assert not any("EnvBuilder" in t or "Table of Contents" in t or t.startswith("#") for t in texts)
    assert not any(t == "Creation of virtual environments" for t in texts)


def test_code_is_a_unit_of_its_own_with_its_lines() -> None:
    venv = units(VENV)
    intro = next(u for u in venv if u.text.endswith("executing the command venv:"))
    assert intro.introduces_code
    code = next(u for u in venv if u.index == intro.index + 1)
    assert code.kind == "code" and code.text == "python3 -m venv /path/to/new/virtual/environment"
    session = next(u for u in units(IPADDRESS) if u.kind == "code")
    assert session.text.splitlines()[:2] == [">>> IPv4Address('127.0.0.2') > IPv4Address('127.0.0.1')", "True"]
    fenced = units("Define it like this:\n\n```python\ndef f(x):\n    return x + 1\n```\n")
    assert fenced[1].kind == "code" and fenced[1].text == "def f(x):\n    return x + 1"  # indentation kept
    assert fenced[1].markdown() == "```\ndef f(x):\n    return x + 1\n```"


def test_a_chunk_cut_mid_sentence_does_not_quote_the_fragments() -> None:
    texts = [u.text for u in units("of the binary fraction is kept. The float type rounds to 53 bits of precision. And then it")]
    assert texts == ["The float type rounds to 53 bits of precision."]


# ---- answers ----------------------------------------------------------------------------

async def test_venv_answer_quotes_whole_sentences_in_order_with_the_command_as_code() -> None:
    question = "How do I create a virtual environment?"
    text, used = await offline_answer(question, [passage(VENV, VENV_TITLE, 0.9)], embed)
    assert used and used[0].title == VENV_TITLE
    quote = quoted(text)
    assert "Creation of virtual environments is done by executing the command venv:" in quote
    assert "```\npython3 -m venv /path/to/new/virtual/environment\n```" in quote  # code stays code
    prose = [line for line in quote.splitlines() if line and not line.startswith("```") and "python3 -m" not in line]
    sentences = [s for line in prose for s in split_sentences(line)]
    flat = " ".join(VENV.split())
    positions = [flat.index(s) for s in sentences]  # each a whole sentence of the source...
    assert positions == sorted(positions)  # ...in the source's order
    assert "EnvBuilder" not in text and "- " not in quote
    last = text.rstrip().splitlines()[-1]
    assert last == TEMPLATES["en"]["how"] and "venv —" not in last and "documentation" not in last
    assert f"[1] {VENV_TITLE}" in text.splitlines()


async def test_version_marker_survives_when_it_answers() -> None:
    question = "Is pyvenv deprecated for creating virtual environments?"
    text, _ = await offline_answer(question, [passage(VENV, "venv", 0.8)], embed)
    assert DEPRECATED in quoted(text).replace("\n", " ")


async def test_code_session_is_quoted_fenced_inside_the_quote() -> None:
    question = "How do I compare two IPv4Address objects with comparison operators?"
    text, _ = await offline_answer(question, [passage(IPADDRESS, "ipaddress", 0.9)], embed)
    lines = text.splitlines()
    start = lines.index("> ```")
    assert lines[start + 1] == "> >>> IPv4Address('127.0.0.2') > IPv4Address('127.0.0.1')" and lines[start + 2] == "> True"


async def test_an_introduction_without_its_list_or_code_is_not_quoted() -> None:
    text = ("The with statement wraps the execution of a block with methods of a context manager. "
            "The execution of the with statement proceeds as follows:\n\n-\n\n"
            "The context expression is evaluated to obtain a context manager.\n")
    answer, _ = await offline_answer("What does the with statement do?", [passage(text, "Compound statements", 0.9)], embed)
    assert "The with statement wraps the execution" in answer and "proceeds as follows:" not in answer


async def test_a_second_passage_is_quoted_only_when_it_answers_nearly_as_well() -> None:
    question = "How do I create a virtual environment?"
    text, used = await offline_answer(
        question, [passage(VENV, "venv", 0.9), passage(IPADDRESS, "ipaddress", 0.55, 2)], embed)
    assert [p.title for p in used] == ["venv"] and "[2]" not in text


async def test_nothing_relevant_says_so_suggests_rephrasing_and_offers_a_person() -> None:
    question = "Why does 0.1 + 0.2 not equal 0.3?"
    text, used = await offline_answer(question, [passage(IPADDRESS, "ipaddress", 0.2)], embed)
    assert used == [] and text == nothing_found(question)
    t = TEMPLATES["en"]
    assert text == f"{t['nothing']}\n\n{t['rephrase']}\n\n{t['offer']}"
    assert "error message" in t["rephrase"] and "person" in t["offer"]


async def test_reply_follows_the_student_language() -> None:
    fr, _ = await offline_answer("Comment créer un environnement virtuel avec venv ?", [passage(VENV, "venv", 0.9)], embed)
    assert fr.startswith(TEMPLATES["fr"]["intro"]) and fr.rstrip().endswith(TEMPLATES["fr"]["how"])
    ar, _ = await offline_answer("ما هو التمثيل الضوئي؟", [], embed)
    assert ar.startswith(TEMPLATES["ar"]["nothing"]) and TEMPLATES["ar"]["offer"] in ar


def test_closing_question_fits_the_kind_of_question() -> None:
    assert question_kind("How do I create a virtual environment?", "en") == "how"
    assert question_kind("Why does 0.1 + 0.2 not equal 0.3?", "en") == "why"
    assert question_kind("What is a list comprehension?", "en") == "what"
    assert question_kind("venv", "en") == "other"
    assert question_kind("Pourquoi 0,1 + 0,2 ne fait pas 0,3 ?", "fr") == "why"
    assert question_kind("كيف أنشئ بيئة افتراضية؟", "ar") == "how"
    for lang in TEMPLATES.values():
        assert all("{" not in line for line in lang.values())  # nothing pasted in


async def test_streams_small_deltas_and_reports_the_offline_model() -> None:
    question = "Why is 0.1 + 0.1 + 0.1 not exactly 0.3?"
    stream = await stream_offline(question, [passage(FLOATS, "Floating Point Arithmetic", 0.8)], embed)
    deltas = [d async for d in stream]
    assert len(deltas) > 10 and max(len(d) for d in deltas) < 60
    assert "".join(deltas) == stream.text == (await offline_answer(question, [passage(FLOATS, "Floating Point Arithmetic", 0.8)], embed))[0]
    assert "0.1 is not exactly 1/10" in stream.text
    assert stream.result.model == MODEL_NAME == "offline-extractive"
    assert stream.result.cost_usd == 0.0 and stream.result.text == stream.text
