"""API keys and the platform API: an app's backend with a key manages its users, documents,
live sessions, conversations, messages and tickets. Real servers, real PostgreSQL, real
Socket.IO clients; the platform is tests/identity_platform.py's."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from handlers.settings import PlatformSettings
from tests.client import Api, User
from tests.identity_platform import Backend, Platform, api_key, hs256_platform, sign_in
from tests.ticket_helpers import tutor_conversation

ALL_SCOPES = ["users:write", "documents:write", "sessions:write", "tickets:read", "tickets:write",
              "conversations:read", "messages:write"]


@pytest.fixture
async def admin(api: Api, db: Any) -> User:
    return await api.staff(db, "admin")


@pytest.fixture
async def platform(api: Api, admin: User) -> Platform:
    return await hs256_platform(api, admin, roles=["student", "mentor"])


@pytest.fixture
async def backend(api: Api, admin: User, platform: Platform) -> Backend:
    return await api_key(api, admin, platform.app_id, ALL_SCOPES)


async def audit_rows(db: Any, action: str) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT actor_id, target_id, details FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [dict(r) for r in rows]


async def identity_user(api: Api, platform: Platform, sub: str, name: str, role: str = "student") -> User:
    """The platform's user, signed in through a signed identity token."""
    status, body = await sign_in(api, platform.sign(sub=sub, name=name, role=role))
    assert status == 200, body
    u = body["user"]
    return User(u["id"], u["name"], u["role"], body["token"])


def assert_error(status: int, body: dict[str, Any], http: int, code: str) -> None:
    assert status == http, body
    assert body["error"]["code"] == code, body


# --- keys --------------------------------------------------------------------------------

async def test_a_key_is_shown_once_hashed_at_rest_and_works(api: Api, admin: User, backend: Backend, db: Any) -> None:
    assert backend.secret.startswith("sh_live_") and len(backend.secret) > 40
    status, listed = await api.request("GET", f"/api/apps/{backend.app_id}/keys", admin)
    assert status == 200, listed
    [key] = listed["keys"]
    assert key["id"] == backend.key_id and key["state"] == "active" and key["scopes"] == ALL_SCOPES
    assert backend.secret not in str(listed) and key["prefix"] == backend.secret[:len(key["prefix"])]
    assert key["last_used_at"] is None

    status, body = await backend.call("PUT", "/users/p-1", json={"name": "Ada"})
    assert status == 201, body
    assert body["user"]["name"] == "Ada" and body["user"]["role"] == "student" and body["created"] is True

    async with db.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(backend.key_id))
        as_text = await conn.fetchval("SELECT row_to_json(k)::text FROM api_keys k WHERE id = $1",
                                      uuid.UUID(backend.key_id))
    assert bytes(row["key_hash"]) == hashlib.sha256(backend.secret.encode()).digest()
    secret_part = backend.secret.removeprefix("sh_live_")
    assert secret_part not in as_text, "the database holds no plaintext key"
    first_use = row["last_used_at"]
    assert first_use is not None, "a use is recorded"

    # A second use within the resolution writes nothing: last_used_at is coalesced.
    status, _ = await backend.call("PUT", "/users/p-1", json={"name": "Ada L"})
    assert status == 200
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                                   uuid.UUID(backend.key_id)) == first_use

    [created] = await audit_rows(db, "api_key.create")
    assert created["actor_id"] == uuid.UUID(admin.id) and created["target_id"] == backend.key_id
    upserts = await audit_rows(db, "platform.user.upsert")
    assert len(upserts) == 2 and all(r["details"]["key_id"] == backend.key_id for r in upserts)


