"""A token bucket: `rate` tokens a second, at most `burst` saved up.

One implementation for every in-memory rate on an instance: the per-socket and per-user
event limits (server/event_limits.py) and webhook delivery's floor rate while the message
pipeline is saturated (handlers/webhooks/delivery.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; starts full."""

    rate: float
    burst: float
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_ms(self) -> int:
        """Milliseconds until a token is available (0: one is available now)."""
        self._refill()
        if self.tokens >= 1:
            return 0
        if self.rate <= 0:
            return 60_000
        return max(1, math.ceil((1 - self.tokens) / self.rate * 1000))

    def available(self) -> int:
        """Whole tokens saved up now."""
        self._refill()
        return int(self.tokens)

    def spend(self, n: int) -> None:
        """Take `n` tokens, going into debt if fewer are saved up (paid back by the refill)."""
        self._refill()
        self.tokens -= n

    def wait_seconds(self, n: int = 1) -> float:
        """Seconds until `n` whole tokens are saved up (0: now)."""
        self._refill()
        if self.tokens >= n:
            return 0.0
        return 60.0 if self.rate <= 0 else (n - self.tokens) / self.rate
