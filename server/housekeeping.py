"""This instance's own loops: the registry heartbeat (with the reaping of dead instances and
the closing of revoked sockets), and the hourly sweep of idle guests. Listed with every
other loop in server/assembly.py."""

from __future__ import annotations

import random

from handlers import guests, presence, registry
from handlers.background import repeat
from handlers.core import Core
from server.gateway import Gateway
from storage import connections

DEAD_AFTER_SECONDS = 45.0  # at least; never under 4.5 heartbeats (settings.cluster.instance_heartbeat_seconds)
GUEST_SWEEP_SECONDS = 3600.0  # idle guests are counted in days: hourly is plenty


async def housekeeping(core: Core, gateway: Gateway) -> None:
    """Heartbeat (re-registering after a registry reset, handlers/registry.py); forget
    crashed instances; close sockets whose token expired or was revoked."""
    interval = core.settings.cluster.instance_heartbeat_seconds
    dead_after = max(DEAD_AFTER_SECONDS, 4.5 * interval)

    async def one_pass() -> None:
        gone = await registry.heartbeat(core)
        async with core.db.connection() as conn:
            orphaned = await connections.reap_dead_instances(conn, dead_after)
            dead_sids = await connections.sids_with_dead_tokens(conn, core.instance_id)
        if gone or orphaned:  # waits for a settled registry: not in this loop
            core.spawn(presence.announce_offline(core, list({*gone, *orphaned})), name="presence-offline")
        await core.events.disconnect_sids(sid for sid in dead_sids if sid in gateway.sockets)

    await repeat(one_pass, every=interval, what="housekeeping")


async def guest_sweeper(core: Core) -> None:
    """Delete idle guests and old login failures, hourly (handlers/guests.py), after a
    random first delay so instances started together do not sweep in step."""
    await repeat(lambda: guests.sweep(core), every=GUEST_SWEEP_SECONDS, what="guest sweep",
                 first_delay=random.uniform(60.0, 300.0))
