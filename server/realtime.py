"""The Socket.IO server and the event emitter handlers use.

With REDIS_URL the server uses python-socketio's AsyncRedisManager, which delivers to
local sockets first and then publishes for the other instances; publishing is queued and
never waits on Redis (server/redisbus.py), on each room's own channel, which only the
instances holding that room's sockets hear (server/roomchannels.py). Redis is only a doorbell: a publish that fails
is lost, so a watcher notices Redis outages and hangs and, when Redis is back, tells this
instance's sockets to `resync` (recover by seq through `sync`).

Revocation (closing sockets, leaving a room) acts on the sockets each instance holds in
memory, through notices (server/revocation.py), and on the `connections` table's sids as a
second net.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import socketio

from handlers.events import user_room
from handlers.settings import Settings
from server import fanout
from server.guarded_sio import GuardedServer
from server.jsonutil import OrjsonModule
from server.metrics import Metrics
from server.notices import Notice, SocketNotices
from server.redisbus import QueuedRedisManager, ResilientRedis
from server.ws_deflate import set_websocket_deflate
from storage import connections
from storage.db import Database

log = logging.getLogger(__name__)


def max_poll_packets(settings: Settings) -> int:
    """Packets one long-polling POST may carry: a client firing a whole burst the rate
    limit allows, plus its acks, pongs and the events that refilled while the previous
    POST was in flight, all fit; past it, events are refused `rate_limited`."""
    return 2 * settings.gateway.rate_limit_burst + 16


def create_sio(settings: Settings) -> GuardedServer:
    """The Socket.IO server (server/guarded_sio.py: hostile frames refused, polling bursts
    accepted). By default with the encode-once fan-out (server/fanout.py):
    python-socketio's manager, or its Redis manager with REDIS_URL, whose local delivery
    writes one pre-built websocket frame per recipient instead of one task and one
    encoding per recipient. STUDYHALL_FANOUT=stock uses python-socketio's own delivery.
    permessage-deflate only with STUDYHALL_WS_DEFLATE (server/ws_deflate.py)."""
    cluster = settings.cluster
    if settings.gateway.fanout == "fast":
        manager = fanout.create_manager(cluster)
    elif cluster.redis_url:
        manager = QueuedRedisManager(cluster.redis_url, channel=cluster.redis_channel, redis_options=fanout.REDIS_OPTIONS)
        manager.configure(timeout=cluster.redis_timeout_seconds, queue_size=cluster.redis_publish_queue)
        manager.configure_rooms(cluster.redis_channels, cluster.redis_room_emit_limit)
    else:
        manager = socketio.AsyncManager()
    sio = GuardedServer(
        max_poll_packets=max_poll_packets(settings),
        async_mode="aiohttp",
        client_manager=manager,
        json=OrjsonModule,
        cors_allowed_origins=settings.http.cors_origins if settings.http.cors_origins != "*" else "*",
        max_http_buffer_size=settings.gateway.max_frame_bytes,
        ping_interval=20,
        ping_timeout=20,
        logger=False,
        engineio_logger=False,
    )
    if settings.gateway.fanout == "fast":
        fanout.install(sio)
    sio.guard_websockets()
    set_websocket_deflate(sio, settings.gateway.websocket_deflate)
    return sio


class SocketEvents:
    """`handlers.events.Events` over python-socketio."""

    def __init__(self, sio: socketio.AsyncServer, db: Database, metrics: Metrics) -> None:
        self.sio = sio
        self.db = db
        self.metrics = metrics
        # Set by server/revocation.py's bind: acts on every instance's sockets in memory.
        self.notices: SocketNotices | None = None

    async def _emit(self, event: str, data: dict[str, Any], to: list[str]) -> None:
        if not to:
            return
        try:
            await self.sio.emit(event, data, to=to if len(to) > 1 else to[0])
        except Exception:
            # The change is committed; clients recover it by seq. Never fail the caller.
            # (Redis is not on this path: publishing is queued, server/redisbus.py.)
            self.metrics.fanout_degraded.inc()
            log.exception("fan-out failed", extra={"event": event})

    async def _emit_many(self, event: str, datas: Sequence[dict[str, Any]], to: list[str]) -> None:
        if not to or not datas:
            return
        try:
            await fanout.emit_many(self.sio, event, datas, to if len(to) > 1 else to[0])
        except Exception:
            self.metrics.fanout_degraded.inc()
            log.exception("fan-out failed", extra={"event": event})

    async def to_users(self, user_ids: Iterable[UUID | str], event: str, data: dict[str, Any]) -> None:
        await self._emit(event, data, [user_room(u) for u in dict.fromkeys(user_ids)])

    async def to_rooms(self, rooms: Iterable[str], event: str, data: dict[str, Any]) -> None:
        await self._emit(event, data, list(dict.fromkeys(rooms)))

    async def to_rooms_except_user(self, rooms: Iterable[str], user_id: UUID | str, event: str,
                                   data: dict[str, Any]) -> None:
        """The user's sockets here are skipped by sid; on other instances by the name of
        the user's room, which each instance reads as its own sockets in that room
        (server/roomchannels.py `_expand_skip`)."""
        to = list(dict.fromkeys(rooms))
        if not to:
            return
        own = user_room(user_id)
        local = self.sio.manager.rooms.get("/", {}).get(own) or {}
        skip: list[str] = [*local, own]
        try:
            await self.sio.emit(event, data, to=to if len(to) > 1 else to[0], skip_sid=skip)
        except Exception:
            self.metrics.fanout_degraded.inc()
            log.exception("fan-out failed", extra={"event": event})

    async def to_users_many(self, user_ids: Iterable[UUID | str], event: str, datas: Sequence[dict[str, Any]]) -> None:
        await self._emit_many(event, datas, [user_room(u) for u in dict.fromkeys(user_ids)])

    async def to_rooms_many(self, rooms: Iterable[str], event: str, datas: Sequence[dict[str, Any]]) -> None:
        await self._emit_many(event, datas, list(dict.fromkeys(rooms)))

    async def _user_sids(self, user_id: UUID | str) -> list[str]:
        async with self.db.connection() as conn:
            return await connections.sids_for_user(conn, UUID(str(user_id)))

    async def join_user_sockets(self, user_id: UUID | str, room: str) -> None:
        if self.notices is not None:
            await self.notices.send(Notice("enter", user_id=str(user_id), room=room))
        for sid in await self._user_sids(user_id):  # second net: sids the table knows
            try:
                await self.sio.enter_room(sid, room)
            except KeyError:
                pass  # the socket closed since its row was read (or its instance died)

    async def join_users_sockets(self, user_ids: Iterable[UUID | str], room: str) -> None:
        """One notice for all of them. No second net through the `connections` table (one
        control message per sid, heard by every instance): a group's first seconds also go
        to its members' own rooms, and the periodic check (server/grouprooms.py) enters
        whatever a lost notice missed."""
        users = tuple(dict.fromkeys(str(u) for u in user_ids))
        if users and self.notices is not None:
            await self.notices.send(Notice("enter", room=room, user_ids=users))

    async def leave_user_sockets(self, user_id: UUID | str, room: str) -> None:
        if self.notices is not None:
            await self.notices.send(Notice("leave", user_id=str(user_id), room=room))
        for sid in await self._user_sids(user_id):  # second net: sids the table knows
            try:
                await self.sio.leave_room(sid, room)
            except KeyError:
                pass

    async def disconnect_tokens(self, token_ids: Iterable[UUID | str]) -> None:
        if self.notices is not None:
            await self.notices.send(Notice("close", token_ids=tuple(str(t) for t in token_ids)))

    async def disconnect_user(self, user_id: UUID | str) -> None:
        if self.notices is not None:
            await self.notices.send(Notice("close", user_id=str(user_id)))

    async def disconnect_sids(self, sids: Iterable[str]) -> None:
        for sid in sids:
            try:
                await self.sio.disconnect(sid)
            except Exception:
                log.exception("disconnect failed", extra={"sid": sid})


async def watch_redis(settings: Settings, sio: socketio.AsyncServer, metrics: Metrics, interval: float = 1.0) -> None:
    """Probe Redis both ways; after an outage or a hang, tell local sockets to resync once
    this instance's listener hears again (server/redisbus.py)."""
    manager = sio.manager
    if isinstance(manager, ResilientRedis):
        await manager.watch(sio, interval)
