"""`auth:refresh {token}`: a connected socket carries on with a fresh session of the same
user and role, past the old session's end, with no reconnect; the new session's
revocation reaches it; another user's token, an unknown one or bad input are refused and
change nothing. Real server, real python-socketio clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp

from handlers.settings import IdentitySettings
from tests.client import Api
from tests.identity_platform import hs256_platform, sign_in

SESSION_SECONDS = 3.0


async def test_refresh_keeps_the_socket_past_the_old_sessions_end(start_instance: Any, db: Any) -> None:
    server = await start_instance(identity=IdentitySettings(session_hours=SESSION_SECONDS / 3600))
    async with aiohttp.ClientSession() as http:
        api = Api(http, server.url)
        admin = await api.staff(db, "admin")
        platform = await hs256_platform(api, admin, roles=["student", "mentor"])

        async def session(sub: str, role: str = "student") -> dict[str, Any]:
            status, body = await sign_in(api, platform.sign(sub=sub, name=sub, role=role))
            assert status == 200, body
            assert body["expires_at"]  # the client schedules its refresh from it
            return body

        first = await session("u-1")
        sock = await api.socket(first["token"])
        # Refused, nothing changes: bad input, another user's token, an unknown one.
        for bad in ({}, {"token": ""}, {"token": 5}, {"token": "x" * 201}):
            ack = await sock.call("auth:refresh", bad)
            assert ack["error"]["code"] == "bad_request", (bad, ack)
        other = await session("u-2")
        assert (await sock.call("auth:refresh", {"token": other["token"]}))["error"]["code"] == "forbidden"
        assert (await sock.call("auth:refresh", {"token": "nope"}))["error"]["code"] == "unauthorized"

        # A second before the first session ends, the client refreshes (as the widget does).
        first_ends = datetime.fromisoformat(first["expires_at"])
        await asyncio.sleep(max(0.0, (first_ends - datetime.now(UTC)).total_seconds() - 1.0))
        second = await session("u-1")
        ack = await sock.ok("auth:refresh", {"token": second["token"]})
        assert ack["expires_at"] == second["expires_at"]
        await asyncio.sleep(1.5)  # the first session has ended; the second has not
        assert datetime.now(UTC) > first_ends
        assert sock.client.connected
        await sock.ok("tutor:start", {"title": "still here"})

        # Revoking the session the socket now runs on closes it.
        third = await session("u-1")
        live = await api.socket(third["token"])
        fourth = await session("u-1")
        await live.ok("auth:refresh", {"token": fourth["token"]})
        status, _ = await api.request("POST", "/api/auth/logout", headers={"Authorization": f"Bearer {fourth['token']}"})
        assert status in (200, 204)
        for _ in range(50):
            if not live.client.connected:
                break
            await asyncio.sleep(0.1)
        assert not live.client.connected
        await api.close_sockets()
