"""Apps: the platforms that embed Studyhall and sign identity tokens (migration 0014)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

COLUMNS = (
    "id, name, created_at, created_by, algorithms, hmac_secrets, public_key_pem, jwks_url, issuer, audience, "
    "allowed_roles, allowed_origins, require_identity"
)


@dataclass(frozen=True)
class AppRecord:
    """One app's row. `hmac_secrets` never leaves the server after creation."""

    id: UUID
    name: str
    created_at: datetime
    created_by: UUID | None
    algorithms: tuple[str, ...]
    hmac_secrets: tuple[str, ...]
    public_key_pem: str | None
    jwks_url: str | None
    issuer: str
    audience: str
    allowed_roles: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    require_identity: bool

    @classmethod
    def from_row(cls, row: Any) -> AppRecord:
        return cls(
            id=row["id"], name=row["name"], created_at=row["created_at"], created_by=row["created_by"],
            algorithms=tuple(row["algorithms"]), hmac_secrets=tuple(row["hmac_secrets"]),
            public_key_pem=row["public_key_pem"], jwks_url=row["jwks_url"], issuer=row["issuer"],
            audience=row["audience"], allowed_roles=tuple(row["allowed_roles"]),
            allowed_origins=tuple(row["allowed_origins"]), require_identity=row["require_identity"],
        )


@dataclass(frozen=True)
class NewApp:
    name: str
    algorithms: tuple[str, ...]
    hmac_secrets: tuple[str, ...]
    public_key_pem: str | None
    jwks_url: str | None
    issuer: str
    audience: str
    allowed_roles: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    require_identity: bool
    created_by: UUID | None = None


async def insert(conn: asyncpg.Connection, app: NewApp) -> AppRecord | None:
    """Insert an app; None when another app already has its issuer."""
    row = await conn.fetchrow(
        f"""INSERT INTO apps (name, created_by, algorithms, hmac_secrets, public_key_pem, jwks_url, issuer,
                              audience, allowed_roles, allowed_origins, require_identity)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (issuer) DO NOTHING RETURNING {COLUMNS}""",
        app.name, app.created_by, list(app.algorithms), list(app.hmac_secrets), app.public_key_pem, app.jwks_url,
        app.issuer, app.audience, list(app.allowed_roles), list(app.allowed_origins), app.require_identity,
    )
    return AppRecord.from_row(row) if row else None


async def get(conn: asyncpg.Connection, app_id: UUID) -> AppRecord | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM apps WHERE id = $1", app_id)
    return AppRecord.from_row(row) if row else None


async def by_issuer(conn: asyncpg.Connection, issuer: str) -> AppRecord | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM apps WHERE issuer = $1", issuer)
    return AppRecord.from_row(row) if row else None


async def list_all(conn: asyncpg.Connection) -> list[AppRecord]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM apps ORDER BY created_at, id")
    return [AppRecord.from_row(r) for r in rows]


async def by_origin(conn: asyncpg.Connection, origin: str) -> list[AppRecord]:
    """The apps whose allowed origins list `origin` (lower-case scheme://host[:port])."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM apps WHERE $1 = ANY(SELECT lower(o) FROM unnest(allowed_origins) o) ORDER BY created_at",
        origin,
    )
    return [AppRecord.from_row(r) for r in rows]
