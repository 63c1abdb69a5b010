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
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from uuid import UUID

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from handlers.webhooks.settings import WebhookSettings
from handlers.webhooks.targets import GuardedResolver, RefusedAddress, TargetRefused, check_url
from storage import webhooks as store
from storage.availability import DatabaseUnavailable
from storage.db import Database
from storage.webhooks import Claimed

log = logging.getLogger(__name__)

USER_AGENT = "Studyhall-Webhooks/1"
MAX_ERROR_CHARS = 500
JITTER = 0.2


def webhook_id(delivery_id: UUID) -> str:
    return f"msg_{delivery_id.hex}"


def body_of(c: Claimed) -> bytes:
    """The request body: the same bytes on every attempt."""
    return orjson.dumps({"type": c.event_type, "timestamp": c.created_at, "data": c.payload})


def retry_delay(schedule: tuple[float, ...], attempts: int) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones; None: give up."""
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return max(0.0, base * random.uniform(1 - JITTER, 1 + JITTER))


class Dispatcher:
    """Claims and sends this instance's share of the due deliveries."""

    def __init__(self, db: Database, settings: WebhookSettings, instance_id: UUID) -> None:
        self.db = db
        self.settings = settings
        self.instance_id = instance_id
        self.wake = asyncio.Event()
        self.sent = 0  # attempts made by this instance (bench, tests)
        self._session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None  # the running loop (tests stop it as a crash would)
        self._inflight: set[asyncio.Task[None]] = set()
        self._succeeded: list[tuple[Claimed, int, float]] = []
        self._notified = False

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.settings.allow_private_targets),
                limit=max(1, self.settings.concurrency), ttl_dns_cache=None, use_dns_cache=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": USER_AGENT}, trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Until cancelled: keep up to `concurrency` deliveries in flight, claiming in
        batches. Each claim is one statement and one commit that also records the
        successes since the last one, so a pass costs the database the same whether it
        claims one delivery or many: while deliveries are in flight the loop waits until
        `claim_batch` slots are free (or nothing is in flight, or a poll interval passed,
        so a few slow receivers cannot hold the rest back for longer than that). The loop
        claims again at once while the last claim came back full (more may be due);
        otherwise it waits for a NOTIFY, a finished delivery or the poll interval."""
        self.task = asyncio.current_task()
        due = True  # deliveries may be due: at start, after a NOTIFY, a full claim or a poll
        force = True  # claim whatever fits, even below claim_batch: at start and after a poll
        try:
            while True:
                free = self.settings.concurrency - len(self._inflight)
                failed = False
                try:
                    if self._should_claim(free, due, force):
                        due = await self.claim_and_send(free) == free
                        force = False
                    elif self._succeeded and not self._inflight:
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
                if not failed and (self._should_claim(free, due, force) or (self._succeeded and not self._inflight)):
                    continue
                self.wake.clear()
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(self.settings.poll_seconds):
                        await self.wake.wait()
                except TimeoutError:
                    due = force = True  # retries fall due by time
        finally:
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            try:  # what the receivers already accepted is not sent again after the lease
                await asyncio.shield(self.record_successes())
            except Exception:  # the database is going away too: at least once, as documented
                pass

    def _should_claim(self, free: int, due: bool, force: bool) -> bool:
        if free <= 0 or not due:
            return False
        return force or not self._inflight or free >= self.claim_batch

    @property
    def claim_batch(self) -> int:
        """Free slots worth a claim while others are in flight: half of them."""
        return max(1, self.settings.concurrency // 2)

    async def claim_and_send(self, limit: int) -> int:
        """Record the successes so far and claim up to `limit` due deliveries, in one
        statement; start sending them; returns how many were claimed."""
        done, self._succeeded = self._succeeded, []
        try:
            async with self.db.connection() as conn:
                claimed = await store.claim(
                    conn, limit=limit, lease_seconds=self.settings.lease_seconds, instance_id=self.instance_id,
                    succeeded=done,
                )
        except BaseException:
            self._succeeded = done + self._succeeded
            raise
        for c in claimed:
            task = asyncio.create_task(self._send(c), name="webhook-send")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return len(claimed)

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

    async def deliver_due(self) -> int:
        """Claim what is due, send it all and record the outcomes (tests, one pass)."""
        count = await self.claim_and_send(self.settings.concurrency)
        await asyncio.gather(*self._inflight)
        await self.record_successes()
        return count

    async def _send(self, c: Claimed) -> None:
        status, error, ms = await self._deliver(c)
        if status is not None and 200 <= status < 300:
            self._succeeded.append((c, status, ms))
        else:
            await self._settle(c, status, error, ms)

    async def _deliver(self, c: Claimed) -> tuple[int | None, str, float]:
        """One attempt: (status code or None, error, latency ms)."""
        status: int | None = None
        error = ""
        started = time.perf_counter()
        try:
            check_url(c.url, allow_private=self.settings.allow_private_targets)
            body = body_of(c)
            now = datetime.now(UTC)
            msg_id = webhook_id(c.id)
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(c.secret).sign(msg_id, now, body.decode()),
                "Content-Type": "application/json",
            }
            self.sent += 1
            async with self.session().post(c.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if 200 <= resp.status < 300:
                    await resp.read()
                else:
                    error = f"HTTP {resp.status}: {(await resp.content.read(200)).decode(errors='replace')}".strip()
        except TargetRefused as exc:
            error = f"refused target: {exc}"
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            refused = exc if isinstance(exc, RefusedAddress) else exc.__cause__
            error = f"refused target: {refused}" if isinstance(refused, RefusedAddress) else f"{type(exc).__name__}: {exc}"
        return status, error[:MAX_ERROR_CHARS], (time.perf_counter() - started) * 1000

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
