"""A message posted as the app, with an idempotency key: a retry (same instance, another
instance, racing, or after the first request died between commit and response) is the
first message, same id and seq, and nothing new is posted or delivered. Real HTTP against
real servers and PostgreSQL; the platform is tests/identity_platform.py's."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from server.keys import CORE
from storage.records import Message
from tests.client import Api, Instance, Socket, User
from tests.identity_platform import Backend, api_key, hs256_platform, sign_in

SCOPES = ["messages:write", "conversations:read"]
PATH = "/api/platform/conversations/{}/messages"


async def setup_conversation(api: Api, db: Any) -> tuple[Backend, Socket, str]:
    """An app, its key, and a group conversation of one of its users, whose socket listens."""
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, SCOPES)
    status, body = await sign_in(api, platform.sign(sub="stu", name="Stu"))
    assert status == 200, body
    student = User(body["user"]["id"], "Stu", "student", body["token"])
    peer = await api.register("Peer")
    sock = await api.socket(student)
    conv = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [peer.id], "title": "T"}))["conversation"]
    return backend, sock, conv["id"]


async def post(session: aiohttp.ClientSession, url: str, backend: Backend, cid: str, content: str,
               key: str | None = None, **body: Any) -> tuple[int, dict[str, Any], str | None]:
    headers = dict(backend.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with session.post(url + PATH.format(cid), json={"content": content, **body}, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed")


async def app_messages(backend: Backend, cid: str) -> list[dict[str, Any]]:
    status, page = await backend.call("GET", f"/conversations/{cid}/messages")
    assert status == 200, page
    return [m for m in page["messages"] if m["role"] == "app"]


async def test_a_retried_key_returns_the_first_message_and_posts_nothing(api: Api, server: Instance, db: Any) -> None:
    backend, sock, cid = await setup_conversation(api, db)
    session = api.session
    status, first, replayed = await post(session, server.url, backend, cid, "Due Friday.", key="k-1")
    assert status == 201 and replayed is None, first
    message = first["message"]
    assert message["client_id"] == "k-1" and message["role"] == "app"
    await sock.wait_for("message:new", lambda d: d["message"]["id"] == message["id"])

    for _ in range(3):
        status, again, replayed = await post(session, server.url, backend, cid, "Due Friday.", key="k-1")
        assert status == 200 and replayed == "true", again
        assert (again["message"]["id"], again["message"]["seq"]) == (message["id"], message["seq"])
    # The body's client_id is the same key as the header.
    status, again, replayed = await post(session, server.url, backend, cid, "Due Friday.", client_id="k-1")
    assert status == 200 and again["message"]["id"] == message["id"]
    # Another key is another message; no key is a new message every time.
    status, other, _ = await post(session, server.url, backend, cid, "Due Friday.", key="k-2")
    assert status == 201 and other["message"]["id"] != message["id"] and other["message"]["seq"] == message["seq"] + 1
    status, plain, _ = await post(session, server.url, backend, cid, "Due Friday.")
    assert status == 201 and plain["message"]["client_id"] is None

    assert [m["id"] for m in await app_messages(backend, cid)] == [message["id"], other["message"]["id"],
                                                                    plain["message"]["id"]]
    # Replays were delivered to nobody: the socket saw each message once.
    await asyncio.sleep(0.3)
    seen = [e["message"]["id"] for e in sock.events.get("message:new", []) if e["message"]["role"] == "app"]
    assert seen == [message["id"], other["message"]["id"], plain["message"]["id"]]
    async with db.connection() as conn:
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'platform.message.create'")
    assert audited == 3


async def test_a_key_reused_for_another_message_is_refused(api: Api, server: Instance, db: Any) -> None:
    backend, _, cid = await setup_conversation(api, db)
    status, _, _ = await post(api.session, server.url, backend, cid, "one", key="same")
    assert status == 201
    status, body, _ = await post(api.session, server.url, backend, cid, "two", key="same")
    assert status == 409 and body["error"]["code"] == "conflict", body
    for bad in ({"key": "a", "client_id": "b"}, {"key": " "}, {"client_id": ""}, {"client_id": "x" * 256}):
        key = bad.pop("key", None)
        status, body, _ = await post(api.session, server.url, backend, cid, "three", key=key, **bad)
        assert status == 400 and body["error"]["code"] == "bad_request", (bad, body)
    assert [m["content"] for m in await app_messages(backend, cid)] == ["one"]


async def test_racing_retries_on_two_instances_post_one_message(start_instance: Any, db: Any) -> None:
    one, two = await start_instance(), await start_instance()
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        backend, _, cid = await setup_conversation(api, db)
        results = await asyncio.gather(*(
            post(session, (one, two)[i % 2].url, backend, cid, "Once.", key="race") for i in range(8)))
        ids = {(body["message"]["id"], body["message"]["seq"]) for _, body, _ in results}
        assert len(ids) == 1, results
        assert sorted(status for status, _, _ in results) == [200] * 7 + [201], results
        assert len(await app_messages(backend, cid)) == 1
        await api.close_sockets()


async def test_a_retry_after_the_first_request_died_after_its_commit(start_instance: Any, db: Any) -> None:
    """Instance one commits the message, then never answers (its request dies between the
    commit and the response, as in a crash); the platform retries on instance two."""
    one, two = await start_instance(), await start_instance()
    committed, release = asyncio.Event(), asyncio.Event()

    async def hang_after_commit(core: Any, conv: Any, message: Message) -> None:
        if message.role == "app":
            committed.set()
            await release.wait()

    pipeline = one.app[CORE].pipeline
    assert pipeline is not None
    pipeline.after_commit.append(hang_after_commit)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            backend, _, cid = await setup_conversation(api, db)
            first = asyncio.create_task(post(session, one.url, backend, cid, "Survives.", key="crash"))
            await asyncio.wait_for(committed.wait(), 10)
            first.cancel()  # the platform gives up on this request: no response ever came
            with pytest.raises(asyncio.CancelledError):
                await first
            status, body, replayed = await post(session, two.url, backend, cid, "Survives.", key="crash")
            assert status == 200 and replayed == "true", body
            [stored] = await app_messages(backend, cid)
            assert (body["message"]["id"], body["message"]["seq"]) == (stored["id"], stored["seq"])
            await api.close_sockets()
    finally:
        release.set()
