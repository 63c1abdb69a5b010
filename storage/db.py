"""The connection pool and transaction helper.

Codecs are registered once per connection so that jsonb columns take and return plain
dicts (through orjson) and vector columns take and return lists of floats.

Every connection handed out goes through one guard (`_guarded`): a failure that means the
server is unreachable (storage/availability.py) leaves as `DatabaseUnavailable` and is
counted by `outage`, whatever statement was running; anything else leaves unchanged. On
the first failure of an outage the pool's connections are all expired, so none that
looks open but leads to a dead or demoted server (a failover leaves half-open TCP
connections behind) is handed out again: asyncpg replaces each on its next acquire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import orjson
from pgvector.asyncpg import register_vector

from storage.availability import DatabaseUnavailable, Outage, is_connection_failure, quiet_pool_retries

# Defaults for Database.connect; the server passes its settings (db_*_timeout_seconds).
CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 60.0

# The message pipeline's connections (`connection(pipeline=True)`): the writer's and the
# look-up's batches, two in flight each (handlers/writer.py). They run two statements,
# again and again, each with arrays whose length PostgreSQL's plan cache cannot see: a
# generic plan is costed for ten elements, a custom plan for the real one or two, so under
# the default `plan_cache_mode` (auto) the custom plan always looks cheaper and every
# execution was planned again (0.36 ms of the 0.49 ms of statement time per message). On
# these connections only, plans are generic: planned once per connection. Their plans are
# index probes whatever the array's length (docs/performance.md: EXPLAIN at 10M messages);
# other statements keep the default, where a custom plan can matter.
PIPELINE_POOL_SIZE = 4
PIPELINE_PLAN_CACHE_MODE = "force_generic_plan"


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

    def __init__(
        self, pool: asyncpg.Pool, url: str, *, acquire_timeout: float = CONNECT_TIMEOUT_SECONDS,
        pipeline_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        self.pipeline_pool = pipeline_pool or pool
        self.url = url
        # Waiting longer than a connect for a free connection means the server is stuck.
        self.acquire_timeout = acquire_timeout
        self.outage = Outage()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
        pipeline_size: int = PIPELINE_POOL_SIZE,
        pipeline_plan_cache_mode: str | None = PIPELINE_PLAN_CACHE_MODE,
    ) -> Database:
        """`connect_timeout` bounds opening a connection and waiting for a pooled one (a
        frozen or unreachable server answers `unavailable` after it, not after a minute);
        `command_timeout` bounds each statement. The pipeline's pool opens its connections
        on first use (a command-line tool that sends no message opens none);
        `pipeline_plan_cache_mode=None` leaves PostgreSQL's default (the benchmark's "before")."""
        quiet_pool_retries()
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset,
            command_timeout=command_timeout, timeout=connect_timeout,
        )
        assert pool is not None
        settings = {"plan_cache_mode": pipeline_plan_cache_mode} if pipeline_plan_cache_mode else {}
        try:
            pipeline_pool = await asyncpg.create_pool(
                url, min_size=0, max_size=max(1, pipeline_size), init=_init_connection, reset=_no_reset,
                command_timeout=command_timeout, timeout=connect_timeout, server_settings=settings,
            )
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url, acquire_timeout=connect_timeout, pipeline_pool=pipeline_pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        async with self._guarded() as conn:
            async with conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self, *, pipeline: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A connection for single statements that need no transaction. `pipeline`: one of
        the message pipeline's own, with generic plans (PIPELINE_PLAN_CACHE_MODE)."""
        async with self._guarded(pipeline=pipeline) as conn:
            yield conn

    def _acquire(self, pipeline: bool = False) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return (self.pipeline_pool if pipeline else self.pool).acquire(timeout=self.acquire_timeout)

    @asynccontextmanager
    async def _guarded(self, *, pipeline: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """Acquire a connection; unreachable-server failures leave as DatabaseUnavailable.

        A failure counts as unreachable when its kind says so, or when the connection it
        happened on is closed afterwards (asyncpg then raises whatever its protocol state
        machine tripped on, e.g. InternalClientError "cannot switch to state")."""
        failure: BaseException | None = None
        try:
            async with self._acquire(pipeline) as conn:
                try:
                    yield conn
                except DatabaseUnavailable:
                    raise
                except Exception as exc:
                    if is_connection_failure(exc) or conn.is_closed():
                        failure = exc
                    raise
        except DatabaseUnavailable:
            raise  # counted where it was raised (a nested block)
        except Exception as exc:
            if failure is None and not is_connection_failure(exc):
                if isinstance(exc, asyncpg.PostgresError):
                    self.outage.succeeded()  # the server answered; the error is the query's
                raise
            await self._failed(failure or exc)
            raise DatabaseUnavailable(f"the database is unreachable: {type(exc).__name__}") from (failure or exc)
        self.outage.succeeded()

    async def _failed(self, exc: BaseException) -> None:
        if self.outage.failed(exc):
            await self.pool.expire_connections()
            if self.pipeline_pool is not self.pool:
                await self.pipeline_pool.expire_connections()

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                up = await conn.fetchval("SELECT 1", timeout=2) == 1
        except Exception as exc:
            if is_connection_failure(exc):
                await self._failed(exc)
            return False
        if up:
            self.outage.succeeded()
        return up

    def terminate(self) -> None:
        """Close every connection at once (shutdown, after `close` timed out)."""
        if self.pipeline_pool is not self.pool:
            self.pipeline_pool.terminate()
        self.pool.terminate()

    async def close(self) -> None:
        if self.pipeline_pool is not self.pool:
            await self.pipeline_pool.close()
        await self.pool.close()
