"""Hostile `auth:refresh` frames, written by hand (tests/test_hardening_gateway.py's
RawSocket): a missing, non-string, huge, undecodable or binary token; an unknown, expired,
revoked or other user's token; the token of a user the platform deactivated; a token of
another role; a flood. Each gets the protocol's documented error (never `internal`), the
connection stays up, and the socket keeps its session: its `connections` row still names
the old token, and that token's revocation still closes it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.client import Api, User
from tests.identity_platform import api_key, hs256_platform, sign_in
from tests.test_hardening_gateway import RawSocket, direct_conversation

PASSWORD = "correct horse 1"


async def login(api: Api, user: User) -> User:
    """Another session (token) of the same user."""
    status, body = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 200, body
    return User(user.id, user.name, user.role, body["token"], user.email)


async def socket_token(db: Any, user: User) -> list[uuid.UUID]:
    """The token ids the user's `connections` rows name."""
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT token_id FROM connections WHERE user_id = $1", uuid.UUID(user.id))
    return [r["token_id"] for r in rows]


async def token_id(db: Any, user: User) -> uuid.UUID:
    import hashlib

    async with db.connection() as conn:
        found = await conn.fetchval("SELECT id FROM auth_tokens WHERE token_hash = $1",
                                    hashlib.sha256(user.token.encode()).digest())
    assert found is not None
    return found


def refused(ack: Any, code: str) -> None:
    assert ack["ok"] is False and ack["error"]["code"] == code, ack


async def still_up(raw: RawSocket, ack_id: int, cid: str) -> None:
    """The connection is up and the socket still acts for its user."""
    ack = await raw.call(ack_id, "message:send", {"conversation_id": cid, "content": f"up {ack_id}",
                                                  "client_id": f"up-{ack_id}"})
    assert ack["ok"] is True, ack


BAD_PAYLOADS = {
    "no payload": None,
    "not an object": "token",
    "a list": ["token"],
    "missing token": {},
    "null token": {"token": None},
    "number": {"token": 5},
    "object": {"token": {"token": "x"}},
    "list of strings": {"token": ["a", "b"]},
    "empty": {"token": ""},
    "huge (10 kB)": {"token": "x" * 10_000},
    "huge (500 kB)": {"token": "x" * 500_000},
}


async def test_malformed_refreshes_are_bad_request_and_change_nothing(api: Api, db: Any) -> None:
    alice, bob = await api.register("Alice"), await api.register("Bob")
    cid = await direct_conversation(api, alice, bob)
    raw = await RawSocket.connect(api.session, api.url, alice.token)
    try:
        before = await socket_token(db, alice)
        assert before == [await token_id(db, alice)]
        for n, (what, payload) in enumerate(BAD_PAYLOADS.items(), start=1):
            frame = f"2{n}" + json.dumps(["auth:refresh"] if payload is None else ["auth:refresh", payload])
            await raw.send(frame)
            ack = await raw.ack(n)
            assert ack["ok"] is False and ack["error"]["code"] in {"bad_request", "too_large"}, (what, ack)
        # Undecodable: a lone surrogate in the token (no UTF-8 exists for it), and a token
        # sent as a binary attachment that is not UTF-8.
        await raw.send('290["auth:refresh",{"token":"\\ud800abc"}]')
        refused(await raw.ack(90), "bad_request")
        await raw.send('51-91["auth:refresh",{"token":{"_placeholder":true,"num":0}}]')
        await raw.ws.send_bytes(b"\xff\xfe\x00garbage")
        ack = await raw.ack(91)
        assert ack["ok"] is False and ack["error"]["code"] in {"bad_request", "unauthorized"}, ack
        # A NUL or other control characters: a string, but no token we issued.
        for n, token in enumerate(("\x00", "abc\x00def", "\x1b[2J", "tok en\n"), start=92):
            refused(await raw.call(n, "auth:refresh", {"token": token}), "unauthorized")
        await still_up(raw, 100, cid)
        assert await socket_token(db, alice) == before
    finally:
        await raw.close()


