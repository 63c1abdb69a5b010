"""End to end with the AI tutor and the test LLM server: from "I want to talk to a person"
to a resolved ticket handed back to the AI, and the AI silent from the moment of
escalation, mid-stream included."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.client import Api, Socket
from tests.fakellm import FakeLLM

pytest.importorskip("handlers.tutor.service")

ANSWER = "Plants turn light, water and carbon dioxide into sugar and oxygen."


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def tap(sock: Socket) -> list[tuple[str, Any]]:
    """Every event the socket receives, in arrival order (the Socket keeps them per event)."""
    log: list[tuple[str, Any]] = []
    original = sock._on_any

    async def record(event: str, data: Any = None) -> None:
        log.append((event, data))
        await original(event, data)

    sock.client.on("*", record)
    return log


def _msg(role: str, cid: str, event: str | None = None):
    def match(d: dict[str, Any]) -> bool:
        m = d["message"]
        return m["conversation_id"] == cid and m["role"] == role and (event is None or m["metadata"].get("event") == event)
    return match


async def _history(sock: Socket, cid: str) -> list[dict[str, Any]]:
    return (await sock.ok("history", {"conversation_id": cid, "limit": 100}))["messages"]


@pytest.mark.slow
async def test_person_request_to_resolved_ticket_handed_back_to_ai(start_instance, session, db) -> None:
    async with FakeLLM(reply=ANSWER) as llm:
        inst = await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test")
        api = Api(session, inst.url)
        try:
            student = await api.register("Pia")
            agent = await api.staff(db, "agent", "Agent Kim")
            ss, sa = await api.socket(student), await api.socket(agent)
            cid = (await ss.ok("tutor:start", {"title": "Biology"}))["conversation"]["id"]

            await ss.ok("message:send", {"conversation_id": cid, "content": "How does photosynthesis work in plants?", "client_id": "q1"})
            first = await ss.wait_for("message:new", _msg("assistant", cid), timeout=10)
            assert ANSWER in first["message"]["content"]
            calls = len(llm.chat_requests)

            # The student asks for a person: the tutor decides to escalate and calls the ticket service.
            await ss.ok("message:send", {"conversation_id": cid, "content": "I want to talk to a person please", "client_id": "q2"})
            new = await sa.wait_for("ticket:new", lambda d: d["ticket"]["conversation_id"] == cid, timeout=10)
            ticket = new["ticket"]
            assert ticket["escalation_source"] == "tutor" and ticket["priority"] == "high"
            await ss.wait_for("message:new", _msg("system", cid, "escalated"))
            await ss.wait_for("conversation:updated", lambda d: d["conversation"]["id"] == cid and d["conversation"]["mode"] == "waiting")

            # Waiting: the AI says nothing, whatever the student writes.
            await ss.ok("message:send", {"conversation_id": cid, "content": "How do leaves absorb light energy?", "client_id": "q3"})
            await asyncio.sleep(1.0)
            assert len(llm.chat_requests) == calls
            assistants = [m for m in await _history(ss, cid) if m["role"] == "assistant"]

            # An agent claims, gets the context, and talks with the student.
            await sa.ok("ticket:claim", {"ticket_id": ticket["id"]})
            joined = await ss.wait_for("message:new", _msg("system", cid, "claimed"))
            assert "Agent Kim" in joined["message"]["content"]
            status, detail = await api.request("GET", f"/api/tickets/{ticket['id']}", agent)
            assert status == 200
            ai_answers = [m for m in detail["messages"] if m["role"] == "assistant" and m["content"] == first["message"]["content"]]
            assert ai_answers and "citations" in ai_answers[0]["metadata"]
            assert any(d["action"] == "escalate" and d["reason"] == "human_requested" for d in detail["decisions"])
            reply = (await sa.ok("message:send", {"conversation_id": cid, "content": "Hi Pia, Kim here.", "client_id": "a1"}))["message"]
            assert reply["role"] == "agent"
            await ss.wait_for("message:new", lambda d: d["message"]["id"] == reply["id"])
            answer = (await ss.ok("message:send", {"conversation_id": cid, "content": "What is chlorophyll made of?", "client_id": "q4"}))["message"]
            await sa.wait_for("message:new", lambda d: d["message"]["id"] == answer["id"])
            await asyncio.sleep(1.0)
            assert len(llm.chat_requests) == calls, "the AI stays silent while a person is in charge"
            assert [m for m in await _history(ss, cid) if m["role"] == "assistant"] == assistants

            # Resolved and handed back: the AI answers again.
            await sa.ok("ticket:resolve", {"ticket_id": ticket["id"], "resolution": "Explained", "handback": "ai"})
            await ss.wait_for("conversation:updated", lambda d: d["conversation"]["id"] == cid and d["conversation"]["mode"] == "ai")
            back = (await ss.ok("message:send", {"conversation_id": cid, "content": "Why are most plants green?", "client_id": "q5"}))["message"]
            again = await ss.wait_for("message:new", lambda d: _msg("assistant", cid)(d) and d["message"]["seq"] > back["seq"], timeout=10)
            assert ANSWER in again["message"]["content"]
            assert len(llm.chat_requests) == calls + 1
        finally:
            await api.close_sockets()


async def _stream_started(ss: Socket, cid: str, client_id: str) -> None:
    await ss.ok("message:send", {"conversation_id": cid, "content": "Explain in detail how photosynthesis works in plants?", "client_id": client_id})
    await ss.wait_for("message:delta", lambda d: d["conversation_id"] == cid, timeout=10)


@pytest.mark.slow
async def test_ai_silent_from_escalation_mid_stream(start_instance, session, db) -> None:
    async with FakeLLM(reply="sunlight " * 300, token_delay=0.02) as llm:
        inst = await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test")
        api = Api(session, inst.url)
        try:
            student = await api.register("Mo")
            agent = await api.staff(db, "agent")
            ss = await api.socket(student)
            sa = await api.socket(agent)
            log = tap(ss)
            cid = (await ss.ok("tutor:start", {}))["conversation"]["id"]
            await _stream_started(ss, cid, "q1")

            ticket = (await ss.ok("tutor:escalate", {"conversation_id": cid, "reason": "I would like a person"}))["ticket"]
            await sa.wait_for("ticket:new", lambda d: d["ticket"]["id"] == ticket["id"])
            notice = await ss.wait_for("message:new", _msg("system", cid, "escalated"))
            await asyncio.sleep(1.0)  # the fake model would have streamed ~50 more tokens by now
            at = next(i for i, (e, d) in enumerate(log) if e == "message:new" and d["message"]["id"] == notice["message"]["id"])
            after = [e for e, d in log[at:] if e == "message:delta" and d["conversation_id"] == cid]
            assert after == [], "no delta after the escalation notice"
            msgs = await _history(ss, cid)
            assert not [m for m in msgs if m["role"] == "assistant" and m["seq"] > notice["message"]["seq"]]
            assert not [m for m in msgs if m["role"] == "assistant" and "sunlight sunlight" in m["content"]]
            assert [m for m in msgs if m["role"] == "system"][-1]["id"] == notice["message"]["id"]
        finally:
            await api.close_sockets()


async def test_ai_silent_when_staff_escalate_from_another_instance_mid_stream(start_instance, session, db, redis_url) -> None:
    """The stream runs on one instance, the escalation happens on the other: the streaming
    instance notices the mode change and stops; nothing of the answer is committed."""
    async with FakeLLM(reply="chlorophyll " * 300, token_delay=0.02) as llm:
        channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
        one, two = [await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test",
                                         cluster__redis_url=redis_url, cluster__redis_channel=channel)
                    for _ in range(2)]
        api = Api(session, one.url)
        try:
            student = await api.register("Lee")
            agent = await api.staff(db, "agent")
            ss = await api.socket(student, url=one.url)
            sa = await api.socket(agent, url=two.url)
            cid = (await ss.ok("tutor:start", {}))["conversation"]["id"]
            await _stream_started(ss, cid, "q1")

            ticket = (await sa.ok("ticket:create", {"conversation_id": cid, "reason": "Watching this one"}))["ticket"]
            notice = await ss.wait_for("message:new", _msg("system", cid, "escalated"))
            await asyncio.sleep(1.5)
            count = len([d for d in ss.received("message:delta") if d["conversation_id"] == cid])
            await asyncio.sleep(1.0)
            assert len([d for d in ss.received("message:delta") if d["conversation_id"] == cid]) == count, "the stream stopped"
            msgs = await _history(ss, cid)
            assert not [m for m in msgs if m["role"] == "assistant" and m["seq"] > notice["message"]["seq"]]
            await sa.ok("ticket:claim", {"ticket_id": ticket["id"]})
            await ss.wait_for("conversation:updated", lambda d: d["conversation"]["mode"] == "human")
        finally:
            await api.close_sockets()
