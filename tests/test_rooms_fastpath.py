"""Room sends without the look-up (issue 16): once a conversation is known to be a live
room, a send goes straight to the writer under a guard its statement checks in SQL
(storage/messages.py `RoomSendGuard`). Real PostgreSQL, real Socket.IO clients.

Every refusal here is made after a first successful send has filled the kind cache, so it
is the guard that refuses it: the writer runs one more statement (the guarded insert) and
the loader one more look-up (the full path that then gives the protocol's error). Each
error is the one the full path gives (handlers/rooms/live.py `RoomPolicy.check_send`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from handlers.core import Core, Pipeline
from handlers.pipeline import AfterCommitHook, register
from handlers.webhooks.settings import WebhookSettings
from server.keys import CORE
from storage import conversations
from storage.db import Database
from storage.messages import GuardFailed, NewMessage, RoomSendGuard
from tests.client import Api, Instance, Socket, User
from tests.identity_platform import hs256_platform
from tests.webhook_receiver import Receiver

BANNED = {"code": "forbidden", "message": "You are banned from this room."}
NOT_JOINED = {"code": "forbidden", "message": "Join the room to chat."}
MUTED = {"code": "forbidden", "message": "You are muted in this room."}
ENDED = {"code": "not_live", "message": "The room is ended."}


class Room:
    """A started live session with its host's socket in it, and the server's pipeline."""

    def __init__(self, api: Api, core: Core, session: dict[str, Any], host: User, host_sock: Socket) -> None:
        self.api, self.core, self.session, self.host, self.host_sock = api, core, session, host, host_sock
        self.sid, self.cid = session["id"], session["conversation_id"]

    @property
    def pipeline(self) -> Pipeline:
        assert self.core.pipeline is not None
        return self.core.pipeline

    def counters(self) -> tuple[int, int]:
        """(look-ups, insert statements) the server has run so far."""
        return self.pipeline.loader.batcher.requests, self.pipeline.writer.statements

    async def join(self, name: str) -> tuple[User, Socket]:
        user = await self.api.register(name)
        sock = await self.api.socket(user)
        await sock.ok("room:join", {"live_session_id": self.sid})
        return user, sock

    async def send(self, sock: Socket, content: str, client_id: str | None = None) -> dict[str, Any]:
        return await sock.call("message:send", {"conversation_id": self.cid, "content": content,
                                                "client_id": client_id or uuid.uuid4().hex})

    async def moderate(self, user: User, action: str) -> None:
        await self.host_sock.ok("room:moderate", {"live_session_id": self.sid, "user_id": user.id, "action": action})

    async def stored(self, db: Database) -> list[str]:
        rows = await db.pool.fetch("SELECT content FROM messages WHERE conversation_id = $1 ORDER BY seq",
                                   uuid.UUID(self.cid))
        return [r["content"] for r in rows]

    async def refused_by_guard(self, sock: Socket, content: str, client_id: str | None = None) -> dict[str, Any]:
        """Send; assert it was refused and went guarded insert -> full path; the ack's error."""
        lookups, statements = self.counters()
        ack = await self.send(sock, content, client_id)
        assert ack["ok"] is False, ack
        assert self.counters() == (lookups + 1, statements + 1), "the guard refused it, then the full path said why"
        return dict(ack["error"])


async def _room(api: Api, core: Core, db: Database) -> Room:
    host = await api.staff(db, "mentor")
    session = await api.live_session(host)
    host_sock = await api.socket(host)
    await host_sock.ok("room:join", {"live_session_id": session["id"]})
    return Room(api, core, session, host, host_sock)


@pytest.fixture
async def room(api: Api, server: Instance, db: Database) -> Room:
    return await _room(api, server.app[CORE], db)


