"""API keys of apps (migration 0015)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

COLUMNS = (
    "id, app_id, name, prefix, scopes, created_at, created_by, expires_at, revoked_at, last_used_at, replaced_by"
)


@dataclass(frozen=True)
class ApiKeyRecord:
    """One key's row, without its hash."""

    id: UUID
    app_id: UUID
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: UUID | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaced_by: UUID | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyRecord:
        return cls(
            id=row["id"], app_id=row["app_id"], name=row["name"], prefix=row["prefix"], scopes=tuple(row["scopes"]),
            created_at=row["created_at"], created_by=row["created_by"], expires_at=row["expires_at"],
            revoked_at=row["revoked_at"], last_used_at=row["last_used_at"], replaced_by=row["replaced_by"],
        )


@dataclass(frozen=True)
class KeyInUse:
    """A live key found by its hash, with its app's name and grantable roles."""

    key: ApiKeyRecord
    app_name: str
    app_roles: tuple[str, ...]


async def insert(
    conn: asyncpg.Connection, *, app_id: UUID, name: str, prefix: str, key_hash: bytes, scopes: list[str],
    created_by: UUID | None, expires_at: datetime | None = None,
) -> ApiKeyRecord:
    row = await conn.fetchrow(
        f"""INSERT INTO api_keys (app_id, name, prefix, key_hash, scopes, created_by, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}""",
        app_id, name, prefix, key_hash, scopes, created_by, expires_at,
    )
    return ApiKeyRecord.from_row(row)


async def get(conn: asyncpg.Connection, app_id: UUID, key_id: UUID, *, for_update: bool = False) -> ApiKeyRecord | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE app_id = $1 AND id = $2{lock}", app_id, key_id)
    return ApiKeyRecord.from_row(row) if row else None


async def list_for_app(conn: asyncpg.Connection, app_id: UUID) -> list[ApiKeyRecord]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM api_keys WHERE app_id = $1 ORDER BY created_at, id", app_id)
    return [ApiKeyRecord.from_row(r) for r in rows]


async def find_live(conn: asyncpg.Connection, key_hash: bytes) -> KeyInUse | None:
    """The key with this hash if it is neither revoked nor expired."""
    row = await conn.fetchrow(
        f"""SELECT {', '.join('k.' + c for c in COLUMNS.split(', '))}, a.name AS app_name, a.allowed_roles
            FROM api_keys k JOIN apps a ON a.id = k.app_id
            WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())""",
        key_hash,
    )
    if row is None:
        return None
    return KeyInUse(ApiKeyRecord.from_row(row), row["app_name"], tuple(row["allowed_roles"]))


async def revoke(conn: asyncpg.Connection, key_id: UUID) -> bool:
    result = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return result.endswith(" 1")


async def retire(conn: asyncpg.Connection, key_id: UUID, *, expires_at: datetime, replaced_by: UUID) -> None:
    """The rotated key lives until `expires_at` (never longer than it already would)."""
    await conn.execute(
        """UPDATE api_keys SET replaced_by = $3,
               expires_at = CASE WHEN expires_at IS NULL OR expires_at > $2 THEN $2 ELSE expires_at END
           WHERE id = $1""",
        key_id, expires_at, replaced_by,
    )


async def touch(conn: asyncpg.Connection, key_id: UUID, resolution_seconds: float) -> None:
    """Record a use, unless one was recorded less than `resolution_seconds` ago (by any
    instance): at most one write per key per resolution, however busy the key."""
    await conn.execute(
        """UPDATE api_keys SET last_used_at = now()
           WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))""",
        key_id, resolution_seconds,
    )
