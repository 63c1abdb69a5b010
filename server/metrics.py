"""Prometheus metrics, one registry per app (no global state; tests run several apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


class CountedElsewhere(Collector):
    """A counter kept by a lower layer (a plain int on a `rag/` or `handlers/` object, which
    must not import the metrics), read at each scrape."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connections = Gauge("studyhall_socket_connections", "Open Socket.IO connections", registry=r)
        self.events = Counter("studyhall_socket_events_total", "Socket.IO events handled", ["event"], registry=r)
        self.event_errors = Counter("studyhall_errors_total", "Errors returned, by protocol code", ["code", "via"], registry=r)
        self.event_latency = Histogram(
            "studyhall_socket_event_seconds", "Socket.IO event handling time", ["event"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.http_latency = Histogram(
            "studyhall_http_request_seconds", "HTTP request latency", ["method", "route", "status"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.messages = Counter("studyhall_messages_total", "Messages committed", ["kind"], registry=r)
        self.fanout_degraded = Counter(
            "studyhall_fanout_degraded_total", "Times Redis fan-out was found down", registry=r
        )
        self.fanout_dropped = Counter(
            "studyhall_fanout_dropped_total", "Publishes to Redis dropped while it was down (clients resync)", registry=r
        )
        # What Redis costs this instance (server/redisbus.py, server/roomchannels.py): with room
        # channels, an instance with no socket in a conversation receives nothing for it.
        self.redis_received = Counter(
            "studyhall_redis_received_total", "Pub/sub messages received from Redis, by channel kind",
            ["channel"], registry=r,
        )
        self.redis_received_bytes = Counter(
            "studyhall_redis_received_bytes_total", "Pub/sub payload bytes received from Redis, by channel kind",
            ["channel"], registry=r,
        )
        self.redis_emits = Counter(
            "studyhall_redis_emits_total",
            "Events received from Redis: delivered to a local socket, ignored (none here), or own (this instance's echo)",
            ["outcome"], registry=r,
        )
        self.redis_probes_late = Counter(
            "studyhall_redis_probes_late_total",
            "Health probes this instance's listener did not hear within the timeout, short of counting it deaf "
            "(a busy instance or a slow link; not an outage)", registry=r,
        )
        self.redis_room_channels = Gauge(
            "studyhall_redis_room_channels", "Room channels this instance subscribes to", registry=r
        )
        self.socket_notices = Counter(
            "studyhall_socket_notices_total", "Revocation notices applied to this instance's sockets", ["action"], registry=r
        )

    def count_elsewhere(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        """Expose a counter another layer keeps (`name` without `_total`: added on output)."""
        self.registry.register(CountedElsewhere(name, documentation, read))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
