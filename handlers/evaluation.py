"""`studyhall eval` and `POST /api/search/eval`: how well search finds the documents that
answer a set of questions, for each retriever, on the configured knowledge base.

Each retriever runs through `KnowledgeBase.search`, the path `/api/search` and the tutor
use, with its `Fusion` overridden: vector alone, full text alone, the configured fusion,
and any other weights asked for (how an operator picks STUDYHALL_RETRIEVAL_*). The
retrievers take turns question by question, so caches warm up alike for all of them.
The metrics are rag/evaluate.py's; the question format is in docs/tutor.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import openai
import orjson

from handlers.errors import ApiError
from rag.embeddings import EmbedderUnavailable
from rag.evaluate import RetrieverRuns, RetrieverScores
from rag.retrieval import Fusion, KnowledgeBase
from storage.documents import DocumentRow

DEFAULT_KS = (1, 5, 10)
MAX_QUESTIONS = 2000
VECTOR = Fusion(mode="vector")
TEXT = Fusion(mode="text")


@dataclass(frozen=True)
class EvalQuestion:
    """One question and the documents that answer it, named by id, source or title (any
    of the three; a document matching any name is relevant)."""

    text: str
    document_ids: tuple[UUID, ...] = ()
    sources: tuple[str, ...] = ()
    titles: tuple[str, ...] = ()
    course: str | None = None
    label: str | None = None  # the line's "id", echoed in the per-question JSON


@dataclass(frozen=True)
class EvalReport:
    """What `studyhall eval` prints and writes as JSON."""

    embedder: str
    configured: str
    ks: tuple[int, ...]
    course: str | None
    scores: list[RetrieverScores]
    # Per question: label, question, and each retriever's position of its first relevant chunk (None: missed).
    details: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "configured": self.configured,
            "k": list(self.ks),
            "course": self.course,
            "questions": self.scores[0].questions if self.scores else 0,
            "retrievers": [s.as_dict() for s in self.scores],
            "per_question": self.details,
        }

    def render(self) -> str:
        """The table `studyhall eval` prints."""
        cutoff = max(self.ks)
        n = self.scores[0].questions if self.scores else 0
        head = [f"{'retriever':<22}", *(f"{f'recall@{k}':>9}" for k in self.ks),
                f"{f'MRR@{cutoff}':>8}", f"{f'nDCG@{cutoff}':>8}", f"{'p50 ms':>8}", f"{'p95 ms':>8}"]
        lines = [f"embedder {self.embedder}, {n} questions" + (f", course {self.course}" if self.course else ""),
                 " ".join(head)]
        for s in self.scores:
            name = s.retriever + (" *" if s.retriever == self.configured else "")
            row = [f"{name:<22}", *(f"{s.recall[k]:>9.3f}" for k in self.ks), f"{s.mrr:>8.3f}", f"{s.ndcg:>8.3f}",
                   f"{s.p50_ms:>8.1f}", f"{s.p95_ms:>8.1f}"]
            lines.append(" ".join(row))
        lines.append("* the configured fusion (STUDYHALL_RETRIEVAL_*); latency includes embedding the question")
        return "\n".join(lines)


def check_ks(ks: Sequence[int], max_k: int) -> tuple[int, ...]:
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1 or ks[-1] > max_k:
        raise ApiError("bad_request", f"k must be whole numbers between 1 and {max_k}.")
    return ks


async def _all_documents(kb: KnowledgeBase) -> list[DocumentRow]:
    documents: list[DocumentRow] = []
    while page := await kb.list_documents(limit=500, offset=len(documents)):
        documents.extend(page)
    return documents


class _Names:
    """Looks up documents by id, source (the whole stored source, or its last path
    segments: `faq/general.html` names `/usr/share/doc/.../faq/general.html`) or title
    (case and spacing ignored)."""

    def __init__(self, documents: list[DocumentRow]) -> None:
        self.ids = {d.id for d in documents}
        self.by_title: dict[str, set[UUID]] = {}
        self.sources: list[tuple[str, UUID]] = []
        for d in documents:
            self.by_title.setdefault(_fold(d.title), set()).add(d.id)
            if d.source:
                self.sources.append((d.source, d.id))

    def by_source(self, name: str) -> set[UUID]:
        tail = "/" + name.lstrip("/")
        return {i for source, i in self.sources if source == name or source.endswith(tail)}

    def resolve(self, question: EvalQuestion, where: str) -> set[UUID]:
        found: set[UUID] = set()
        for document_id in question.document_ids:
            if document_id not in self.ids:
                raise ApiError("bad_request", f"{where}: no document with id {document_id}.")
            found.add(document_id)
        for source in question.sources:
            if not (match := self.by_source(source)):
                raise ApiError("bad_request", f"{where}: no document with source {source!r}.")
            found |= match
        for title in question.titles:
            if not (match := self.by_title.get(_fold(title), set())):
                raise ApiError("bad_request", f"{where}: no document titled {title!r}.")
            found |= match
        return found


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def retrievers(configured: Fusion, extra: Sequence[Fusion] = ()) -> list[Fusion]:
    """Vector alone, full text alone, the configured fusion, then the extra ones (each once)."""
    out: list[Fusion] = []
    for fusion in (VECTOR, TEXT, configured, *extra):
        if fusion.label not in {f.label for f in out}:
            out.append(fusion)
    return out


async def run_eval(
    kb: KnowledgeBase,
    questions: Sequence[EvalQuestion],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    course: str | None = None,
    extra: Sequence[Fusion] = (),
    max_k: int = 50,
) -> EvalReport:
    """Run every question through every retriever; `bad_request` if a question names a
    document the knowledge base does not hold (it would count as a miss and hide the typo)."""
    if not questions:
        raise ApiError("bad_request", "There are no questions.")
    if len(questions) > MAX_QUESTIONS:
        raise ApiError("bad_request", f"At most {MAX_QUESTIONS} questions.")
    ks = check_ks(ks, max_k)
    names = _Names(await _all_documents(kb))
    relevant = [names.resolve(q, f"question {q.label or i}") for i, q in enumerate(questions, start=1)]
    fusions = retrievers(kb.fusion, extra)
    runs = {f.label: RetrieverRuns(f.label) for f in fusions}
    details: list[dict[str, Any]] = []
    try:
        await kb.search(questions[0].text, k=ks[-1], course=questions[0].course or course)  # warm-up, not timed
        for i, (question, answers) in enumerate(zip(questions, relevant, strict=True), start=1):
            first: dict[str, int | None] = {}
            for fusion in fusions:
                started = time.perf_counter()
                results = await kb.search(question.text, k=ks[-1], course=question.course or course, fusion=fusion)
                took = (time.perf_counter() - started) * 1000
                ranking: list[Hashable] = [r.document_id for r in results]
                runs[fusion.label].add(ranking, set(answers), took)
                first[fusion.label] = next((p for p, d in enumerate(ranking, start=1) if d in answers), None)
            details.append({"id": question.label or str(i), "question": question.text, "first_relevant": first})
    except (openai.OpenAIError, EmbedderUnavailable) as exc:
        raise ApiError("unavailable", f"The embedding service is unavailable: {exc}"[:300]) from None
    return EvalReport(
        embedder=kb.embedder.name, configured=kb.fusion.label, ks=ks, course=course,
        scores=[runs[f.label].scores(ks) for f in fusions], details=details,
    )


async def eval_command(
    kb: KnowledgeBase,
    questions: Sequence[EvalQuestion],
    *,
    ks: Sequence[int],
    course: str | None,
    extra: Sequence[Fusion],
    json_out: str | None,
    max_k: int,
) -> int:
    """`studyhall eval`: print the table (and write the JSON); 0, or 2 for a question file
    that names a document the knowledge base does not hold."""
    try:
        report = await run_eval(kb, questions, ks=ks, course=course, extra=extra, max_k=max_k)
    except ApiError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2 if err.code == "bad_request" else 1
    print(report.render())
    if json_out:
        data = orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n"
        try:
            await asyncio.to_thread(Path(json_out).write_bytes, data)
        except OSError as exc:
            print(f"error: could not write {json_out}: {exc}", file=sys.stderr)
            return 1
    return 0
