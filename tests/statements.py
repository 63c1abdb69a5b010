"""Counting the SQL statements a handler sends, to pin query counts (no N+1).

The handler runs on a copy of a live server's Core whose database is a pool of exactly one
real connection to the same PostgreSQL, with asyncpg's query logger on it: every statement
the handler sends (BEGIN and COMMIT included) is recorded, and nothing else shares that
connection (the server's own loops use its own pool). Nothing is replaced but the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from handlers.core import Core
from storage.db import Database


@dataclasses.dataclass
class Statements:
    """The statements sent so far, in order."""

    sent: list[str] = dataclasses.field(default_factory=list)

    async def settled(self) -> list[str]:
        """The statements, once the logger's callbacks (scheduled with call_soon) have run."""
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return list(self.sent)

    def clear(self) -> None:
        self.sent.clear()


@asynccontextmanager
async def counting_core(core: Core) -> AsyncIterator[tuple[Core, Statements]]:
    db = await Database.connect(core.db.url, min_size=1, max_size=1, pipeline_size=1)
    statements = Statements()
    try:
        async with db.connection() as conn:
            conn.add_query_logger(lambda record: statements.sent.append(record.query))
        yield dataclasses.replace(core, db=db), statements
    finally:
        await db.close()
