"""Rate limits that hold across instances: the `limits` library (sliding-window counters).

With REDIS_URL the counters live in Redis, so a limit is one limit for the whole
deployment, whichever instance a request reaches. Without Redis they live in this
process's memory. Redis is never allowed to hold a request up or to refuse one by
failing: each call to Redis has a short timeout, and while Redis is unreachable the
counters fall back to this instance's memory (a per-instance limit, logged once per
outage), so abuse is still bounded and nobody is refused because a counter is down.

Use: `await core_limiter.hit(rule, key...)` raises `ApiError("rate_limited",
retry_after_ms=...)` when the caller is over the rule; `core_limiter.hit_ok(...)` returns
the wait instead of raising, for callers that answer in their own way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from handlers.errors import ApiError
from handlers.settings import is_cluster_url

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.25
REDIS_RETRY_AFTER_SECONDS = 5.0  # after a Redis failure, stay on memory this long before trying again


@dataclass(frozen=True)
class Rule:
    """At most `amount` hits per `per_seconds` for one key (a client address, a user...).

    `name` keeps rules apart in storage and names the rule in logs and errors; an
    `amount` of 0 turns the rule off."""

    name: str
    amount: int
    per_seconds: int
    message: str = "Too many requests; slow down."

    def item(self) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.amount, self.per_seconds, namespace=self.name)


class RateLimiter:
    """Sliding-window limits in Redis (shared) or memory (this instance)."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "studyhall") -> None:
        self._memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._shared: SlidingWindowCounterRateLimiter | None = None
        self._storage: Storage | None = None
        if redis_url:
            # A `redis+cluster://` URL: the library's cluster storage keeps each counter's
            # two windows on one node (a hash tag) and follows the slot map.
            kind = RedisClusterStorage if is_cluster_url(redis_url) else RedisStorage
            self._storage = kind(
                "async+" + redis_url, implementation="redispy", key_prefix=f"{prefix}:limits",
                socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._shared = SlidingWindowCounterRateLimiter(self._storage)
        self._shared_down_until = 0.0

    def _strategy(self) -> SlidingWindowCounterRateLimiter:
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared
        return self._memory

    async def hit_ok(self, rule: Rule, *key: str) -> float | None:
        """Count one hit; None when allowed, else the seconds until one would be."""
        if rule.amount <= 0:
            return None
        item = rule.item()
        strategy = self._strategy()
        try:
            allowed = await asyncio.wait_for(strategy.hit(item, *key), REDIS_TIMEOUT_SECONDS * 2)
            if allowed:
                return None
            stats = await asyncio.wait_for(strategy.get_window_stats(item, *key), REDIS_TIMEOUT_SECONDS * 2)
        except Exception as exc:  # Redis down or frozen: count on this instance instead
            if strategy is self._memory:
                raise
            if self._shared_down_until == 0.0 or time.monotonic() >= self._shared_down_until:
                log.warning("rate limits: Redis unreachable, counting on this instance", extra={"error": repr(exc)})
            self._shared_down_until = time.monotonic() + REDIS_RETRY_AFTER_SECONDS
            return await self.hit_ok(rule, *key)
        if strategy is self._shared and self._shared_down_until:
            self._shared_down_until = 0.0
            log.warning("rate limits: Redis reachable again, counting across instances")
        return max(0.001, stats.reset_time - time.time())

    async def hit(self, rule: Rule, *key: str) -> None:
        """Count one hit; raise `rate_limited` (with `retry_after_ms`) when over the rule."""
        wait = await self.hit_ok(rule, *key)
        if wait is not None:
            raise ApiError("rate_limited", rule.message, retry_after_ms=math.ceil(wait * 1000))

    async def close(self) -> None:
        """Close the Redis client (counters expire in Redis on their own)."""
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()
