"""Which sockets are open on which instance: presence and revocation across instances."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def register_instance(conn: asyncpg.Connection, instance_id: UUID) -> None:
    await conn.execute(
        "INSERT INTO instances (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()", instance_id
    )


async def heartbeat(conn: asyncpg.Connection, instance_id: UUID) -> None:
    await register_instance(conn, instance_id)


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


async def add(conn: asyncpg.Connection, sid: str, instance_id: UUID, user_id: UUID, token_id: UUID) -> int:
    """Record a socket; returns how many sockets the user now has on all instances."""
    return await conn.fetchval(
        """WITH ins AS (INSERT INTO connections (sid, instance_id, user_id, token_id) VALUES ($1, $2, $3, $4))
           SELECT count(*) + 1 FROM connections WHERE user_id = $3""",
        sid, instance_id, user_id, token_id,
    )


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
