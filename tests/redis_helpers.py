"""Helpers shared by the tests of fan-out between instances over Redis
(test_room_channels.py, test_group_rooms*.py, test_redis_cluster.py, test_redis_before_7.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from server.keys import SETTINGS, SIO
from tests.client import Instance, Socket


async def instances(start_instance: Any, redis_url: str, count: int, **extra: Any) -> list[Instance]:
    """`count` instances sharing one Redis and a channel prefix of their own."""
    channel = f"fan-{uuid.uuid4().hex[:8]}"
    return [await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel, **extra)
            for _ in range(count)]


def channel_prefix(instance: Instance) -> str:
    """The instance's Redis channel prefix (room channels are `<prefix>:room:/:<room>`)."""
    return instance.app[SETTINGS].cluster.redis_channel


async def eventually(check: Any, timeout: float = 5.0) -> None:
    """Wait until `await check()` is true; an exception in the check fails the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def seqs(sock: Socket, conversation_id: str, event: str = "message:new") -> list[int]:
    """The seqs of `event`s the socket received for one conversation, in arrival order."""
    return [d["message"]["seq"] for d in sock.received(event) if d["message"]["conversation_id"] == conversation_id]


def in_room(instance: Instance, sock: Socket, room: str) -> bool:
    return sock.client.get_sid("/") in (instance.app[SIO].manager.rooms.get("/", {}).get(room) or {})
