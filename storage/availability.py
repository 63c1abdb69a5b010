"""Is the database reachable? Telling "the server is down" apart from "the query is wrong".

A PostgreSQL crash, restart or failover shows up as many different exceptions: a refused
or reset TCP connection (OSError), asyncpg's connection-class errors (SQLSTATE 08…), the
server's "shutting down" / "crash of another process" / "starting up" answers (57P01-03),
a pooled connection found closed, a pool acquire or command timing out while the server is
frozen. None of them says anything about the request: the same request succeeds once the
server is back. So they are one condition, `DatabaseUnavailable`, which clients see as the
protocol's `unavailable` (HTTP 503), while real query errors (a constraint, a typo in SQL)
stay bugs with their tracebacks.

`Outage` turns a stream of such failures into two log lines per outage: one when the first
failure arrives and one when a database call next succeeds (with how long it lasted and
how many calls failed), instead of one traceback per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg

log = logging.getLogger(__name__)

# Errors that mean the server (or the way to it) is gone, whatever the statement was.
_SERVER_GONE = (
    asyncpg.PostgresConnectionError,  # 08xxx, including ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in crash recovery
    asyncpg.AdminShutdownError,  # 57P01: fast shutdown, or failover terminating sessions
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, every session is ended
    asyncpg.TooManyConnectionsError,  # 53300: full; a restart storm fills it too
    # 25006 on a write: connected to a standby (a failover in progress, or a DNS name that
    # still points at the old primary). Studyhall never opens read-only transactions.
    asyncpg.ReadOnlySQLTransactionError,
)
# asyncpg's own words for a connection or pool that can no longer be used.
_CLOSED_WORDS = ("connection is closed", "connection was closed", "pool is closing", "pool is closed")


class DatabaseUnavailable(Exception):
    """The database could not be reached; retrying later may succeed. `__cause__` has the driver's error."""


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether the traceback runs through asyncpg: an OSError or timeout from the pool or a
    connection, not from an HTTP client or a file that happened to fail nearby."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) means the database is unreachable, not that the query failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DatabaseUnavailable, *_SERVER_GONE)):
            return True
        if isinstance(current, asyncpg.InterfaceError) and any(w in str(current) for w in _CLOSED_WORDS):
            return True
        # ConnectionError, refused/unreachable sockets, and TimeoutError (an OSError since 3.11:
        # pool acquire and command timeouts) — only when they came out of the driver.
        if isinstance(current, OSError) and _raised_by_driver(current):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class Outage:
    """The database's reachability as seen by this process's calls: logs each outage once."""

    name: str = "database"
    down_since: float | None = None  # time.time() of the first failure of the current outage
    failures: int = 0  # failed calls in the current outage
    outages_total: int = 0
    last_error: str = ""
    _started: float = field(default=0.0, repr=False)  # monotonic, for the duration

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> bool:
        """Count a failed call; returns True when it starts a new outage (logged here, once)."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.down_since is not None:
            return False
        self.down_since = time.time()
        self._started = time.monotonic()
        self.outages_total += 1
        log.warning(
            "%s unreachable: answering 'unavailable' until it is back (%s)", self.name, self.last_error,
            extra={"outage": self.outages_total},
        )
        return True

    def succeeded(self) -> None:
        """A call worked: if an outage was on, it is over (logged here, once)."""
        if self.down_since is None:
            return
        seconds = time.monotonic() - self._started
        log.warning(
            "%s reachable again after %.1f s (%d calls failed meanwhile)", self.name, seconds, self.failures,
            extra={"outage": self.outages_total, "failed_calls": self.failures, "seconds": round(seconds, 3)},
        )
        self.down_since = None
        self.failures = 0


class _PoolFloorRetryFilter(logging.Filter):
    """Drops asyncpg's "Failed to restore the pool connection floor; retrying" warnings: a
    traceback every 1, 2, 4 … 60 s per pool while the server is down, repeating what
    `Outage` already logged once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to restore the pool connection floor")


def quiet_pool_retries() -> None:
    """Install the filter on asyncpg's pool logger (once per process; idempotent)."""
    logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorRetryFilter) for f in logger.filters):
        logger.addFilter(_PoolFloorRetryFilter())
