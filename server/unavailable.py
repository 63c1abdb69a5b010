"""One mapping from "the database is unreachable" to the protocol's `unavailable`.

Used by the socket gateway (acks), the HTTP middleware (503) and the connection hooks, so a
crashed, restarting or failing-over PostgreSQL looks the same everywhere: clients get
`unavailable` and retry, the log gets one line when the outage starts and one when it
ends (storage/availability.py `Outage`), not a traceback per request.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from handlers.errors import ApiError
from server.metrics import Metrics
from storage.availability import Outage, is_connection_failure

MESSAGE = "The database is unreachable right now; try again in a moment."


def unavailable_error(exc: BaseException, outage: Outage | None) -> ApiError | None:
    """`unavailable` when `exc` means the database cannot be reached, else None (a real error).

    Failures that did not pass through `Database` (which counts its own) are counted here,
    so the outage is logged whichever way it was first seen."""
    if not is_connection_failure(exc):
        return None
    if outage is not None and not outage.down:
        outage.failed(exc)
    return ApiError("unavailable", MESSAGE)


class _OutageCollector:
    """Reads the tracker at scrape time (no second copy of the state to keep in step)."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage

    def collect(self) -> Iterator[Metric]:
        up = 0.0 if self.outage.down else 1.0
        yield GaugeMetricFamily("studyhall_database_up", "1 while database calls succeed, 0 during an outage", value=up)
        yield CounterMetricFamily(
            "studyhall_database_outages", "Database outages seen (connection-level failures)",
            value=self.outage.outages_total,
        )


def bind_metrics(metrics: Metrics, outage: Outage) -> None:
    """Expose `studyhall_database_up` and `studyhall_database_outages_total` on /metrics."""
    metrics.registry.register(_OutageCollector(outage))
