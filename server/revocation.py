"""Revocation that reaches every socket: notices, expiry timers, and a token sweep.

Three nets, none of which needs the `connections` table (whose rows can be lost):
- Notices (server/notices.py): logout, a role change and a room ban/kick act on the
  sockets every instance holds in memory, through Redis.
- Expiry: each socket knows its token's `expires_at` (loaded at sign-in) and its instance
  closes it at that moment on a local timer; instance clocks are assumed NTP-synced.
- Sweep: every `settings.auth.revocation_sweep_seconds` each instance checks the tokens and roles of its
  own sockets against the database in one query, and closes those revoked, expired or
  carrying an old role. This catches a notice lost while Redis was down.
The table-based paths (handlers/auth.py, server/housekeeping.py) stay as another net.

A socket whose disconnect handler ran while it stayed connected (a client can send an event
named "disconnect") has lost its Gateway state and its row, so no net would find it: it is
closed for real at that moment.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from uuid import UUID

import socketio

from handlers.core import Actor, Core
from server.gateway import Gateway
from server.metrics import Metrics
from server.notices import SocketNotices
from server.realtime import SocketEvents
from server.redisbus import ResilientRedis
from storage import users

log = logging.getLogger(__name__)


class Revocation:
    """Per-app expiry timers and the token sweep over the Gateway's sockets."""

    def __init__(self, core: Core, gateway: Gateway, sio: socketio.AsyncServer) -> None:
        self.core = core
        self.gateway = gateway
        self.sio = sio
        self.timers: dict[str, asyncio.TimerHandle] = {}

    async def socket_connected(self, core: Core, actor: Actor) -> None:
        """Arm a timer that closes the socket when its token expires."""
        if actor.sid is None or actor.token_expires_at is None:
            return
        delay = (actor.token_expires_at - datetime.now(UTC)).total_seconds()
        loop = asyncio.get_running_loop()
        self.timers[actor.sid] = loop.call_later(max(0.0, delay), self._expired, actor.sid, actor.token_id)

    async def rearm(self, actor: Actor) -> None:
        """The socket runs on a new token (`auth:refresh`): its expiry replaces the old one's."""
        if actor.sid is not None:
            timer = self.timers.pop(actor.sid, None)
            if timer is not None:
                timer.cancel()
        await self.socket_connected(self.core, actor)

    async def socket_disconnected(self, core: Core, actor: Actor) -> None:
        if actor.sid is None:
            return
        timer = self.timers.pop(actor.sid, None)
        if timer is not None:
            timer.cancel()
        if self.sio.manager.is_connected(actor.sid, "/"):
            # The disconnect handler ran while python-socketio still has the socket (a client
            # sent an event named "disconnect"): its Gateway state and `connections` row are
            # gone, so nothing could revoke it any more. Close it for real.
            log.info("closing a socket whose disconnect handler ran while it stayed connected")
            await self.sio.disconnect(actor.sid, ignore_queue=True)

    def _expired(self, sid: str, token_id: UUID) -> None:
        self.timers.pop(sid, None)
        state = self.gateway.sockets.get(sid)
        if state is not None and state.actor.token_id == token_id:
            self.core.spawn(self.core.events.disconnect_sids([sid]), name=f"token-expired:{sid}")

    async def sweep_once(self) -> int:
        """Close local sockets whose token is revoked, expired or gone, or whose user's role
        changed. Returns how many were closed."""
        actors = {sid: state.actor for sid, state in list(self.gateway.sockets.items())}
        if not actors:
            return 0
        async with self.core.db.connection() as conn:
            live = await users.live_token_roles(conn, list({a.token_id for a in actors.values()}))
        stale = [sid for sid, a in actors.items() if live.get(a.token_id) != a.role]
        if stale:
            log.info("closing sockets with revoked or changed sign-ins", extra={"count": len(stale)})
            await self.core.events.disconnect_sids(stale)
        return len(stale)


def install_notices(core: Core, gateway: Gateway, sio: socketio.AsyncServer, metrics: Metrics) -> None:
    """Notices act on the Gateway's sockets; through Redis they reach every instance's."""
    notices = SocketNotices(sio, gateway.sockets, metrics)
    if isinstance(core.events, SocketEvents):
        core.events.notices = notices
    if isinstance(sio.manager, ResilientRedis):
        sio.manager.on_notice = notices.apply_wire
        sio.manager.health.metrics = metrics