async def test_room_sends_skip_the_lookup_once_the_kind_is_known(room: Room, db: Database) -> None:
    amy, sa = await room.join("Amy")
    ben, sb = await room.join("Ben")
    first = await room.send(sa, "first")
    assert first["ok"] is True
    lookups, statements = room.counters()
    sent = []
    for i in range(5):
        sock = sa if i % 2 == 0 else sb
        ack = await room.send(sock, f"m{i}")
        assert ack["ok"] is True, ack
        sent.append(ack["message"])
    assert room.counters() == (lookups, statements + 5), "no look-up for a room whose kind is known"
    assert [m["seq"] for m in sent] == [2, 3, 4, 5, 6]
    assert [m["sender_id"] for m in sent] == [amy.id, ben.id, amy.id, ben.id, amy.id]
    assert {m["role"] for m in sent} == {"user"} == {first["message"]["role"]}
    # Delivered to the room's sockets (the sender's included), in seq order.
    for sock in (room.host_sock, sa, sb):
        await sock.wait_for("message:new", lambda d: d["message"]["seq"] == 6)
        got = [d["message"]["seq"] for d in sock.received("message:new")]
        assert got == [1, 2, 3, 4, 5, 6], got
    assert await room.stored(db) == ["first", "m0", "m1", "m2", "m3", "m4"]

    # A retried client_id on the fast path is the first message, delivered to nobody again.
    dup_of = sent[1]
    ack = await sb.call("message:send", {"conversation_id": room.cid, "content": "m1 (retry)", "client_id": dup_of["client_id"]})
    assert ack["ok"] is True and ack["message"]["id"] == dup_of["id"] and ack["message"]["content"] == "m1"
    await sa.expect_none("message:new", lambda d: d["message"]["content"] == "m1 (retry)", within=0.2)
    assert room.counters()[0] == lookups


async def test_member_kinds_keep_the_lookup(api: Api, server: Instance) -> None:
    """A direct conversation's audience is its member list: every send looks it up."""
    core = server.app[CORE]
    assert core.pipeline is not None
    a, b = await api.register("A"), await api.register("B")
    sa = await api.socket(a)
    conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    before = core.pipeline.loader.batcher.requests
    for i in range(3):
        await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"d{i}", "client_id": f"d{i}"})
    assert core.pipeline.loader.batcher.requests == before + 3
    assert core.pipeline.loader.kinds.get(uuid.UUID(conv["id"])) == "direct"


async def test_host_and_admin_send_on_the_fast_path_with_the_full_paths_role(room: Room, db: Database) -> None:
    """The host and an admin may send without being present (`sessions.may_moderate`); a
    staff member who is the conversation's agent writes as `agent`, as the full path
    derives it, computed in the statement."""
    admin = await room.api.staff(db, "admin")
    sadmin = await room.api.socket(admin)  # never joins the room
    agent = await room.api.staff(db, "agent")
    async with db.transaction() as conn:
        await conversations.add_members(conn, uuid.UUID(room.cid), [uuid.UUID(agent.id)], member_role="agent")
    sagent = await room.api.socket(agent)
    await sagent.ok("room:join", {"live_session_id": room.sid})

    cold = {who: await room.send(sock, f"{who} cold") for who, sock in
            (("host", room.host_sock), ("admin", sadmin), ("agent", sagent))}
    lookups, _ = room.counters()
    warm = {who: await room.send(sock, f"{who} warm") for who, sock in
            (("host", room.host_sock), ("admin", sadmin), ("agent", sagent))}
    assert room.counters()[0] == lookups, "all three went without the look-up"
    for who in ("host", "admin", "agent"):
        assert cold[who]["ok"] is True and warm[who]["ok"] is True, (who, cold[who], warm[who])
        assert warm[who]["message"]["role"] == cold[who]["message"]["role"], who
    assert warm["agent"]["message"]["role"] == "agent" and warm["admin"]["message"]["role"] == "user"
    assert warm["host"]["message"]["role"] == "user"


