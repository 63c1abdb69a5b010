"""The delivery loop: one per instance, taking whatever deliveries are due.

The loop keeps up to `concurrency` deliveries in flight, claiming due ones in batches as
slots free up, so one slow receiver holds one slot, not the loop. A claim is a lease of
`lease_seconds` (FOR UPDATE SKIP LOCKED: two instances never claim the same row, and a row
whose claimer died falls due again when its lease runs out). It POSTs each, signed per the Standard Webhooks spec
under the delivery's id as `webhook-id` (the same on every retry), and settles it: a 2xx
succeeds; anything else is retried after the next delay of the schedule (with jitter);
after the last one the delivery fails and its endpoint is disabled with the reason.
Settling checks the claim is still this instance's, so a late answer to a retaken claim
changes nothing. Delivery is at least once: an instance killed after the receiver got a
request but before settling it leaves the row to be sent again; receivers deduplicate on
`webhook-id`.

Waking (docs/webhooks.md#waking-the-delivery-loops): while deliveries flow the loop is
awake and polls every `busy_poll_seconds`; after `idle_seconds` without finding any it
announces that it sleeps (`storage.webhooks.fall_asleep`) and waits for a NOTIFY, which new
deliveries send only while some loop sleeps (migration 0019). So a busy pipeline's
batches commit without NOTIFY (each took PostgreSQL's notify lock through its commit) and
do not wake the loops once per batch, and an idle one is still woken at once.

While the message pipeline is saturated (`pacing.PipelineLoad`), the loop claims at most
`saturated_rate` deliveries a second (a `handlers.tokenbucket.TokenBucket`), a tenth of a second's worth per
claim, and catches up at full speed afterwards; `lag_seconds` is how late the oldest
delivery of the last claim was (the outbox lag, a metric). The request itself: sender.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from uuid import UUID

from handlers.tokenbucket import TokenBucket
from handlers.webhooks.pacing import PipelineLoad
from handlers.webhooks.sender import Sender, webhook_id
from handlers.webhooks.settings import WebhookSettings
from storage import webhooks as store
from storage.availability import DatabaseUnavailable
from storage.db import Database
from storage.webhooks import Claimed

log = logging.getLogger(__name__)

JITTER = 0.2
PACED_CLAIM_SECONDS = 0.1  # while yielding, claim this long's worth of the floor rate at once

__all__ = ["Dispatcher", "retry_delay"]

MAX_POLL_DOUBLINGS = 3  # an awake loop's busy poll backs off to at most 8x (Dispatcher._busy_poll_seconds)


def retry_delay(schedule: tuple[float, ...], attempts: int) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones; None: give up."""
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return max(0.0, base * random.uniform(1 - JITTER, 1 + JITTER))


