"""The webhooks feature's settings section (`Settings.webhooks`), filled in by handlers/settings.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebhookSettings:
    """Webhooks to platforms (handlers/webhooks/, docs/webhooks.md)."""

    # Targets on private, loopback, link-local, unspecified or multicast addresses are
    # refused unless this is set (tests; a receiver on the same private network).
    allow_private_targets: bool = False
    # Seconds to wait before each retry; after the last one fails the endpoint is disabled.
    # Each delay gets up to ±20 % jitter. Default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27.6 h).
    retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    # One attempt: connect plus answer.
    timeout_seconds: float = 10.0
    # A claimed delivery is retaken by any instance after this (its claimer died); keep it
    # well above timeout_seconds.
    lease_seconds: float = 60.0
    # Deliveries sent at once per instance.
    concurrency: int = 32
    # Poll for due deliveries this often besides LISTEN/NOTIFY (retries fall due by time).
    poll_seconds: float = 1.0
    # While deliveries flow the loop is awake and looks for new ones this often instead of
    # being woken by a NOTIFY per committed batch (docs/webhooks.md#waking-the-delivery-loops).
    busy_poll_seconds: float = 0.01
    # Awake this long after the last claim that found deliveries; then the loop announces
    # it is asleep and new deliveries NOTIFY it again.
    idle_seconds: float = 0.5
    # Reload which events anyone subscribes to this often besides the change notifications.
    subscriptions_refresh_seconds: float = 30.0
    # Keep-alive connections to one endpoint at most (each of `concurrency` in all).
    connections_per_endpoint: int = 8
    # Keep a host name's checked addresses this long (0: resolve at every new connection).
    dns_cache_seconds: float = 10.0
    # While the message pipeline is saturated, deliveries per second per instance (the floor
    # the outbox still drains at); full speed again once it is not (handlers/webhooks/pacing.py).
    # 50: about 2 % of a saturated instance's acked messages per second on the 2-core bench
    # machine, where 200 measurably slowed it (docs/performance.md#ninth-session-one-outbox-row-per-batch).
    saturated_rate: float = 50.0
    # The pipeline counts as saturated while its writer's batches average at least this
    # many messages over a quarter second (messages queue behind the commits).
    saturated_batch_size: float = 8.0
