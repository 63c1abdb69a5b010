"""The app's rules for its widget: `require_identity` refuses guests and password sign-up
tied to the app (by `app_id` or the page's Origin), `allowed_origins` limits where
identity sign-in may come from, and a guest's conversations move to the identity user
only when the platform names the guest (`guest_token` claim or the API-key link call),
never by email."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import socketio

from tests.client import Api, User
from tests.identity_platform import Platform, api_key, hs256_platform, sign_in

SCHOOL = "http://school.example"
ELSEWHERE = "http://elsewhere.example"


@pytest.fixture
async def admin(api: Api, db: Any) -> User:
    return await api.staff(db, "admin")


def assert_forbidden(status: int, body: Any) -> None:
    assert status == 403, body
    assert body["error"]["code"] == "forbidden", body


async def guest(api: Api, origin: str | None = None, **body: Any) -> tuple[int, Any]:
    headers = {"Origin": origin} if origin else {}
    return await api.request("POST", "/api/auth/guest", json=body, headers=headers)


async def register(api: Api, origin: str | None = None, **extra: Any) -> tuple[int, Any]:
    headers = {"Origin": origin} if origin else {}
    body = {"email": f"s-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse 1", "name": "S", **extra}
    return await api.request("POST", "/api/auth/register", json=body, headers=headers)


# --- require_identity -------------------------------------------------------------------

async def test_require_identity_refuses_guests_and_sign_up_for_that_app(api: Api, admin: User) -> None:
    platform = await hs256_platform(api, admin, origins=[SCHOOL], require_identity=True)
    # Tied by the page's Origin, or by the app_id the widget passes: refused, never a 500.
    assert_forbidden(*await guest(api, SCHOOL))
    assert_forbidden(*await guest(api, SCHOOL + "/"))  # as stored: no trailing slash
    assert_forbidden(*await guest(api, None, app_id=platform.app_id))
    assert_forbidden(*await register(api, SCHOOL))
    assert_forbidden(*await register(api, None, app_id=platform.app_id))
    # Verified identity is what the app wants: allowed from its page.
    status, body = await api.request("POST", "/api/auth/identity", json={"identity": platform.sign(sub="s-1")},
                                      headers={"Origin": SCHOOL})
    assert status == 200, body
    # Requests not tied to the app are not its business.
    status, body = await guest(api, ELSEWHERE)
    assert status == 201, body
    status, body = await register(api, None)
    assert status == 201, body
    # An unknown app_id is a bad request, not a way around the rule.
    status, body = await guest(api, None, app_id=str(uuid.uuid4()))
    assert status == 400 and body["error"]["code"] == "bad_request", body


async def test_an_app_without_require_identity_keeps_guests(api: Api, admin: User) -> None:
    platform = await hs256_platform(api, admin, origins=[SCHOOL])
    status, body = await guest(api, SCHOOL, app_id=platform.app_id)
    assert status == 201, body
    status, body = await register(api, SCHOOL, app_id=platform.app_id)
    assert status == 201, body


# --- allowed_origins for identity sign-in ---------------------------------------------------

async def test_identity_sign_in_only_from_the_apps_origins(api: Api, admin: User) -> None:
    platform = await hs256_platform(api, admin, origins=[SCHOOL])

    async def from_origin(origin: str | None) -> tuple[int, Any]:
        headers = {"Origin": origin} if origin else {}
        return await api.request("POST", "/api/auth/identity", json={"identity": platform.sign(sub="o-1")},
                                 headers=headers)

    assert_forbidden(*await from_origin(ELSEWHERE))
    status, body = await from_origin(SCHOOL)
    assert status == 200, body
    status, body = await from_origin(None)  # the platform's server: no Origin
    assert status == 200, body
    # An app that lists no origins takes sign-ins from any page (as before).
    open_platform = await hs256_platform(api, admin)
    status, body = await api.request("POST", "/api/auth/identity", json={"identity": open_platform.sign(sub="o-2")},
                                     headers={"Origin": ELSEWHERE})
    assert status == 200, body


# --- guest carry-over -----------------------------------------------------------------------

async def guest_with_conversation(api: Api, name: str = "Guest") -> tuple[User, str]:
    user = await api.guest(name)
    sock = await api.socket(user)
    conv = (await sock.ok("tutor:start", {"title": "Help"}))["conversation"]
    await sock.ok("message:send", {"conversation_id": conv["id"], "content": f"hello from {name}",
                                   "client_id": uuid.uuid4().hex})
    await sock.disconnect()
    return user, conv["id"]


async def conversation_ids(api: Api, token: str) -> set[str]:
    status, body = await api.request("GET", "/api/conversations", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    return {c["id"] for c in body["conversations"]}


async def senders(db: Any, conversation_id: str) -> set[str]:
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT DISTINCT sender_id FROM messages WHERE conversation_id = $1 AND role = 'user'",
                                uuid.UUID(conversation_id))
    return {str(r["sender_id"]) for r in rows}


@pytest.fixture
async def platform(api: Api, admin: User) -> Platform:
    return await hs256_platform(api, admin)


async def test_guest_token_claim_carries_the_conversation_over(api: Api, platform: Platform, db: Any) -> None:
    guest_user, conv_id = await guest_with_conversation(api)
    status, body = await sign_in(api, platform.sign(sub="carry-1", name="Ada", guest_token=guest_user.token))
    assert status == 200, body
    user_id, token = body["user"]["id"], body["token"]
    assert conv_id in await conversation_ids(api, token)
    assert await senders(db, conv_id) == {user_id}  # the guest's messages are the user's own now
    async with db.connection() as conn:
        owner = await conn.fetchval("SELECT created_by FROM conversations WHERE id = $1", uuid.UUID(conv_id))
        left = await conn.fetchval("SELECT count(*) FROM conversation_members WHERE user_id = $1",
                                   uuid.UUID(guest_user.id))
    assert str(owner) == user_id and left == 0
    # The guest's token is revoked with the move.
    status, _ = await api.request("GET", "/api/me", guest_user)
    assert status == 401
    # The user can keep writing in it.
    sock = await api.socket(token)
    await sock.ok("message:send", {"conversation_id": conv_id, "content": "signed in now", "client_id": uuid.uuid4().hex})


async def test_without_the_claim_nothing_moves(api: Api, platform: Platform, db: Any) -> None:
    guest_user, conv_id = await guest_with_conversation(api, "Grace")
    status, body = await sign_in(api, platform.sign(sub="carry-2", name="Grace"))
    assert status == 200, body
    assert conv_id not in await conversation_ids(api, body["token"])
    assert await senders(db, conv_id) == {guest_user.id}
    assert conv_id in await conversation_ids(api, guest_user.token)  # the guest keeps it, still signed in


async def test_an_email_match_alone_moves_nothing(api: Api, platform: Platform, db: Any) -> None:
    """A registered account with the token's email is someone else as far as Studyhall
    knows: its conversations stay, and naming its (non-guest) token carries nothing."""
    email = f"same-{uuid.uuid4().hex[:6]}@example.com"
    owner = await api.register("Owner", email=email)
    sock = await api.socket(owner)
    conv = (await sock.ok("tutor:start", {"title": "Mine"}))["conversation"]
    await sock.ok("message:send", {"conversation_id": conv["id"], "content": "mine", "client_id": uuid.uuid4().hex})
    status, body = await sign_in(api, platform.sign(sub="carry-3", email=email))
    assert status == 200, body
    assert conv["id"] not in await conversation_ids(api, body["token"])
    # Only guests carry over: a registered user's token in the claim moves nothing.
    status, body = await sign_in(api, platform.sign(sub="carry-3", email=email, guest_token=owner.token))
    assert status == 200, body
    assert conv["id"] not in await conversation_ids(api, body["token"])
    assert await senders(db, conv["id"]) == {owner.id}
    status, _ = await api.request("GET", "/api/me", owner)
    assert status == 200


async def test_link_call_with_an_api_key_carries_the_guest_over(api: Api, platform: Platform, admin: User,
                                                                db: Any) -> None:
    backend = await api_key(api, admin, platform.app_id, ["users:write"])
    guest_user, conv_id = await guest_with_conversation(api, "Linus")
    status, body = await sign_in(api, platform.sign(sub="carry-4", name="Linus"))
    assert status == 200, body
    user_id, token = body["user"]["id"], body["token"]
    assert conv_id not in await conversation_ids(api, token)  # signing in alone moves nothing
    # A key without users:write, an unknown sub, a token that is no guest's: refused, nothing moves.
    reader = await api_key(api, admin, platform.app_id, ["conversations:read"], name="reader")
    status, body = await reader.call("POST", "/users/carry-4/link-guest", json={"guest_token": guest_user.token})
    assert status == 403 and body["error"]["code"] == "forbidden", body
    status, body = await backend.call("POST", "/users/nobody/link-guest", json={"guest_token": guest_user.token})
    assert status == 404, body
    status, body = await backend.call("POST", "/users/carry-4/link-guest", json={"guest_token": "not-a-token"})
    assert status == 404, body
    assert await senders(db, conv_id) == {guest_user.id}

    status, body = await backend.call("POST", "/users/carry-4/link-guest", json={"guest_token": guest_user.token})
    assert status == 200, body
    assert body["user_id"] == user_id and body["moved"]["conversations"] == 1, body
    assert conv_id in await conversation_ids(api, token)
    assert await senders(db, conv_id) == {user_id}
    status, _ = await api.request("GET", "/api/me", guest_user)
    assert status == 401


async def test_identity_socket_from_an_unlisted_origin_is_forbidden(api: Api, admin: User) -> None:
    platform = await hs256_platform(api, admin, origins=[SCHOOL])
    refused: list[Any] = []
    client = socketio.AsyncClient(reconnection=False)
    client.on("connect_error", lambda data: refused.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(api.url, auth={"identity": platform.sign(sub="sock-1")}, headers={"Origin": ELSEWHERE},
                             transports=["websocket"], wait_timeout=5)
    assert [r["data"]["code"] for r in refused] == ["forbidden"], refused
    ok = socketio.AsyncClient(reconnection=False)
    await ok.connect(api.url, auth={"identity": platform.sign(sub="sock-1")}, headers={"Origin": SCHOOL},
                     transports=["websocket"], wait_timeout=5)
    assert ok.connected
    await ok.disconnect()
