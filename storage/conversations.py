"""Conversations and their members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from storage.records import Conversation, ConversationAccess, ConversationMembership

CONV_COLUMNS = "c.id, c.kind, c.title, c.status, c.mode, c.context, c.created_by, c.last_seq, c.created_at"


async def presence_audience(conn: asyncpg.Connection, user_id: UUID) -> list[UUID]:
    """Users who should hear this user's presence: conversation partners (not live rooms) and followers."""
    rows = await conn.fetch(
        """SELECT m2.user_id FROM conversation_members m1
               JOIN conversations c ON c.id = m1.conversation_id AND c.kind <> 'room'
               JOIN conversation_members m2 ON m2.conversation_id = m1.conversation_id
           WHERE m1.user_id = $1 AND m2.user_id <> $1
           UNION
           SELECT user_id FROM favorites WHERE target_user_id = $1""",
        user_id,
    )
    return [r["user_id"] for r in rows]


async def insert_conversation(
    conn: asyncpg.Connection,
    *,
    kind: str,
    title: str | None,
    created_by: UUID | None,
    mode: str | None = None,
    context: dict[str, Any] | None = None,
    direct_key: str | None = None,
) -> Conversation | None:
    """Insert; None when a direct conversation for the same pair already exists."""
    row = await conn.fetchrow(
        """INSERT INTO conversations AS c (kind, title, created_by, mode, context, direct_key)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (direct_key) DO NOTHING
           RETURNING """ + CONV_COLUMNS,
        kind, title, created_by, mode, context or {}, direct_key,
    )
    return Conversation.from_row(row) if row else None


async def get_by_direct_key(conn: asyncpg.Connection, direct_key: str) -> Conversation | None:
    row = await conn.fetchrow(f"SELECT {CONV_COLUMNS} FROM conversations c WHERE c.direct_key = $1", direct_key)
    return Conversation.from_row(row) if row else None


async def get(conn: asyncpg.Connection, conversation_id: UUID, *, for_update: bool = False) -> Conversation | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {CONV_COLUMNS} FROM conversations c WHERE c.id = $1{lock}", conversation_id)
    return Conversation.from_row(row) if row else None


async def get_with_membership(conn: asyncpg.Connection, conversation_id: UUID, user_id: UUID | None) -> ConversationMembership | None:
    """The conversation plus `is_member`, `member_role` and `last_read_seq` for one user,
    and `member_ids` (empty for live rooms, whose audience is whoever joined): one round
    trip for everything a send needs before its insert."""
    (found,) = await get_many_with_membership(conn, [(conversation_id, user_id)])
    return found


