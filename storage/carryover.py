"""Moving a guest's data to the identity user the platform says they became (handlers/identity/carryover.py).

Run inside the identity sign-in's transaction, so the move is all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from storage import users


@dataclass(frozen=True)
class Moved:
    memberships: int
    conversations: int
    messages: int
    tickets: int
    tokens_revoked: list[UUID]


async def lock_guest_by_token(conn: asyncpg.Connection, token_hash: bytes) -> UUID | None:
    """The guest whose live session token this is, its row locked until the transaction
    ends (so two sign-ins naming one guest carry it over once). None for a token that is
    unknown, expired, revoked, or not a guest's."""
    return await conn.fetchval(
        """SELECT u.id FROM auth_tokens t JOIN users u ON u.id = t.user_id
           WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now() AND u.role = 'guest'
           FOR UPDATE OF u""",
        token_hash,
    )


def _count(result: str) -> int:
    return int(result.split()[-1])


async def move(conn: asyncpg.Connection, guest_id: UUID, user_id: UUID) -> Moved:
    """Memberships (with their read markers), the tutor conversations the guest started,
    their messages, tickets and model usage move to `user_id`; the guest's tokens are revoked."""
    # A conversation both are members of keeps the user's row, with the higher read marker.
    await conn.execute(
        """UPDATE conversation_members m SET last_read_seq = GREATEST(m.last_read_seq, g.last_read_seq)
           FROM conversation_members g
           WHERE g.user_id = $1 AND m.user_id = $2 AND m.conversation_id = g.conversation_id""",
        guest_id, user_id,
    )
    await conn.execute(
        """DELETE FROM conversation_members g USING conversation_members m
           WHERE g.user_id = $1 AND m.user_id = $2 AND m.conversation_id = g.conversation_id""",
        guest_id, user_id,
    )
    memberships = _count(await conn.execute(
        "UPDATE conversation_members SET user_id = $2 WHERE user_id = $1", guest_id, user_id))
    conversations = _count(await conn.execute(
        "UPDATE conversations SET created_by = $2 WHERE created_by = $1", guest_id, user_id))
    # Only in the conversations the user is now a member of (messages has no sender index).
    messages = _count(await conn.execute(
        """UPDATE messages SET sender_id = $2
           WHERE sender_id = $1
             AND conversation_id IN (SELECT conversation_id FROM conversation_members WHERE user_id = $2)""",
        guest_id, user_id))
    tickets = _count(await conn.execute(
        "UPDATE tickets SET user_id = $2 WHERE user_id = $1", guest_id, user_id))
    await conn.execute("UPDATE tickets SET escalated_by = $2 WHERE escalated_by = $1", guest_id, user_id)
    await conn.execute("UPDATE llm_usage SET user_id = $2 WHERE user_id = $1", guest_id, user_id)
    return Moved(memberships, conversations, messages, tickets, await users.revoke_user_tokens(conn, guest_id))
