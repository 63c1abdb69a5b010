"""Users, sign-in tokens, and when each account was last active.

Failed logins live in storage/login_failures.py (per account and client address); the
old per-account columns users.failed_logins and users.locked_until are no longer used."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from storage.records import TokenUser, User

USER_COLUMNS = "id, email, name, role, password_hash, created_at, last_active_at"


async def insert_user(
    conn: asyncpg.Connection, *, email: str | None, name: str, role: str, password_hash: str | None
) -> User | None:
    """Insert a user; None when the email is taken."""
    row = await conn.fetchrow(
        f"""INSERT INTO users (email, name, role, password_hash) VALUES ($1, $2, $3, $4)
            ON CONFLICT DO NOTHING RETURNING {USER_COLUMNS}""",
        email, name, role, password_hash,
    )
    return User.from_row(row) if row else None


async def get_user(conn: asyncpg.Connection, user_id: UUID) -> User | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return User.from_row(row) if row else None


async def get_users(conn: asyncpg.Connection, user_ids: list[UUID]) -> list[User]:
    rows = await conn.fetch(f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1::uuid[])", user_ids)
    return [User.from_row(r) for r in rows]


async def visible_user(
    conn: asyncpg.Connection, viewer_id: UUID, target_id: UUID, *, public_roles: tuple[str, ...]
) -> User | None:
    """The target user if the viewer may see them: their role is public, they host a live
    session, or they share a conversation with the viewer. None otherwise, as for an id
    that is no user, so a caller can answer both the same way."""
    row = await conn.fetchrow(
        f"""SELECT {USER_COLUMNS} FROM users u WHERE u.id = $2 AND (
                u.role = ANY($3::text[])
                OR EXISTS (SELECT 1 FROM live_sessions s WHERE s.host_id = $2)
                OR EXISTS (SELECT 1 FROM conversation_members a
                           JOIN conversation_members b ON b.conversation_id = a.conversation_id
                           WHERE a.user_id = $1 AND b.user_id = $2))""",
        viewer_id, target_id, list(public_roles),
    )
    return User.from_row(row) if row else None


async def get_user_by_email(conn: asyncpg.Connection, email: str) -> User | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)", email)
    return User.from_row(row) if row else None


async def touch_active(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Mark the account active now (callers do it at most hourly: it is a write)."""
    await conn.execute("UPDATE users SET last_active_at = now() WHERE id = $1", user_id)


async def set_role(conn: asyncpg.Connection, user_id: UUID, role: str) -> User | None:
    row = await conn.fetchrow(f"UPDATE users SET role = $2 WHERE id = $1 RETURNING {USER_COLUMNS}", user_id, role)
    return User.from_row(row) if row else None


# Tokens ---------------------------------------------------------------------------------

async def insert_token(
    conn: asyncpg.Connection, user_id: UUID, token_hash: bytes, expires_at: datetime
) -> UUID:
    return await conn.fetchval(
        "INSERT INTO auth_tokens (user_id, token_hash, expires_at) VALUES ($1, $2, $3) RETURNING id",
        user_id, token_hash, expires_at,
    )


async def find_token_user(conn: asyncpg.Connection, token_hash: bytes) -> TokenUser | None:
    """The live token's user (None when unknown, expired or revoked), with the token id."""
    row = await conn.fetchrow(
        f"""SELECT t.id AS token_id, t.expires_at, {', '.join('u.' + c for c in USER_COLUMNS.split(', '))}
            FROM auth_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now()""",
        token_hash,
    )
    return TokenUser.from_row(row) if row else None


async def revoke_token(conn: asyncpg.Connection, token_id: UUID) -> None:
    await conn.execute("UPDATE auth_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)


async def revoke_user_tokens(conn: asyncpg.Connection, user_id: UUID) -> list[UUID]:
    """Revoke every live sign-in token of the user; returns their ids."""
    rows = await conn.fetch(
        "UPDATE auth_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id", user_id
    )
    return [r["id"] for r in rows]


async def live_token_ids(conn: asyncpg.Connection, user_id: UUID) -> list[UUID]:
    rows = await conn.fetch("SELECT id FROM auth_tokens WHERE user_id = $1 AND revoked_at IS NULL", user_id)
    return [r["id"] for r in rows]


async def live_token_roles(conn: asyncpg.Connection, token_ids: list[UUID]) -> dict[UUID, str]:
    """Of these tokens, the live ones (not revoked, not expired) with their user's role now."""
    rows = await conn.fetch(
        """SELECT t.id, u.role FROM auth_tokens t JOIN users u ON u.id = t.user_id
           WHERE t.id = ANY($1::uuid[]) AND t.revoked_at IS NULL AND t.expires_at > now()""",
        token_ids,
    )
    return {r["id"]: r["role"] for r in rows}