async def test_tokens_that_are_not_a_live_session_of_this_user_are_refused(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    alice, bob = await api.register("Alice"), await api.register("Bob")
    cid = await direct_conversation(api, alice, bob)
    expired, revoked, changed = await login(api, alice), await login(api, alice), await login(api, bob)
    async with db.transaction() as conn:
        await conn.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
                           await token_id(db, expired))
    status, _ = await api.request("POST", "/api/auth/logout", revoked)
    assert status == 204
    # A user the platform deactivated: their tokens are revoked with it.
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, ["users:write"])
    status, body = await sign_in(api, platform.sign(sub="leaver", name="Lee"))
    assert status == 200, body
    leaver_token = body["token"]
    status, body = await backend.call("POST", "/users/leaver/deactivate")
    assert status == 200 and body["deactivated"] is True, body

    raw = await RawSocket.connect(api.session, api.url, alice.token)
    try:
        before = await socket_token(db, alice)
        refused(await raw.call(1, "auth:refresh", {"token": "nope-" + uuid.uuid4().hex}), "unauthorized")
        refused(await raw.call(2, "auth:refresh", {"token": expired.token}), "unauthorized")
        refused(await raw.call(3, "auth:refresh", {"token": revoked.token}), "unauthorized")
        refused(await raw.call(4, "auth:refresh", {"token": leaver_token}), "unauthorized")
        refused(await raw.call(5, "auth:refresh", {"token": bob.token}), "forbidden")
        # Alice as a mentor now: her fresh token carries another role; reconnect instead.
        status, _ = await api.request("PUT", f"/api/users/{alice.id}/role", admin, json={"role": "mentor"})
        assert status == 200
        await asyncio.wait_for(raw.closed.wait(), 5)  # the role change closed the old socket
    finally:
        await raw.close()
    mentor = await login(api, alice)
    student_socket = await RawSocket.connect(api.session, api.url, changed.token)  # bob, a student
    try:
        refused(await student_socket.call(1, "auth:refresh", {"token": mentor.token}), "forbidden")
        await still_up(student_socket, 2, cid)
    finally:
        await student_socket.close()
    assert before == [await token_id(db, alice)]


async def test_a_refused_refresh_leaves_the_old_session_in_charge(api: Api, db: Any) -> None:
    """After refusals the socket still runs on its first token: revoking that one closes it."""
    alice, bob = await api.register("Alice"), await api.register("Bob")
    await direct_conversation(api, alice, bob)
    raw = await RawSocket.connect(api.session, api.url, alice.token)
    try:
        for n, token in enumerate(("nope", bob.token, "x" * 201), start=1):
            assert (await raw.call(n, "auth:refresh", {"token": token}))["ok"] is False
        status, _ = await api.request("POST", "/api/auth/logout", alice)
        assert status == 204
        await asyncio.wait_for(raw.closed.wait(), 10)
    finally:
        await raw.close()


@pytest.mark.parametrize("valid", [True, False], ids=["fresh tokens", "bad tokens"])
async def test_a_refresh_flood_is_rate_limited_and_the_socket_survives(api: Api, db: Any, valid: bool) -> None:
    alice, bob = await api.register("Alice"), await api.register("Bob")
    cid = await direct_conversation(api, alice, bob)
    fresh = await login(api, alice)
    raw = await RawSocket.connect(api.session, api.url, alice.token)
    try:
        flood = 300
        token = fresh.token if valid else "nope"
        for n in range(1, flood + 1):
            await raw.send(f"2{n}" + json.dumps(["auth:refresh", {"token": token}]))
        codes = []
        for n in range(1, flood + 1):
            ack = await raw.ack(n, timeout=30)
            codes.append("ok" if ack["ok"] else ack["error"]["code"])
        assert "internal" not in codes
        assert set(codes) <= ({"ok", "rate_limited"} if valid else {"unauthorized", "rate_limited"}), set(codes)
        assert codes.count("rate_limited") > 0, "a flood is limited"
        await asyncio.sleep(2.5)  # the burst refills
        await still_up(raw, flood + 1, cid)
        expected = await token_id(db, fresh if valid else alice)
        assert await socket_token(db, alice) == [expected]
    finally:
        await raw.close()
