"""Hardening of the tutor: per-user limits on questions, sessions and escalations (and a
deployment-wide cap on guest tickets), caps on what a document may expand to, and answers
abandoned by an instance that died mid-stream.

Real PostgreSQL, Redis, Socket.IO clients, the real `openai` client against
tests/fakellm.py, and a real `studyhall serve` process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from storage import messages
from storage.db import Database
from tests.client import Socket
from tests.fakellm import FakeLLM, echo_passages
from tests.test_tutor import ask, open_tutor, reply_to, tutor_env

QUESTION = "What does RuBisCO fix in the stroma?"


async def stored_user_messages(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        msgs, _ = await messages.history(conn, uuid.UUID(conversation_id), before_seq=None, limit=100)
    return [m for m in msgs if m["role"] == "user"]


async def ticket_count(db: Database) -> int:
    async with db.connection() as conn:
        return await conn.fetchval("SELECT count(*) FROM tickets")


def send(sock: Socket, conv: dict[str, Any], text: str) -> Any:
    return sock.call("message:send", {"conversation_id": conv["id"], "content": text, "client_id": uuid.uuid4().hex})


def refused(ack: dict[str, Any], within_ms: int) -> int:
    assert ack["ok"] is False and ack["error"]["code"] == "rate_limited", ack
    wait = ack["error"]["retry_after_ms"]
    assert 0 < wait <= within_ms, ack
    return wait


# ---- 1. limits --------------------------------------------------------------------------

async def test_question_limit_refuses_before_storing_and_before_the_model(
    start_instance: Any, db: Database, redis_url: str
) -> None:
    """3 questions per 2 s: the 4th is refused with retry_after_ms, is not stored and makes
    no model call, on the other instance too (counted in Redis); another student is not
    affected; after the window the student may ask again."""
    channel = f"lim-{uuid.uuid4().hex[:8]}"
    limits = {"tutor_question_limits": "3/2", "redis_url": redis_url, "redis_channel": channel}
    async with FakeLLM(reply=echo_passages) as llm, tutor_env(start_instance, db, llm, **limits) as env:
        other = await start_instance(llm_base_url=llm.base_url, llm_api_key="test", **limits)
        student, sock, conv = await open_tutor(env)
        questions = [await ask(sock, conv, QUESTION) for _ in range(3)]
        for q in questions:
            await sock.wait_for("message:new", reply_to(q), timeout=10)
        assert len(llm.chat_requests) == 3

        wait = refused(await send(sock, conv, "One more question about RuBisCO?"), 2000)
        sock_b = await env.api.socket(student, url=other.url)
        refused(await send(sock_b, conv, "And from the other instance?"), 2000)
        await asyncio.sleep(0.5)
        assert len(await stored_user_messages(db, conv["id"])) == 3
        assert len(llm.chat_requests) == 3, "a refused question reached the model"

        _, sock2, conv2 = await open_tutor(env, "Other")
        q = await ask(sock2, conv2, QUESTION)
        await sock2.wait_for("message:new", reply_to(q), timeout=10)
        assert len(llm.chat_requests) == 4

        await asyncio.sleep(wait / 1000 + 0.1)
        q = await ask(sock, conv, QUESTION)
        await sock.wait_for("message:new", reply_to(q), timeout=10)
        assert len(llm.chat_requests) == 5


async def test_guests_have_stricter_default_question_limits(start_instance: Any, db: Database) -> None:
    """Defaults: a guest's 6th question within a minute is refused; a signed-in student's is not."""
    async with FakeLLM(reply=echo_passages) as llm, tutor_env(start_instance, db, llm) as env:
        guest = await env.api.guest("Visitor")
        gsock = await env.api.socket(guest)
        gconv = (await gsock.ok("tutor:start", {"course": "biology"}))["conversation"]
        _, ssock, sconv = await open_tutor(env)
        for _ in range(5):
            assert (await send(gsock, gconv, QUESTION))["ok"] is True
            assert (await send(ssock, sconv, QUESTION))["ok"] is True
        refused(await send(gsock, gconv, QUESTION), 60_000)
        assert (await send(ssock, sconv, QUESTION))["ok"] is True


async def test_session_limit(start_instance: Any, db: Database) -> None:
    async with tutor_env(start_instance, db, tutor_session_limits_guest="2/2") as env:
        guest = await env.api.guest("Visitor")
        sock = await env.api.socket(guest)
        for _ in range(2):
            await sock.ok("tutor:start", {})
        wait = refused(await sock.call("tutor:start", {}), 2000)
        async with db.connection() as conn:
            made = await conn.fetchval("SELECT count(*) FROM conversations WHERE created_by = $1", uuid.UUID(guest.id))
        assert made == 2
        other = await env.api.socket(await env.api.guest("Other"))
        await other.ok("tutor:start", {})
        await asyncio.sleep(wait / 1000 + 0.1)
        await sock.ok("tutor:start", {})


async def test_escalation_limit_covers_every_path(start_instance: Any, db: Database) -> None:
    """2 escalations per 2 s per user: tutor:escalate and the tutor's own hand-over both count;
    refused, no ticket opens and no agent hears of one; another user is not affected."""
    async with FakeLLM(reply=echo_passages) as llm, \
            tutor_env(start_instance, db, llm, tutor_escalation_limits="2/2") as env:
        agent = await env.api.staff(db, "agent", "Agent")
        agent_sock = await env.api.socket(agent)
        student = await env.api.register("Stu")
        sock = await env.api.socket(student)
        convs = [(await sock.ok("tutor:start", {"course": "biology"}))["conversation"] for _ in range(4)]
        await sock.ok("tutor:escalate", {"conversation_id": convs[0]["id"], "reason": "I am stuck"})
        # Asking the same conversation again returns its ticket and is not counted.
        await sock.ok("tutor:escalate", {"conversation_id": convs[0]["id"]})
        await sock.ok("tutor:escalate", {"conversation_id": convs[1]["id"]})
        wait = refused(await sock.call("tutor:escalate", {"conversation_id": convs[2]["id"]}), 2000)
        # The tutor's own hand-over ("talk to a human") is refused too: the student is told
        # no person can be reached now, and the AI stays in charge.
        q = await ask(sock, convs[3], "I want to talk to a human please")
        told = (await sock.wait_for("message:new", reply_to(q), timeout=10))["message"]
        assert "cannot reach a person" in told["content"] and told["metadata"]["escalation"]["rate_limited"] is True
        assert await ticket_count(db) == 2
        await asyncio.sleep(0.3)
        assert len(agent_sock.received("ticket:new")) == 2

        _, sock2, conv2 = await open_tutor(env, "Other")
        await sock2.ok("tutor:escalate", {"conversation_id": conv2["id"]})
        assert await ticket_count(db) == 3

        await asyncio.sleep(wait / 1000 + 0.1)
        await sock.ok("tutor:escalate", {"conversation_id": convs[2]["id"]})
        assert await ticket_count(db) == 4


async def test_a_swarm_of_fresh_guests_cannot_flood_the_agents(start_instance: Any, db: Database) -> None:
    """Deployment-wide cap on guest tickets (3 per minute here): 10 fresh guests escalating at
    once open 3 tickets; agents get 3 `ticket:new`; a signed-in student still gets through."""
    async with tutor_env(start_instance, db, guest_ticket_limits="3/60") as env:
        agent = await env.api.staff(db, "agent", "Agent")
        agent_sock = await env.api.socket(agent)

        async def one_guest(i: int) -> dict[str, Any]:
            sock = await env.api.socket(await env.api.guest(f"Guest {i}"))
            conv = (await sock.ok("tutor:start", {}))["conversation"]
            return await sock.call("tutor:escalate", {"conversation_id": conv["id"], "reason": "help"})

        acks = await asyncio.gather(*[one_guest(i) for i in range(10)])
        assert sum(a["ok"] for a in acks) == 3
        for ack in acks:
            if not ack["ok"]:
                refused(ack, 60_000)
        assert await ticket_count(db) == 3
        _, sock, conv = await open_tutor(env)
        await sock.ok("tutor:escalate", {"conversation_id": conv["id"]})
        await asyncio.sleep(0.3)
        assert len(agent_sock.received("ticket:new")) == 4
