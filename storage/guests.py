"""Idle guest accounts and their data: found and deleted in batches (see handlers/guests.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class DeletedGuests:
    users: int
    conversations: int
    room_messages: int


async def lock_idle_batch(conn: asyncpg.Connection, idle_before: datetime, limit: int) -> list[UUID]:
    """Lock up to `limit` guests idle since `idle_before`, skipping rows another instance holds.

    Left alone: guests with an open socket, and guests with a ticket that is still open or
    assigned, or that changed after `idle_before` (an agent is, or was lately, on it)."""
    rows = await conn.fetch(
        """SELECT u.id FROM users u
           WHERE u.role = 'guest' AND u.last_active_at < $1
             AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.user_id = u.id)
             AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.user_id = u.id
                             AND (t.status IN ('open', 'assigned') OR t.updated_at >= $1))
           ORDER BY u.last_active_at
           LIMIT $2
           FOR UPDATE OF u SKIP LOCKED""",
        idle_before, limit,
    )
    return [r["id"] for r in rows]


async def delete(conn: asyncpg.Connection, guest_ids: list[UUID]) -> DeletedGuests:
    """Delete guests (locked by `lock_idle_batch` in this transaction) and their data.

    Their tutor conversations go with everything in them (messages, decisions, and the
    tickets, which are closed or resolved by now). What they wrote in live-room chats,
    which belong to the room, is blanked like a deleted message, so seqs stay gap-free.
    Deleting the user cascades to tokens, memberships, favorites, room seats and login
    failures; audit rows and model usage keep their rows with the user id set to NULL."""
    conversations = await conn.fetchval(
        """WITH gone AS (DELETE FROM conversations
                         WHERE kind = 'tutor' AND created_by = ANY($1::uuid[]) RETURNING 1)
           SELECT count(*) FROM gone""",
        guest_ids,
    )
    room_messages = await conn.fetchval(
        """WITH rooms AS (SELECT DISTINCT s.conversation_id FROM room_participants p
                          JOIN live_sessions s ON s.id = p.live_session_id
                          WHERE p.user_id = ANY($1::uuid[])),
                blanked AS (UPDATE messages m
                            SET content = '', metadata = '{}'::jsonb, deleted = true, edited_at = now()
                            FROM rooms WHERE m.conversation_id = rooms.conversation_id
                              AND m.sender_id = ANY($1::uuid[]) AND NOT m.deleted
                            RETURNING 1)
           SELECT count(*) FROM blanked""",
        guest_ids,
    )
    result = await conn.execute("DELETE FROM users WHERE id = ANY($1::uuid[]) AND role = 'guest'", guest_ids)
    return DeletedGuests(int(result.split()[-1]), conversations, room_messages)
