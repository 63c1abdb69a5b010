"""The offline tutor and the tutor's log, end to end: a real server with the default
(hashing) embedder, excerpts of Python's documentation uploaded through the API
(tests/fixtures/python_docs, PSF licence), a real Socket.IO client, real PostgreSQL; the
model's failures from tests/fakellm.py made to fail, seen in the server's log (caplog)."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rag.offline import TEMPLATES, nothing_found
from rag.relevance import DEFAULT_THRESHOLDS
from storage.db import Database
from tests.client import Api
from tests.fakellm import FakeLLM
from tests.test_tutor import Env, ask, open_tutor, reply_to, tutor_env, wait_decisions

DOCS = Path(__file__).parent / "fixtures" / "python_docs"
DEPRECATED = ("Deprecated since version 3.6: pyvenv was the recommended tool for creating virtual environments "
              "for Python 3.3 and 3.4, and is deprecated in Python 3.6.")


@asynccontextmanager
async def python_docs(start_instance: Any, db: Database, files: tuple[str, ...], **settings: Any) -> AsyncIterator[Env]:
    """A server whose knowledge base holds the given excerpts (course `python`)."""
    inst = await start_instance(**settings)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        mentor = await api.staff(db, "mentor")
        for name in files:
            text = (DOCS / name).read_text()
            title = text.splitlines()[0].lstrip("# ") + " — Python 3.11.2 documentation"
            status, body = await api.request("POST", "/api/documents", mentor,
                                             json={"title": title, "content": text, "course": "python"})
            assert status == 201, body
        try:
            yield Env(inst, api, None)
        finally:
            await api.close_sockets()


async def test_off_topic_material_gets_nothing_found_an_offer_and_a_logged_why(start_instance: Any, db: Database) -> None:
    async with python_docs(start_instance, db, ("ipaddress_operators.md", "venv_creating.md")) as env:
        _, sock, conv = await open_tutor(env, course="python")
        question = await ask(sock, conv, "Why does 0.1 + 0.2 not equal 0.3?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert final["content"] == nothing_found(question["content"])
        assert TEMPLATES["en"]["offer"] in final["content"] and "error message" in final["content"]
        meta = final["metadata"]
        assert meta["citations"] == [] and meta["model"] == "offline-extractive"
        assert meta["decision"]["reason"] == "no_relevant_material" and meta["decision"]["confidence"] < 0.5
        [decision] = await wait_decisions(db, conv["id"])
        assert decision["reason"] == "no_relevant_material" and decision["outcome"] == "answered"
        why = decision["details"]["relevance"]
        assert why["embedder"].startswith("hashing") and why["thresholds"] == asdict(DEFAULT_THRESHOLDS["hashing"])
        assert why["hits"], "the off-topic passages were found, and judged"
        assert all(h["confidence"] < 0.5 and h["similarity"] is not None for h in why["hits"])
        assert why["best_confidence"] == max(h["confidence"] for h in why["hits"])

        # Asked again off-topic: the offer becomes a hand-over to a person.
        again = await ask(sock, conv, "So why is 0.1 + 0.2 different from 0.3 then?")
        handed = (await sock.wait_for("message:new", reply_to(again), timeout=10))["message"]
        assert handed["metadata"]["escalation"]["category"] == "no_results"
        decisions = await wait_decisions(db, conv["id"], 2)
        assert decisions[-1]["reason"] == "no_relevant_material_again" and decisions[-1]["outcome"] == "escalated"


async def test_venv_answer_quotes_whole_sentences_code_and_no_title(start_instance: Any, db: Database) -> None:
    async with python_docs(start_instance, db, ("ipaddress_operators.md", "venv_creating.md")) as env:
        _, sock, conv = await open_tutor(env, course="python")
        question = await ask(sock, conv, "How do I create a virtual environment?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        text = final["content"]
        assert "> Creation of virtual environments is done by executing the command venv:" in text
        assert "> ```\n> python3 -m venv /path/to/new/virtual/environment\n> ```" in text
        assert "EnvBuilder" not in text and "Table of Contents" not in text
        closing = text.rstrip().splitlines()[-1]
        assert closing == TEMPLATES["en"]["how"]
        [citation] = final["metadata"]["citations"]
        assert citation["title"].startswith("venv") and 0.5 <= citation["score"] <= 1.0
        assert final["metadata"]["decision"]["reason"] == "relevant_material"
        assert final["metadata"]["decision"]["confidence"] == citation["score"]

        marker = await ask(sock, conv, "Is pyvenv deprecated for creating virtual environments?")
        final = (await sock.wait_for("message:new", reply_to(marker), timeout=10))["message"]
        assert DEPRECATED in final["content"].replace("\n> ", " ")


async def test_start_logs_the_offline_mode(start_instance: Any, db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="handlers.tutor")
    await start_instance()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("handlers.tutor")]
    assert any(line.startswith("tutor mode: offline extractive") and "embedder hashing" in line for line in lines), lines


async def test_failing_model_is_logged_once_per_interval_then_its_recovery(
    start_instance: Any, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="handlers.tutor")
    secret = f"sk-{uuid.uuid4().hex}"
    async with FakeLLM(reply="RuBisCO fixes carbon dioxide [1].") as llm, \
            tutor_env(start_instance, db, llm, tutor__llm_api_key=secret, tutor__llm_model="tutor-7b",
                      tutor__llm_max_attempts=1, tutor__model_failure_log_seconds=60.0) as env:
        host = llm.base_url.split("//", 1)[1].split("/", 1)[0]
        started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tutor mode:")]
        assert started == [f"tutor mode: model tutor-7b at {host}, embedder hashing-384-v1"]
        _, sock, conv = await open_tutor(env)
        llm.fail_next(3, 503)
        for _ in range(3):
            question = await ask(sock, conv, "What does RuBisCO fix in the stroma?")
            final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
            assert final["content"].startswith("The tutor is unavailable right now")
        failures = [r for r in caplog.records if r.name == "handlers.tutor.model" and "failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]  # an outage does not flood the log
        [failure] = failures
        assert failure.levelno == logging.WARNING
        assert failure.error_class == "InternalServerError" and failure.status == 503  # type: ignore[attr-defined]
        assert host in failure.getMessage() and "503" in failure.getMessage()

        question = await ask(sock, conv, "What does RuBisCO fix in the stroma now?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert "error" not in final["metadata"]
        [back] = [r for r in caplog.records if "answers again" in r.getMessage()]
        assert back.getMessage() == f"tutor model endpoint {host} answers again after 3 failure(s)"
    assert secret not in caplog.text and all(secret not in str(r.__dict__) for r in caplog.records)


async def test_during_a_model_change_relevance_is_judged_by_the_model_search_used(
        start_instance: Any, db: Database) -> None:
    """The operator configured the neural model but has not run `studyhall reindex` yet: search
    still uses the hashing vectors, so their similarities are judged with hashing's thresholds
    (the neural ones would call a good hashing hit, ~0.3-0.7, unrelated)."""
    async with python_docs(start_instance, db, ("ipaddress_operators.md", "venv_creating.md")):
        pass
    inst = await start_instance(knowledge__embedder="onnx")
    async with aiohttp.ClientSession() as session:
        env = Env(inst, Api(session, inst.url), None)
        try:
            _, sock, conv = await open_tutor(env, course="python")
            question = await ask(sock, conv, "How do I create a virtual environment?")
            final = (await sock.wait_for("message:new", reply_to(question), timeout=20))["message"]
            assert final["metadata"]["decision"]["reason"] == "relevant_material"
            assert "python3 -m venv /path/to/new/virtual/environment" in final["content"]
            [decision] = await wait_decisions(db, conv["id"])
            why = decision["details"]["relevance"]
            assert why["embedder"].startswith("hashing")
            assert why["thresholds"] == asdict(DEFAULT_THRESHOLDS["hashing"])
        finally:
            await env.api.close_sockets()
