"""Which sockets are open on which instance: presence and revocation across instances.

`instances` and `connections` are UNLOGGED: a crash (or a failover to a replica) empties
them while the instances and their sockets live on. Each instance keeps the truth in
memory and re-asserts it (handlers/registry.py); `registry_resets` (LOGGED) records when
the registry was last found emptied, so nobody judges people gone meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

# Registering an instance row where one was expected (a socket arrived, or a heartbeat ran,
# and the row was gone) is how a reset is noticed: the notice is written in the same
# statement as the new row, so no instance can see the new row without the notice.
_NOTE_RESET = """INSERT INTO registry_resets (id, reset_at) VALUES (true, now())
                 ON CONFLICT (id) DO UPDATE SET reset_at = greatest(registry_resets.reset_at, now())"""


@dataclass(frozen=True)
class SocketRow:
    """One open socket as an instance knows it in memory."""

    sid: str
    user_id: UUID
    token_id: UUID


@dataclass(frozen=True)
class RegistryState:
    """What an instance needs before judging anyone gone."""

    registered: bool  # this instance's row exists (False: the registry was reset under it)
    settle_left: float  # seconds until the last reset is old enough to trust the registry


async def register_instance(conn: asyncpg.Connection, instance_id: UUID) -> None:
    await conn.execute(
        "INSERT INTO instances (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()", instance_id
    )


async def heartbeat(conn: asyncpg.Connection, instance_id: UUID) -> int | None:
    """Refresh the instance's row; returns how many sockets it has registered, or None
    when the row is gone (the registry was reset, or the instance was reaped as dead)."""
    return await conn.fetchval(
        """UPDATE instances SET heartbeat_at = now() WHERE id = $1
           RETURNING (SELECT count(*) FROM connections WHERE instance_id = $1)""",
        instance_id,
    )


async def reregister(conn: asyncpg.Connection, instance_id: UUID) -> None:
    """Re-create the row of an instance found missing, and note the reset (in a transaction)."""
    await register_instance(conn, instance_id)
    await conn.execute(_NOTE_RESET)


async def registry_state(conn: asyncpg.Connection, instance_id: UUID, settle_seconds: float) -> RegistryState:
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM instances WHERE id = $1) AS registered,
                  coalesce((SELECT extract(epoch FROM reset_at + make_interval(secs => $2) - now())::float8
                            FROM registry_resets), 0) AS settle_left""",
        instance_id, settle_seconds,
    )
    return RegistryState(bool(row["registered"]), max(0.0, float(row["settle_left"])))


async def sync_instance(conn: asyncpg.Connection, instance_id: UUID, sockets: list[SocketRow]) -> list[UUID]:
    """Make the instance's rows match its open sockets: add the missing ones (sockets of
    users deleted meanwhile are skipped), drop the ones it no longer has (their disconnect
    could not be recorded, e.g. during an outage). Returns the users of dropped rows."""
    sids = [s.sid for s in sockets]
    dropped = await conn.fetch(
        "DELETE FROM connections WHERE instance_id = $1 AND NOT (sid = ANY($2::text[])) RETURNING user_id",
        instance_id, sids,
    )
    await conn.execute(
        """INSERT INTO connections (sid, instance_id, user_id, token_id)
           SELECT s.sid, $1, s.user_id, s.token_id
           FROM unnest($2::text[], $3::uuid[], $4::uuid[]) AS s(sid, user_id, token_id)
           JOIN users u ON u.id = s.user_id
           ON CONFLICT (sid) DO NOTHING""",
        instance_id, sids, [s.user_id for s in sockets], [s.token_id for s in sockets],
    )
    return list({r["user_id"] for r in dropped})


async def remove_instance(conn: asyncpg.Connection, instance_id: UUID) -> list[UUID]:
    """Drop an instance and its sockets; returns the users who had sockets there."""
    rows = await conn.fetch("DELETE FROM connections WHERE instance_id = $1 RETURNING user_id", instance_id)
    await conn.execute("DELETE FROM instances WHERE id = $1", instance_id)
    return list({r["user_id"] for r in rows})


async def reap_dead_instances(conn: asyncpg.Connection, older_than_seconds: float) -> list[UUID]:
    """Forget instances that stopped heart-beating (crashed); returns their users."""
    rows = await conn.fetch(
        """WITH dead AS (DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING id)
           DELETE FROM connections WHERE instance_id IN (SELECT id FROM dead) RETURNING user_id""",
        older_than_seconds,
    )
    return list({r["user_id"] for r in rows})


async def add(conn: asyncpg.Connection, sid: str, instance_id: UUID, user_id: UUID, token_id: UUID) -> tuple[int, bool]:
    """Record a socket; returns how many sockets the user now has on all instances, and
    whether the instance row had to be re-created (the registry was reset: a crash or a
    failover; the reset is noted in the same statement)."""
    row = await conn.fetchrow(
        """WITH inst AS (INSERT INTO instances (id) VALUES ($2) ON CONFLICT (id) DO NOTHING RETURNING id),
                noted AS (INSERT INTO registry_resets (id, reset_at) SELECT true, now() FROM inst
                          ON CONFLICT (id) DO UPDATE SET reset_at = greatest(registry_resets.reset_at, now())),
                ins AS (INSERT INTO connections (sid, instance_id, user_id, token_id) VALUES ($1, $2, $3, $4)
                        ON CONFLICT (sid) DO NOTHING RETURNING 1)
           SELECT (SELECT count(*) FROM connections WHERE user_id = $3) + (SELECT count(*) FROM ins) AS sockets,
                  EXISTS (SELECT 1 FROM inst) AS recreated""",
        sid, instance_id, user_id, token_id,
    )
    return int(row["sockets"]), bool(row["recreated"])


async def set_token(conn: asyncpg.Connection, sid: str, token_id: UUID) -> None:
    """The socket now runs on another sign-in token (a refreshed session, `auth:refresh`):
    revoking that token must find it, and the old token's expiry must not."""
    await conn.execute("UPDATE connections SET token_id = $2 WHERE sid = $1", sid, token_id)


async def remove(conn: asyncpg.Connection, sid: str) -> None:
    await conn.execute("DELETE FROM connections WHERE sid = $1", sid)


async def count_for_user(conn: asyncpg.Connection, user_id: UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM connections WHERE user_id = $1", user_id)


async def online_users(conn: asyncpg.Connection, user_ids: list[UUID]) -> set[UUID]:
    rows = await conn.fetch("SELECT DISTINCT user_id FROM connections WHERE user_id = ANY($1::uuid[])", user_ids)
    return {r["user_id"] for r in rows}


async def sids_for_token(conn: asyncpg.Connection, token_ids: list[UUID]) -> list[str]:
    rows = await conn.fetch("SELECT sid FROM connections WHERE token_id = ANY($1::uuid[])", token_ids)
    return [r["sid"] for r in rows]


async def sids_with_dead_tokens(conn: asyncpg.Connection, instance_id: UUID) -> list[str]:
    """Sockets on this instance whose token has since expired or been revoked."""
    rows = await conn.fetch(
        """SELECT c.sid FROM connections c JOIN auth_tokens t ON t.id = c.token_id
           WHERE c.instance_id = $1 AND (t.revoked_at IS NOT NULL OR t.expires_at <= now())""",
        instance_id,
    )
    return [r["sid"] for r in rows]


async def sids_for_user(conn: asyncpg.Connection, user_id: UUID) -> list[str]:
    rows = await conn.fetch("SELECT sid FROM connections WHERE user_id = $1", user_id)
    return [r["sid"] for r in rows]
