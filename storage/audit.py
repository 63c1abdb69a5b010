"""The audit log: who did what to what, and when."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def record(
    conn: asyncpg.Connection,
    action: str,
    *,
    actor_id: UUID | None = None,
    target_type: str | None = None,
    target_id: str | UUID | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_log (action, actor_id, target_type, target_id, ip, details)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        action, actor_id, target_type, str(target_id) if target_id is not None else None, ip, details or {},
    )


async def list_entries(conn: asyncpg.Connection, *, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, at, actor_id, action, target_type, target_id, ip, details FROM audit_log
           WHERE ($1::text IS NULL OR action = $1) ORDER BY id DESC LIMIT $2""",
        action, limit,
    )
    return [dict(r) for r in rows]