@pytest.mark.slow  # waits out a 0.5 s resolution
async def test_last_used_is_written_again_after_the_resolution(start_instance: Any, db: Any) -> None:
    inst = await start_instance(platform=PlatformSettings(key_last_used_resolution_seconds=0.5))
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        admin = await api.staff(db, "admin")
        platform = await hs256_platform(api, admin)
        backend = await api_key(api, admin, platform.app_id, ["users:write"])
        await backend.call("PUT", "/users/a", json={})
        async with db.connection() as conn:
            first = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", uuid.UUID(backend.key_id))
        await asyncio.sleep(0.7)
        await backend.call("PUT", "/users/a", json={})
        async with db.connection() as conn:
            second = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", uuid.UUID(backend.key_id))
    assert first is not None and second > first


async def test_keys_are_admin_only(api: Api, admin: User, platform: Platform, db: Any) -> None:
    agent = await api.staff(db, "agent")
    status, body = await api.request("POST", f"/api/apps/{platform.app_id}/keys", agent, json={"scopes": ["users:write"]})
    assert_error(status, body, 403, "forbidden")
    status, body = await api.request("POST", f"/api/apps/{platform.app_id}/keys", admin, json={"scopes": ["root"]})
    assert_error(status, body, 400, "bad_request")
    status, body = await api.request("POST", f"/api/apps/{uuid.uuid4()}/keys", admin, json={"scopes": ["users:write"]})
    assert_error(status, body, 404, "not_found")


async def test_a_missing_scope_is_forbidden(api: Api, admin: User, platform: Platform) -> None:
    reader = await api_key(api, admin, platform.app_id, ["conversations:read"])
    status, body = await reader.call("PUT", "/users/p-1", json={"name": "Ada"})
    assert_error(status, body, 403, "forbidden")
    assert "users:write" in body["error"]["message"]
    status, body = await reader.call("POST", "/documents", json={"content": "text"})
    assert_error(status, body, 403, "forbidden")
    status, body = await reader.call("POST", f"/conversations/{uuid.uuid4()}/messages", json={"content": "hi"})
    assert_error(status, body, 403, "forbidden")
    status, body = await reader.call("GET", "/conversations")
    assert status == 200, body


async def test_unknown_revoked_and_expired_keys_are_unauthorized(api: Api, admin: User, backend: Backend,
                                                                 db: Any) -> None:
    for header in (f"Bearer sh_live_{'x' * 43}", "Bearer sh_live_", f"Bearer {admin.token}", "Basic abc", None):
        headers = {"Authorization": header} if header else {}
        status, body = await api.request("GET", "/api/platform/conversations", headers=headers)
        assert_error(status, body, 401, "unauthorized")
    # A key is no session token either.
    status, body = await api.request("GET", "/api/me", headers=backend.headers)
    assert_error(status, body, 401, "unauthorized")

    expiring = await api_key(api, admin, backend.app_id, ["conversations:read"])
    async with db.connection() as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
                           uuid.UUID(expiring.key_id))
    status, body = await expiring.call("GET", "/conversations")
    assert_error(status, body, 401, "unauthorized")

    status, _ = await backend.call("GET", "/conversations")
    assert status == 200
    status, body = await api.request("DELETE", f"/api/apps/{backend.app_id}/keys/{backend.key_id}", admin)
    assert status == 200 and body["key"]["state"] == "revoked", body
    status, body = await backend.call("GET", "/conversations")
    assert_error(status, body, 401, "unauthorized")
    assert len(await audit_rows(db, "api_key.revoke")) == 1


