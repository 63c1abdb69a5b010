"""The socket registry across a database crash or failover: notice, re-register, then judge.

The registry (`instances`, `connections`) says who is connected anywhere; presence,
logout and the room grace clocks (handlers/rooms/live.py) read it. Its tables are
UNLOGGED, so PostgreSQL's crash recovery empties them, and a replica promoted in a
failover has them empty too, while every instance and socket lives on. Read as it is, the
empty registry says everyone left: presence would flip everyone offline, every seat would
be freed one leave grace later and every live room ended one host grace later.

The truth is in memory: each instance knows its open sockets (the gateway's map). So:

1. **Noticing.** An instance notices a reset when its own row is missing where it must
   exist: at its heartbeat, when a socket registers (`connections.add` re-creates the row),
   and before any judgement (`settled`). Whoever re-creates a row notes the reset in the
   LOGGED `registry_resets` table *in the same statement or transaction*, so no instance
   can see a re-created row without also seeing that a reset happened.
2. **Re-registering.** The instance that noticed writes its row and every socket it has
   (`recover`). The others notice at their next heartbeat or judgement.
3. **Holding judgement.** Every judgement that someone is gone (the sweeper marking the
   socketless away, seats freed, rooms ended, presence "offline") first takes a `settled`
   connection: it re-registers this instance if its row is missing, and waits while the
   last reset is younger than the settle period. The settle period is longer than two
   heartbeats, and every live instance re-registers at its next heartbeat at the latest,
   so when judgement resumes the registry again holds every live socket of every
   instance: instance B's users are back before A's sweeper may judge them. An instance
   that stayed unreachable longer than that has stopped heart-beating, and is treated like
   a crashed one (as before). The judgement runs on the connection the check was made on:
   a new crash between the two breaks that connection, so nothing is judged on a registry
   emptied after the check.
4. **Self-healing.** At each heartbeat an instance compares how many sockets the registry
   holds for it with how many it has, and re-syncs when they differ (rows whose disconnect
   could not be recorded during an outage are dropped, and their users announced offline).

Grace clocks started wrongly in the blind moment between the crash and the notice (a
disconnect that found the user's other sockets missing) are harmless: expiry also needs
the user to have no socket, and the sweeper clears the clocks of connected users.
Cost: seats of people who really left around a reset are freed up to the settle period
late. Why not make the tables LOGGED instead: docs/security.md, "Database crashes".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from handlers.core import Core
from storage import connections

log = logging.getLogger(__name__)

SLACK_SECONDS = 0.05


def settle_seconds(core: Core) -> float:
    """How long judgement waits after a reset: the setting, and never under two heartbeats."""
    s = core.settings.cluster
    return max(s.registry_settle_seconds, 2 * s.instance_heartbeat_seconds)


async def _resync(core: Core, conn: asyncpg.Connection, *, reset: bool) -> list[UUID]:
    """Write this instance's row (noting a reset) and make its socket rows match memory."""
    registry = core.registry
    async with registry.lock:
        sockets = registry.local_sockets()
        async with conn.transaction():
            if reset:
                await connections.reregister(conn, core.instance_id)
            dropped = await connections.sync_instance(conn, core.instance_id, sockets)
    if reset:
        log.warning(
            "socket registry was reset (database crash or failover): re-registered this instance and %d sockets",
            len(sockets), extra={"sockets": len(sockets)},
        )
    return dropped


async def recover(core: Core) -> None:
    """A socket found this instance's row gone: re-register the instance and all its sockets."""
    async with core.db.connection() as conn:
        await _resync(core, conn, reset=True)


async def heartbeat(core: Core) -> list[UUID]:
    """Refresh this instance's row; after a reset re-register everything; when the counts
    differ, re-sync. Returns users whose stale rows were dropped (to announce offline)."""
    sockets = len(core.registry.local_sockets())
    async with core.db.connection() as conn:
        registered = await connections.heartbeat(conn, core.instance_id)
        if registered is None:
            return await _resync(core, conn, reset=True)
        if registered != sockets:
            return await _resync(core, conn, reset=False)
    return []


@asynccontextmanager
async def settled(core: Core) -> AsyncIterator[asyncpg.Connection]:
    """A connection on which it is safe to judge someone gone: this instance is registered,
    and no reset happened within the settle period (waits it out, holding no connection)."""
    while True:
        async with core.db.connection() as conn:
            state = await connections.registry_state(conn, core.instance_id, settle_seconds(core))
            if not state.registered and not core.closing:
                await _resync(core, conn, reset=True)
                continue
            if state.settle_left <= 0:
                yield conn
                return
        await asyncio.sleep(state.settle_left + SLACK_SECONDS)
