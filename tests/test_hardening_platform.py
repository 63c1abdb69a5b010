"""Hostile input on last session's HTTP additions, as the next reviewers will send it:
`Idempotency-Key` on an app's messages (empty, 10 kB, non-ASCII, control characters, the
same key from another app), `POST /api/search/eval` by every role and with malformed
bodies, and `POST /api/auth/identity`'s `expires_at`. Each refusal is the protocol's
error (`{error: {code, message}}`, never 500), and nothing is half-written. Raw bytes go
through tests/test_hardening_http.py's `raw_request`; the rest through aiohttp."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.client import Api, Instance, User
from tests.identity_platform import Backend, api_key, hs256_platform, sign_in
from tests.test_hardening_http import head_of, is_protocol_error, raw_request

SCOPES = ["messages:write", "conversations:read"]


async def app_user(api: Api, db: Any, admin: User, sub: str) -> tuple[Backend, User]:
    """An app of its own, its key, and its user `sub` signed in."""
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, SCOPES)
    status, body = await sign_in(api, platform.sign(sub=sub, name=sub))
    assert status == 200, body
    return backend, User(body["user"]["id"], sub, "student", body["token"])


async def app_messages(db: Any, cid: str) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT id, content, client_id, metadata FROM messages "
                                "WHERE conversation_id = $1 AND role = 'app' ORDER BY seq", uuid.UUID(cid))
    return [dict(r) for r in rows]


async def audit_count(db: Any) -> int:
    async with db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'platform.message.create'"))


# --- Idempotency-Key --------------------------------------------------------------------------

HOSTILE_KEYS: dict[str, bytes] = {
    "empty": b"",
    "blank": b"   ",
    "256 characters": b"k" * 256,
    "8 kB": b"k" * 8000,
    "10 kB": b"k" * 10_000,
    "non-ASCII UTF-8": "clé-✓".encode(),
    "Latin-1 byte": b"cl\xe9",
    "tab inside": b"a\tb",
    "control character": b"a\x01b",
    "DEL": b"a\x7fb",
    "NUL": b"a\x00b",
    "escape sequence": b"\x1b[2J",
}


async def test_hostile_idempotency_keys_are_bad_request_and_post_nothing(
    api: Api, server: Instance, db: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await api.staff(db, "admin")
    backend, student = await app_user(api, db, admin, "stu")
    peer = await api.register("Peer")
    sock = await api.socket(student)
    cid = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [peer.id], "title": "T"}))[
        "conversation"]["id"]
    path = f"/api/platform/conversations/{cid}/messages".encode()
    before = await audit_count(db)

    async def post(key: bytes, body: dict[str, Any]) -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        head = head_of("POST", path, {b"Authorization": f"Bearer {backend.secret}".encode(),
                                      b"Content-Type": b"application/json", b"Idempotency-Key": key}, raw)
        status, payload = await raw_request(server.url, head, raw)
        return status, json.loads(payload) if payload.startswith(b"{") else payload

    caplog.set_level(logging.INFO)
    for what, key in HOSTILE_KEYS.items():
        status, body = await post(key, {"content": f"hostile {what}"})
        assert status == 400 and is_protocol_error(body) and body["error"]["code"] == "bad_request", (what, body)
        assert key.decode("latin-1") not in body["error"]["message"] or not key.strip(), (what, body)
    # The header and the body's client_id must agree when both are sent.
    status, body = await post(b"k-1", {"content": "x", "client_id": "k-2"})
    assert status == 400 and body["error"]["code"] == "bad_request", body
    for bad_client_id in ("", "k" * 256, "a\x00b", 5, ["k"]):
        status, body = await post(b"ok-key", {"content": "x", "client_id": bad_client_id})
        assert status == 400 and body["error"]["code"] == "bad_request", (bad_client_id, body)
    assert await app_messages(db, cid) == [] and await audit_count(db) == before, "nothing was posted"
    # Refusals by aiohttp's parser (10 kB, control characters) log no traceback either.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # Around the edges that are fine: 255 characters, spaces trimmed, header and client_id equal.
    status, body = await post(b"k" * 255, {"content": "longest key"})
    assert status == 201, body
    status, body = await post(b"  k-1  ", {"content": "trimmed", "client_id": "k-1"})
    assert status == 201 and body["message"]["client_id"] == "k-1", body
    status, again = await post(b"k-1", {"content": "trimmed"})
    assert status == 200 and again["message"]["id"] == body["message"]["id"], again
    assert [m["content"] for m in await app_messages(db, cid)] == ["longest key", "trimmed"]
    assert sock.client.connected
    await api.close_sockets()


async def test_the_same_key_from_another_app_is_its_own_message(api: Api, server: Instance, db: Any) -> None:
    """Two apps whose users share a conversation, the same key: two messages, each app
    replays only its own, and neither answer shows the other app's message."""
    admin = await api.staff(db, "admin")
    first, ada = await app_user(api, db, admin, "ada")
    second, bea = await app_user(api, db, admin, "bea")
    sock = await api.socket(ada)
    cid = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [bea.id], "title": "Both"}))[
        "conversation"]["id"]
    # A person's client_id equal to the key: a message of its own too (people and apps never collide).
    await sock.ok("message:send", {"conversation_id": cid, "content": "from ada", "client_id": "shared-key"})
    path = f"/api/platform/conversations/{cid}/messages"

    async def post(app: Backend, content: str) -> tuple[int, Any]:
        return await api.request("POST", path, json={"content": content},
                                 headers={**app.headers, "Idempotency-Key": "shared-key"})

    status, one = await post(first, "Secret of app one")
    assert status == 201, one
    status, two = await post(second, "Hello from app two")
    assert status == 201, two
    assert two["message"]["id"] != one["message"]["id"] and "Secret of app one" not in json.dumps(two)
    assert two["message"]["metadata"]["app"]["id"] == second.app_id
    # The second app reusing its key for other content: conflict, without the first app's message.
    status, body = await post(second, "Secret of app one")
    assert status == 409 and body["error"]["code"] == "conflict", body
    assert "Secret" not in body["error"]["message"] and one["message"]["id"] not in json.dumps(body)
    # Each app's retry is its own first message.
    status, replay = await post(first, "Secret of app one")
    assert status == 200 and replay["message"]["id"] == one["message"]["id"], replay
    status, replay = await post(second, "Hello from app two")
    assert status == 200 and replay["message"]["id"] == two["message"]["id"], replay
    assert [m["content"] for m in await app_messages(db, cid)] == ["Secret of app one", "Hello from app two"]
    await api.close_sockets()