async def test_rotation_keeps_the_old_key_until_the_overlap_ends(api: Api, admin: User, backend: Backend,
                                                                 db: Any) -> None:
    status, rotated = await api.request(
        "POST", f"/api/apps/{backend.app_id}/keys/{backend.key_id}/rotate", admin, json={"overlap_hours": 1})
    assert status == 201, rotated
    new = Backend(api, backend.app_id, rotated["key"]["id"], rotated["secret"])
    assert new.secret != backend.secret and rotated["key"]["scopes"] == ALL_SCOPES
    assert rotated["old_key"]["expires_at"] is not None and rotated["old_key"]["replaced_by"] == new.key_id
    for key in (backend, new):
        status, body = await key.call("GET", "/conversations")
        assert status == 200, body
    # A rotated key cannot be rotated again (its replacement can).
    status, body = await api.request("POST", f"/api/apps/{backend.app_id}/keys/{backend.key_id}/rotate", admin, json={})
    assert_error(status, body, 409, "conflict")

    # The overlap ends (moved to the past rather than waiting an hour).
    async with db.connection() as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
                           uuid.UUID(backend.key_id))
    status, body = await backend.call("GET", "/conversations")
    assert_error(status, body, 401, "unauthorized")
    status, body = await new.call("GET", "/conversations")
    assert status == 200, body
    [row] = await audit_rows(db, "api_key.rotate")
    assert row["details"]["new_key_id"] == new.key_id and row["details"]["overlap_hours"] == 1

    # overlap 0: the old key stops at once.
    status, again = await api.request("POST", f"/api/apps/{new.app_id}/keys/{new.key_id}/rotate", admin,
                                      json={"overlap_hours": 0})
    assert status == 201, again
    status, body = await new.call("GET", "/conversations")
    assert_error(status, body, 401, "unauthorized")


async def test_each_key_has_its_own_rate_limit(start_instance: Any, db: Any) -> None:
    inst = await start_instance(platform=PlatformSettings(key_rate_limit_per_minute=3))
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        admin = await api.staff(db, "admin")
        platform = await hs256_platform(api, admin)
        busy = await api_key(api, admin, platform.app_id, ["conversations:read"])
        other = await api_key(api, admin, platform.app_id, ["conversations:read"])
        for _ in range(3):
            status, body = await busy.call("GET", "/conversations")
            assert status == 200, body
        async with session.get(inst.url + "/api/platform/conversations", headers=busy.headers) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["error"]["code"] == "rate_limited", body
            assert body["error"]["retry_after_ms"] > 0 and int(resp.headers["Retry-After"]) >= 1
        status, body = await other.call("GET", "/conversations")
        assert status == 200, "another key of the same app is not limited"
        # The user's own limits are not the key's: a user of the server is unaffected.
        status, _ = await api.request("GET", "/api/me", admin)
        assert status == 200


def test_platform_settings_come_from_their_variables() -> None:
    from handlers.settings import Settings

    settings = Settings.from_env({"STUDYHALL_API_KEY_RATE_LIMIT": "7", "STUDYHALL_API_KEY_LAST_USED_RESOLUTION": "5",
                                  "STUDYHALL_API_KEY_ROTATE_OVERLAP_HOURS": "2.5"})
    assert settings.platform == PlatformSettings(key_rate_limit_per_minute=7, key_last_used_resolution_seconds=5.0,
                                                 key_rotate_overlap_hours=2.5)


# --- users -------------------------------------------------------------------------------

async def test_upsert_grants_only_the_apps_roles(api: Api, admin: User, backend: Backend, db: Any) -> None:
    status, body = await backend.call("PUT", "/users/m-1", json={"name": "Meg", "role": "mentor",
                                                                 "email": "meg@platform.example"})
    assert status == 201 and body["user"]["role"] == "mentor", body
    for role in ("agent", "admin"):
        status, body = await backend.call("PUT", "/users/m-1", json={"role": role})
        assert_error(status, body, 403, "forbidden")
    async with db.connection() as conn:
        row = await conn.fetchrow("SELECT i.email, u.role FROM identities i JOIN users u ON u.id = i.user_id "
                                  "WHERE i.subject = 'm-1'")
    assert row["email"] == "meg@platform.example" and row["role"] == "mentor"


async def test_the_api_user_is_the_identity_user(api: Api, platform: Platform, backend: Backend) -> None:
    status, made = await backend.call("PUT", "/users/same", json={"name": "Sam"})
    assert status == 201, made
    user = await identity_user(api, platform, "same", "Sam")
    assert user.id == made["user"]["id"]