async def test_a_hook_acting_on_rooms_keeps_the_full_path(room: Room) -> None:
    """A hook that acts on every kind (no `kinds`) must see the whole conversation, so a
    room send then takes the look-up; one registered for other kinds is not run for rooms."""
    amy, sa = await room.join("Amy")
    assert (await room.send(sa, "warm"))["ok"] is True
    seen: list[tuple[str, str]] = []

    async def every_kind(core: Any, conv: Any, message: Any) -> None:
        seen.append(("every", conv.kind))

    async def tutor_only(core: Any, conv: Any, message: Any) -> None:
        seen.append(("tutor", conv.kind))

    register(room.pipeline, [AfterCommitHook(tutor_only, kinds=frozenset({"tutor"}))])
    lookups, _ = room.counters()
    assert (await room.send(sa, "no hook for rooms"))["ok"] is True
    assert room.counters()[0] == lookups and seen == []
    register(room.pipeline, [AfterCommitHook(every_kind)])
    assert (await room.send(sa, "hooked"))["ok"] is True
    assert room.counters()[0] == lookups + 1 and seen == [("every", "room")]


async def test_mute_then_unmute_on_the_fast_path(room: Room, db: Database) -> None:
    amy, sa = await room.join("Amy")
    assert (await room.send(sa, "hello"))["ok"] is True
    await room.moderate(amy, "mute")
    assert await room.refused_by_guard(sa, "still here?") == MUTED
    await room.moderate(amy, "unmute")
    lookups, _ = room.counters()
    assert (await room.send(sa, "thanks"))["ok"] is True
    assert room.counters()[0] == lookups
    assert await room.stored(db) == ["hello", "thanks"]


async def test_kick_on_the_fast_path(room: Room, db: Database) -> None:
    amy, sa = await room.join("Amy")
    assert (await room.send(sa, "hello"))["ok"] is True
    await room.moderate(amy, "kick")
    assert await room.refused_by_guard(sa, "let me back") == NOT_JOINED
    assert await room.stored(db) == ["hello"]


async def test_leave_on_the_fast_path(room: Room, db: Database) -> None:
    amy, sa = await room.join("Amy")
    assert (await room.send(sa, "hello"))["ok"] is True
    await sa.ok("room:leave", {"live_session_id": room.sid})
    assert await room.refused_by_guard(sa, "bye?") == NOT_JOINED
    await sa.ok("room:join", {"live_session_id": room.sid})
    assert (await room.send(sa, "back"))["ok"] is True
    assert await room.stored(db) == ["hello", "back"]


async def test_ban_and_a_banned_users_resend_on_the_fast_path(room: Room, db: Database) -> None:
    """A banned user's resend of a client_id already stored is refused, not answered as a
    duplicate: the guard is checked before the duplicate look-up."""
    amy, sa = await room.join("Amy")
    first = await room.send(sa, "hello", client_id="c1")
    assert first["ok"] is True
    await room.moderate(amy, "ban")
    assert await room.refused_by_guard(sa, "hello", client_id="c1") == BANNED
    assert await room.refused_by_guard(sa, "new one") == BANNED
    assert await room.stored(db) == ["hello"]


async def test_a_stranger_is_refused_on_the_fast_path(room: Room, db: Database) -> None:
    """Someone who never joined: the first send (cold) and the next (the kind now known)
    get the same error."""
    stranger = await room.api.register("Stranger")
    sx = await room.api.socket(stranger)
    cold = await room.send(sx, "hi?")
    assert cold["ok"] is False and cold["error"] == NOT_JOINED
    assert await room.refused_by_guard(sx, "hi again?") == NOT_JOINED
    assert await room.stored(db) == []


async def test_an_ended_room_refuses_on_the_fast_path(room: Room, db: Database) -> None:
    amy, sa = await room.join("Amy")
    assert (await room.send(sa, "hello"))["ok"] is True
    assert (await room.send(room.host_sock, "welcome"))["ok"] is True
    status, body = await room.api.request("POST", f"/api/live-sessions/{room.sid}/end", room.host)
    assert status == 200, body
    assert await room.refused_by_guard(sa, "anyone?") == ENDED
    assert await room.refused_by_guard(room.host_sock, "bye") == ENDED
    assert await room.stored(db) == ["hello", "welcome"]


