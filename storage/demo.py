"""The lock that lets `studyhall demo` run twice at once without making anything twice.

Accounts and documents are safe on their own (unique email, content hash), but the demo
room is found by host and title, then created: two runs at the same moment could both
miss it. One session-level advisory lock around the whole load serialises the runs."""

from __future__ import annotations

import asyncpg

DEMO_LOCK_ID = 0x5354_4445_4D4F_01  # "STDEMO" 1


async def lock(conn: asyncpg.Connection) -> None:
    """Wait for other demo loads to finish. Pooled connections are not reset on release
    (storage/db.py), so the caller must `unlock` before giving the connection back."""
    await conn.execute("SELECT pg_advisory_lock($1)", DEMO_LOCK_ID)


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", DEMO_LOCK_ID)
