"""The tutor when no language model is configured: quote the course, never invent.

Why extractive: without a model we cannot write new explanations safely, but we can show
the student the exact sentences of the course that answer their question, cited, and ask a
question that makes them work with it. Fixed phrases come from `TEMPLATES` only.

Which passages: those the calibrated relevance (rag/relevance.py) counts as relevant, one
or two. Which sentences: the passage's whole sentences (rag/passages.py) most similar to
the question by the knowledge base's own embedder, in document order; a sentence that
introduces a code block brings the block, fenced, indentation kept.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from rag.embeddings.base import cosine
from rag.llm import StreamResult
from rag.passages import Unit, units
from rag.prompts import Passage
from rag.relevance import RELEVANT, key_terms

MODEL_NAME = "offline-extractive"

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]
"""Texts to vectors (the knowledge base's embedder's `embed`)."""

TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "intro": "Here is what the course material says:",
        "nothing": "I could not find anything about this in the course material.",
        "rephrase": "You could try asking again with the name of the concept you mean, "
        "or paste the exact error message or line of code you are stuck on.",
        "offer": "Would you like me to connect you with a person who can help? Just ask for a person.",
        "how": "Which of these steps would you try first, and what do you expect to happen?",
        "why": "Can you explain the reason in your own words, using one of the quoted sentences?",
        "what": "How would you explain this to a classmate in one or two sentences?",
        "other": "Which of these sentences answers your question best, and why?",
    },
    "fr": {
        "intro": "Voici ce que dit le support de cours :",
        "nothing": "Je n'ai rien trouvé à ce sujet dans le support de cours.",
        "rephrase": "Essayez de reformuler en nommant la notion qui vous intéresse, "
        "ou collez le message d'erreur exact ou la ligne de code qui vous bloque.",
        "offer": "Voulez-vous que je vous mette en relation avec une personne qui peut vous aider ? "
        "Demandez simplement à parler à une personne.",
        "how": "Laquelle de ces étapes essaieriez-vous en premier, et que vous attendez-vous à voir ?",
        "why": "Pouvez-vous expliquer la raison avec vos propres mots, en vous appuyant sur une des phrases citées ?",
        "what": "Comment l'expliqueriez-vous à un camarade en une ou deux phrases ?",
        "other": "Laquelle de ces phrases répond le mieux à votre question, et pourquoi ?",
    },
    "ar": {
        "intro": "هذا ما تقوله مادة الدرس:",
        "nothing": "لم أجد شيئًا عن هذا في مادة الدرس.",
        "rephrase": "حاول أن تعيد صياغة سؤالك مع ذكر اسم المفهوم الذي تقصده، "
        "أو الصق رسالة الخطأ كما هي أو سطر الشيفرة الذي توقفت عنده.",
        "offer": "هل تريد أن أوصلك بشخص يمكنه مساعدتك؟ اطلب ذلك فقط.",
        "how": "أي خطوة من هذه ستجربها أولًا، وماذا تتوقع أن يحدث؟",
        "why": "هل يمكنك أن تشرح السبب بكلماتك الخاصة، مستندًا إلى إحدى الجمل المقتبسة؟",
        "what": "كيف تشرح هذا لزميلك في جملة أو جملتين؟",
        "other": "أي هذه الجمل يجيب عن سؤالك أفضل، ولماذا؟",
    },
}

_FRENCH = re.compile(
    r"\b(?:le|la|les|des|est|une|que|qui|quoi|pourquoi|comment|qu'est|c'est|je|vous|du|dans)\b|[éèêàçù]",
    re.IGNORECASE,
)
# What kind of question it is, for the closing question (first words, per language).
_KINDS: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
    "en": (
        ("how", re.compile(r"^\s*(?:how\s+(?:do|does|can|could|should|would|to|are|is)|in\s+what\s+way)\b", re.I)),
        ("why", re.compile(r"^\s*(?:why|how\s+come)\b", re.I)),
        ("what", re.compile(r"^\s*(?:what\s+(?:is|are|does|do)|what's|define|explain|describe)\b", re.I)),
    ),
    "fr": (
        ("how", re.compile(r"^\s*comment\b", re.I)),
        ("why", re.compile(r"^\s*pourquoi\b", re.I)),
        ("what", re.compile(r"^\s*(?:qu'est-ce|que\s+(?:signifie|veut)|c'est\s+quoi|quel(?:le)?s?\s+est|définis|explique)", re.I)),
    ),
    "ar": (
        ("how", re.compile(r"^\s*كيف")),
        ("why", re.compile(r"^\s*(?:لماذا|لم)\b")),
        ("what", re.compile(r"^\s*(?:ما\s+(?:هو|هي|معنى)|ماذا|عرّف|عرف|اشرح)")),
    ),
}
MAX_UNITS = (3, 2)  # sentences quoted from the first and the second passage
SECOND_PASSAGE_RATIO = 0.8  # the second passage's best sentence must be this close to the first's
KEEP_RATIO = 0.6  # a sentence is quoted if it scores this share of its passage's best
EMBED_PER_PASSAGE = 12  # sentences of one passage compared with the question by the embedder
MAX_CODE_LINES = 12  # a longer code block is not quoted (the citation leads to it)


def detect_language(text: str) -> str:
    """'ar', 'fr' or 'en', from script and common French words (good enough for templates)."""
    if re.search(r"[\u0600-\u06FF]", text):
        return "ar"
    return "fr" if len(_FRENCH.findall(text)) >= 2 else "en"


def question_kind(question: str, lang: str) -> str:
    """'how', 'why', 'what' or 'other': which closing question fits."""
    for kind, pattern in _KINDS.get(lang, ()):
        if pattern.search(question):
            return kind
    return "other"


def nothing_found(question: str) -> str:
    """Said plainly, with how to ask better, and a person offered."""
    t = TEMPLATES[detect_language(question)]
    return f"{t['nothing']}\n\n{t['rephrase']}\n\n{t['offer']}"


def _pick(scored: list[tuple[Unit, float]], limit: int) -> list[Unit]:
    """The best `limit` units (near the passage's best), in document order. A sentence
    from a paragraph that introduces code brings the paragraph's last sentence (the
    introduction, "Some examples:") and the code block after it."""
    scored = [(u, s) for u, s in scored if u.kind != "code" or u.text.count("\n") < MAX_CODE_LINES]
    prose = [(u, s) for u, s in scored if u.kind == "sentence"]
    if not prose:
        return []
    best = max(score for _, score in prose)
    ranked = sorted(prose, key=lambda us: -us[1])  # code comes only with its introduction
    chosen = {u.index for u, score in ranked[:limit] if score >= best * KEEP_RATIO and score > 0}
    units_ = [u for u, _ in scored]
    for unit in [u for u in units_ if u.index in chosen and u.introduces_code]:
        same = [u for u in units_ if u.paragraph == unit.paragraph]
        code = [u for u in units_ if u.kind == "code" and u.paragraph == unit.paragraph + 1]
        if code:
            chosen |= {same[-1].index, code[0].index}
        else:  # the code was too long to quote: an introduction to nothing is left out
            chosen.discard(same[-1].index)
    picked = [u for u in units_ if u.index in chosen]
    # "... proceeds as follows:" quoted without what follows reads as cut off.
    return [u for n, u in enumerate(picked)
            if not (u.kind == "sentence" and u.text.rstrip().endswith(":")
                    and (n + 1 == len(picked) or picked[n + 1].kind != "code"))]


def _quote(picked: list[Unit]) -> str:
    """Adjacent sentences as one paragraph, gaps and code as their own, all block-quoted."""
    paragraphs: list[str] = []
    previous: Unit | None = None
    for unit in picked:
        joins = (previous is not None and unit.kind == previous.kind == "sentence"
                 and unit.index == previous.index + 1)
        if joins:
            paragraphs[-1] += " " + unit.text
        else:
            paragraphs.append(unit.markdown())
        previous = unit
    lines: list[str] = []
    for n, paragraph in enumerate(paragraphs):
        if n:
            lines.append(">")
        lines += [f"> {line}".rstrip() for line in paragraph.split("\n")]
    return "\n".join(lines)


async def offline_answer(
    question: str,
    passages: Sequence[Passage],
    embed: Embed,
    *,
    min_confidence: float = RELEVANT,
    max_passages: int = 2,
) -> tuple[str, list[Passage]]:
    """The answer text and the passages it quotes (for citations).

    `passages` come in the search's order (the fused ranking, measured better at putting
    the answer first than any one score) with `score` = calibrated confidence
    (rag/relevance.py); the first relevant ones are quoted."""
    lang = detect_language(question)
    t = TEMPLATES[lang]
    # Every relevant passage is a candidate: one may hold nothing quotable (a table of
    # contents), and the next one then speaks instead.
    candidates = [p for p in passages if p.score >= min_confidence]
    split = [(p, units(p.content, lang)) for p in candidates]
    split = [(p, us) for p, us in split if any(u.kind == "sentence" for u in us)][:max_passages]
    if not split:
        return nothing_found(question), []
    # Only sentences are embedded (code comes with its introduction), at most
    # EMBED_PER_PASSAGE per passage, the ones sharing most key terms with the question:
    # a sentence model embeds a sentence in milliseconds, a long passage's forty in a second.
    asked_terms = key_terms(question)
    chosen: list[Unit] = []
    for _, us in split:
        sentences = [u for u in us if u.kind == "sentence"]
        sentences.sort(key=lambda u: -len(asked_terms & key_terms(u.text)))
        chosen += sentences[:EMBED_PER_PASSAGE]
    vectors = await embed([question, *(u.text for u in chosen)])
    similarity = {id(u): cosine(vectors[0], v) for u, v in zip(chosen, vectors[1:], strict=True)}
    scored = [(p, [(u, similarity.get(id(u), 0.0)) for u in us]) for p, us in split]

    def best_sentence(pairs: list[tuple[Unit, float]]) -> float:
        return max(score for u, score in pairs if u.kind == "sentence")

    top = best_sentence(scored[0][1])
    used: list[tuple[Passage, list[Unit]]] = []
    for n, (passage, pairs) in enumerate(scored):
        if n and best_sentence(pairs) < top * SECOND_PASSAGE_RATIO:
            continue
        picked = _pick(pairs, MAX_UNITS[min(n, len(MAX_UNITS) - 1)])
        if picked:
            used.append((passage, picked))
    if not used:
        return nothing_found(question), []
    lines = [t["intro"], ""]
    for number, (passage, picked) in enumerate(used, start=1):
        lines += [_quote(picked), "", f"[{number}] {passage.title}", ""]
    lines.append(t[question_kind(question, lang)])
    return "\n".join(lines), [p for p, _ in used]


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


async def stream_offline(
    question: str,
    passages: Sequence[Passage],
    embed: Embed,
    *,
    min_confidence: float = RELEVANT,
    max_passages: int = 2,
) -> OfflineStream:
    """Offline answer as a stream of small deltas, like a model's; `.passages` are cited."""
    text, used = await offline_answer(question, passages, embed, min_confidence=min_confidence,
                                      max_passages=max_passages)
    return OfflineStream(text, used)
