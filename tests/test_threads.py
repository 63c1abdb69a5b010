"""Direct and group threads through real Socket.IO clients and a real database."""

from __future__ import annotations

import asyncio
import uuid

from server.keys import CORE
from storage import conversations
from storage.db import Database
from tests.client import Api, Instance
from tests.redis_helpers import eventually


async def _direct(api: Api):
    a = await api.register("Amy")
    b = await api.register("Ben")
    sa = await api.socket(a)
    sb = await api.socket(b)
    conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    return a, b, sa, sb, conv


async def test_direct_thread_send_receive_order_and_idempotent_retry(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    assert conv["kind"] == "direct" and {m["id"] for m in conv["members"]} == {a.id, b.id}
    await sb.wait_for("conversation:new", lambda d: d["conversation"]["id"] == conv["id"])
    # The same pair again returns the same conversation, from either side.
    again = (await sb.ok("conversation:create", {"kind": "direct", "member_ids": [a.id]}))["conversation"]
    assert again["id"] == conv["id"]

    sent = []
    for i in range(5):
        ack = await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"hello {i}", "client_id": f"c{i}"})
        sent.append(ack["message"])
    assert [m["seq"] for m in sent] == [1, 2, 3, 4, 5]
    assert sent[0]["sender_id"] == a.id and sent[0]["role"] == "user" and sent[0]["deleted"] is False

    retry = await sa.ok("message:send", {"conversation_id": conv["id"], "content": "hello 0 (retry)", "client_id": "c0"})
    assert retry["message"]["id"] == sent[0]["id"] and retry["message"]["content"] == "hello 0"

    await sb.wait_for("message:new", lambda d: d["message"]["seq"] == 5)
    await asyncio.sleep(0.2)
    got = [d["message"]["seq"] for d in sb.received("message:new")]
    assert got == [1, 2, 3, 4, 5], "delivered once each, in order"
    # The sender's own sockets hear it too (other tabs stay in step).
    assert [d["message"]["seq"] for d in sa.received("message:new")] == [1, 2, 3, 4, 5]


async def test_pipelined_sends_from_one_socket_keep_their_order_and_share_commits(server: Instance, api: Api, db: Database) -> None:
    """One socket sends 30 messages without waiting: seq order is the order it sent them,
    everyone receives them in that order, and they share commits (the socket's next send
    starts once the previous one is queued in the writer, not once it is answered).

    The test holds the conversation's row lock while they arrive, so the first batch waits
    in PostgreSQL and the other 29 queue behind it whatever the machine's speed (left to
    timing, a loaded machine ran all 30 one by one: the client was slower than commits)."""
    a, b, sa, sb, conv = await _direct(api)
    writer = server.app[CORE].pipeline.writer
    before = writer.batcher.batches
    async with db.transaction() as conn:
        await conversations.get(conn, uuid.UUID(conv["id"]), for_update=True)
        sends = asyncio.gather(*[
            sa.call("message:send", {"conversation_id": conv["id"], "content": f"m{i}", "client_id": f"p{i}"})
            for i in range(30)
        ])
        # Were each send held until the previous one's ack, none would queue behind the lock.
        batcher = writer.batcher

        async def all_arrived() -> bool:
            return batcher.waiting > 0 and batcher.waiting + batcher.in_flight == 30

        await eventually(all_arrived)
    acks = await sends
    by_content = {ack["message"]["content"]: ack["message"]["seq"] for ack in acks}
    assert [by_content[f"m{i}"] for i in range(30)] == list(range(1, 31))
    await sb.wait_for("message:new", lambda d: d["message"]["seq"] == 30)
    assert [d["message"]["content"] for d in sb.received("message:new")] == [f"m{i}" for i in range(30)]
    assert batcher.batches - before == 2, "those queued behind the first commit went together"


