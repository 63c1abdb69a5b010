"""What the platform API needs of an app's users and their conversations (migration 0015):
deactivation, and which conversations an app may reach (those with one of its users)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from storage.conversations import CONV_COLUMNS
from storage.records import Conversation


async def set_deactivated(conn: asyncpg.Connection, user_id: UUID, deactivated: bool) -> None:
    await conn.execute(
        "UPDATE users SET deactivated_at = CASE WHEN $2 THEN coalesce(deactivated_at, now()) END WHERE id = $1",
        user_id, deactivated,
    )


async def app_conversations(
    conn: asyncpg.Connection, app_id: UUID, *, subject: str | None, limit: int
) -> list[Conversation]:
    """Conversations with a member who is one of the app's users (or the one `subject`),
    most recently active first: whole records, so a page is described with one more query
    for all its members (`conversations.members`), not two per conversation."""
    rows = await conn.fetch(
        f"""SELECT {CONV_COLUMNS} FROM conversations c
           WHERE EXISTS (SELECT 1 FROM conversation_members m JOIN identities i ON i.user_id = m.user_id
                         WHERE m.conversation_id = c.id AND i.app_id = $1 AND ($2::text IS NULL OR i.subject = $2))
           ORDER BY c.updated_at DESC, c.id LIMIT $3""",
        app_id, subject, limit,
    )
    return [Conversation.from_row(r) for r in rows]


async def conversation_has_app_member(conn: asyncpg.Connection, app_id: UUID, conversation_id: UUID) -> bool:
    """True when one of the conversation's members is one of the app's users: the
    conversations an app may read and post to."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM conversation_members m JOIN identities i ON i.user_id = m.user_id
                          WHERE m.conversation_id = $2 AND i.app_id = $1)""",
        app_id, conversation_id,
    ))
