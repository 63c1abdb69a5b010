"""permessage-deflate is refused by default and accepted with `gateway.websocket_deflate`
(server/ws_deflate.py), as the official socket.io-client, which always offers it, sees it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from tests.client import Api

SCRIPT = Path(__file__).parent / "js" / "deflate_probe.mjs"


async def _probe(start_instance: Any, **overrides: Any) -> dict[str, Any]:
    """Connect socket.io-client to a fresh instance, send a long message, report the handshake."""
    node = shutil.which("node")
    assert node, "Node.js is required (the README's test command installs the npm packages)"
    inst = await start_instance(**overrides)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        alice, bob = await api.register("Alice"), await api.register("Bob")
        sock = await api.socket(alice)
        cid = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]}))["conversation"]["id"]
        proc = await asyncio.create_subprocess_exec(
            node, str(SCRIPT), inst.url, alice.token, cid,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        # The message arrived whole either way (compressed by the client when deflate was agreed).
        _, body = await api.request("GET", f"/api/conversations/{cid}/messages", alice)
        result["stored"] = [m["content"] for m in body["messages"]]
        await api.close_sockets()
    return result


async def test_deflate_is_refused_by_default(start_instance: Any) -> None:
    result = await _probe(start_instance)
    assert "permessage-deflate" in result["offered"]
    assert result["answered"] is None
    assert result["negotiated"] == ""
    assert result["ack"]["ok"] is True
    assert result["stored"] == ["deflate me " * 300]


async def test_deflate_is_accepted_when_the_setting_is_on(start_instance: Any) -> None:
    result = await _probe(start_instance, gateway__websocket_deflate=True)
    assert "permessage-deflate" in result["offered"]
    assert result["answered"] is not None and result["answered"].startswith("permessage-deflate")
    assert result["negotiated"] == "permessage-deflate"
    assert result["ack"]["ok"] is True
    assert result["stored"] == ["deflate me " * 300]