# --- POST /api/search/eval ------------------------------------------------------------------

GOOD_EVAL = {"questions": [{"question": "What is photosynthesis?", "titles": ["Photosynthesis"]}], "k": [1, 5]}

MALFORMED_EVAL: dict[str, Any] = {
    "not JSON": b"{not json",
    "a list": [GOOD_EVAL],
    "a string": "questions",
    "empty object": {},
    "questions empty": {"questions": []},
    "questions not a list": {"questions": "What?"},
    "question not an object": {"questions": ["What?"]},
    "question missing": {"questions": [{"titles": ["x"]}]},
    "question blank": {"questions": [{"question": "   ", "titles": ["x"]}]},
    "question with NUL": {"questions": [{"question": "a\u0000b", "titles": ["x"]}]},
    "question too long": {"questions": [{"question": "q" * 2001, "titles": ["x"]}]},
    "no expected document": {"questions": [{"question": "What?"}]},
    "documents not ids": {"questions": [{"question": "What?", "documents": ["not-an-id"]}]},
    "titles not strings": {"questions": [{"question": "What?", "titles": [5]}]},
    "too many titles": {"questions": [{"question": "What?", "titles": ["t"] * 51}]},
    "too many questions": {"questions": [{"question": "What?", "titles": ["t"]}] * 2001},
    "k zero": {**GOOD_EVAL, "k": [0]},
    "k huge": {**GOOD_EVAL, "k": [10**20]},
    "k not a list": {**GOOD_EVAL, "k": 5},
    "k empty": {**GOOD_EVAL, "k": []},
    "k text": {**GOOD_EVAL, "k": ["five"]},
    "weights malformed": {**GOOD_EVAL, "weights": ["a:b"]},
    "weights both zero": {**GOOD_EVAL, "weights": ["0:0"]},
    "weights not strings": {**GOOD_EVAL, "weights": [[1, 0.5]]},
    "course with NUL": {**GOOD_EVAL, "course": "bio\u0000"},
    "course empty": {**GOOD_EVAL, "course": ""},
    "nested too deep": b'{"questions": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


async def test_search_eval_is_staff_only_for_every_role(api: Api, db: Any) -> None:
    guest = await api.guest()
    student = await api.register("Stu")
    mentor, agent, admin = [await api.staff(db, r) for r in ("mentor", "agent", "admin")]
    status, body = await api.request("POST", "/api/documents", admin, json={
        "title": "Photosynthesis", "content": "Photosynthesis turns light, water and carbon dioxide into sugar."})
    assert status == 201, body
    status, body = await api.request("POST", "/api/search/eval", json=GOOD_EVAL)
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    for user in (guest, student, mentor):
        status, body = await api.request("POST", "/api/search/eval", user, json=GOOD_EVAL)
        assert status == 403 and body["error"]["code"] == "forbidden", (user.role, body)
        # Forbidden before the body is read: a malformed one is no different.
        status, body = await api.request("POST", "/api/search/eval", user, data=b"{not json",
                                         headers={"Content-Type": "application/json"})
        assert status == 403, (user.role, body)
    for user in (agent, admin):
        status, body = await api.request("POST", "/api/search/eval", user, json=GOOD_EVAL)
        assert status == 200, (user.role, body)
        assert body["questions"] == 1, body


@pytest.mark.parametrize("what", list(MALFORMED_EVAL))
async def test_malformed_eval_bodies_are_bad_request(api: Api, db: Any, what: str) -> None:
    agent = await api.staff(db, "agent")
    payload = MALFORMED_EVAL[what]
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, body = await api.request("POST", "/api/search/eval", agent, data=raw,
                                     headers={"Content-Type": "application/json"})
    assert status in (400, 413) and is_protocol_error(body), (what, status, body)
    assert body["error"]["code"] == ("too_large" if status == 413 else "bad_request"), (what, body)


async def test_an_eval_body_over_the_limit_is_too_large(start_instance: Any, db: Any) -> None:
    import aiohttp

    server = await start_instance(http__max_body_bytes=10_000)
    async with aiohttp.ClientSession() as session:
        api = Api(session, server.url)
        agent = await api.staff(db, "agent")
        big = {"questions": [{"question": "What is it?", "titles": ["t" * 900]}] * 20}
        status, body = await api.request("POST", "/api/search/eval", agent, json=big)
        assert status == 413 and body["error"]["code"] == "too_large", body


# --- POST /api/auth/identity: expires_at -------------------------------------------------------

async def test_identity_sign_in_says_when_its_session_ends(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    status, body = await sign_in(api, platform.sign(sub="timed", name="Tim"))
    assert status == 200, body
    ends = datetime.fromisoformat(body["expires_at"])
    assert ends.utcoffset() == timedelta(0), "a UTC time"
    async with db.connection() as conn:
        stored = await conn.fetchval("SELECT expires_at FROM auth_tokens WHERE token_hash = $1",
                                     hashlib.sha256(body["token"].encode()).digest())
    assert stored == ends, "the session token's own expiry"
    hours = (ends - datetime.now(UTC)).total_seconds() / 3600
    assert 0 < hours <= 24 * 366, hours  # STUDYHALL_IDENTITY_SESSION_HOURS from now

    # Malformed sign-ins: the protocol's error, no session made.
    async with db.connection() as conn:
        tokens_before = await conn.fetchval("SELECT count(*) FROM auth_tokens")
    for bad in ({}, {"identity": 5}, {"identity": ""}, {"identity": "x" * 8193}, {"identity": "a\u0000b"},
                {"identity": platform.sign(sub="timed"), "app_id": "not-an-id"}, ["identity"]):
        status, answer = await api.request("POST", "/api/auth/identity", json=bad)
        assert status == 400 and answer["error"]["code"] == "bad_request", (bad, answer)
    for refused in ("not.a.jwt", "x" * 8192, platform.sign(sub="timed", exp=int(datetime.now(UTC).timestamp()) - 3600)):
        status, answer = await api.request("POST", "/api/auth/identity", json={"identity": refused})
        assert status == 401 and answer["error"]["code"] == "unauthorized" and "expires_at" not in answer, answer
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM auth_tokens") == tokens_before