async def test_a_role_change_closes_the_users_sockets(api: Api, platform: Platform, backend: Backend) -> None:
    user = await identity_user(api, platform, "riser", "Ria")
    sock = await api.socket(user)
    closed = asyncio.Event()
    sock.client.on("disconnect", lambda *a: closed.set())
    status, body = await backend.call("PUT", "/users/riser", json={"name": "Ria"})
    assert status == 200 and body["user"]["role"] == "student", body
    await asyncio.sleep(0.3)
    assert not closed.is_set(), "the same role leaves the sockets alone"
    status, body = await backend.call("PUT", "/users/riser", json={"role": "mentor"})
    assert status == 200 and body["user"]["role"] == "mentor", body
    await asyncio.wait_for(closed.wait(), 5)
    status, me = await api.request("GET", "/api/me", user)
    assert status == 200 and me["user"]["role"] == "mentor", "the session lives on, with the new role"


async def test_deactivation_closes_sockets_and_refuses_sign_in(api: Api, platform: Platform, backend: Backend,
                                                               db: Any) -> None:
    user = await identity_user(api, platform, "leaver", "Lee")
    sock = await api.socket(user)
    closed = asyncio.Event()
    sock.client.on("disconnect", lambda *a: closed.set())

    status, body = await backend.call("POST", "/users/leaver/deactivate")
    assert status == 200 and body["deactivated"] is True, body
    await asyncio.wait_for(closed.wait(), 5)
    status, body = await api.request("GET", "/api/me", user)
    assert_error(status, body, 401, "unauthorized")
    status, body = await sign_in(api, platform.sign(sub="leaver", name="Lee"))
    assert_error(status, body, 401, "unauthorized")
    assert body["error"]["message"] == "This account is deactivated."
    refused: list[Any] = []
    client = socketio.AsyncClient(reconnection=False)
    client.on("connect_error", lambda data: refused.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(api.url, auth={"identity": platform.sign(sub="leaver")}, transports=["websocket"],
                             wait_timeout=5)
    assert [r["data"] for r in refused] == [{"code": "unauthorized", "message": "This account is deactivated."}]
    [row] = await audit_rows(db, "platform.user.deactivate")
    assert row["target_id"] == user.id and row["details"]["tokens_revoked"] >= 1

    status, body = await backend.call("POST", "/users/leaver/reactivate")
    assert status == 200 and body["deactivated"] is False, body
    status, body = await sign_in(api, platform.sign(sub="leaver", name="Lee"))
    assert status == 200, body

    status, body = await backend.call("POST", "/users/nobody/deactivate")
    assert_error(status, body, 404, "not_found")


async def test_deactivation_reaches_sockets_on_every_instance(cluster: list[Any], db: Any) -> None:
    a, b = cluster
    async with aiohttp.ClientSession() as session:
        api_a, api_b = Api(session, a.url), Api(session, b.url)
        admin = await api_a.staff(db, "admin")
        platform = await hs256_platform(api_a, admin)
        backend = await api_key(api_a, admin, platform.app_id, ["users:write"])
        user = await identity_user(api_a, platform, "far", "Far")
        sock = await api_b.socket(user)
        closed = asyncio.Event()
        sock.client.on("disconnect", lambda *a: closed.set())
        status, body = await backend.call("POST", "/users/far/deactivate")
        assert status == 200, body
        await asyncio.wait_for(closed.wait(), 5)
        await api_b.close_sockets()


# --- messages and conversations ----------------------------------------------------------

async def test_the_app_posts_a_message_members_receive_it_and_read_the_transcript(
    api: Api, admin: User, platform: Platform, backend: Backend, db: Any,
) -> None:
    student = await identity_user(api, platform, "stu", "Stu")
    peer = await api.register("Peer")
    sock, peer_sock = await api.socket(student), await api.socket(peer)
    conv = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [peer.id], "title": "Study"}))[
        "conversation"]
    await sock.ok("message:send", {"conversation_id": conv["id"], "content": "hello", "client_id": "c1"})

    status, body = await backend.call("POST", f"/conversations/{conv['id']}/messages",
                                      json={"content": "Your assignment is due Friday."})
    assert status == 201, body
    posted = body["message"]
    assert posted["role"] == "app" and posted["sender_id"] is None
    assert posted["metadata"]["app"] == {"id": platform.app_id, "name": "Platform"}
    for s in (sock, peer_sock):
        got = await s.wait_for("message:new", lambda d: d["message"]["id"] == posted["id"])
        assert got["message"]["role"] == "app" and got["message"]["content"] == "Your assignment is due Friday."
        assert got["message"]["seq"] == 2

    status, listed = await backend.call("GET", "/conversations?sub=stu")
    assert status == 200 and [c["id"] for c in listed["conversations"]] == [conv["id"]], listed
    status, none = await backend.call("GET", "/conversations?sub=someone-else")
    assert status == 200 and none["conversations"] == []
    status, page = await backend.call("GET", f"/conversations/{conv['id']}/messages")
    assert status == 200, page
    assert [(m["role"], m["content"]) for m in page["messages"]] == [
        ("user", "hello"), ("app", "Your assignment is due Friday.")]
    assert page["has_more"] is False and page["conversation"]["title"] == "Study"
    [row] = await audit_rows(db, "platform.message.create")
    assert row["target_id"] == posted["id"] and row["details"]["conversation_id"] == conv["id"]

    # Another app's key reaches nothing of this app's users; neither do conversations without them.
    other_platform = await hs256_platform(api, admin)
    other = await api_key(api, admin, other_platform.app_id, ALL_SCOPES)
    for method, path, kwargs in (("GET", f"/conversations/{conv['id']}/messages", {}),
                                 ("POST", f"/conversations/{conv['id']}/messages", {"json": {"content": "x"}})):
        status, body = await other.call(method, path, **kwargs)
        assert_error(status, body, 404, "not_found")
    status, body = await other.call("GET", "/conversations")
    assert status == 200 and body["conversations"] == []
    outsider = await api.register("Outsider")
    private = (await peer_sock.ok("conversation:create", {"kind": "direct", "member_ids": [outsider.id]}))[
        "conversation"]
    status, body = await backend.call("POST", f"/conversations/{private['id']}/messages", json={"content": "x"})
    assert_error(status, body, 404, "not_found")


