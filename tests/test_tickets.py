"""Escalation, claim races, agent takeover, notes, transfer and resolve: real PostgreSQL,
Redis and Socket.IO clients."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import aiohttp

from storage import conversations, tickets
from tests.client import Api
from tests.ticket_helpers import audit_actions, escalate, tutor_conversation


def _is_system(event: str, cid: str):
    return lambda d: d["message"]["conversation_id"] == cid and d["message"]["role"] == "system" and d["message"]["metadata"].get("event") == event


async def test_escalation_via_service_opens_one_ticket_and_tells_everyone(api: Api, db, server) -> None:
    student = await api.register("Sara")
    agent = await api.staff(db, "agent")
    admin = await api.staff(db, "admin")
    mentor = await api.staff(db, "mentor")
    ss, sa, sad, sm = [await api.socket(u) for u in (student, agent, admin, mentor)]
    cid = await tutor_conversation(db, student)

    ticket = await escalate(server, cid, "human_requested", category="human_request")
    assert re.fullmatch(r"SH-\d{6}", ticket["number"])
    assert ticket["status"] == "open" and ticket["assigned_to"] is None and ticket["priority"] == "high"
    assert ticket["subject"] == "How do I add fractions?" and ticket["escalation_source"] == "tutor"
    assert str(ticket["user_id"]) == student.id and ticket["sla_breached"] is False
    assert timedelta(hours=7, minutes=59) < ticket["sla_due_at"] - ticket["created_at"] <= timedelta(hours=8, seconds=1)

    # Every agent and admin hears of it; the student and mentors never see ticket events.
    for s in (sa, sad):
        got = await s.wait_for("ticket:new")
        assert got["ticket"]["id"] == str(ticket["id"]) and got["ticket"]["number"] == ticket["number"]
    # The student is told in the conversation, and sees the mode change.
    notice = await ss.wait_for("message:new", _is_system("escalated", cid))
    assert ticket["number"] in notice["message"]["content"] and notice["message"]["sender_id"] is None
    assert notice["message"]["metadata"]["ticket_id"] == str(ticket["id"])
    upd = await ss.wait_for("conversation:updated", lambda d: d["conversation"]["id"] == cid)
    assert upd["conversation"]["mode"] == "waiting"

    # A second escalation of the same conversation returns the same ticket and makes no noise.
    again = await escalate(server, cid, "safety_concern", urgent=True)
    assert again["id"] == ticket["id"] and again["priority"] == "high"
    await asyncio.sleep(0.3)
    assert len(sa.received("ticket:new")) == 1
    assert len([d for d in ss.received("message:new") if d["message"]["role"] == "system"]) == 1
    assert not ss.received("ticket:new") and not sm.received("ticket:new")
    async with db.connection() as conn:
        assert len(await tickets.list_for_conversation(conn, uuid.UUID(cid))) == 1
        assert (await conversations.get(conn, uuid.UUID(cid))).mode == "waiting"
    esc = [e for e in await audit_actions(db) if e["action"] == "ticket.escalated"]
    assert len(esc) == 1 and esc[0]["target_id"] == str(ticket["id"]) and esc[0]["details"]["source"] == "tutor"


async def test_safety_reason_is_urgent_with_the_urgent_sla(api: Api, db, server) -> None:
    student = await api.register("Sam")
    ss = await api.socket(student)
    cid = await tutor_conversation(db, student, "I want to end my life")
    ticket = await escalate(server, cid, "safety_concern", urgent=True, category="safety")
    assert ticket["priority"] == "urgent" and ticket["category"] == "safety"
    assert ticket["sla_due_at"] - ticket["created_at"] <= timedelta(hours=1, seconds=1)
    notice = await ss.wait_for("message:new", _is_system("escalated", cid))
    assert "emergency" in notice["message"]["content"]
    # Free-text reasons are read for safety signals too (tutor:escalate passes the student's words).
    cid2 = await tutor_conversation(db, student)
    t2 = await escalate(server, cid2, "someone keeps hitting me at home", source="user")
    assert t2["priority"] == "urgent"


async def test_staff_escalate_with_ticket_create(api: Api, db) -> None:
    student = await api.register("Stu")
    mentor = await api.staff(db, "mentor")
    agent = await api.staff(db, "agent")
    ss, sm, sa = [await api.socket(u) for u in (student, mentor, agent)]
    cid = await tutor_conversation(db, student)
    for s in (ss, sm):
        ack = await s.call("ticket:create", {"conversation_id": cid, "reason": "please"})
        assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    ack = await sa.ok("ticket:create", {"conversation_id": cid, "reason": "Student seems stuck for a week", "priority": "low"})
    t = ack["ticket"]
    assert t["priority"] == "low" and t["escalation_source"] == "staff" and t["escalated_by"] == agent.id
    assert t["escalation_reason"] == "Student seems stuck for a week"
    await sa.wait_for("ticket:new", lambda d: d["ticket"]["id"] == t["id"])
    await ss.wait_for("conversation:updated", lambda d: d["conversation"]["mode"] == "waiting")
    again = await sa.ok("ticket:create", {"conversation_id": cid, "reason": "again"})
    assert again["ticket"]["id"] == t["id"]
    # Only tutor conversations; unknown ones are not_found; bad payloads bad_request.
    other = await api.register("Other")
    direct = (await ss.ok("conversation:create", {"kind": "direct", "member_ids": [other.id]}))["conversation"]
    assert (await sa.call("ticket:create", {"conversation_id": direct["id"], "reason": "x"}))["error"]["code"] == "bad_request"
    assert (await sa.call("ticket:create", {"conversation_id": str(uuid.uuid4()), "reason": "x"}))["error"]["code"] == "not_found"
    assert (await sa.call("ticket:create", {"conversation_id": cid, "reason": "x", "priority": "huge"}))["error"]["code"] == "bad_request"


async def test_five_agents_race_to_claim_on_two_instances(cluster, db) -> None:
    one, two = cluster
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        try:
            student = await api.register("Rae")
            agents = [await api.staff(db, "agent", f"Agent {i}") for i in range(5)]
            ss = await api.socket(student, url=one.url)
            socks = [await api.socket(a, url=(one if i % 2 else two).url) for i, a in enumerate(agents)]
            cid = await tutor_conversation(db, student)
            ticket = await escalate(one, cid)
            tid = str(ticket["id"])
            for s in socks:  # ticket:new reaches agents on both instances
                await s.wait_for("ticket:new", lambda d: d["ticket"]["id"] == tid)

            acks = await asyncio.gather(*[s.call("ticket:claim", {"ticket_id": tid}) for s in socks])
            winners = [i for i, a in enumerate(acks) if a["ok"]]
            assert len(winners) == 1, acks
            assert all(a["error"]["code"] == "conflict" for a in acks if not a["ok"])
            w = winners[0]
            winner, wsock = agents[w], socks[w]
            assert acks[w]["ticket"]["status"] == "assigned" and acks[w]["ticket"]["assigned_to"] == winner.id
            # Claiming again is harmless for the holder.
            assert (await wsock.ok("ticket:claim", {"ticket_id": tid}))["ticket"]["assigned_to"] == winner.id

            joined = await ss.wait_for("message:new", _is_system("claimed", cid))
            assert winner.name in joined["message"]["content"]
            upd = await ss.wait_for("conversation:updated", lambda d: d["conversation"]["mode"] == "human")
            assert winner.id in {m["id"] for m in upd["conversation"]["members"]}
            for s in socks:
                await s.wait_for("ticket:updated", lambda d: d["ticket"]["id"] == tid and d["ticket"]["status"] == "assigned")

            # The agent and the student talk through the normal pipeline, across instances.
            sent = (await wsock.ok("message:send", {"conversation_id": cid, "content": "Hi Rae, I'm here.", "client_id": "a1"}))["message"]
            assert sent["role"] == "agent" and sent["sender_id"] == winner.id
            got = await ss.wait_for("message:new", lambda d: d["message"]["id"] == sent["id"])
            assert got["message"]["content"] == "Hi Rae, I'm here."
            reply = (await ss.ok("message:send", {"conversation_id": cid, "content": "Thanks!", "client_id": "u2"}))["message"]
            assert reply["role"] == "user"
            await wsock.wait_for("message:new", lambda d: d["message"]["id"] == reply["id"])
            # Losers are not members and hear nothing of the conversation.
            loser = socks[(w + 1) % 5]
            assert not [d for d in loser.received("message:new") if d["message"]["conversation_id"] == cid]
            assert (await loser.call("message:send", {"conversation_id": cid, "content": "me too", "client_id": "x"}))["error"]["code"] == "not_found"
            claims = [e for e in await audit_actions(db) if e["action"] == "ticket.claimed"]
            assert len(claims) == 1 and claims[0]["actor_id"] == uuid.UUID(winner.id)
        finally:
            await api.close_sockets()


async def test_notes_reach_staff_only_by_every_route(api: Api, db, server) -> None:
    student = await api.register("Nia")
    agent = await api.staff(db, "agent")
    admin = await api.staff(db, "admin")
    mentor = await api.staff(db, "mentor")
    ss, sa, sad, sm = [await api.socket(u) for u in (student, agent, admin, mentor)]
    cid = await tutor_conversation(db, student)
    tid = str((await escalate(server, cid))["id"])
    await sa.ok("ticket:claim", {"ticket_id": tid})
    secret = "NOTE-SECRET: parent called, be gentle"
    note = (await sa.ok("ticket:note", {"ticket_id": tid, "content": secret}))["note"]
    assert note["content"] == secret and note["author_id"] == agent.id and note["ticket_id"] == tid
    for s in (sa, sad):
        got = await s.wait_for("ticket:note", lambda d: d["ticket_id"] == tid)
        assert got["note"]["content"] == secret
    await sa.ok("message:send", {"conversation_id": cid, "content": "How can I help?", "client_id": "a1"})
    await ss.wait_for("message:new", lambda d: d["message"]["content"] == "How can I help?")

    def leaks(value: object) -> bool:
        return "NOTE-SECRET" in str(value)

    await asyncio.sleep(0.2)
    assert not ss.received("ticket:note") and not sm.received("ticket:note")
    assert not any(leaks(v) for evs in ss.events.values() for v in evs)
    hist = await ss.ok("history", {"conversation_id": cid})
    assert not leaks(hist) and len(hist["messages"]) >= 3
    sync = await ss.ok("sync", {"since": {cid: 0}})
    assert not leaks(sync) and sync["conversations"][cid]["messages"]
    for path in (f"/api/conversations/{cid}/messages", "/api/conversations"):
        status, body = await api.request("GET", path, student)
        assert status == 200 and not leaks(body)
    for path in ("/api/tickets", f"/api/tickets/{tid}", "/api/tickets?status=all", "/api/ticket-priorities"):
        for who in (student, mentor):
            status, body = await api.request("GET", path, who)
            assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
    # Staff see the note in the ticket's detail, not among the messages.
    status, body = await api.request("GET", f"/api/tickets/{tid}", admin)
    assert status == 200 and [n["content"] for n in body["notes"]] == [secret]
    assert not leaks(body["messages"])
    assert (await sm.call("ticket:note", {"ticket_id": tid, "content": "mentor note"}))["error"]["code"] == "forbidden"
    notes = [e for e in await audit_actions(db) if e["action"] == "ticket.note_added"]
    assert len(notes) == 1 and not leaks(notes[0]["details"])


async def test_transfer_moves_the_conversation_to_another_agent(api: Api, db, server) -> None:
    student = await api.register("Tia")
    a, b, c = [await api.staff(db, "agent", n) for n in ("Alma", "Bruno", "Chen")]
    ss, sa, sb, sc = [await api.socket(u) for u in (student, a, b, c)]
    cid = await tutor_conversation(db, student)
    tid = str((await escalate(server, cid))["id"])
    await sa.ok("ticket:claim", {"ticket_id": tid})
    assert (await sc.call("ticket:transfer", {"ticket_id": tid, "agent_id": c.id}))["error"]["code"] == "forbidden"
    assert (await sa.call("ticket:transfer", {"ticket_id": tid, "agent_id": student.id}))["error"]["code"] == "bad_request"
    moved = (await sa.ok("ticket:transfer", {"ticket_id": tid, "agent_id": b.id}))["ticket"]
    assert moved["assigned_to"] == b.id and moved["status"] == "assigned"
    note = await ss.wait_for("message:new", _is_system("transferred", cid))
    assert "Bruno" in note["message"]["content"]
    await sa.wait_for("conversation:updated", lambda d: d["conversation"]["id"] == cid and a.id not in {m["id"] for m in d["conversation"]["members"]})
    await sb.wait_for("conversation:new", lambda d: d["conversation"]["id"] == cid)
    assert (await sa.call("message:send", {"conversation_id": cid, "content": "still here?", "client_id": "a9"}))["error"]["code"] == "not_found"
    sent = (await sb.ok("message:send", {"conversation_id": cid, "content": "Bruno here.", "client_id": "b1"}))["message"]
    assert sent["role"] == "agent"
    await ss.wait_for("message:new", lambda d: d["message"]["id"] == sent["id"])
    async with db.connection() as conn:
        members = set(await conversations.member_ids(conn, uuid.UUID(cid)))
        assert members == {uuid.UUID(student.id), uuid.UUID(b.id)}
    t = [e for e in await audit_actions(db) if e["action"] == "ticket.transferred"]
    assert len(t) == 1 and t[0]["details"]["from"] == a.id and t[0]["details"]["to"] == b.id


async def test_resolve_with_handback_ai(api: Api, db, server) -> None:
    student = await api.register("Uma")
    agent = await api.staff(db, "agent", "Vera")
    other = await api.staff(db, "agent", "Wes")
    ss, sa, so = [await api.socket(u) for u in (student, agent, other)]
    cid = await tutor_conversation(db, student)
    tid = str((await escalate(server, cid))["id"])
    await sa.ok("ticket:claim", {"ticket_id": tid})
    bad = await sa.call("ticket:resolve", {"ticket_id": tid, "handback": "maybe"})
    assert bad["error"]["code"] == "bad_request"
    assert (await so.call("ticket:resolve", {"ticket_id": tid, "handback": "ai"}))["error"]["code"] == "forbidden"
    done = (await sa.ok("ticket:resolve", {"ticket_id": tid, "resolution": "Explained common denominators.", "handback": "ai"}))["ticket"]
    assert done["status"] == "resolved" and done["handback"] == "ai" and done["resolved_at"]
    assert done["resolution"] == "Explained common denominators." and done["resolved_by"] == agent.id
    upd = await ss.wait_for("conversation:updated", lambda d: d["conversation"]["mode"] == "ai")
    assert agent.id not in {m["id"] for m in upd["conversation"]["members"]}
    await ss.wait_for("message:new", _is_system("resolved", cid))
    await sa.wait_for("conversation:updated", lambda d: d["conversation"]["mode"] == "ai")
    await so.wait_for("ticket:updated", lambda d: d["ticket"]["id"] == tid and d["ticket"]["status"] == "resolved")
    assert (await sa.call("ticket:resolve", {"ticket_id": tid, "handback": "close"}))["error"]["code"] == "conflict"
    assert (await sa.call("ticket:claim", {"ticket_id": tid}))["error"]["code"] == "conflict"
    async with db.connection() as conn:
        conv = await conversations.get(conn, uuid.UUID(cid))
        assert conv.mode == "ai" and conv.status == "open"
    # A later escalation of the same conversation is a new ticket linked to this one.
    again = await escalate(server, cid)
    assert str(again["id"]) != tid and str(again["parent_ticket_id"]) == tid
    assert [e["action"] for e in await audit_actions(db)].count("ticket.resolved") == 1


async def test_close_then_user_writes_reopens_one_linked_ticket(api: Api, db, server) -> None:
    student = await api.register("Xia")
    agent = await api.staff(db, "agent")
    ss, sa = await api.socket(student), await api.socket(agent)
    cid = await tutor_conversation(db, student)
    first = await escalate(server, cid)
    tid = str(first["id"])
    await sa.ok("ticket:claim", {"ticket_id": tid})
    closed = (await sa.ok("ticket:resolve", {"ticket_id": tid, "handback": "close"}))["ticket"]
    assert closed["status"] == "closed" and closed["closed_at"]
    await ss.wait_for("conversation:updated", lambda d: d["conversation"]["status"] == "closed")
    await ss.wait_for("message:new", _is_system("closed", cid))

    # Two quick messages after the close: one new ticket, linked to the old, no loop.
    await asyncio.gather(
        ss.ok("message:send", {"conversation_id": cid, "content": "Actually I still need help", "client_id": "r1"}),
        ss.ok("message:send", {"conversation_id": cid, "content": "hello?", "client_id": "r2"}),
    )
    new = await sa.wait_for("ticket:new", lambda d: d["ticket"]["id"] != tid)
    t = new["ticket"]
    assert t["parent_ticket_id"] == tid and t["escalation_source"] == "reopen" and t["status"] == "open"
    assert t["escalated_by"] == student.id
    await ss.wait_for("conversation:updated", lambda d: d["conversation"]["status"] == "open" and d["conversation"]["mode"] == "waiting")
    await ss.ok("message:send", {"conversation_id": cid, "content": "still waiting", "client_id": "r3"})
    await asyncio.sleep(0.5)
    assert len([d for d in sa.received("ticket:new") if d["ticket"]["id"] != tid]) == 1
    async with db.connection() as conn:
        all_t = await tickets.list_for_conversation(conn, uuid.UUID(cid))
    assert len(all_t) == 2
    escalated_notices = [d for d in ss.received("message:new") if d["message"]["metadata"].get("event") == "escalated"]
    assert len(escalated_notices) == 2
    assert [e["action"] for e in await audit_actions(db)].count("ticket.closed") == 1


async def test_students_and_mentors_get_forbidden_on_agent_events(api: Api, db, server) -> None:
    student = await api.register("Yan")
    mentor = await api.staff(db, "mentor")
    guest = await api.guest("Zed")
    cid = await tutor_conversation(db, student)
    tid = str((await escalate(server, cid))["id"])
    calls = {
        "ticket:claim": {"ticket_id": tid},
        "ticket:note": {"ticket_id": tid, "content": "x"},
        "ticket:transfer": {"ticket_id": tid, "agent_id": mentor.id},
        "ticket:resolve": {"ticket_id": tid, "handback": "close"},
        "ticket:create": {"conversation_id": cid, "reason": "x"},
    }
    for user in (student, mentor, guest):
        sock = await api.socket(user)
        for event, payload in calls.items():
            ack = await sock.call(event, payload)
            assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (user.role, event, ack)
    async with db.connection() as conn:
        t = await tickets.get(conn, uuid.UUID(tid))
    assert t.status == "open" and t.assigned_to is None
    assert [e["action"] for e in await audit_actions(db)] == ["ticket.escalated"]


async def test_unknown_ticket_ids_are_not_found(api: Api, db) -> None:
    agent = await api.staff(db, "agent")
    sa = await api.socket(agent)
    nope = str(uuid.uuid4())
    for event, payload in {
        "ticket:claim": {"ticket_id": nope},
        "ticket:note": {"ticket_id": nope, "content": "x"},
        "ticket:transfer": {"ticket_id": nope, "agent_id": agent.id},
        "ticket:resolve": {"ticket_id": nope, "handback": "ai"},
    }.items():
        assert (await sa.call(event, payload))["error"]["code"] == "not_found", event
    status, body = await api.request("GET", f"/api/tickets/{nope}", agent)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _ = await api.request("GET", "/api/tickets/not-a-uuid", agent)
    assert status == 404

