"""Failed logins per (account, client address), for lockout (see migration 0011)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class FailureCounts:
    """Failed logins inside the lockout window: from one address, and from everywhere."""

    from_address: int
    total: int


# Advisory-lock class for "one account's failure count": the two-int form keeps these apart
# from the migration lock (a single bigint).
LOCK_CLASS = 0x5348  # "SH"


async def lock_account(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Serialise counting for one account until the transaction ends, so parallel guesses
    cannot all read the same count and slip past the threshold together."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, str(user_id))


async def counts(conn: asyncpg.Connection, user_id: UUID, ip: str, window_minutes: int) -> FailureCounts:
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE ip = $2) AS from_address, count(*) AS total
           FROM login_failures WHERE user_id = $1 AND at > now() - make_interval(mins => $3)""",
        user_id, ip, window_minutes,
    )
    return FailureCounts(row["from_address"], row["total"])


async def record(conn: asyncpg.Connection, user_id: UUID, ip: str) -> None:
    await conn.execute("INSERT INTO login_failures (user_id, ip) VALUES ($1, $2)", user_id, ip)


async def clear(conn: asyncpg.Connection, user_id: UUID, ip: str) -> None:
    """A successful login forgets its own address's failures (not other addresses')."""
    await conn.execute("DELETE FROM login_failures WHERE user_id = $1 AND ip = $2", user_id, ip)


async def prune(conn: asyncpg.Connection, older_than_minutes: int) -> int:
    """Drop failures older than any window that reads them; returns how many."""
    result = await conn.execute(
        "DELETE FROM login_failures WHERE at < now() - make_interval(mins => $1)", older_than_minutes
    )
    return int(result.split()[-1])
