"""Messages: the one insert path, history and gap recovery by seq."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

MSG_COLUMNS = "id, conversation_id, seq, sender_id, role, content, client_id, metadata, created_at, edited_at, deleted"

# One statement, one round trip: return the first message for a retried client_id, or
# take the next seq under the conversation's row lock and insert. Two concurrent retries
# of one client_id both miss `existing`; the unique index stops the second, and the caller
# runs the statement again to return the first.
_INSERT = f"""
WITH existing AS (
    SELECT {MSG_COLUMNS} FROM messages
    WHERE conversation_id = $1 AND sender_id = $2 AND client_id = $5
), bump AS (
    UPDATE conversations SET last_seq = last_seq + 1, updated_at = now()
    WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM existing) AND ($8::text IS NULL OR mode = $8)
    RETURNING last_seq
), ins AS (
    INSERT INTO messages (id, conversation_id, seq, sender_id, role, content, client_id, metadata)
    SELECT coalesce($7::uuid, gen_random_uuid()), $1, bump.last_seq, $2, $3, $4, $5, $6 FROM bump
    RETURNING {MSG_COLUMNS}
)
SELECT {MSG_COLUMNS}, false AS duplicate FROM ins
UNION ALL
SELECT {MSG_COLUMNS}, true AS duplicate FROM existing
"""


class ModeChanged(LookupError):
    """`require_mode` was given and the conversation is no longer in that mode."""


async def insert(
    conn: asyncpg.Connection,
    *,
    conversation_id: UUID,
    sender_id: UUID | None,
    role: str,
    content: str,
    client_id: str | None,
    metadata: dict[str, Any] | None = None,
    message_id: UUID | None = None,
    require_mode: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Commit-ready insert with the next seq; returns (message, duplicate).

    `message_id` gives the row a chosen id (the tutor streams deltas under an id picked
    before the answer exists). `require_mode` inserts only while the conversation is in
    that mode, checked in the same statement, else raises ModeChanged.
    """
    for attempt in range(2):
        try:
            row = await conn.fetchrow(
                _INSERT, conversation_id, sender_id, role, content, client_id, metadata or {}, message_id, require_mode
            )
        except asyncpg.UniqueViolationError:
            if attempt:
                raise
            continue
        if row is None:
            if require_mode is not None and await conn.fetchval("SELECT true FROM conversations WHERE id = $1", conversation_id):
                raise ModeChanged(f"conversation {conversation_id} is not in mode {require_mode}")
            raise LookupError(f"conversation {conversation_id} does not exist")
        message = dict(row)
        duplicate = message.pop("duplicate")
        return message, duplicate
    raise AssertionError("unreachable")


async def get(conn: asyncpg.Connection, message_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {MSG_COLUMNS} FROM messages WHERE id = $1", message_id)
    return dict(row) if row else None


async def edit(conn: asyncpg.Connection, message_id: UUID, content: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 AND NOT deleted RETURNING {MSG_COLUMNS}",
        message_id, content,
    )
    return dict(row) if row else None


async def soft_delete(conn: asyncpg.Connection, message_id: UUID) -> dict[str, Any] | None:
    """Keep the seq (clients must see no gap); drop the content."""
    row = await conn.fetchrow(
        f"""UPDATE messages SET content = '', metadata = '{{}}'::jsonb, deleted = true, edited_at = now()
            WHERE id = $1 RETURNING {MSG_COLUMNS}""",
        message_id,
    )
    return dict(row) if row else None


async def history(
    conn: asyncpg.Connection, conversation_id: UUID, *, before_seq: int | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` messages before `before_seq` (newest page first), in ascending seq."""
    rows = await conn.fetch(
        f"""SELECT {MSG_COLUMNS} FROM messages
            WHERE conversation_id = $1 AND ($2::bigint IS NULL OR seq < $2)
            ORDER BY seq DESC LIMIT $3""",
        conversation_id, before_seq, limit + 1,
    )
    has_more = len(rows) > limit
    return [dict(r) for r in reversed(rows[:limit])], has_more


async def since(conn: asyncpg.Connection, wanted: dict[UUID, int], *, limit: int) -> dict[UUID, tuple[list[dict[str, Any]], bool]]:
    """For each conversation, messages after the given seq (ascending, at most `limit`) and whether that is all."""
    if not wanted:
        return {}
    rows = await conn.fetch(
        f"""SELECT w.cid AS wanted_id, m.* FROM unnest($1::uuid[], $2::bigint[]) AS w(cid, after_seq)
            CROSS JOIN LATERAL (
                SELECT {MSG_COLUMNS} FROM messages
                WHERE conversation_id = w.cid AND seq > w.after_seq ORDER BY seq LIMIT $3
            ) m""",
        list(wanted.keys()), list(wanted.values()), limit + 1,
    )
    out: dict[UUID, list[dict[str, Any]]] = {cid: [] for cid in wanted}
    for r in rows:
        d = dict(r)
        out[d.pop("wanted_id")].append(d)
    return {cid: (msgs[:limit], len(msgs) <= limit) for cid, msgs in out.items()}


async def recent(conn: asyncpg.Connection, conversation_id: UUID, limit: int) -> list[dict[str, Any]]:
    msgs, _ = await history(conn, conversation_id, before_seq=None, limit=limit)
    return msgs
