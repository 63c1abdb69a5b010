"""Live sessions through real HTTP, real Socket.IO clients and a real database: the
lifecycle and its refusals, joining, chat, hands, moderation, ending, favorites."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handlers.events import conversation_room
from server.keys import SIO
from storage.db import Database
from tests.client import Api, Socket, User
from tests.redis_helpers import in_room


async def _session(api: Api, host: User, *, max_participants: int = 10, start: bool = True, **extra: Any) -> dict:
    status, body = await api.request(
        "POST", "/api/live-sessions", host, json={"title": "Algebra live", "max_participants": max_participants, **extra}
    )
    assert status == 201, body
    session = body["live_session"]
    if start:
        status, body = await api.request("POST", f"/api/live-sessions/{session['id']}/start", host)
        assert status == 200, body
        session = body["live_session"]
    return session


async def _joined(api: Api, session: dict, name: str) -> tuple[User, Socket, dict]:
    user = await api.register(name)
    sock = await api.socket(user)
    ack = await sock.ok("room:join", {"live_session_id": session["id"]})
    return user, sock, ack


async def _current(api: Api, user: User, session_id: str) -> int:
    status, body = await api.request("GET", f"/api/live-sessions/{session_id}", user)
    assert status == 200, body
    return body["live_session"]["current_participants"]


def _send(sock: Socket, session: dict, content: str, client_id: str) -> Any:
    return sock.call("message:send", {"conversation_id": session["conversation_id"], "content": content, "client_id": client_id})


async def test_lifecycle_and_its_refusals(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    other_mentor = await api.staff(db, "mentor", "Other")
    admin = await api.staff(db, "admin")
    student = await api.register("Stu")

    status, body = await api.request("POST", "/api/live-sessions", student, json={"title": "x", "max_participants": 5})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await api.request("POST", "/api/live-sessions", mentor, json={"title": "x"})
    assert status == 400 and body["error"]["code"] == "bad_request"

    status, body = await api.request(
        "POST", "/api/live-sessions", mentor,
        json={"title": "Geometry", "max_participants": 30, "type": "office_hours",
              "scheduled_start_time": "2030-01-02T15:00:00Z", "is_featured": True},
    )
    assert status == 201, body
    s = body["live_session"]
    assert s["status"] == "scheduled" and s["host_id"] == mentor.id and s["type"] == "office_hours"
    assert s["max_participants"] == 30 and s["current_participants"] == 0 and s["is_featured"] is True
    assert s["scheduled_start_time"] == "2030-01-02T15:00:00Z" and s["started_at"] is None and s["conversation_id"]
    sid = s["id"]

    # Only the host or an admin changes it; illegal transitions are conflicts.
    for who in (student, other_mentor):
        status, body = await api.request("POST", f"/api/live-sessions/{sid}/start", who)
        assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await api.request("POST", f"/api/live-sessions/{sid}/end", mentor)
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await api.request("POST", f"/api/live-sessions/{sid}/start", mentor)
    assert status == 200 and body["live_session"]["status"] == "live" and body["live_session"]["started_at"]
    status, body = await api.request("POST", f"/api/live-sessions/{sid}/start", mentor)
    assert status == 409
    status, body = await api.request("POST", f"/api/live-sessions/{sid}/cancel", mentor)
    assert status == 409
    status, body = await api.request("POST", f"/api/live-sessions/{sid}/end", admin)
    assert status == 200 and body["live_session"]["status"] == "ended" and body["live_session"]["ended_at"]
    for action in ("start", "end", "cancel"):
        status, body = await api.request("POST", f"/api/live-sessions/{sid}/{action}", mentor)
        assert status == 409, action

    other = await _session(api, mentor, start=False)
    status, body = await api.request("POST", f"/api/live-sessions/{other['id']}/cancel", mentor)
    assert status == 200 and body["live_session"]["status"] == "cancelled"
    status, body = await api.request("POST", f"/api/live-sessions/{other['id']}/start", mentor)
    assert status == 409
    status, body = await api.request("POST", "/api/live-sessions/00000000-0000-0000-0000-000000000000/start", mentor)
    assert status == 404

    scheduled = await _session(api, other_mentor, start=False)
    status, body = await api.request("GET", "/api/live-sessions?status=scheduled", student)
    assert status == 200 and [x["id"] for x in body["live_sessions"]] == [scheduled["id"]]
    status, body = await api.request("GET", "/api/live-sessions", student)
    assert {x["id"] for x in body["live_sessions"]} == {sid, other["id"], scheduled["id"]}
    status, body = await api.request("GET", "/api/live-sessions?status=bogus", student)
    assert status == 400

    # A scheduled, ended or cancelled room cannot be joined.
    sock = await api.socket(student)
    for target in (scheduled, other, s):
        ack = await sock.call("room:join", {"live_session_id": target["id"]})
        assert ack["ok"] is False and ack["error"]["code"] == "not_live", ack
    ack = await sock.call("room:join", {"live_session_id": "00000000-0000-0000-0000-000000000000"})
    assert ack["error"]["code"] == "not_found"


async def test_join_chat_and_recent_history(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    host_sock = await api.socket(mentor)
    await host_sock.ok("room:join", {"live_session_id": session["id"]})
    await host_sock.ok("message:send", {"conversation_id": session["conversation_id"], "content": "welcome", "client_id": "w"})

    amy, sa, ack = await _joined(api, session, "Amy")
    assert ack["live_session"]["current_participants"] == 1, "the host takes no seat"
    assert [m["content"] for m in ack["messages"]] == ["welcome"]
    assert {p["id"] for p in ack["participants"]} == {mentor.id, amy.id}
    me = next(p for p in ack["participants"] if p["id"] == amy.id)
    assert me["muted"] is False and me["hand_raised"] is False and me["is_host"] is False
    joined = await host_sock.wait_for("room:participant", lambda d: d["user"]["id"] == amy.id and d["action"] == "joined")
    assert joined["live_session_id"] == session["id"]
    await host_sock.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 1)

    ben, sb, _ = await _joined(api, session, "Ben")
    await sa.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 2)
    sent = (await sa.ok("message:send", {"conversation_id": session["conversation_id"], "content": "hi all", "client_id": "a1"}))["message"]
    assert sent["seq"] == 2 and sent["role"] == "user"
    for sock in (sb, host_sock, sa):
        got = await sock.wait_for("message:new", lambda d: d["message"]["id"] == sent["id"])
        assert got["message"]["content"] == "hi all"
    # History and sync work for room chat as for threads.
    hist = await sb.ok("history", {"conversation_id": session["conversation_id"]})
    assert [m["seq"] for m in hist["messages"]] == [1, 2]
    synced = await sb.ok("sync", {"since": {session["conversation_id"]: 1}})
    assert [m["content"] for m in synced["conversations"][session["conversation_id"]]["messages"]] == ["hi all"]
    status, body = await api.request("GET", f"/api/conversations/{session['conversation_id']}/messages", ben)
    assert status == 200 and len(body["messages"]) == 2
    # Room chats are not threads: they do not show in the conversation list.
    status, body = await api.request("GET", "/api/conversations", amy)
    assert body["conversations"] == []

    # Leaving frees the seat and stops the chat for that user.
    await sb.ok("room:leave", {"live_session_id": session["id"]})
    await sa.wait_for("room:participant", lambda d: d["user"]["id"] == ben.id and d["action"] == "left")
    await sa.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 1)
    await sa.ok("message:send", {"conversation_id": session["conversation_id"], "content": "after", "client_id": "a2"})
    await sa.wait_for("message:new", lambda d: d["message"]["content"] == "after")
    await sb.expect_none("message:new", lambda d: d["message"]["content"] == "after", within=0.3)
    ack = await _send(sb, session, "let me in", "b1")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    assert await _current(api, amy, session["id"]) == 1


async def test_non_participant_cannot_read_or_send(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    _, sa, _ = await _joined(api, session, "Amy")
    await sa.ok("message:send", {"conversation_id": session["conversation_id"], "content": "secret-ish", "client_id": "s"})
    outsider = await api.register("Out")
    so = await api.socket(outsider)
    for event, payload in [
        ("history", {"conversation_id": session["conversation_id"]}),
        ("message:send", {"conversation_id": session["conversation_id"], "content": "x", "client_id": "o"}),
        ("typing", {"conversation_id": session["conversation_id"], "typing": True}),
    ]:
        ack = await so.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (event, ack)
    status, body = await api.request("GET", f"/api/conversations/{session['conversation_id']}/messages", outsider)
    assert status == 403
    synced = await so.ok("sync", {"since": {session["conversation_id"]: 0}})
    assert synced["conversations"] == {}
    await so.expect_none("message:new", within=0.2)
    # The host may read the chat without joining.
    status, body = await api.request("GET", f"/api/conversations/{session['conversation_id']}/messages", mentor)
    assert status == 200 and [m["content"] for m in body["messages"]] == ["secret-ish"]


@pytest.mark.slow
async def test_tabs_count_once_and_all_tabs_get_the_chat(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor, max_participants=2)
    amy = await api.register("Amy")
    tab1 = await api.socket(amy)
    tab2 = await api.socket(amy)
    await tab1.ok("room:join", {"live_session_id": session["id"]})
    ack = await tab2.ok("room:join", {"live_session_id": session["id"]})
    assert ack["live_session"]["current_participants"] == 1
    tab3 = await api.socket(amy)  # opened after joining
    _, sb, ack = await _joined(api, session, "Ben")
    assert ack["live_session"]["current_participants"] == 2
    assert [p["id"] for p in ack["participants"]].count(amy.id) == 1
    msg = (await sb.ok("message:send", {"conversation_id": session["conversation_id"], "content": "to all tabs", "client_id": "t"}))["message"]
    for tab in (tab1, tab2, tab3):
        await tab.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"])
    # Full now (2 seats): a third user is refused, a fourth tab of Amy is not.
    cat = await api.register("Cat")
    sc = await api.socket(cat)
    ack = await sc.call("room:join", {"live_session_id": session["id"]})
    assert ack["ok"] is False and ack["error"]["code"] == "room_full"
    tab4 = await api.socket(amy)
    await tab4.ok("room:join", {"live_session_id": session["id"]})
    # Closing one tab keeps the seat; leaving from any tab leaves for all.
    await tab1.disconnect()
    await asyncio.sleep(0.6)  # past the leave grace (0.3 s in tests)
    assert await _current(api, amy, session["id"]) == 2
    await tab2.ok("room:leave", {"live_session_id": session["id"]})
    await sb.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 1)
    msg = (await sb.ok("message:send", {"conversation_id": session["conversation_id"], "content": "gone?", "client_id": "g"}))["message"]
    await sb.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"])
    for tab in (tab2, tab3, tab4):
        await tab.expect_none("message:new", lambda d: d["message"]["id"] == msg["id"], within=0.1)
    await sc.ok("room:join", {"live_session_id": session["id"]})


@pytest.mark.slow
async def test_disconnect_frees_the_seat_after_the_grace(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor, max_participants=1)
    amy, sa, _ = await _joined(api, session, "Amy")
    watcher = await api.socket(mentor)
    await watcher.ok("room:join", {"live_session_id": session["id"]})
    ben = await api.register("Ben")
    sb = await api.socket(ben)
    assert (await sb.call("room:join", {"live_session_id": session["id"]}))["error"]["code"] == "room_full"

    # A reconnect within the grace keeps the seat (and the new socket gets the chat).
    await sa.disconnect()
    sa2 = await api.socket(amy)
    await asyncio.sleep(0.6)
    assert await _current(api, amy, session["id"]) == 1
    msg = (await watcher.ok("message:send", {"conversation_id": session["conversation_id"], "content": "still here?", "client_id": "h"}))["message"]
    await sa2.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"])

    # Gone past the grace: the seat is freed and everyone is told.
    await sa2.disconnect()
    assert await _current(api, ben, session["id"]) == 1, "not freed before the grace"
    left = await watcher.wait_for("room:participant", lambda d: d["user"]["id"] == amy.id and d["action"] == "left", timeout=3)
    assert left["live_session_id"] == session["id"]
    await watcher.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 0)
    await sb.ok("room:join", {"live_session_id": session["id"]})


async def test_mute_unmute_kick_ban_and_hands(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    sid, cid = session["id"], session["conversation_id"]
    host = await api.socket(mentor)
    await host.ok("room:join", {"live_session_id": sid})
    amy, sa, _ = await _joined(api, session, "Amy")
    ben, sb, _ = await _joined(api, session, "Ben")

    # Hands.
    await sa.ok("room:hand", {"live_session_id": sid, "raised": True})
    ev = await sb.wait_for("room:participant", lambda d: d["action"] == "hand_raised")
    assert ev["user"]["id"] == amy.id and ev["user"]["hand_raised"] is True
    await sa.ok("room:hand", {"live_session_id": sid, "raised": False})
    await host.wait_for("room:participant", lambda d: d["action"] == "hand_lowered" and d["user"]["id"] == amy.id)

    # A student who is not the host can moderate nothing; nor can another mentor.
    other_mentor = await api.staff(db, "mentor", "Other")
    som = await api.socket(other_mentor)
    for who in (sb, som):
        for action in ("mute", "unmute", "kick", "ban"):
            ack = await who.call("room:moderate", {"live_session_id": sid, "user_id": amy.id, "action": action})
            assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (action, ack)
    assert (await _send(sa, session, "still free", "a0"))["ok"] is True

    # Mute: sends are forbidden until unmuted; everyone sees it.
    await host.ok("room:moderate", {"live_session_id": sid, "user_id": amy.id, "action": "mute"})
    ev = await sb.wait_for("room:participant", lambda d: d["action"] == "muted")
    assert ev["user"]["id"] == amy.id and ev["user"]["muted"] is True
    ack = await _send(sa, session, "can you hear me", "a1")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    await sa.ok("room:leave", {"live_session_id": sid})
    await sa.ok("room:join", {"live_session_id": sid})
    ack = await _send(sa, session, "rejoined to escape", "a2")
    assert ack["error"]["code"] == "forbidden", "leaving and rejoining does not lift a mute"
    await host.ok("room:moderate", {"live_session_id": sid, "user_id": amy.id, "action": "unmute"})
    await sb.wait_for("room:participant", lambda d: d["action"] == "unmuted")
    assert (await _send(sa, session, "thanks", "a3"))["ok"] is True

    # Kick: removed (no more chat), may rejoin.
    await host.ok("room:moderate", {"live_session_id": sid, "user_id": ben.id, "action": "kick"})
    ev = await sb.wait_for("room:participant", lambda d: d["action"] == "kicked")
    assert ev["user"]["id"] == ben.id
    await sa.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 1)
    msg = (await host.ok("message:send", {"conversation_id": cid, "content": "ben is out", "client_id": "h1"}))["message"]
    await sa.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"])
    await sb.expect_none("message:new", lambda d: d["message"]["id"] == msg["id"], within=0.2)
    assert (await _send(sb, session, "hey", "b1"))["error"]["code"] == "forbidden"
    await sb.ok("room:join", {"live_session_id": sid})
    assert (await _send(sb, session, "back", "b2"))["ok"] is True

    # Ban: removed and forbidden on rejoin; an admin may moderate too.
    admin = await api.staff(db, "admin")
    sadmin = await api.socket(admin)
    await sadmin.ok("room:moderate", {"live_session_id": sid, "user_id": ben.id, "action": "ban"})
    ev = await sa.wait_for("room:participant", lambda d: d["action"] == "banned")
    assert ev["user"]["id"] == ben.id
    ack = await sb.call("room:join", {"live_session_id": sid})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    assert (await sb.call("history", {"conversation_id": cid}))["error"]["code"] == "forbidden"
    # Nobody moderates the host, and moderating a stranger (other than a ban) is not_found.
    ack = await sadmin.call("room:moderate", {"live_session_id": sid, "user_id": mentor.id, "action": "kick"})
    assert ack["error"]["code"] == "forbidden"
    stranger = await api.register("Stranger")
    ack = await host.call("room:moderate", {"live_session_id": sid, "user_id": stranger.id, "action": "kick"})
    assert ack["error"]["code"] == "not_found"
    assert await _current(api, amy, sid) == 1

    rows = await db.pool.fetch("SELECT action FROM audit_log WHERE action LIKE 'room.%' ORDER BY id")
    assert [r["action"] for r in rows] == ["room.mute", "room.unmute", "room.kick", "room.ban"]


async def test_the_removed_user_hears_it_even_when_already_out_of_the_chat(api: Api, db: Database, server: Any) -> None:
    """On another instance the notice that takes a kicked user's sockets out of the chat can
    arrive before the `kicked` event (on a Redis Cluster they come through different
    masters). Here one of Ben's two tabs is already out of the chat when the host kicks
    and then bans him: both tabs hear each, once."""
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    sid = session["id"]
    host = await api.socket(mentor)
    await host.ok("room:join", {"live_session_id": sid})
    ben, tab1, _ = await _joined(api, session, "Ben")
    tab2 = await api.socket(ben)
    sio = server.app[SIO]
    for action, verb in (("kick", "kicked"), ("ban", "banned")):
        if action == "ban":
            await tab1.ok("room:join", {"live_session_id": sid})
        chat = conversation_room(session["conversation_id"])
        await sio.leave_room(tab1.client.get_sid("/"), chat)
        assert not in_room(server, tab1, chat) and in_room(server, tab2, chat)
        await host.ok("room:moderate", {"live_session_id": sid, "user_id": ben.id, "action": action})
        for tab in (tab1, tab2):
            await tab.wait_for("room:participant", lambda d, verb=verb: d["action"] == verb and d["user"]["id"] == ben.id)
        await asyncio.sleep(0.2)
        for tab in (tab1, tab2):
            heard = [d for d in tab.received("room:participant") if d["action"] == verb]
            assert len(heard) == 1, (verb, heard)


async def test_end_notifies_and_stops_chat(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    host = await api.socket(mentor)
    amy, sa, _ = await _joined(api, session, "Amy")
    status, body = await api.request("POST", f"/api/live-sessions/{session['id']}/end", mentor)
    assert status == 200
    ended = await sa.wait_for("room:ended")
    assert ended == {"live_session_id": session["id"]}
    await host.wait_for("room:ended")
    upd = await sa.wait_for("room:updated", lambda d: d["live_session"]["status"] == "ended")
    assert upd["live_session"]["current_participants"] == 0
    ack = await _send(sa, session, "anyone?", "late")
    assert ack["ok"] is False and ack["error"]["code"] == "not_live"
    ack = await host.call("message:send", {"conversation_id": session["conversation_id"], "content": "bye", "client_id": "bye"})
    assert ack["error"]["code"] == "not_live"
    assert (await sa.call("room:join", {"live_session_id": session["id"]}))["error"]["code"] == "not_live"
    assert await _current(api, amy, session["id"]) == 0


@pytest.mark.slow
async def test_host_disconnect_grace_ends_the_room(api: Api, db: Database, start_instance: Any) -> None:
    inst = await start_instance(rooms__host_grace_seconds=0.5)
    api.url = inst.url
    mentor = await api.staff(db, "mentor")
    session = await _session(api, mentor)
    host = await api.socket(mentor)
    await host.ok("room:join", {"live_session_id": session["id"]})
    _, sa, _ = await _joined(api, session, "Amy")

    # The host drops and comes back within the grace: the room stays live.
    await host.disconnect()
    await asyncio.sleep(0.2)
    host = await api.socket(mentor)
    await asyncio.sleep(0.6)
    assert (await api.request("GET", f"/api/live-sessions/{session['id']}", mentor))[1]["live_session"]["status"] == "live"

    # Gone for good: the room ends by itself.
    await host.disconnect()
    await sa.wait_for("room:ended", timeout=3)
    status, body = await api.request("GET", f"/api/live-sessions/{session['id']}", mentor)
    assert body["live_session"]["status"] == "ended" and body["live_session"]["ended_at"]
    assert (await _send(sa, session, "hello?", "x"))["error"]["code"] == "not_live"


async def test_favorites_get_presence_and_live_started(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    fan = await api.register("Fan")
    quiet = await api.register("Quiet")
    status, body = await api.request("POST", "/api/favorites", fan, json={"user_id": mentor.id, "notify_when_online": True})
    assert status == 201 and body["favorite"]["user_id"] == mentor.id and body["favorite"]["notify_when_online"] is True
    status, _ = await api.request("POST", "/api/favorites", quiet, json={"user_id": mentor.id, "notify_when_online": False})
    assert status == 201
    status, body = await api.request("POST", "/api/favorites", fan, json={"user_id": fan.id, "notify_when_online": True})
    assert status == 400
    status, body = await api.request("POST", "/api/favorites", fan, json={"user_id": "00000000-0000-0000-0000-000000000000", "notify_when_online": True})
    assert status == 404
    status, body = await api.request("GET", "/api/favorites", fan)
    assert [f["user"]["id"] for f in body["favorites"]] == [mentor.id]

    sf = await api.socket(fan)
    sq = await api.socket(quiet)
    sm = await api.socket(mentor)
    online = await sf.wait_for("presence", lambda d: d["user_id"] == mentor.id)
    assert online["status"] == "online"

    session = await _session(api, mentor, start=False)
    await api.request("POST", f"/api/live-sessions/{session['id']}/start", mentor)
    started = await sf.wait_for("live:started")
    assert started["live_session"]["id"] == session["id"] and started["live_session"]["status"] == "live"
    await sq.expect_none("live:started", within=0.3)

    status, _ = await api.request("DELETE", f"/api/favorites/{mentor.id}", fan)
    assert status == 204
    second = await _session(api, mentor)
    await sf.expect_none("live:started", lambda d: d["live_session"]["id"] == second["id"], within=0.3)
    await sm.disconnect()


async def test_sixty_race_for_fifty_seats_across_two_instances(cluster: list, db: Database) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        api = Api(http, cluster[0].url)
        try:
            mentor = await api.staff(db, "mentor")
            session = await _session(api, mentor, max_participants=50)
            host = await api.socket(mentor, url=cluster[1].url)
            await host.ok("room:join", {"live_session_id": session["id"]})
            users = await asyncio.gather(*[api.guest(f"Racer {i}") for i in range(60)])
            socks = await asyncio.gather(*[api.socket(u, url=cluster[i % 2].url) for i, u in enumerate(users)])
            acks = await asyncio.gather(*[s.call("room:join", {"live_session_id": session["id"]}) for s in socks])
            ok = [a for a in acks if a["ok"]]
            full = [a for a in acks if not a["ok"]]
            assert len(ok) == 50 and len(full) == 10, [a.get("error") for a in full]
            assert {a["error"]["code"] for a in full} == {"room_full"}
            assert max(a["live_session"]["current_participants"] for a in ok) == 50
            assert await _current(api, mentor, session["id"]) == 50
            status, body = await api.request("GET", f"/api/live-sessions/{session['id']}", mentor, )
            assert body["live_session"]["current_participants"] == 50
            # Everyone in the room, on either instance, converges on the right count.
            await host.wait_for("room:updated", lambda d: d["live_session"]["current_participants"] == 50, timeout=5)
            # Chat reaches every participant on both instances, once; none of the refused.
            inside = [s for s, a in zip(socks, acks) if a["ok"]]
            outside = [s for s, a in zip(socks, acks) if not a["ok"]]
            msg = (await inside[0].ok("message:send", {"conversation_id": session["conversation_id"], "content": "hello room", "client_id": "r1"}))["message"]
            await asyncio.gather(*[s.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"]) for s in [*inside, host]])
            await asyncio.sleep(0.2)
            assert all(len([d for d in s.received("message:new") if d["message"]["id"] == msg["id"]]) == 1 for s in inside)
            assert not any(s.received("message:new") for s in outside)
            # A seat freed on one instance can be taken through the other.
            leaver = next(s for s, u in zip(socks, users) if s.url == cluster[1].url and s in inside)
            await leaver.ok("room:leave", {"live_session_id": session["id"]})
            taker = next(s for s in outside if s.url == cluster[0].url)
            await taker.ok("room:join", {"live_session_id": session["id"]})
            assert await _current(api, mentor, session["id"]) == 50
            # The host (on instance 1) kicks someone connected to instance 0: their socket
            # there leaves the chat too.
            victim_sock, victim = next((s, u) for s, u, a in zip(socks, users, acks)
                                       if a["ok"] and s.url == cluster[0].url and s is not taker)
            await host.ok("room:moderate", {"live_session_id": session["id"], "user_id": victim.id, "action": "kick"})
            await victim_sock.wait_for("room:participant", lambda d: d["action"] == "kicked" and d["user"]["id"] == victim.id)
            msg = (await host.ok("message:send", {"conversation_id": session["conversation_id"], "content": "after kick", "client_id": "k1"}))["message"]
            await taker.wait_for("message:new", lambda d: d["message"]["id"] == msg["id"])
            await victim_sock.expect_none("message:new", lambda d: d["message"]["id"] == msg["id"], within=0.3)
        finally:
            await api.close_sockets()