async def test_a_batch_mixing_refused_and_passing_guards(room: Room, db: Database) -> None:
    """One batch of guarded sends where one sender is muted: the others commit with
    consecutive seqs in acceptance order; the muted one alone gets `GuardFailed`."""
    amy, sa = await room.join("Amy")
    ben, sb = await room.join("Ben")
    await room.moderate(ben, "mute")
    writer, cid = room.pipeline.writer, uuid.UUID(room.cid)
    a, b = uuid.UUID(amy.id), uuid.UUID(ben.id)
    guard = RoomSendGuard(moderator=False)

    statements = writer.statements
    first = asyncio.ensure_future(writer.insert(NewMessage(cid, a, "user", "first", guard=guard)))
    await asyncio.sleep(0)  # `first` is in flight; the next four wait and share a batch
    queued = [NewMessage(cid, a, "user", "a1", guard=guard), NewMessage(cid, b, "user", "muted", guard=guard),
              NewMessage(cid, a, "user", "a2", guard=guard), NewMessage(cid, a, "user", "a3", guard=guard)]
    outcomes = await asyncio.gather(first, *(writer.insert(m) for m in queued), return_exceptions=True)
    assert writer.statements == statements + 2, "the four queued shared one statement"
    assert isinstance(outcomes[2], GuardFailed)
    kept = [o for i, o in enumerate(outcomes) if i != 2]
    assert [(m.content, m.seq, dup) for m, dup in kept] == [  # type: ignore[union-attr]
        ("first", 1, False), ("a1", 2, False), ("a2", 3, False), ("a3", 4, False)]
    assert await room.stored(db) == ["first", "a1", "a2", "a3"]


WEBHOOKS = WebhookSettings(allow_private_targets=True, poll_seconds=0.2, subscriptions_refresh_seconds=0.5)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


async def test_guarded_batch_writes_the_webhook_outbox_for_what_it_commits(
    start_instance: Any, db: Database, receiver: Receiver
) -> None:
    """With an endpoint subscribed to message.created, a guarded batch's statement also
    writes the outbox: one delivery per committed message reaches the receiver, none for
    the refused one."""
    instance = await start_instance(webhooks=WEBHOOKS)
    core = instance.app[CORE]
    async with aiohttp.ClientSession() as session:
        api = Api(session, instance.url)
        try:
            room = await _room(api, core, db)
            admin = await api.staff(db, "admin")
            platform = await hs256_platform(api, admin)
            status, body = await api.request("POST", "/api/webhooks/endpoints", admin, json={
                "app_id": platform.app_id, "url": receiver.url, "events": ["message.created"]})
            assert status == 201, body
            receiver.secret = body["secret"]
            outbox = room.pipeline.writer.outbox
            assert outbox is not None
            for _ in range(100):
                if outbox.wants_messages():
                    break
                await asyncio.sleep(0.05)
            assert outbox.wants_messages()

            amy, sa = await room.join("Amy")
            stranger = await api.register("Stranger")
            sx = await api.socket(stranger)
            assert (await room.send(sa, "warm"))["ok"] is True
            writer, cid = room.pipeline.writer, uuid.UUID(room.cid)
            guard = RoomSendGuard(moderator=False)
            first = asyncio.ensure_future(writer.insert(NewMessage(cid, uuid.UUID(amy.id), "user", "one", guard=guard)))
            await asyncio.sleep(0)
            outcomes = await asyncio.gather(first, *(writer.insert(m) for m in [
                NewMessage(cid, uuid.UUID(stranger.id), "user", "not joined", guard=guard),
                NewMessage(cid, uuid.UUID(amy.id), "user", "two", guard=guard),
            ]), return_exceptions=True)
            assert isinstance(outcomes[1], GuardFailed)
            assert await room.refused_by_guard(sx, "over the socket") == NOT_JOINED
            def room_events() -> list[dict[str, Any]]:
                return [r.payload["data"] for r in receiver.delivered
                        if r.payload["data"]["message"]["conversation_id"] == room.cid]

            await receiver.wait_for(lambda: len(room_events()) >= 3)
            await asyncio.sleep(0.3)  # the refused send's would have come with the others
            got = sorted((d["message"]["seq"], d["message"]["content"], d["conversation"]["kind"])
                         for d in room_events())
            assert got == [(1, "warm", "room"), (2, "one", "room"), (3, "two", "room")]
        finally:
            await api.close_sockets()