class Dispatcher:
    """Claims and sends this instance's share of the due deliveries."""

    def __init__(
        self, db: Database, settings: WebhookSettings, instance_id: UUID, load: PipelineLoad | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.instance_id = instance_id
        self.load = load  # None: never yields (command-line tools, a core without a pipeline)
        self.sender = Sender(settings)
        rate = settings.saturated_rate
        self.pacer = TokenBucket(rate, burst=max(1.0, rate * PACED_CLAIM_SECONDS))
        self.wake = asyncio.Event()
        self.sent = 0  # attempts made by this instance (bench, tests)
        self.lag_seconds = 0.0  # how long the oldest delivery of the last claim had been due
        self.yielding = False  # the pipeline was saturated at the last look: paced
        self.task: asyncio.Task[None] | None = None  # the running loop (tests stop it as a crash would)
        self._inflight: set[asyncio.Task[None]] = set()
        self._succeeded: list[tuple[Claimed, int, float]] = []
        self._notified = False
        self.asleep = False  # announced in webhook_sleepers: new deliveries NOTIFY this loop
        self._asleep_since = 0.0  # when the announcement was last made (renewed while asleep)
        self._found_at = time.monotonic()  # the last claim that found deliveries (awake after it)
        self._polled_at = 0.0  # the last claim made whatever the free slots (at most poll_seconds apart)
        self._claimed_at = 0.0  # the last claim: an awake loop polls busy_poll_seconds after it
        self._empty_claims = 0  # claims in a row that found nothing: the busy poll backs off
        self._ran_short = True  # the last claim found fewer due deliveries than it asked for

    async def close(self) -> None:
        await self.sender.close()

    async def run(self) -> None:
        """Until cancelled: keep up to `concurrency` deliveries in flight, claiming in
        batches. Each claim is one statement and one commit that also records the
        successes since the last one, so a pass costs the database the same whether it
        claims one delivery or many: while deliveries are in flight the loop waits until
        `claim_batch` slots are free (or nothing is in flight, or a poll interval passed,
        so a few slow receivers cannot hold the rest back for longer than that). The loop
        claims again at once while the last claim came back full (more may be due);
        otherwise it waits for a finished delivery or the busy poll interval while awake,
        for a NOTIFY or the poll interval once asleep (see the module's docstring). While
        the pipeline is saturated it claims what the pacer allows, a tenth of a second's
        worth at a time, and sleeps in between (NOTIFYs then only mark work as due)."""
        self.task = asyncio.current_task()
        due = True  # deliveries may be due: at start, after a NOTIFY, a full claim or a poll
        force = True  # claim whatever fits, even below claim_batch: at start and after a poll
        try:
            while True:
                free = self.settings.concurrency - len(self._inflight)
                allowed = self._allowance(free)
                failed = False
                try:
                    if self._should_claim(free, allowed, due, force):
                        if force:
                            self._polled_at = time.monotonic()
                        due = await self.claim_and_send(allowed)
                        force = False
                    elif self._record_alone(due):
                        await self.record_successes()
                except asyncio.CancelledError:
                    raise
                except DatabaseUnavailable:  # logged once per outage by the database's tracker
                    due, failed = False, True
                except Exception as exc:
                    log.warning("webhook delivery pass failed: %r", exc)
                    due, failed = False, True
                if self._notified:  # a NOTIFY during the pass, or while every slot was busy
                    due, self._notified = True, False
                free = self.settings.concurrency - len(self._inflight)
                allowed = self._allowance(free)
                if not failed and (self._should_claim(free, allowed, due, force) or self._record_alone(due)):
                    continue
                if not failed and due and free > 0 and self.yielding:
                    # Paced: the next claim once the pacer has a claim's worth (or a poll passed).
                    await asyncio.sleep(min(self.settings.poll_seconds, max(0.005, self.pacer.wait_seconds(
                        min(free, int(self.pacer.burst))))))
                    continue
                if not failed and await self._settle_down():
                    due = force = True  # announced: one more claim takes what committed unannounced
                    continue
                self.wake.clear()
                awake = not self.asleep and not failed
                # Awake and nothing known due: until the next busy poll, counted from the last
                # claim (a finished delivery wakes the loop meanwhile, and must not put it off).
                next_poll = self._claimed_at + self._busy_poll_seconds()
                timeout = max(0.0, next_poll - time.monotonic()) if awake and not due else self.settings.poll_seconds
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
                except TimeoutError:
                    due = True  # awake: new deliveries are found by polling
                    # Asleep, or a poll interval since the last: claim whatever fits (retries
                    # fall due by time; slow receivers hold their slots no longer than that).
                    force = force or not awake or time.monotonic() - self._polled_at >= self.settings.poll_seconds
                if awake and time.monotonic() >= next_poll:
                    due = True
        finally:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            try:  # what the receivers already accepted is not sent again after the lease
                await asyncio.shield(self.record_successes())
            except Exception:  # the database is going away too: at least once, as documented
                pass
            if self.asleep:
                try:  # inserts need not ring for a loop that is gone
                    await asyncio.shield(self._wake_up())
                except Exception:  # a stale row only costs NOTIFYs, and is removed after a while
                    pass

    def _busy_poll_seconds(self) -> float:
        """An awake loop's wait before the next poll: `busy_poll_seconds` while claims find
        deliveries, doubling with each empty one up to 8 times that, so a quiet spell before
        the loop sleeps costs about 9 claims rather than `idle_seconds / busy_poll_seconds`
        (50 by default), and a new delivery waits at most 8 busy polls while it lasts."""
        return self.settings.busy_poll_seconds * (1 << min(self._empty_claims, MAX_POLL_DOUBLINGS))

    async def _settle_down(self) -> bool:
        """Announce this loop asleep once it has been idle for `idle_seconds` (nothing in
        flight, nothing to record, no claim found anything); renew the announcement while
        asleep. True when it was made now: the caller claims once more."""
        now = time.monotonic()
        if self.asleep:
            if now - self._asleep_since >= store.SLEEPER_RENEW_SECONDS:
                await self._announce()
            return False
        if self._inflight or self._succeeded or now - self._found_at < self.settings.idle_seconds:
            return False
        await self._announce()
        return self.asleep

    async def _announce(self) -> None:
        try:
            async with self.db.connection() as conn:
                announced = await store.fall_asleep(conn, self.instance_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # stay awake and polling: slower to sleep, never deaf
            log.debug("webhook loop could not announce sleep: %r", exc)
            return
        if announced:
            self.asleep, self._asleep_since = True, time.monotonic()

    async def _wake_up(self) -> None:
        """Withdraw the announcement. Best effort, as `_announce`: if it fails the loop stays
        marked asleep and tries again after its next claim; a stale row only costs NOTIFYs."""
        try:
            async with self.db.connection() as conn:
                await store.wake_up(conn, self.instance_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("webhook loop could not withdraw its sleep: %r", exc)
            return
        self.asleep = False

    def _allowance(self, free: int) -> int:
        """How many deliveries may be claimed now: every free slot, or while the pipeline
        is saturated, what the pacer has saved up."""
        self.yielding = self.load is not None and self.load.saturated()
        if not self.yielding or free <= 0:
            return max(0, free)
        return min(free, self.pacer.available())

    def _should_claim(self, free: int, allowed: int, due: bool, force: bool) -> bool:
        if allowed <= 0 or not due:
            return False
        if self.yielding and allowed < min(free, int(self.pacer.burst)):
            return False  # paced: wait for a claim's worth rather than claim one at a time
        return force or not self._inflight or free >= self.claim_batch

    def _record_alone(self, due: bool) -> bool:
        """Record successes in a statement of their own: once nothing is in flight, unless a
        paced claim, which records them too, is coming within a tenth of a second."""
        return bool(self._succeeded) and not self._inflight and not (self.yielding and due)

    @property
    def claim_batch(self) -> int:
        """Free slots worth a claim while others are in flight: half of them."""
        return max(1, self.settings.concurrency // 2)

    async def claim_and_send(self, limit: int) -> bool:
        """Record the successes so far and claim up to `limit` due deliveries, in one
        statement, which also expands batches of messages; start sending them. True when
        more may be due at once: the claim came back full, or it expanded batches whose
        deliveries the next claim takes.

        While yielding, a claim expands one batch, and only once the last claim ran short
        of due deliveries: the floor sends a few a claim, a batch holds dozens, and
        expanding one per claim regardless wrote hundreds of delivery rows a second on the
        saturated pipeline's cores that nobody would send before it was idle again."""
        done, self._succeeded = self._succeeded, []
        self._claimed_at = time.monotonic()
        try:
            async with self.db.connection() as conn:
                taken = await store.claim(
                    conn, limit=limit, lease_seconds=self.settings.lease_seconds, instance_id=self.instance_id,
                    succeeded=done, expand=self._expand_now(),
                )
        except BaseException:
            self._succeeded = done + self._succeeded
            raise
        claimed = taken.claimed
        self._ran_short = len(claimed) < limit
        self.lag_seconds = max((c.late_seconds for c in claimed), default=0.0)
        if self.yielding:
            self.pacer.spend(len(claimed))
        for c in claimed:
            task = asyncio.create_task(self._send(c), name="webhook-send")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        found = bool(claimed or taken.expanded)
        self._empty_claims = 0 if found else self._empty_claims + 1
        if found:
            self._found_at = time.monotonic()
            if self.asleep:  # busy again: polls, so inserts stop ringing for it
                await self._wake_up()
        return len(claimed) == limit or taken.expanded > 0

    def _expand_now(self) -> int:
        """How many batches of messages the next claim expands (see `claim_and_send`)."""
        if not self.yielding:
            return store.EXPAND_BATCHES
        return 1 if self._ran_short else 0

    def notify(self) -> None:
        """New deliveries were committed (LISTEN/NOTIFY): claim at once."""
        self._notified = True
        self.wake.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.wake.set()

    async def record_successes(self) -> None:
        """One statement and one commit for every delivery that succeeded since the last."""
        if not self._succeeded:
            return
        done, self._succeeded = self._succeeded, []
        try:
            async with self.db.connection() as conn:
                await store.succeeded_many(conn, done)
        except BaseException:
            self._succeeded = done + self._succeeded
            raise

    async def _send(self, c: Claimed) -> None:
        self.sent += 1
        status, error, ms = await self.sender.attempt(c)
        if status is not None and 200 <= status < 300:
            self._succeeded.append((c, status, ms))
        else:
            await self._settle(c, status, error, ms)

    async def _settle(self, c: Claimed, status: int | None, error: str, latency_ms: float) -> None:
        """A failed attempt: retry later, or give up and disable the endpoint."""
        async with self.db.transaction() as conn:
            delay = retry_delay(self.settings.retry_schedule, c.attempts)
            if delay is not None:
                await store.retry_later(conn, c, delay_seconds=delay, status_code=status, error=error,
                                        latency_ms=latency_ms)
                return
            reason = f"delivery {webhook_id(c.id)} failed {c.attempts} times; last: {error}"
            if await store.give_up(conn, c, status_code=status, error=error, latency_ms=latency_ms, reason=reason):
                log.warning("webhook endpoint disabled", extra={"endpoint_id": str(c.endpoint_id), "reason": reason})