# --- documents, live sessions, tickets ---------------------------------------------------

async def test_documents_with_a_key(api: Api, backend: Backend, db: Any) -> None:
    status, body = await backend.call("POST", "/documents", json={
        "title": "Syllabus", "content": "Photosynthesis turns light into chemical energy.", "course": "bio-101"})
    assert status == 201, body
    document = body["document"]
    assert document["title"] == "Syllabus" and body["created"] is True
    status, body = await backend.call("DELETE", f"/documents/{document['id']}")
    assert status == 200, body
    status, body = await backend.call("DELETE", f"/documents/{document['id']}")
    assert_error(status, body, 404, "not_found")
    [made] = await audit_rows(db, "document.create")
    assert made["actor_id"] is None and made["details"]["key_id"] == backend.key_id
    [removed] = await audit_rows(db, "document.delete")
    assert removed["actor_id"] is None and removed["details"]["key_id"] == backend.key_id


async def test_live_sessions_on_behalf_of_a_mentor(api: Api, backend: Backend, platform: Platform, db: Any) -> None:
    status, body = await backend.call("PUT", "/users/mentor-1", json={"name": "Mo", "role": "mentor"})
    assert status == 201, body
    mentor_id = body["user"]["id"]
    status, body = await backend.call("PUT", "/users/student-1", json={"name": "Stu"})
    status, body = await backend.call("POST", "/sessions", json={"host_sub": "student-1", "title": "No"})
    assert_error(status, body, 403, "forbidden")
    status, body = await backend.call("POST", "/sessions", json={"host_sub": "nobody", "title": "No"})
    assert_error(status, body, 404, "not_found")

    status, body = await backend.call("POST", "/sessions", json={"host_sub": "mentor-1", "title": "Office hours",
                                                                 "max_participants": 20})
    assert status == 201, body
    session = body["live_session"]
    assert session["host_id"] == mentor_id and session["status"] == "scheduled"
    status, body = await backend.call("POST", f"/sessions/{session['id']}/start")
    assert status == 200 and body["live_session"]["status"] == "live", body
    status, body = await backend.call("POST", f"/sessions/{session['id']}/end")
    assert status == 200 and body["live_session"]["status"] == "ended", body
    status, body = await backend.call("POST", f"/sessions/{session['id']}/end")
    assert_error(status, body, 409, "conflict")
    actions = [r["details"]["host_sub"] for a in ("create", "start", "end")
               for r in await audit_rows(db, f"platform.session.{a}")]
    assert actions == ["mentor-1"] * 3