async def get_many_with_membership(
    conn: asyncpg.Connection, keys: Sequence[tuple[UUID, UUID | None]]
) -> list[ConversationMembership | None]:
    """`get_with_membership` for several (conversation, user) pairs in one query; None
    where the conversation does not exist. A live room's conversation comes with its
    session's state and the user's place in it (`ConversationMembership.room`): a room
    send then costs one look-up, not two (issue 16)."""
    rows = await conn.fetch(
        f"""SELECT k.idx, {CONV_COLUMNS},
                   m.user_id IS NOT NULL AS is_member, m.member_role,
                   coalesce(m.last_read_seq, 0) AS last_read_seq,
                   CASE WHEN c.kind = 'room' THEN ARRAY[]::uuid[] ELSE
                       ARRAY(SELECT user_id FROM conversation_members WHERE conversation_id = c.id) END AS member_ids,
                   s.id AS room_id, s.status AS room_status, s.host_id AS room_host_id,
                   p.user_id IS NOT NULL AND p.left_at IS NULL AS room_present,
                   coalesce(p.banned, false) AS room_banned, coalesce(p.muted, false) AS room_muted
            FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS k(conversation_id, user_id, idx)
            JOIN conversations c ON c.id = k.conversation_id
            LEFT JOIN conversation_members m ON m.conversation_id = c.id AND m.user_id = k.user_id
            LEFT JOIN live_sessions s ON c.kind = 'room' AND s.conversation_id = c.id
            LEFT JOIN room_participants p ON p.live_session_id = s.id AND p.user_id = k.user_id""",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    found: list[ConversationMembership | None] = [None] * len(keys)
    for row in rows:
        found[row["idx"] - 1] = ConversationMembership.from_row(row)
    return found


async def add_members(conn: asyncpg.Connection, conversation_id: UUID, user_ids: list[UUID], member_role: str = "member") -> list[UUID]:
    """Add members (existing ones untouched); returns who was newly added."""
    rows = await conn.fetch(
        """INSERT INTO conversation_members (conversation_id, user_id, member_role, last_read_seq)
           SELECT $1, u, $3, (SELECT last_seq FROM conversations WHERE id = $1) FROM unnest($2::uuid[]) AS u
           ON CONFLICT DO NOTHING RETURNING user_id""",
        conversation_id, user_ids, member_role,
    )
    return [r["user_id"] for r in rows]


async def remove_member(conn: asyncpg.Connection, conversation_id: UUID, user_id: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2", conversation_id, user_id
    )
    return status.endswith(" 1")


async def member_ids(conn: asyncpg.Connection, conversation_id: UUID) -> list[UUID]:
    rows = await conn.fetch("SELECT user_id FROM conversation_members WHERE conversation_id = $1", conversation_id)
    return [r["user_id"] for r in rows]


async def members(conn: asyncpg.Connection, conversation_ids: list[UUID]) -> dict[UUID, list[dict[str, Any]]]:
    """Members of several conversations as protocol user objects, keyed by conversation."""
    rows = await conn.fetch(
        """SELECT m.conversation_id, u.id, u.name, u.role FROM conversation_members m
           JOIN users u ON u.id = m.user_id WHERE m.conversation_id = ANY($1::uuid[])
           ORDER BY m.joined_at, u.id""",
        conversation_ids,
    )
    out: dict[UUID, list[dict[str, Any]]] = {cid: [] for cid in conversation_ids}
    for r in rows:
        out[r["conversation_id"]].append({"id": r["id"], "name": r["name"], "role": r["role"]})
    return out


async def list_for_user(conn: asyncpg.Connection, user_id: UUID, *, limit: int = 200) -> list[tuple[Conversation, int]]:
    """The user's conversations, most recently active first, each with its unread count."""
    rows = await conn.fetch(
        f"""SELECT {CONV_COLUMNS},
                   (SELECT count(*) FROM messages msg
                     WHERE msg.conversation_id = c.id AND msg.seq > m.last_read_seq
                       AND msg.deleted = false AND msg.sender_id IS DISTINCT FROM $1) AS unread
            FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
            WHERE m.user_id = $1 AND c.kind <> 'room'
            ORDER BY c.updated_at DESC LIMIT $2""",
        user_id, limit,
    )
    return [(Conversation.from_row(r), r["unread"]) for r in rows]


async def unread_count(conn: asyncpg.Connection, conversation_id: UUID, user_id: UUID) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM messages msg JOIN conversation_members m
               ON m.conversation_id = msg.conversation_id AND m.user_id = $2
           WHERE msg.conversation_id = $1 AND msg.seq > m.last_read_seq
             AND msg.deleted = false AND msg.sender_id IS DISTINCT FROM $2""",
        conversation_id, user_id,
    )


async def set_read(conn: asyncpg.Connection, conversation_id: UUID, user_id: UUID, seq: int) -> int | None:
    """Move the read marker forward only (never back); returns the marker, None if not a member."""
    return await conn.fetchval(
        """UPDATE conversation_members SET last_read_seq = GREATEST(last_read_seq,
               LEAST($3, (SELECT last_seq FROM conversations WHERE id = $1)))
           WHERE conversation_id = $1 AND user_id = $2 RETURNING last_read_seq""",
        conversation_id, user_id, seq,
    )


async def set_mode(conn: asyncpg.Connection, conversation_id: UUID, mode: str) -> Conversation | None:
    row = await conn.fetchrow(
        f"UPDATE conversations c SET mode = $2, updated_at = now() WHERE id = $1 RETURNING {CONV_COLUMNS}",
        conversation_id, mode,
    )
    return Conversation.from_row(row) if row else None


async def set_status(conn: asyncpg.Connection, conversation_id: UUID, status: str) -> Conversation | None:
    row = await conn.fetchrow(
        f"UPDATE conversations c SET status = $2, updated_at = now() WHERE id = $1 RETURNING {CONV_COLUMNS}",
        conversation_id, status,
    )
    return Conversation.from_row(row) if row else None


async def access_rows(conn: asyncpg.Connection, user_id: UUID, conversation_ids: list[UUID]) -> list[ConversationAccess]:
    """For each existing conversation among these, what an access check needs. One lean query: the full
    rows with member lists (`get_many_with_membership`) took 21-27 ms for 500 groups of 50
    where this takes 2-4 ms."""
    rows = await conn.fetch(
        """SELECT c.id, c.kind, c.status, m.user_id IS NOT NULL AS is_member, m.member_role
           FROM conversations c LEFT JOIN conversation_members m ON m.conversation_id = c.id AND m.user_id = $1
           WHERE c.id = ANY($2::uuid[])""",
        user_id, conversation_ids,
    )
    return [ConversationAccess.from_row(r) for r in rows]


async def group_ids_of_users(conn: asyncpg.Connection, user_ids: Sequence[UUID]) -> dict[UUID, list[UUID]]:
    """The group conversations each of these users is a member of (their sockets belong in
    those groups' rooms, handlers/grouprooms.py); a user in none is left out."""
    rows = await conn.fetch(
        """SELECT m.user_id, m.conversation_id FROM conversation_members m
           JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'group'
           WHERE m.user_id = ANY($1::uuid[])""",
        list(user_ids),
    )
    out: dict[UUID, list[UUID]] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append(r["conversation_id"])
    return out
