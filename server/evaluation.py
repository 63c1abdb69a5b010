"""The edges of retrieval evaluation: `POST /api/search/eval` (staff only) and the
question file `studyhall eval` reads. Both validate with the same models here, then hand
typed questions to handlers/evaluation.py. Format: docs/tutor.md#measuring-retrieval."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import Field, ValidationError, model_validator

from handlers import evaluation, knowledge
from handlers.errors import ApiError
from rag.retrieval import Fusion
from server import schemas as out
from server.apidoc import api
from server.http import core_of, read_json, require_actor
from server.jsonutil import json_response
from server.validation import Payload, Storable, validation_message
from storage.records import STAFF_ROLES

Name = Annotated[str, Field(min_length=1, max_length=1000), Storable]
MAX_NAMES = 50
# "1:0.5": vector weight, colon, full-text weight.
_WEIGHTS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


class QuestionIn(Payload):
    """One question and the documents that answer it (at least one name)."""

    question: Annotated[str, Field(min_length=1, max_length=2000), Storable]
    documents: Annotated[list[UUID], Field(default_factory=list, max_length=MAX_NAMES)]
    sources: Annotated[list[Name], Field(default_factory=list, max_length=MAX_NAMES)]
    titles: Annotated[list[Name], Field(default_factory=list, max_length=MAX_NAMES)]
    course: Annotated[str, Field(min_length=1, max_length=200), Storable] | None = None
    id: Annotated[str, Field(min_length=1, max_length=200), Storable] | None = None

    @model_validator(mode="after")
    def _names_something(self) -> QuestionIn:
        if not self.question.strip():
            raise ValueError("question must not be blank")
        if not (self.documents or self.sources or self.titles):
            raise ValueError("name at least one expected document in documents, sources or titles")
        return self

    def typed(self) -> evaluation.EvalQuestion:
        return evaluation.EvalQuestion(
            text=self.question, document_ids=tuple(self.documents), sources=tuple(self.sources),
            titles=tuple(self.titles), course=self.course, label=self.id,
        )


WeightText = Annotated[str, Field(pattern=_WEIGHTS.pattern, max_length=40)]


class EvalRequest(Payload):
    """`POST /api/search/eval`: the questions (the lines of a question file, as objects)."""

    questions: Annotated[list[QuestionIn], Field(min_length=1, max_length=evaluation.MAX_QUESTIONS)]
    k: Annotated[list[Annotated[int, Field(ge=1, le=knowledge.MAX_K)]],
                 Field(default_factory=lambda: list(evaluation.DEFAULT_KS), min_length=1, max_length=10)]
    course: Annotated[str, Field(min_length=1, max_length=200), Storable] | None = None
    weights: Annotated[list[WeightText], Field(default_factory=list, max_length=20)]


def parse_weights(text: str, rrf_k: int) -> Fusion:
    """`V:T` → a hybrid Fusion with those weights; ValueError when malformed or both 0."""
    match = _WEIGHTS.match(text)
    if not match:
        raise ValueError(f"weights must look like 1:0.5 (vector:text), got {text!r}")
    return Fusion(mode="hybrid", vector_weight=float(match[1]), text_weight=float(match[2]), rrf_k=rrf_k)


def read_questions(path: Path) -> list[evaluation.EvalQuestion]:
    """The questions of a JSON Lines file (blank lines and `#` comments skipped);
    ValueError naming the line of the first bad one."""
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = QuestionIn.model_validate(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        except ValidationError as exc:
            raise ValueError(f"{path}:{number}: {validation_message(exc)}") from None
        question = item.typed()
        questions.append(question if question.label else _with_label(question, f"line {number}"))
    return questions


def _with_label(question: evaluation.EvalQuestion, label: str) -> evaluation.EvalQuestion:
    return replace(question, label=label)


@api("Measure retrieval on a set of questions", body=EvalRequest, ok=out.EvalResult, auth="session", tag="documents",
     description="Runs each question through vector, full-text and the configured hybrid search (and any other "
                 "`weights`, vector:text) and reports recall@k, MRR, nDCG and latency per retriever, as "
                 "`studyhall eval` does. Agents and admins only.")
async def run_eval(request: web.Request) -> web.Response:
    await require_actor(request, STAFF_ROLES)
    body = await read_json(request, EvalRequest)
    core = core_of(request)
    kb = knowledge.kb_of(core)
    try:
        extra = [parse_weights(w, kb.fusion.rrf_k) for w in body.weights]
    except ValueError as exc:
        raise ApiError("bad_request", f"weights: {exc}") from None
    questions = [q.typed() for q in body.questions]
    report = await evaluation.run_eval(
        kb, questions, ks=body.k, course=body.course, extra=extra, max_k=knowledge.MAX_K,
    )
    return json_response(report.as_dict())


def setup(app: web.Application) -> None:
    """Add the route; called by the app factory before startup."""
    app.router.add_post("/api/search/eval", run_eval)