async def test_tickets_with_a_key(api: Api, platform: Platform, backend: Backend, admin: User, db: Any) -> None:
    student = await identity_user(api, platform, "asker", "Ash")
    cid = await tutor_conversation(db, student)
    status, body = await backend.call("GET", f"/conversations/{cid}/tickets")
    assert status == 200 and body["tickets"] == [], body
    status, body = await backend.call("POST", "/tickets", json={"conversation_id": cid, "reason": "parent asked"})
    assert status == 201, body
    ticket = body["ticket"]
    assert ticket["conversation_id"] == cid and ticket["status"] == "open"
    status, body = await backend.call("GET", f"/conversations/{cid}/tickets")
    assert status == 200 and [t["id"] for t in body["tickets"]] == [ticket["id"]], body
    [row] = await audit_rows(db, "platform.ticket.open")
    assert row["target_id"] == ticket["id"]
    writer_only = await api_key(api, admin, platform.app_id, ["tickets:write"])
    status, body = await writer_only.call("GET", f"/conversations/{cid}/tickets")
    assert_error(status, body, 403, "forbidden")


# --- the command line --------------------------------------------------------------------

async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "STUDYHALL_LOG_JSON": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, cwd=Path(__file__).resolve().parent.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow
async def test_app_key_commands(database_url: str, api: Api, platform: Platform, db: Any) -> None:
    app_id = platform.app_id
    code, out, err = await run_cli(database_url, "app", "key", "create", app_id, "--scopes",
                                   "conversations:read,users:write", "--name", "lms")
    assert code == 0, err
    secret = re.search(r"API key.*: (sh_live_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"created key (\S+)", out).group(1)  # type: ignore[union-attr]
    backend = Backend(api, app_id, key_id, secret)
    status, body = await backend.call("GET", "/conversations")
    assert status == 200, body

    code, _, err = await run_cli(database_url, "app", "key", "create", app_id, "--scopes", "root")
    assert code == 1 and "Unknown scope" in err

    code, out, err = await run_cli(database_url, "app", "key", "rotate", app_id, key_id, "--overlap-hours", "0")
    assert code == 0, err
    new_secret = re.search(r"API key.*: (sh_live_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    new_id = re.search(r"new key (\S+);", out).group(1)  # type: ignore[union-attr]
    status, _ = await backend.call("GET", "/conversations")
    assert status == 401
    rotated = Backend(api, app_id, new_id, new_secret)
    status, _ = await rotated.call("GET", "/conversations")
    assert status == 200

    code, listed, err = await run_cli(database_url, "app", "key", "list", app_id)
    assert code == 0, err
    assert key_id in listed and new_id in listed and secret not in listed and new_secret not in listed
    assert "scopes=conversations:read,users:write" in listed

    code, out, err = await run_cli(database_url, "app", "key", "revoke", app_id, new_id)
    assert code == 0 and "revoked" in out, err
    status, _ = await rotated.call("GET", "/conversations")
    assert status == 401
    via = [r["details"]["via"] for a in ("create", "rotate", "revoke") for r in await audit_rows(db, f"api_key.{a}")]
    assert via == ["cli"] * 3
