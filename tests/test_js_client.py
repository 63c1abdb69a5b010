"""The official JavaScript socket.io-client holds a thread against two instances through a
Redis restart, and ends with every message once, in order (issue 3's "done means")."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from storage import messages as message_store
from tests.client import Api
from tests.services import RedisServer

pytestmark = pytest.mark.cluster  # starts Redis servers of its own

SCRIPT = Path(__file__).parent / "js" / "thread_client.mjs"


async def test_socket_io_client_thread_across_two_instances_through_redis_restart(start_instance, db) -> None:
    node = shutil.which("node")
    assert node, "Node.js is required (the README's test command installs the npm packages)"
    redis = RedisServer().start()
    channel = f"js-{uuid.uuid4().hex[:8]}"
    restarted = asyncio.Event()

    async def restart_redis(request: web.Request) -> web.Response:
        await asyncio.to_thread(redis.restart, 1.0)
        restarted.set()
        return web.Response(text="ok")

    control = web.Application()
    control.router.add_post("/restart", restart_redis)
    runner = web.AppRunner(control)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        one = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
        two = await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
        async with aiohttp.ClientSession() as session:
            api = Api(session, one.url)
            alice, bob = await api.register("Alice"), await api.register("Bob")
            sock = await api.socket(alice)
            cid = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [bob.id]}))["conversation"]["id"]
            await sock.disconnect()
            proc = await asyncio.create_subprocess_exec(
                node, str(SCRIPT), one.url, two.url, alice.token, bob.token, cid, "40",
                f"http://127.0.0.1:{control_port}/restart",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert restarted.is_set(), "Redis was restarted mid-conversation"
        async with db.connection() as conn:
            stored, _ = await message_store.history(conn, uuid.UUID(cid), before_seq=None, limit=1000)
        truth = [str(m.id) for m in stored]
        assert [m.seq for m in stored] == list(range(1, 81)), "80 messages, seq 1..80, no gaps"
        assert sorted(result["acked"]) == sorted(truth), "every acked message stored, once"
        assert result["aliceSeqs"] == list(range(1, 81)) and result["bobSeqs"] == list(range(1, 81))
        assert result["alice"] == truth and result["bob"] == truth, "both clients hold exactly the database's thread"
        assert result["duplicates"] == [], "no message:new delivered twice"
    finally:
        await runner.cleanup()
        redis.stop()
