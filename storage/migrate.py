"""Numbered SQL migrations, applied in order under an advisory lock.

Files are `storage/migrations/NNNN_name.sql`; each is applied in its own transaction and
recorded in `schema_migrations`. The advisory lock makes two instances starting at once
safe: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant: "studyhall" in ASCII, folded into a bigint.
ADVISORY_LOCK_ID = 0x5354_5544_5948_4C

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class PgvectorMissing(RuntimeError):
    """The server has no pgvector extension available."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise RuntimeError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {directory}")
    return found


async def check_pgvector(conn: asyncpg.Connection) -> None:
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
    if not available:
        raise PgvectorMissing(
            "This PostgreSQL server has no pgvector extension. Studyhall stores embeddings with "
            "pgvector: install it on the server (https://github.com/pgvector/pgvector), or unset "
            "DATABASE_URL to use the embedded PostgreSQL, which includes it."
        )


async def migrate(url: str) -> list[int]:
    """Apply every pending migration; returns the versions applied (empty when up to date)."""
    conn = await asyncpg.connect(url)
    applied_now: list[int] = []
    try:
        await check_pgvector(conn)
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for mig in load_migrations():
                if mig.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", mig.version, mig.name
                    )
                applied_now.append(mig.version)
                log.info("migration applied", extra={"version": mig.version, "migration": mig.name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await conn.close()
    return applied_now
