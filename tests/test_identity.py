"""Signed identity: a platform signs a JWT for its user, Studyhall verifies it against that
platform's app only and maps the platform's user to one Studyhall user. Real servers, real
PostgreSQL, tokens signed with PyJWT by a test platform (tests/identity_platform.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization

from tests.client import Api, User
from tests.identity_platform import (
    Platform,
    b64url,
    create_app,
    ec_key,
    hmac_token,
    hs256_platform,
    key_platform,
    public_pem,
    rsa_key,
    sign_in,
    unsigned_token,
)


@pytest.fixture
async def admin(api: Api, db: Any) -> User:
    return await api.staff(db, "admin")


@pytest.fixture
async def platform(api: Api, admin: User) -> Platform:
    return await hs256_platform(api, admin, roles=["student", "mentor"])


def assert_unauthorized(status: int, body: dict[str, Any], message: str | None = None) -> None:
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized", body
    if message is not None:
        assert body["error"]["message"] == message, body


async def identity_count(db: Any) -> int:
    async with db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM identities"))


# --- sign-in and mapping -----------------------------------------------------------------

async def test_first_sight_creates_the_user_and_a_later_token_updates_it(api: Api, platform: Platform, db: Any) -> None:
    status, body = await sign_in(api, platform.sign(
        sub="p-42", name="Ada", email="ada@platform.example", courses=["bio-101"], avatar_url="https://cdn.example/a.png",
    ))
    assert status == 200, body
    assert body["user"]["name"] == "Ada" and body["user"]["role"] == "student"
    user_id = body["user"]["id"]
    # The session token is a Studyhall token like a password login's.
    status, me = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert status == 200 and me["user"]["id"] == user_id

    status, again = await sign_in(api, platform.sign(sub="p-42", name="Ada Lovelace", role="mentor",
                                                     courses=["bio-101", "chem-1"]))
    assert status == 200, again
    assert again["user"] == {"id": user_id, "name": "Ada Lovelace", "role": "mentor"}
    assert again["token"] != body["token"]
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT u.email AS user_email, u.password_hash, i.email, i.courses, i.avatar_url, i.subject "
            "FROM identities i JOIN users u ON u.id = i.user_id WHERE u.id = $1", uuid.UUID(user_id))
    assert row["subject"] == "p-42" and row["courses"] == ["bio-101", "chem-1"]
    assert row["email"] == "ada@platform.example" and row["avatar_url"] == "https://cdn.example/a.png"
    assert row["user_email"] is None and row["password_hash"] is None, "no password, no email on the account"
    assert await identity_count(db) == 1


async def test_simultaneous_first_sign_ins_make_one_user(api: Api, platform: Platform, db: Any) -> None:
    results = await asyncio.gather(*(sign_in(api, platform.sign(sub="rush", name="Rush")) for _ in range(6)))
    assert [status for status, _ in results] == [200] * 6, results
    assert len({body["user"]["id"] for _, body in results}) == 1
    assert await identity_count(db) == 1


async def test_a_replayed_token_sent_twice_at_once_signs_in_once(api: Api, platform: Platform) -> None:
    token = platform.sign(sub="twice")
    statuses = sorted(status for status, _ in await asyncio.gather(*(sign_in(api, token) for _ in range(4))))
    assert statuses == [200, 401, 401, 401]


async def test_two_apps_with_the_same_sub_are_two_users(api: Api, admin: User, platform: Platform) -> None:
    other = await hs256_platform(api, admin)
    _, one = await sign_in(api, platform.sign(sub="same", name="One"))
    _, two = await sign_in(api, other.sign(sub="same", name="Two"))
    assert one["user"]["id"] != two["user"]["id"]
    _, one_again = await sign_in(api, platform.sign(sub="same"))
    assert one_again["user"]["id"] == one["user"]["id"] and one_again["user"]["name"] == "One"


async def test_email_never_links_to_an_existing_password_account(api: Api, platform: Platform, db: Any) -> None:
    owner = await api.register("Owner", email="owner@school.example")
    status, body = await sign_in(api, platform.sign(sub="intruder", email="OWNER@school.example", name="Owner"))
    assert status == 200, body
    assert body["user"]["id"] != owner.id, "an email claim must never sign in as the account with that email"
    # The password account is untouched and still signs in by password only.
    status, login = await api.request("POST", "/api/auth/login",
                                      json={"email": "owner@school.example", "password": "correct horse 1"})
    assert status == 200 and login["user"]["id"] == owner.id
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE lower(email) = 'owner@school.example'") == 1


async def test_rs256_and_es256_apps_verify_with_their_public_key(api: Api, admin: User) -> None:
    rs = await key_platform(api, admin, rsa_key(), "RS256")
    es = await key_platform(api, admin, ec_key(), "ES256")
    for p in (rs, es):
        status, body = await sign_in(api, p.sign(sub=f"{p.alg}-user", name=p.alg))
        assert status == 200, (p.alg, body)
        assert body["user"]["name"] == p.alg
    # An RS256 app's token signed by another key is refused.
    stranger = Platform(rs.app_id, rs.issuer, rs.audience, "RS256", rsa_key())
    assert_unauthorized(*await sign_in(api, stranger.sign()), "The identity token is not valid.")


async def test_app_id_alongside_picks_the_app_but_iss_must_still_match(api: Api, admin: User, platform: Platform) -> None:
    other = await hs256_platform(api, admin)
    assert (await sign_in(api, platform.sign(), app_id=platform.app_id))[0] == 200
    # Naming another app does not make that app's checks apply to this token.
    assert_unauthorized(*await sign_in(api, platform.sign(), app_id=other.app_id))
    assert_unauthorized(*await sign_in(api, platform.sign(), app_id=str(uuid.uuid4())))


# --- refusals ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 case signs with a 43-byte key
async def test_every_bad_token_is_unauthorized_and_creates_nobody(api: Api, admin: User, platform: Platform,
                                                                   db: Any) -> None:
    now = int(time.time())
    rsa_private = rsa_key()
    rs = await key_platform(api, admin, rsa_private, "RS256")
    good = platform.sign(sub="victim")
    head, payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"victim"', b'"admin1"')).decode()
    secret = platform.key
    cases = {
        "expired": platform.sign(iat=now - 600, exp=now - 300),
        "tampered": f"{head}.{tampered_payload}.{signature}",
        "wrong issuer": jwt.encode({**platform.claims(), "iss": "https://evil.example"}, secret, algorithm="HS256"),
        "wrong audience": platform.sign(aud="someone-else"),
        "alg none": unsigned_token(platform.claims()),
        "HS256 signed with the RSA public key": hmac_token(rs.claims(), public_pem(rsa_private).encode()),
        "HS512 not in the app's allowlist": jwt.encode(platform.claims(), secret, algorithm="HS512"),
        "role the app may not grant": platform.sign(role="agent"),
        "admin is never grantable": platform.sign(role="admin"),
        "over-long life": platform.sign(iat=now, exp=now + 2 * 3600),
        "over-long life without iat": platform.sign(iat=None, exp=now + 2 * 3600),
        "no exp": platform.sign(exp=None),
        "no sub": jwt.encode({k: v for k, v in platform.claims().items() if k != "sub"}, secret, algorithm="HS256"),
        "issued in the future": platform.sign(iat=now + 600, exp=now + 900),
        "courses not a list": platform.sign(courses="bio"),
        "javascript avatar": platform.sign(avatar_url="javascript:alert(1)"),
        "not a JWT": "not.a.jwt",
        "wrong secret": jwt.encode(platform.claims(), "x" * 40, algorithm="HS256"),
    }
    for what, token in cases.items():
        status, body = await sign_in(api, token)
        assert status == 401 and body["error"]["code"] == "unauthorized", (what, body)
        assert len(body["error"]["message"]) < 100, (what, body)
    assert await identity_count(db) == 0, "no refused token made a user"
    messages = {what: (await sign_in(api, token))[1]["error"]["message"] for what, token in cases.items()}
    assert messages["expired"] == "The identity token has expired."
    assert messages["role the app may not grant"] == "This app may not grant the role in the identity token."
    generic = "The identity token is not valid."
    for what in ("tampered", "wrong issuer", "wrong audience", "alg none", "HS256 signed with the RSA public key",
                 "wrong secret"):
        assert messages[what] == generic, (what, messages[what])
    async with db.connection() as conn:
        reasons = {r["details"]["reason"] for r in await conn.fetch(
            "SELECT details FROM audit_log WHERE action = 'login.identity_failed'")}
    assert {"expired", "bad signature", "algorithm not allowed", "role not allowed", "life too long"} <= reasons


async def test_hostile_claims_behind_a_valid_signature_are_unauthorized_never_a_500(
    api: Api, platform: Platform, db: Any
) -> None:
    """Tokens the platform's key really signed, with claims of every wrong shape."""
    secret = platform.key.encode()
    now = int(time.time())
    hostile = [
        {"exp": 1e308}, {"exp": float("inf")}, {"exp": float("nan")}, {"exp": "soon"}, {"exp": True},
        {"iat": "yesterday"}, {"iat": 1e308, "exp": 1e308}, {"nbf": "x"}, {"sub": 123}, {"sub": ""},
        {"sub": "x" * 300}, {"sub": "nul\u0000"}, {"name": ["x"]}, {"email": 5}, {"email": "no-at-sign"},
        {"courses": [1]}, {"courses": ["ok"] * 101}, {"role": ["student"]}, {"role": 5}, {"aud": 5},
        {"aud": ["a", {"x": 1}]}, {"iss": ["x"]}, {"jti": 7}, {"avatar_url": "data:image/png;base64,AA"},
    ]
    for extra in hostile:
        claims = {**platform.claims(sub="hostile"), "iat": now, **extra}
        for app_id in (None, platform.app_id):
            status, body = await sign_in(api, hmac_token(claims, secret), **({"app_id": app_id} if app_id else {}))
            assert status == 401 and body["error"]["code"] == "unauthorized", (extra, body)
    # Headers of the wrong shape, and a payload that is not an object.
    head = {"alg": ["HS256"], "typ": "JWT"}
    weird = [f"{b64(head)}.{b64(platform.claims())}.", f"{b64({'alg': 'HS256'})}.{b64([1, 2])}.sig", "a.b.c.d", "." * 3]
    for token in weird:
        status, body = await sign_in(api, token)
        assert status == 401 and body["error"]["code"] == "unauthorized", (token, body)
    assert await identity_count(db) == 0