async def test_concurrent_retries_of_one_client_id_make_one_message(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    sa2 = await api.socket(a)
    payload = {"conversation_id": conv["id"], "content": "once", "client_id": "same"}
    acks = await asyncio.gather(*[s.call("message:send", payload) for s in (sa, sa2, sa, sa2)])
    assert len({ack["message"]["id"] for ack in acks}) == 1
    await asyncio.sleep(0.3)
    assert len(sb.received("message:new")) == 1


async def test_edit_delete_typing_read_unread_and_history(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    cid = conv["id"]
    ids = []
    for i in range(7):
        ids.append((await sa.ok("message:send", {"conversation_id": cid, "content": f"n{i}", "client_id": f"h{i}"}))["message"]["id"])

    edited = (await sa.ok("message:edit", {"message_id": ids[0], "content": "n0 (edited)"}))["message"]
    assert edited["content"] == "n0 (edited)" and edited["edited_at"] and edited["seq"] == 1
    upd = await sb.wait_for("message:updated", lambda d: d["message"]["id"] == ids[0])
    assert upd["message"]["content"] == "n0 (edited)"
    nope = await sb.call("message:edit", {"message_id": ids[0], "content": "hijack"})
    assert nope["error"]["code"] == "forbidden"

    deleted = (await sa.ok("message:delete", {"message_id": ids[1]}))["message"]
    assert deleted["deleted"] is True and deleted["content"] == "" and deleted["seq"] == 2
    assert (await sb.call("message:delete", {"message_id": ids[2]}))["error"]["code"] == "forbidden"

    await sa.ok("typing", {"conversation_id": cid, "typing": True})
    t = await sb.wait_for("typing")
    assert t == {"conversation_id": cid, "user_id": a.id, "typing": True}
    await sa.ok("typing", {"conversation_id": cid, "typing": True})  # throttled
    await sa.ok("typing", {"conversation_id": cid, "typing": False})
    await sb.wait_for("typing", lambda d: d["typing"] is False)
    assert [d["typing"] for d in sb.received("typing")] == [True, False]
    assert not sa.received("typing"), "typing is not echoed to the typist"

    status, body = await api.request("GET", "/api/conversations", b)
    mine = {c["id"]: c for c in body["conversations"]}
    assert mine[cid]["unread"] == 6  # 7 sent, one deleted
    await sb.ok("read", {"conversation_id": cid, "seq": 4})
    r = await sa.wait_for("read")
    assert r == {"conversation_id": cid, "user_id": b.id, "seq": 4}
    status, body = await api.request("GET", "/api/conversations", b)
    assert {c["id"]: c for c in body["conversations"]}[cid]["unread"] == 3
    await sb.ok("read", {"conversation_id": cid, "seq": 2})  # never moves back
    status, body = await api.request("GET", "/api/conversations", b)
    assert {c["id"]: c for c in body["conversations"]}[cid]["unread"] == 3

    page = await sb.ok("history", {"conversation_id": cid, "limit": 3})
    assert [m["seq"] for m in page["messages"]] == [5, 6, 7] and page["has_more"] is True
    page = await sb.ok("history", {"conversation_id": cid, "before_seq": 5, "limit": 3})
    assert [m["seq"] for m in page["messages"]] == [2, 3, 4] and page["has_more"] is True
    page = await sb.ok("history", {"conversation_id": cid, "before_seq": 2, "limit": 3})
    assert [m["seq"] for m in page["messages"]] == [1] and page["has_more"] is False
    assert (await sb.call("history", {"conversation_id": cid, "limit": 101}))["error"]["code"] == "bad_request"
    status, body = await api.request("GET", f"/api/conversations/{cid}/messages?before_seq=3&limit=5", b)
    assert status == 200 and [m["seq"] for m in body["messages"]] == [1, 2]


async def test_sync_returns_what_was_missed(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    cid = conv["id"]
    await sb.disconnect()
    for i in range(5):
        await sa.ok("message:send", {"conversation_id": cid, "content": f"s{i}", "client_id": f"s{i}"})
    sb2 = await api.socket(b)
    res = await sb2.ok("sync", {"since": {cid: 2}})
    got = res["conversations"][cid]
    assert got["complete"] is True and [m["seq"] for m in got["messages"]] == [3, 4, 5]


async def test_a_non_member_is_refused_everything(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    cid = conv["id"]
    msg = (await sa.ok("message:send", {"conversation_id": cid, "content": "private", "client_id": "x1"}))["message"]
    eve = await api.register("Eve")
    se = await api.socket(eve)
    for event, payload in [
        ("message:send", {"conversation_id": cid, "content": "hi", "client_id": "e1"}),
        ("message:edit", {"message_id": msg["id"], "content": "x"}),
        ("message:delete", {"message_id": msg["id"]}),
        ("typing", {"conversation_id": cid, "typing": True}),
        ("read", {"conversation_id": cid, "seq": 1}),
        ("history", {"conversation_id": cid}),
    ]:
        ack = await se.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "not_found", (event, ack)
    res = await se.ok("sync", {"since": {cid: 0}})
    assert res["conversations"] == {}
    status, body = await api.request("GET", f"/api/conversations/{cid}/messages", eve)
    assert status == 404
    status, body = await api.request("GET", "/api/conversations", eve)
    assert body["conversations"] == []
    await asyncio.sleep(0.2)
    assert not se.received("message:new") and not se.received("typing")


async def test_group_thread(api: Api) -> None:
    users = [await api.register(f"G{i}") for i in range(4)]
    socks = [await api.socket(u) for u in users]
    conv = (await socks[0].ok("conversation:create", {"kind": "group", "member_ids": [u.id for u in users[1:]], "title": "Study group"}))["conversation"]
    assert conv["title"] == "Study group" and len(conv["members"]) == 4
    await socks[2].ok("message:send", {"conversation_id": conv["id"], "content": "hi all", "client_id": "g1"})
    for s in socks:
        d = await s.wait_for("message:new")
        assert d["message"]["content"] == "hi all"
    too_many = [str(uuid.uuid4()) for _ in range(100)]
    ack = await socks[0].call("conversation:create", {"kind": "group", "member_ids": too_many})
    assert ack["error"]["code"] == "bad_request"
    ack = await socks[0].call("conversation:create", {"kind": "group", "member_ids": [str(uuid.uuid4())]})
    assert ack["error"]["code"] == "bad_request"


async def test_presence_online_and_offline_after_grace(api: Api) -> None:
    a, b, sa, sb, conv = await _direct(api)
    await sb.disconnect()
    off = await sa.wait_for("presence", lambda d: d["user_id"] == b.id and d["status"] == "offline", timeout=3)
    assert off
    await api.socket(b)
    await sa.wait_for("presence", lambda d: d["user_id"] == b.id and d["status"] == "online", timeout=3)


async def test_guests_cannot_start_threads(api: Api) -> None:
    g = await api.guest()
    other = await api.register("Host")
    sock = await api.socket(g)
    ack = await sock.call("conversation:create", {"kind": "direct", "member_ids": [other.id]})
    assert ack["error"]["code"] == "forbidden"


async def test_staff_write_as_agent_only_where_they_joined_as_agent(api: Api, db) -> None:
    agent = await api.staff(db, "agent")
    sock = await api.socket(agent)
    # An agent's own tutor conversation: they are its student.
    conv = (await sock.ok("tutor:start", {"title": "my own question"}))["conversation"]
    msg = (await sock.ok("message:send", {"conversation_id": conv["id"], "content": "What is osmosis?", "client_id": "a1"}))["message"]
    assert msg["role"] == "user"
    # A direct thread between staff and a student: also plain `user`.
    student = await api.register("Stu")
    direct = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [student.id]}))["conversation"]
    msg = (await sock.ok("message:send", {"conversation_id": direct["id"], "content": "hello", "client_id": "a2"}))["message"]
    assert msg["role"] == "user"


async def test_stock_fanout_setting_delivers_too(start_instance) -> None:
    """STUDYHALL_FANOUT=stock (python-socketio's own delivery) is a supported fallback."""
    import aiohttp

    from server.fanout import FastFanout
    from server.keys import SIO

    inst = await start_instance(gateway__fanout="stock")
    assert not isinstance(inst.app[SIO].manager, FastFanout), "the setting must turn the fast path off"
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        a, b = await api.register("Sa"), await api.register("Sb")
        sa, sb = await api.socket(a), await api.socket(b)
        conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
        await sa.ok("message:send", {"conversation_id": conv["id"], "content": "via stock", "client_id": "s1"})
        got = await sb.wait_for("message:new")
        assert got["message"]["content"] == "via stock"
        await api.close_sockets()


async def test_busy_group_commits_together_and_everyone_receives_in_seq_order(start_instance) -> None:
    """Six members send at once, each several messages without waiting: the group's
    messages share commits (group commit within one conversation), each sender's messages
    get seqs in the order it sent them, every ack carries its committed message, and every
    member receives every message once, in seq order."""
    import aiohttp

    from server.keys import CORE

    instance = await start_instance()
    async with aiohttp.ClientSession() as session:
        api = Api(session, instance.url)
        try:
            users = [await api.register(f"Busy{i}") for i in range(6)]
            socks = [await api.socket(u) for u in users]
            conv = (await socks[0].ok("conversation:create", {
                "kind": "group", "member_ids": [u.id for u in users[1:]], "title": "busy"}))["conversation"]
            writer = instance.app[CORE].pipeline.writer
            before = (writer.batcher.batches, writer.batcher.requests)

            async def burst(i: int) -> list[dict]:
                return list(await asyncio.gather(*[
                    socks[i].call("message:send", {"conversation_id": conv["id"], "content": f"{i}:{n}", "client_id": f"{i}-{n}"})
                    for n in range(15)
                ]))

            acks = await asyncio.gather(*(burst(i) for i in range(6)))
            total = 6 * 15
            for i, sender_acks in enumerate(acks):
                assert all(a["ok"] for a in sender_acks)
                seqs = [a["message"]["seq"] for a in sender_acks]
                assert [a["message"]["content"] for a in sender_acks] == [f"{i}:{n}" for n in range(15)]
                assert seqs == sorted(seqs), "a sender's messages in the order it sent them"
            assert sorted(a["message"]["seq"] for sender_acks in acks for a in sender_acks) == list(range(1, total + 1))
            for s in socks:
                await s.wait_for("message:new", lambda d: d["message"]["seq"] == total)
            await asyncio.sleep(0.2)
            for s in socks:
                assert [d["message"]["seq"] for d in s.received("message:new")] == list(range(1, total + 1))
            batches = writer.batcher.batches - before[0]
            assert writer.batcher.requests - before[1] == total
            assert batches < total, "one conversation's concurrent messages share commits"
        finally:
            await api.close_sockets()
