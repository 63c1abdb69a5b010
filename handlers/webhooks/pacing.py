"""Background work yields to foreground work: while the message pipeline is saturated,
webhook delivery slows to a floor rate, and catches up at full speed once it is not.

Every delivery costs the server an HTTP request (and, where the receiver shares the
machine, the receiver's CPU too); at full speed that took a third of the acked messages
per second away from a saturated pipeline (docs/performance.md#webhooks). Acked messages
are what users wait for; a webhook a few seconds late is not. So while the pipeline is
saturated, deliveries go out at `saturated_rate` per second per instance, enough that the
outbox still drains and nothing waits forever, and the outbox lag grows instead; when the
pipeline has room again the lag is worked off at full speed.

Saturation is read from counters the message writer already keeps (handlers/batching.py
`Batcher.requests` and `.batches`): messages that arrive while a batch commits wait and go
together in the next batch, so the mean batch size over the last quarter second is how
much work queued behind the commits. At or above `saturated_batch_size` the pipeline is
saturated. An idle or lightly loaded pipeline commits messages one or two at a time. A
window in which no batch finished keeps the last verdict for up to a second (a commit
slower than the window, on a loaded machine), then counts as idle.
"""

from __future__ import annotations

import time
from typing import Protocol

WINDOW_SECONDS = 0.25
HOLD_SECONDS = 1.0  # a window with no finished batch counts as idle only after this long


class BatchCounters(Protocol):
    """The message writer's batcher (handlers/batching.py `Batcher`): totals since start."""

    requests: int
    batches: int


class PipelineLoad:
    """Whether the message pipeline is saturated, from its writer's counters."""

    def __init__(
        self, counters: BatchCounters, *, saturated_batch_size: float, window: float = WINDOW_SECONDS,
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.counters = counters
        self.saturated_batch_size = saturated_batch_size
        self.window = window
        self.hold = hold
        self._at = self._batch_at = time.monotonic()
        self._requests, self._batches = counters.requests, counters.batches
        self._saturated = False
        self.mean_batch = 0.0  # over the last window (metrics)

    def saturated(self) -> bool:
        now = time.monotonic()
        if now - self._at >= self.window:
            requests, batches = self.counters.requests, self.counters.batches
            d_req, d_batches = requests - self._requests, batches - self._batches
            self.mean_batch = d_req / d_batches if d_batches else 0.0
            if d_batches:
                self._batch_at = now
                self._saturated = self.mean_batch >= self.saturated_batch_size
            elif now - self._batch_at >= self.hold:
                self._saturated = False  # idle
            # else: no batch finished in this window, yet one did lately: a slow commit
            # under load, not an idle pipeline; stay as the last window said.
            self._at, self._requests, self._batches = now, requests, batches
        return self._saturated

