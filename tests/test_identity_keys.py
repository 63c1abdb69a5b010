"""Signed identity with a JWKS served by a small aiohttp app in the test (fetched, cached,
refetched on an unknown `kid` at most once per interval), the sweep of used token ids, and
`studyhall app create` / `app list` run as commands."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from handlers.identity import sweep_jtis
from handlers.settings import IdentitySettings
from storage import identities
from tests.client import Api
from tests.identity_platform import Platform, create_app, ec_key, public_pem, rsa_key, sign_in
from tests.ticket_helpers import core_of

ROOT = Path(__file__).resolve().parent.parent


class JwksServer:
    """The platform's JWKS endpoint: the keys it serves can change; it counts requests."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = []
        self.requests = 0
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": self.jwks})

    def add(self, private: Any, kid: str, alg: str) -> None:
        to_jwk = RSAAlgorithm.to_jwk if alg.startswith(("RS", "PS")) else ECAlgorithm.to_jwk
        self.jwks.append({**to_jwk(private.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[JwksServer, str]]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}/.well-known/jwks.json"
    await runner.cleanup()


@pytest.mark.slow  # waits out a 1 s refresh interval
async def test_jwks_fetched_cached_and_refetched_on_rotation_at_most_once_per_interval(
    start_instance: Any, db: Any, jwks_server: tuple[JwksServer, str]
) -> None:
    served, url = jwks_server
    first, second = rsa_key(), ec_key()
    served.add(first, "k1", "RS256")
    inst = await start_instance(identity=IdentitySettings(jwks_refresh_seconds=1))
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        admin = await api.staff(db, "admin")
        status, created = await create_app(api, admin, jwks_url=url, algorithms=["RS256", "ES256"])
        assert status == 201, created
        app = created["app"]
        one = Platform(app["id"], app["issuer"], app["audience"], "RS256", first, kid="k1")
        assert (await sign_in(api, one.sign(sub="a")))[0] == 200
        assert (await sign_in(api, one.sign(sub="b")))[0] == 200
        assert served.requests == 1, "the set is cached"

        # Made-up kids right after a fetch: refused, and the platform is not asked again.
        liar = Platform(app["id"], app["issuer"], app["audience"], "RS256", rsa_key(), kid="nope")
        for _ in range(5):
            status, body = await sign_in(api, liar.sign())
            assert status == 401 and body["error"]["code"] == "unauthorized", body
        assert served.requests <= 2

        # The platform rotates to an EC key: a token with the new kid refetches once.
        await asyncio.sleep(1.1)
        served.add(second, "k2", "ES256")
        before = served.requests
        two = Platform(app["id"], app["issuer"], app["audience"], "ES256", second, kid="k2")
        status, body = await sign_in(api, two.sign(sub="c"))
        assert status == 200, body
        assert served.requests == before + 1
        # A kid whose key is of another family than the token's alg is refused.
        wrong_family = Platform(app["id"], app["issuer"], app["audience"], "RS256", first, kid="k2")
        assert (await sign_in(api, wrong_family.sign()))[0] == 401


async def test_jwks_unreachable_at_first_is_unavailable_not_a_500(
    start_instance: Any, db: Any, jwks_server: tuple[JwksServer, str]
) -> None:
    served, url = jwks_server
    served.status = 503
    key = rsa_key()
    inst = await start_instance()
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        admin = await api.staff(db, "admin")
        _, created = await create_app(api, admin, jwks_url=url)
        app = created["app"]
        status, body = await sign_in(api, Platform(app["id"], app["issuer"], app["audience"], "RS256", key, "k").sign())
        assert status == 503 and body["error"]["code"] == "unavailable", body


async def test_used_jtis_are_swept_once_expired(server: Any, api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    _, created = await create_app(api, admin)
    app_id = uuid.UUID(created["app"]["id"])
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        assert await identities.use_jti(conn, app_id, "old", now - timedelta(seconds=1))
        assert await identities.use_jti(conn, app_id, "live", now + timedelta(minutes=5))
        assert not await identities.use_jti(conn, app_id, "live", now + timedelta(minutes=5))
        # An expired record no longer blocks its id (the token it belonged to is dead).
        assert await identities.use_jti(conn, app_id, "old", now - timedelta(seconds=1))
    assert await sweep_jtis(core_of(server)) == 1
    async with db.connection() as conn:
        assert [r["jti"] for r in await conn.fetch("SELECT jti FROM identity_jtis")] == ["live"]


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "STUDYHALL_LOG_JSON": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow
async def test_app_commands_create_and_list(database_url: str, start_instance: Any, tmp_path: Path) -> None:
    code, out, err = await run_cli(
        database_url, "app", "create", "--name", "Moodle", "--issuer", "https://moodle.example", "--audience",
        "studyhall", "--roles", "student,mentor", "--origin", "https://moodle.example")
    assert code == 0, err
    app_id = re.search(r"app id: (\S+)", out).group(1)  # type: ignore[union-attr]
    secret = re.search(r"secret.*: (\S+)$", out, re.M).group(1)  # type: ignore[union-attr]

    key = ec_key()
    (tmp_path / "key.pem").write_text(public_pem(key))
    code, out2, err = await run_cli(
        database_url, "app", "create", "--name", "Canvas", "--issuer", "https://canvas.example", "--audience", "sh",
        "--public-key-file", str(tmp_path / "key.pem"))
    assert code == 0 and "secret" not in out2.lower(), (out2, err)
    code, _, err = await run_cli(database_url, "app", "create", "--name", "X", "--issuer", "https://x.example",
                                 "--audience", "sh", "--roles", "admin")
    assert code == 1 and "admin" in err

    code, listed, err = await run_cli(database_url, "app", "list")
    assert code == 0, err
    assert app_id in listed and "Canvas" in listed and "alg=ES256" in listed and secret not in listed

    # The printed secret and id work against a server on the same database.
    inst = await start_instance()
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        now = int(time.time())
        token = jwt.encode({"sub": "cli", "iss": "https://moodle.example", "aud": "studyhall", "iat": now,
                            "exp": now + 60, "role": "mentor"}, secret, algorithm="HS256")
        status, body = await sign_in(api, token, app_id=app_id)
        assert status == 200 and body["user"]["role"] == "mentor", body


def test_identity_settings_come_from_their_variables() -> None:
    from handlers.settings import Settings

    settings = Settings.from_env({
        "STUDYHALL_IDENTITY_MAX_LIFE_SECONDS": "600", "STUDYHALL_IDENTITY_LEEWAY_SECONDS": "5",
        "STUDYHALL_IDENTITY_SESSION_HOURS": "2", "STUDYHALL_IDENTITY_JWKS_CACHE_SECONDS": "120",
        "STUDYHALL_IDENTITY_JWKS_REFRESH_SECONDS": "10", "STUDYHALL_IDENTITY_JWKS_TIMEOUT": "1.5",
    })
    assert settings.identity == IdentitySettings(max_token_life_seconds=600, leeway_seconds=5, session_hours=2,
                                                 jwks_cache_seconds=120, jwks_refresh_seconds=10,
                                                 jwks_timeout_seconds=1.5)
    assert Settings.from_env({}).identity == IdentitySettings()
    with pytest.raises(SystemExit, match="STUDYHALL_IDENTITY_LEEWAY_SECONDS"):
        Settings.from_env({"STUDYHALL_IDENTITY_LEEWAY_SECONDS": "soon"})
