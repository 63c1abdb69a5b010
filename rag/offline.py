"""The tutor when no language model is configured: quote the course, never invent.

Why extractive: without a model we cannot write new explanations safely, but we can show
the student the exact sentences of the course that match their question, cited, and ask a
question that makes them work with it. Fixed phrases come from `TEMPLATES` only.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rag.decide import MIN_RELEVANCE
from rag.llm import StreamResult
from rag.prompts import Passage

MODEL_NAME = "offline-extractive"

TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "intro": "Here is what the course material says:",
        "nothing": "I could not find anything about this in the course material.",
        "offer": "Would you like me to connect you with a person who can help?",
        "q0": 'How would you explain "{title}" in your own words?',
        "q1": "Which part of this passage answers your question, and why?",
        "q2": "Can you think of an example that fits what this passage describes?",
    },
    "fr": {
        "intro": "Voici ce que dit le support de cours :",
        "nothing": "Je n'ai rien trouvé à ce sujet dans le support de cours.",
        "offer": "Voulez-vous que je vous mette en relation avec une personne qui peut vous aider ?",
        "q0": "Comment expliqueriez-vous « {title} » avec vos propres mots ?",
        "q1": "Quelle partie de ce passage répond à votre question, et pourquoi ?",
        "q2": "Pouvez-vous trouver un exemple qui correspond à ce que décrit ce passage ?",
    },
    "ar": {
        "intro": "هذا ما تقوله مادة الدرس:",
        "nothing": "لم أجد شيئًا عن هذا في مادة الدرس.",
        "offer": "هل تريد أن أوصلك بشخص يمكنه مساعدتك؟",
        "q0": "كيف تشرح «{title}» بكلماتك الخاصة؟",
        "q1": "أي جزء من هذا المقطع يجيب عن سؤالك، ولماذا؟",
        "q2": "هل يمكنك التفكير في مثال يناسب ما يصفه هذا المقطع؟",
    },
}

_SENTENCE = re.compile(r"[^.!?؟。\n]+(?:[.!?؟。]+|$)")
_WORD = re.compile(r"\w{3,}", re.UNICODE)
_FRENCH = re.compile(
    r"\b(?:le|la|les|des|est|une|que|qui|quoi|pourquoi|comment|qu'est|c'est|je|vous|du|dans)\b|[éèêàçù]",
    re.IGNORECASE,
)


def detect_language(text: str) -> str:
    """'ar', 'fr' or 'en', from script and common French words (good enough for templates)."""
    if re.search(r"[\u0600-\u06FF]", text):
        return "ar"
    return "fr" if len(_FRENCH.findall(text)) >= 2 else "en"


def best_sentences(question: str, content: str, limit: int = 3) -> list[str]:
    """The passage's sentences sharing most words with the question, in passage order, verbatim."""
    asked = {w.lower() for w in _WORD.findall(question)}
    sentences = [m.group(0).strip() for m in _SENTENCE.finditer(content) if m.group(0).strip()]
    if not sentences:
        return []
    scored = sorted(
        range(len(sentences)),
        key=lambda i: (-len(asked & {w.lower() for w in _WORD.findall(sentences[i])}), i),
    )
    return [sentences[i] for i in sorted(scored[:limit])]


def offline_answer(
    question: str,
    passages: Sequence[Passage],
    *,
    min_score: float = MIN_RELEVANCE,
    max_passages: int = 2,
) -> tuple[str, list[Passage]]:
    """The answer text and the passages it quotes (for citations)."""
    lang = detect_language(question)
    t = TEMPLATES[lang]
    used = [p for p in passages if p.score >= min_score][:max_passages]
    if not used:
        return f"{t['nothing']}\n\n{t['offer']}", []
    lines = [t["intro"], ""]
    for number, passage in enumerate(used, start=1):
        quote = " ".join(best_sentences(question, passage.content))
        lines += [f"> {quote}", f"[{number}] {passage.title}", ""]
    pick = sum(map(ord, question)) % 3
    lines.append(t[f"q{pick}"].format(title=used[0].title))
    return "\n".join(lines), used


@dataclass
class OfflineStream:
    """Same shape as `rag.llm.ChatStream`: iterate for deltas, then read `.result`."""

    text: str
    passages: list[Passage]
    _result: StreamResult | None = None

    @property
    def result(self) -> StreamResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished")
        return self._result

    async def __aenter__(self) -> OfflineStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self) -> AsyncIterator[str]:
        started = time.monotonic()
        for piece in re.findall(r"\s*\S+\s*", self.text):
            yield piece
            await asyncio.sleep(0)  # let other tasks (and tutor:stop) run between pieces
        self._result = StreamResult(
            text=self.text,
            model=MODEL_NAME,
            prompt_tokens=0,
            completion_tokens=0,
            usage_estimated=False,
            latency_ms=round((time.monotonic() - started) * 1000),
            first_token_ms=0,
            cost_usd=0.0,
            finish_reason="stop",
        )


def stream_offline(
    question: str,
    passages: Sequence[Passage],
    *,
    min_score: float = MIN_RELEVANCE,
    max_passages: int = 2,
) -> OfflineStream:
    """Offline answer as a stream of small deltas, like a model's; `.passages` are cited."""
    text, used = offline_answer(question, passages, min_score=min_score, max_passages=max_passages)
    return OfflineStream(text, used)
