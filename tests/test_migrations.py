"""Migrations: applied once, a second run is a no-op, two instances at once are safe."""

from __future__ import annotations

import asyncio

import asyncpg

from storage.migrate import load_migrations, migrate


async def test_migrations_twice_and_concurrently(postgres) -> None:
    name = "mig_" + __import__("uuid").uuid4().hex[:10]
    conn = await asyncpg.connect(postgres.admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    url = postgres.url(name)
    try:
        results = await asyncio.gather(migrate(url), migrate(url), migrate(url))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in load_migrations()]  # each applied exactly once
        assert await migrate(url) == []
        c = await asyncpg.connect(url)
        assert await c.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        assert await c.fetchval("SELECT extname FROM pg_extension WHERE extname = 'vector'") == "vector"
        await c.close()
    finally:
        await postgres.drop_database(name)
