"""The offline (no-model) tutor: quotes course passages verbatim, cites them, asks a question."""
from __future__ import annotations

import re

from rag.offline import MODEL_NAME, TEMPLATES, offline_answer, stream_offline
from rag.prompts import Passage

PHOTO = Passage(
    "c1",
    "d1",
    "Photosynthesis",
    "Plants are green. Photosynthesis converts light energy into chemical energy. "
    "It happens in the chloroplasts of leaf cells. The Calvin cycle fixes carbon dioxide.",
    0.82,
)
CELLS = Passage("c2", "d2", "Cell structure", "The chloroplast has two membranes. Mitochondria make ATP.", 0.6)
WEAK = Passage("c3", "d3", "Tides", "The moon pulls the oceans.", 0.05)
FIXED = {line for t in TEMPLATES.values() for line in t.values()}


def is_template(line: str, titles: list[str]) -> bool:
    return line in FIXED or any(t.format(title=title) == line for t in FIXED for title in titles)


def test_answer_is_only_quotes_citations_and_a_guiding_question() -> None:
    question = "Where does photosynthesis happen in the leaf?"
    text, used = offline_answer(question, [PHOTO, CELLS, WEAK])
    assert used == [PHOTO, CELLS]  # the irrelevant passage is not quoted
    lines = [line for line in text.splitlines() if line.strip()]
    quotes = [line[2:] for line in lines if line.startswith("> ")]
    assert len(quotes) == 2
    for quote, passage in zip(quotes, used):
        for sentence in re.split(r"(?<=\.) ", quote):
            assert sentence in passage.content  # verbatim
    assert "chloroplasts of leaf cells" in quotes[0]  # the matching sentence was picked
    citations = [line for line in lines if line.startswith("[")]
    assert citations == ["[1] Photosynthesis", "[2] Cell structure"]
    others = [line for line in lines if not line.startswith(("> ", "["))]
    assert all(is_template(line, ["Photosynthesis"]) for line in others)
    assert lines[-1].endswith("?")


def test_nothing_relevant_says_so_and_offers_a_person() -> None:
    text, used = offline_answer("Who won the 1998 world cup?", [WEAK])
    assert used == []
    assert text == f"{TEMPLATES['en']['nothing']}\n\n{TEMPLATES['en']['offer']}"


def test_reply_follows_the_student_language() -> None:
    fr, _ = offline_answer("Où se passe la photosynthèse dans la feuille ?", [PHOTO])
    assert fr.startswith(TEMPLATES["fr"]["intro"])
    ar, _ = offline_answer("ما هو التمثيل الضوئي؟", [])
    assert ar.startswith(TEMPLATES["ar"]["nothing"])


async def test_streams_small_deltas_and_reports_the_offline_model() -> None:
    question = "Where does photosynthesis happen?"
    stream = stream_offline(question, [PHOTO])
    deltas = [d async for d in stream]
    assert len(deltas) > 10 and max(len(d) for d in deltas) < 40
    assert "".join(deltas) == stream.text == offline_answer(question, [PHOTO])[0]
    assert stream.passages == [PHOTO]
    assert stream.result.model == MODEL_NAME == "offline-extractive"
    assert stream.result.cost_usd == 0.0 and stream.result.text == stream.text
