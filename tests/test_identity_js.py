"""The official JavaScript socket.io-client connects with `auth: {identity}` (websocket and
long-polling) and acts as the mapped user; a bad identity gets `connect_error` unauthorized."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from tests.client import Api
from tests.identity_platform import hs256_platform

SCRIPT = Path(__file__).parent / "js" / "identity_client.mjs"


async def test_socket_io_client_signs_in_with_an_identity(api: Api, db: Any) -> None:
    node = shutil.which("node")
    assert node, "Node.js is required (the README's test command installs the npm packages)"
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    peer = await api.register("Peer")
    ws_token = platform.sign(sub="js-user", name="From JS")
    polling_token = platform.sign(sub="js-user", name="From JS")
    bad = platform.sign(sub="js-user", aud="not-studyhall")
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), api.url, ws_token, polling_token, bad, peer.id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])

    async with db.connection() as conn:
        user_id = str(await conn.fetchval("SELECT user_id FROM identities WHERE subject = 'js-user'"))
    for transport in ("ws", "polling"):
        members = {m["id"]: m["name"] for m in result[transport]["conversation"]["members"]}
        assert members == {user_id: "From JS", peer.id: "Peer"}, transport
    # One direct conversation between the same two users: both sockets were the same user.
    assert result["ws"]["conversation"]["id"] == result["polling"]["conversation"]["id"]
    assert uuid.UUID(result["ws"]["conversation"]["id"])
    assert result["refused"] == {"code": "unauthorized", "message": "The identity token is not valid."}