def b64(value: Any) -> str:
    import json

    return b64url(json.dumps(value).encode())


async def test_a_replayed_jti_is_refused(api: Api, platform: Platform) -> None:
    token = platform.sign(sub="once")
    status, first = await sign_in(api, token)
    assert status == 200, first
    assert_unauthorized(*await sign_in(api, token), "This identity token was already used.")
    # Another token (another jti) of the same user is fine; one without jti can be reused.
    assert (await sign_in(api, platform.sign(sub="once")))[0] == 200
    reusable = platform.sign(sub="once", jti=None)
    assert [(await sign_in(api, reusable))[0] for _ in range(2)] == [200, 200]


async def test_absent_role_means_student_and_a_mentor_app_grants_mentor(api: Api, admin: User) -> None:
    mentors_only = await hs256_platform(api, admin, roles=["mentor"])
    assert_unauthorized(*await sign_in(api, mentors_only.sign(sub="m")))  # absent role: student, not granted
    status, body = await sign_in(api, mentors_only.sign(sub="m", role="mentor"))
    assert status == 200 and body["user"]["role"] == "mentor"


async def test_malformed_body_is_bad_request(api: Api) -> None:
    for body in ({}, {"identity": 5}, {"identity": ""}, {"identity": "x", "app_id": "not-a-uuid"}):
        status, answer = await api.request("POST", "/api/auth/identity", json=body)
        assert status == 400 and answer["error"]["code"] == "bad_request", (body, answer)


