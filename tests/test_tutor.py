"""The AI tutor end to end: real servers, real Socket.IO clients, real PostgreSQL, and the
real `openai` client talking to tests/fakellm.py on localhost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from server.keys import CORE
from storage import conversations
from storage import tutor as tutor_store
from storage.db import Database
from tests.client import Api, Instance, Socket, User
from tests.fakellm import FakeLLM, echo_passages

CALVIN = """# Photosynthesis

Plants capture light energy in their chloroplasts. The green pigment chlorophyll absorbs
mostly red and blue light and reflects green.

## The Calvin cycle

In the stroma, the enzyme RuBisCO fixes carbon dioxide from the air. Using ATP and NADPH,
the Calvin cycle builds three-carbon sugars that the plant turns into glucose and starch.
"""

OHM = """# Ohm's law

The current through a conductor is proportional to the voltage across it: V = I x R.
Resistance is measured in ohms.
"""


@dataclass
class Env:
    inst: Instance
    api: Api
    llm: FakeLLM | None


@asynccontextmanager
async def tutor_env(start_instance: Any, db: Database, llm: FakeLLM | None = None, **settings: Any) -> AsyncIterator[Env]:
    """A server (with the fake model when given) and course material uploaded by a mentor."""
    if llm is not None:
        settings = {"tutor__llm_base_url": llm.base_url, "tutor__llm_api_key": "test", "tutor__llm_max_attempts": 2, **settings}
    inst = await start_instance(**settings)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        mentor = await api.staff(db, "mentor")
        for title, text, course in (("Photosynthesis", CALVIN, "biology"), ("Ohm's law", OHM, "physics")):
            status, body = await api.request("POST", "/api/documents", mentor, json={"title": title, "content": text, "course": course})
            assert status == 201, body
        try:
            yield Env(inst, api, llm)
        finally:
            await api.close_sockets()


async def open_tutor(env: Env, name: str = "Stu", **context: Any) -> tuple[User, Socket, dict[str, Any]]:
    student = await env.api.register(name)
    sock = await env.api.socket(student)
    conv = (await sock.ok("tutor:start", {"course": "biology", **context}))["conversation"]
    return student, sock, conv


async def ask(sock: Socket, conv: dict[str, Any], text: str) -> dict[str, Any]:
    return (await sock.ok("message:send", {"conversation_id": conv["id"], "content": text, "client_id": uuid.uuid4().hex}))["message"]


def reply_to(message: dict[str, Any]) -> Any:
    return lambda d: d["message"]["role"] in ("assistant", "system") and d["message"]["metadata"].get("reply_to") == message["id"]


async def wait_decisions(db: Database, conversation_id: str, count: int = 1, timeout: float = 5) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            async with db.connection() as conn:
                rows = await tutor_store.decisions(conn, uuid.UUID(conversation_id))
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.05)


async def test_full_flow_streams_then_commits_with_citations_decision_and_usage(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply=echo_passages, token_delay=0.01) as llm, tutor_env(start_instance, db, llm) as env:
        student, sock, conv = await open_tutor(env, lesson="The Calvin cycle", session_type="exam_prep")
        assert conv["kind"] == "tutor" and conv["mode"] == "ai"
        assert conv["context"] == {"course": "biology", "lesson": "The Calvin cycle", "session_type": "exam_prep", "socratic": False}
        assert [m["id"] for m in conv["members"]] == [student.id]

        question = await ask(sock, conv, "What sugars does the Calvin cycle build from carbon dioxide?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        deltas = [d for d in sock.received("message:delta") if d["conversation_id"] == conv["id"]]
        assert len(deltas) > 1 and {d["message_id"] for d in deltas} == {final["id"]}
        assert "".join(d["delta"] for d in deltas).strip() == final["content"]
        assert final["role"] == "assistant" and final["sender_id"] is None and final["seq"] == question["seq"] + 1
        # message:new came after every delta
        assert sock.received("message:new")[-1]["message"]["id"] == final["id"]

        meta = final["metadata"]
        assert meta["model"] == "fake-model" and meta["decision"]["action"] == "answer"
        assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0 and meta["latency_ms"] >= 0
        assert "cost_usd" in meta and meta["timings"]["first_delta_ms"] is not None
        cited = {c["title"] for c in meta["citations"]}
        assert "Photosynthesis" in cited and "Ohm's law" not in cited  # course filter: physics never retrieved
        assert all({"chunk_id", "document_id", "title", "score"} <= c.keys() for c in meta["citations"])

        # The model was prompted for an exam, with the retrieved passage in the prompt.
        request = llm.chat_requests[-1]
        assert request["stream"] is True and request["messages"][0]["role"] == "system"
        assert "exam preparation" in request["messages"][0]["content"] and "The Calvin cycle" in request["messages"][0]["content"]
        assert "RuBisCO fixes carbon dioxide" in request["messages"][-1]["content"]
        assert question["content"] in request["messages"][-1]["content"]

        [decision] = await wait_decisions(db, conv["id"])
        assert decision["action"] == "answer" and decision["outcome"] == "answered"
        assert decision["message_id"] == uuid.UUID(question["id"]) and decision["answer_id"] == uuid.UUID(final["id"])
        assert decision["model"] == "fake-model" and decision["prompt_tokens"] == meta["prompt_tokens"]
        status, body = await env.api.request("GET", f"/api/tutor/{conv['id']}/decisions", student)
        assert status == 200 and body["decisions"][0]["outcome"] == "answered"

        status, body = await env.api.request("GET", "/api/usage", student)
        assert status == 200, body
        usage = body["usage"]
        assert usage["calls"] == 1 and usage["prompt_tokens"] == meta["prompt_tokens"]
        assert usage["completion_tokens"] == meta["completion_tokens"] and usage["by_model"][0]["model"] == "fake-model"
        admin = await env.api.staff(db, "admin")
        status, body = await env.api.request("GET", "/api/usage", admin, params={"user_id": student.id})
        assert status == 200 and body["usage"]["calls"] == 1
        other = await env.api.register("Nosy")
        status, body = await env.api.request("GET", "/api/usage", other, params={"user_id": student.id})
        assert status == 403


async def test_history_and_socratic_prompt(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply="Think about what the plant needs. Which molecule carries the energy? [1]") as llm, \
            tutor_env(start_instance, db, llm) as env:
        _, sock, conv = await open_tutor(env, socratic=True, session_type="lesson")
        first = await ask(sock, conv, "How does the Calvin cycle use ATP?")
        await sock.wait_for("message:new", reply_to(first), timeout=10)
        second = await ask(sock, conv, "And where in the chloroplast does the Calvin cycle happen?")
        await sock.wait_for("message:new", reply_to(second), timeout=10)
        messages = llm.chat_requests[-1]["messages"]
        assert "Socratic" in messages[0]["content"]
        roles = [m["role"] for m in messages]
        assert roles == ["system", "user", "assistant", "user"]  # history kept, in order
        assert messages[1]["content"] == first["content"]


async def test_offline_tutor_quotes_the_material(start_instance: Any, db: Database) -> None:
    async with tutor_env(start_instance, db) as env:  # no LLM configured
        _, sock, conv = await open_tutor(env)
        question = await ask(sock, conv, "What does the enzyme RuBisCO fix in the stroma?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert final["metadata"]["model"] == "offline-extractive"
        assert "RuBisCO fixes carbon dioxide from the air" in final["content"]  # quoted verbatim
        assert "[1] Photosynthesis" in final["content"]
        assert [c["title"] for c in final["metadata"]["citations"]] == ["Photosynthesis"]
        deltas = [d for d in sock.received("message:delta") if d["message_id"] == final["id"]]
        assert "".join(d["delta"] for d in deltas).strip() == final["content"]
        [decision] = await wait_decisions(db, conv["id"])
        assert decision["outcome"] == "answered" and decision["model"] == "offline-extractive"
        async with db.connection() as conn:  # no model was called: nothing to bill
            assert await conn.fetchval("SELECT count(*) FROM llm_usage") == 0


async def test_escalation_requests_in_three_languages_are_logged_and_told(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply=echo_passages) as llm, tutor_env(start_instance, db, llm) as env:
        asks = {
            "en": ("I want to talk to a real person please", "person from the team"),
            "fr": ("Je voudrais parler à un conseiller s'il vous plaît", "une personne de l'équipe"),
            "ar": ("أريد التحدث مع شخص حقيقي", "شخص من الفريق"),
        }
        for lang, (text, told) in asks.items():
            _, sock, conv = await open_tutor(env, name=f"Student {lang}")
            question = await ask(sock, conv, text)
            final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
            assert final["metadata"]["decision"]["action"] == "escalate", lang
            assert final["metadata"]["decision"]["category"] == "human_request"
            if env.inst.app[CORE].tickets is not None:
                assert told in final["content"], (lang, final["content"])
            [decision] = await wait_decisions(db, conv["id"])
            assert decision["action"] == "escalate" and decision["reason"] == "human_requested"
            assert decision["outcome"] == "escalated" and decision["model"] == "rules"
        assert llm.chat_requests == []  # the model is never asked when a person is wanted


async def test_safety_signal_escalates_urgently(start_instance: Any, db: Database) -> None:
    async with tutor_env(start_instance, db) as env:
        _, sock, conv = await open_tutor(env)
        question = await ask(sock, conv, "I don't want to live anymore, I want to kill myself")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert final["metadata"]["decision"] == {
            "action": "escalate", "reason": "safety_concern", "confidence": 0.95, "category": "safety", "urgent": True,
        }
        assert "emergency" in final["content"]
        [decision] = await wait_decisions(db, conv["id"])
        assert decision["urgent"] is True and decision["category"] == "safety"


async def test_nothing_relevant_twice_escalates(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply="Sorry, the passages do not cover tax law, but generally...") as llm, \
            tutor_env(start_instance, db, llm) as env:
        _, sock, conv = await open_tutor(env)
        first = await ask(sock, conv, "How do I file my quarterly income tax return?")
        m1 = (await sock.wait_for("message:new", reply_to(first), timeout=10))["message"]
        assert m1["metadata"]["decision"]["reason"] == "no_relevant_material"
        second = await ask(sock, conv, "Which deductions apply to freelance translators?")
        m2 = (await sock.wait_for("message:new", reply_to(second), timeout=10))["message"]
        assert m2["metadata"]["decision"]["action"] == "escalate"
        assert m2["metadata"]["decision"]["reason"] == "no_relevant_material_again"
        assert len(llm.chat_requests) == 1


async def test_model_saying_it_cannot_help_escalates_and_hides_the_sentinel(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply="I_CANNOT_HELP") as llm, tutor_env(start_instance, db, llm) as env:
        _, sock, conv = await open_tutor(env)
        question = await ask(sock, conv, "How does chlorophyll absorb red and blue light?")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert final["metadata"]["decision"]["reason"] == "model_cannot_help"
        assert "I_CANNOT_HELP" not in final["content"]
        assert not [d for d in sock.received("message:delta") if "I_CANNOT" in d["delta"]]
        [decision] = await wait_decisions(db, conv["id"])
        assert decision["outcome"] == "escalated" and decision["model"] == "fake-model"


async def test_vague_message_gets_a_clarifying_question(start_instance: Any, db: Database) -> None:
    async with FakeLLM() as llm, tutor_env(start_instance, db, llm) as env:
        _, sock, conv = await open_tutor(env, lesson="Photosynthesis")
        question = await ask(sock, conv, "hello")
        final = (await sock.wait_for("message:new", reply_to(question), timeout=10))["message"]
        assert final["metadata"]["decision"]["action"] == "clarify" and "Photosynthesis" in final["content"]
        assert final["content"].rstrip().endswith("question.") or "?" in final["content"]
        assert llm.chat_requests == []


@pytest.mark.slow
async def test_no_answer_when_mode_is_not_ai(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply=echo_passages) as llm, tutor_env(start_instance, db, llm) as env:
        for mode in ("human", "waiting"):
            _, sock, conv = await open_tutor(env, name=f"Student {mode}")
            async with db.connection() as conn:
                await conversations.set_mode(conn, uuid.UUID(conv["id"]), mode)
            await ask(sock, conv, "What does the Calvin cycle build?")
            await sock.expect_none("message:new", lambda d: d["message"]["role"] == "assistant", within=0.8)
            await sock.expect_none("message:delta", within=0)
        assert llm.chat_requests == []


async def test_one_answer_at_a_time_in_order(start_instance: Any, db: Database) -> None:
    async with FakeLLM(reply=echo_passages, token_delay=0.02) as llm, tutor_env(start_instance, db, llm) as env:
        _, sock, conv = await open_tutor(env)
        first, second = await asyncio.gather(
            ask(sock, conv, "What does RuBisCO fix?"), ask(sock, conv, "Which pigment absorbs red and blue light?"),
        )
        assert (first["seq"], second["seq"]) == (1, 2)
        a1 = (await sock.wait_for("message:new", reply_to(first), timeout=10))["message"]
        a2 = (await sock.wait_for("message:new", reply_to(second), timeout=10))["message"]
        assert (a1["seq"], a2["seq"]) == (3, 4)
        ids = [d["message_id"] for d in sock.received("message:delta")]
        # every delta of the first answer before any of the second: never two streams at once
        assert ids == [a1["id"]] * ids.count(a1["id"]) + [a2["id"]] * ids.count(a2["id"])
        # the second answer saw the first question and its answer as history
        second_prompt = llm.chat_requests[1]["messages"]
        assert [m["role"] for m in second_prompt] == ["system", "user", "assistant", "user"]

