"""Platform identities: (app, sub) → one Studyhall user, and used token ids (migration 0014)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

# Advisory-lock class for "one platform subject": two tokens seen for the first time at
# once must make one user, not two (storage/login_failures.py uses 0x5348).
LOCK_CLASS = 0x5349


@dataclass(frozen=True)
class IdentityRecord:
    app_id: UUID
    subject: str
    user_id: UUID
    email: str | None
    avatar_url: str | None
    courses: tuple[str, ...]
    # The user's current name and role (users table).
    name: str
    role: str
    # Set while the platform API has the user deactivated (users table, migration 0015):
    # carried here because every caller that finds an identity asks next.
    deactivated_at: datetime | None


async def lock_subject(conn: asyncpg.Connection, app_id: UUID, subject: str) -> None:
    """Serialise sign-ins of one (app, sub) until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, f"{app_id}:{subject}")


_SELECT = """SELECT i.app_id, i.subject, i.user_id, i.email, i.avatar_url, i.courses, u.name, u.role, u.deactivated_at
             FROM identities i JOIN users u ON u.id = i.user_id"""


def _record(row: asyncpg.Record | None) -> IdentityRecord | None:
    if row is None:
        return None
    return IdentityRecord(
        app_id=row["app_id"], subject=row["subject"], user_id=row["user_id"], email=row["email"],
        avatar_url=row["avatar_url"], courses=tuple(row["courses"]), name=row["name"], role=row["role"],
        deactivated_at=row["deactivated_at"],
    )


async def get(conn: asyncpg.Connection, app_id: UUID, subject: str) -> IdentityRecord | None:
    return _record(await conn.fetchrow(f"{_SELECT} WHERE i.app_id = $1 AND i.subject = $2", app_id, subject))


async def insert(
    conn: asyncpg.Connection, *, app_id: UUID, subject: str, user_id: UUID, email: str | None,
    avatar_url: str | None, courses: list[str],
) -> None:
    await conn.execute(
        """INSERT INTO identities (app_id, subject, user_id, email, avatar_url, courses)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        app_id, subject, user_id, email, avatar_url, courses,
    )


async def update_profile(
    conn: asyncpg.Connection, *, app_id: UUID, subject: str, email: str | None, avatar_url: str | None,
    courses: list[str],
) -> None:
    await conn.execute(
        """UPDATE identities SET email = $3, avatar_url = $4, courses = $5, updated_at = now()
           WHERE app_id = $1 AND subject = $2""",
        app_id, subject, email, avatar_url, courses,
    )


async def update_user(conn: asyncpg.Connection, user_id: UUID, *, name: str, role: str) -> None:
    """The platform's name and role for its user (identity users only: the platform is
    their source of truth, so each token may change them)."""
    await conn.execute("UPDATE users SET name = $2, role = $3 WHERE id = $1", user_id, name, role)


async def for_user(conn: asyncpg.Connection, user_id: UUID) -> IdentityRecord | None:
    """The identity a user was made from (None for users who sign in otherwise)."""
    return _record(await conn.fetchrow(f"{_SELECT} WHERE i.user_id = $1", user_id))


# Used token ids -------------------------------------------------------------------------

async def use_jti(conn: asyncpg.Connection, app_id: UUID, jti: str, expires_at: datetime) -> bool:
    """Record `jti` as used until `expires_at`; False when it was already used and its
    record has not expired (a replay). An expired record is taken over."""
    row = await conn.fetchrow(
        """INSERT INTO identity_jtis (app_id, jti, expires_at) VALUES ($1, $2, $3)
           ON CONFLICT (app_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
               WHERE identity_jtis.expires_at <= now()
           RETURNING 1""",
        app_id, jti, expires_at,
    )
    return row is not None


async def sweep_jtis(conn: asyncpg.Connection, limit: int = 10_000) -> int:
    """Delete up to `limit` expired token ids; returns how many."""
    result = await conn.execute(
        """DELETE FROM identity_jtis WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM identity_jtis WHERE expires_at <= now() LIMIT $1))""",
        limit,
    )
    return int(result.split()[-1])