async def test_identity_attempts_count_against_the_sign_in_limit(start_instance: Any, db: Any) -> None:
    import aiohttp

    inst = await start_instance(auth__login_limit_10min=3)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        statuses = [(await sign_in(api, "not.a.jwt"))[0] for _ in range(6)]
        assert statuses[:3] == [401] * 3 and statuses[-1] == 429, statuses
        status, body = await sign_in(api, "not.a.jwt")
        assert body["error"]["code"] == "rate_limited" and body["error"]["retry_after_ms"] > 0
        refused: list[Any] = []
        client = socketio.AsyncClient(reconnection=False)
        client.on("connect_error", lambda data: refused.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(inst.url, auth={"identity": "not.a.jwt"}, transports=["websocket"], wait_timeout=5)
        assert refused and refused[0]["data"]["code"] == "rate_limited", refused


# --- sockets ------------------------------------------------------------------------------

async def test_socket_connects_with_an_identity_like_with_a_token(api: Api, platform: Platform, db: Any) -> None:
    peer = await api.register("Peer")
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(api.url, auth={"identity": platform.sign(sub="sock", name="Socky")}, transports=["websocket"],
                         wait_timeout=5)
    try:
        ack = await client.call("conversation:create", {"kind": "direct", "member_ids": [peer.id]}, timeout=10)
        assert ack["ok"] is True, ack
        async with db.connection() as conn:
            user_id = await conn.fetchval("SELECT user_id FROM identities WHERE subject = 'sock'")
        members = {m["id"]: m["name"] for m in ack["conversation"]["members"]}
        assert members == {str(user_id): "Socky", peer.id: "Peer"}, "the socket acts as the mapped user"
    finally:
        await client.disconnect()

    refused: list[Any] = []
    bad = socketio.AsyncClient(reconnection=False)
    bad.on("connect_error", lambda data: refused.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await bad.connect(api.url, auth={"identity": platform.sign(sub="sock", aud="other")}, transports=["websocket"],
                          wait_timeout=5)
    assert [r["data"] for r in refused] == [{"code": "unauthorized", "message": "The identity token is not valid."}]


# --- apps ---------------------------------------------------------------------------------

async def test_apps_are_admin_only_and_never_show_secrets(api: Api, admin: User, db: Any) -> None:
    student = await api.register("Student")
    status, body = await create_app(api, student)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await api.request("GET", "/api/apps", student))[0] == 403

    given = "s" * 40
    status, created = await create_app(api, admin, hs256_secrets=[given], origins=["https://learn.example.com/"])
    assert status == 201 and "secret" not in created, created
    app_id = created["app"]["id"]
    assert created["app"]["origins"] == ["https://learn.example.com"]
    status, generated = await create_app(api, admin)
    assert status == 201 and len(generated["secret"]) >= 43
    status, listed = await api.request("GET", "/api/apps", admin)
    status_one, one = await api.request("GET", f"/api/apps/{app_id}", admin)
    assert status == 200 and status_one == 200
    text = repr(listed) + repr(one)
    assert given not in text and generated["secret"] not in text, "secrets are shown once, at creation"
    assert one["app"]["hmac_secret_count"] == 1 and one["app"]["key_type"] == "hmac"
    assert {a["id"] for a in listed["apps"]} == {app_id, generated["app"]["id"]}
    assert (await api.request("GET", f"/api/apps/{uuid.uuid4()}", admin))[0] == 404


async def test_app_rules(api: Api, admin: User) -> None:
    rsa_private = rsa_key()
    bad_bodies = {
        "two kinds of key": {"hs256_secrets": ["s" * 40], "jwks_url": "https://p.example/jwks.json"},
        "short secret": {"hs256_secrets": ["short"]},
        "HS with a public key": {"public_key": public_pem(rsa_private), "algorithms": ["HS256"]},
        "ES with an RSA key": {"public_key": public_pem(rsa_private), "algorithms": ["ES256"]},
        "RS with a secret": {"hs256_secrets": ["s" * 40], "algorithms": ["RS256"]},
        "none": {"algorithms": ["none"]},
        "private key": {"public_key": rsa_private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()},
        "admin role": {"roles": ["student", "admin"]},
        "unknown role": {"roles": ["wizard"]},
        "plain http JWKS": {"jwks_url": "http://p.example/jwks.json"},
        "origin with a path": {"origins": ["https://p.example/app"]},
    }
    for what, body in bad_bodies.items():
        status, answer = await create_app(api, admin, **body)
        assert status == 400 and answer["error"]["code"] == "bad_request", (what, answer)
    status, first = await create_app(api, admin, issuer="https://same.example")
    assert status == 201
    status, second = await create_app(api, admin, issuer="https://same.example")
    assert status == 409 and second["error"]["code"] == "conflict"
