"""`GET /api/platform/conversations` reads a page in a fixed number of statements, whatever
its length: the conversations in one, all their members in one more (it was 2N+1: a look-up
and a members query per conversation). Real server, real PostgreSQL; statements counted
with asyncpg's query logger (tests/statements.py)."""

from __future__ import annotations

from typing import Any

from handlers.platform import keys, operations
from server.keys import CORE
from tests.client import Api, Instance, User
from tests.identity_platform import api_key, hs256_platform, sign_in
from tests.statements import counting_core

PAGE = 20


async def test_a_page_of_20_conversations_is_two_statements(api: Api, server: Instance, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, ["conversations:read"])
    status, body = await sign_in(api, platform.sign(sub="stu", name="Stu"))
    assert status == 200, body
    student = User(body["user"]["id"], "Stu", "student", body["token"])
    sock = await api.socket(student)
    peers = [await api.register(f"Peer {i}") for i in range(PAGE)]
    made = []
    for i, peer in enumerate(peers):
        conv = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [peer.id], "title": f"G{i}"}))
        made.append(conv["conversation"])

    status, listed = await backend.call("GET", f"/conversations?limit={PAGE}")
    assert status == 200, listed
    page = listed["conversations"]
    # Most recently active first, each with its own members (not another conversation's).
    assert [c["id"] for c in page] == [c["id"] for c in reversed(made)]
    for conv, peer in zip(page, reversed(peers), strict=True):
        assert {m["id"] for m in conv["members"]} == {student.id, peer.id}, conv
        assert conv["title"] == next(c["title"] for c in made if c["id"] == conv["id"])

    core = server.app[CORE]
    app = await keys.authenticate(core, backend.secret)
    async with counting_core(core) as (counted, statements):
        # A first call lets asyncpg introspect the types on its new connection (its own statements).
        await operations.list_conversations(counted, app, sub=None, limit=PAGE)
        await statements.settled()
        statements.clear()
        result = await operations.list_conversations(counted, app, sub=None, limit=PAGE)
        sent = await statements.settled()
    assert len(result["conversations"]) == PAGE
    assert [str(c["id"]) for c in result["conversations"]] == [c["id"] for c in reversed(made)]
    assert len(sent) == 2, sent
    await api.close_sockets()
