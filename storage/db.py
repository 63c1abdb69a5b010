"""The connection pool and transaction helper.

Codecs are registered once per connection so that jsonb columns take and return plain
dicts (through orjson) and vector columns take and return lists of floats.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from pgvector.asyncpg import register_vector


def _json_dumps(value: object) -> str:
    # default=str: UUIDs from asyncpg (its own subclass) and other scalars stored as text.
    return orjson.dumps(value, default=str).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")
    try:
        await register_vector(conn)
    except (ValueError, asyncpg.UndefinedObjectError):
        # Before the first migration the extension may not exist yet.
        pass


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (RESET ALL, UNLISTEN, unlock all: one round trip
    per acquire, ~9% of a send's server time). Pooled connections carry no session state
    in Studyhall: advisory locks are transaction-scoped (pg_advisory_xact_lock) or held on
    a connection of their own, never returned to the pool while held."""


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 20) -> "Database":
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset, command_timeout=60
        )
        assert pool is not None
        return cls(pool, url)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for single statements that need no transaction."""
        async with self.pool.acquire() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                return await conn.fetchval("SELECT 1", timeout=2) == 1
        except Exception:
            return False

    async def close(self) -> None:
        await self.pool.close()
