"""Redis between instances, kept off every client's path.

python-socketio's AsyncRedisManager publishes each emit inline, so an ack that follows an
emit waits for Redis; a frozen Redis (SIGSTOP, a partition: connections accepted, nothing
answered) made every `message:send` ack take about 10 s (socket timeout, reconnect, again).
It also logs two errors per failed publish and one per listener retry.

`ResilientRedis` (a mixin placed before AsyncRedisManager) changes three things:

- Publishing: `_publish` only appends to a bounded per-instance queue; one background task
  publishes in order with a short timeout. After a failure the task drops what is queued
  for `RETRY_SECONDS` (counted in `studyhall_fanout_dropped_total`) and then tries again.
  Nothing acknowledged is lost: messages commit before their ack, and once a publish goes
  through after drops, the instance publishes a `resync` for the other instances' sockets,
  which recover by seq through `sync`. A full queue drops its oldest entry the same way.
- Health: the watcher (`watch`) publishes a probe on a channel only this instance listens
  to and waits for its own listener to hear it. That checks both directions and sees a hang
  (no answer within the timeout) as well as a refused connection. A listener that stays
  deaf (none of its probes heard for `deaf_after` seconds, `ProbeHearing`) is reset. When
  probes come back after an outage, this instance's sockets get `resync` (its listener may
  have missed events from the others).
- Logging: one `RedisHealth` per instance logs the start of an outage once and its end once,
  and counts the outage once in `studyhall_fanout_degraded_total`.

The same subscription also carries small notices of our own on `<channel>:notices` (see
server/revocation.py), so a logout or ban acts on every instance's sockets in memory.

Where an emit is published, and which channels the listener holds besides the global ones,
is server/roomchannels.py's business (per-room sharded channels, the default); the hooks
here (`_route`, `_listener_subscribed`, `_listener_lost`, `_shard_message`) are its seams.
The publisher sends what is queued in batches (one pipeline, one round trip), which a
group's emit published once per member's room needs. Every message received is counted
per channel kind in `studyhall_redis_received_total` and `..._bytes_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import socketio
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.metrics import Metrics
from server.rediscluster import ClusterRedis
from server.roomchannels import RoomChannels

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed publish, drop without trying for this long
DEAF_AFTER_SECONDS = 5.0  # a listener that hears none of its probes for this long is deaf
LISTEN_RETRY_FIRST, LISTEN_RETRY_MAX = 0.25, 2.0  # listener resubscribe back-off

PUBLISH_BATCH = 256  # queued publishes sent in one pipeline

NoticeHandler = Callable[[dict[str, Any]], Awaitable[None]]


class RedisHealth:
    """Whether Redis answers, as the publisher, the listener and the watcher see it.
    Logs each outage once when it starts and once when it ends."""

    def __init__(self) -> None:
        self.up = True
        self.down_since = 0.0
        self.metrics: Metrics | None = None

    def report_down(self, source: str, error: BaseException | str) -> None:
        if not self.up:
            return
        self.up = False
        self.down_since = time.monotonic()
        if self.metrics is not None:
            self.metrics.fanout_degraded.inc()
        log.error(
            "Redis unreachable (seen by the %s): fan-out between instances degraded; messages still commit "
            "and local delivery goes on (%r)", source, error, extra={"source": source, "error": repr(error)},
        )

    def report_up(self) -> bool:
        """Mark Redis answering again; True when this ends an outage."""
        if self.up:
            return False
        self.up = True
        log.warning("Redis answers again; asking clients to resync",
                    extra={"down_seconds": round(time.monotonic() - self.down_since, 1)})
        return True


class ProbeHearing:
    """Which of this instance's probe channels go unheard, and since when.

    A probe not heard within the timeout does not make the listener deaf: a busy instance
    (a full event loop, a listener working through a burst) hears it late, and resetting
    that listener would throw away everything it was about to deliver, so every socket
    would resync, adding load when the instance has least to spare. CI saw exactly that:
    a probe heard after 1 s under load, the listener reset, a room's `kicked` lost. A
    channel counts as deaf only when none of its probes was heard for `deaf_after`
    seconds while they were published, which a half-open connection (the case the probe
    exists for) shows and a late listener does not."""

    def __init__(self, deaf_after: float) -> None:
        self.deaf_after = deaf_after
        self.unheard_since: dict[str, float] = {}

    def published(self, channel: str) -> None:
        """Called before the probe is sent, so a hearing can never come first."""
        self.unheard_since.setdefault(channel, time.monotonic())

    def heard(self, channel: str) -> None:
        """Any probe heard on the channel, however late: the listener reads it."""
        self.unheard_since.pop(channel, None)

    def forget(self) -> None:
        """A new listener connection, or a probe that could not be sent: nothing is owed yet."""
        self.unheard_since.clear()

    def deaf(self, channels: list[str]) -> list[str]:
        now = time.monotonic()
        return [c for c in channels if now - self.unheard_since.get(c, now) >= self.deaf_after]


class ResilientRedis:
    """Mixin for socketio.AsyncRedisManager (see the module docstring). Call `configure`
    once after construction."""

    channel: str
    host_id: str
    redis_url: str
    redis_options: dict[str, Any]
    pubsub: Any
    server: Any
    json: Any

    def configure(self, *, timeout: float, queue_size: int) -> None:
        self.health = RedisHealth()
        self.timeout = timeout
        self.notice_channel = f"{self.channel}:notices"
        self.probe_channel = f"{self.channel}:probe:{self.host_id}"
        self.on_notice: NoticeHandler | None = None
        self.listening: bool | None = None  # None: the listener has not started
        self._queue: deque[tuple[str, bytes | str, bool]] = deque()  # (channel, payload, sharded)
        self._queue_size = max(1, queue_size)
        self._wake = asyncio.Event()
        self._publisher_task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._lost = False
        self._client: aioredis.Redis | None = None
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._probe_seq = 0
        # At least two whole probe waits, so one late probe is never enough.
        self.hearing = ProbeHearing(max(DEAF_AFTER_SECONDS, 4 * timeout))
        self._closed = False
        self._own_marker = f'"host_id":"{self.host_id}"'.encode()
        self._server_checked = False

    @property
    def metrics(self) -> Metrics | None:
        return self.health.metrics

    def client(self) -> aioredis.Redis:
        """The publishing client: short timeouts and no retries (a hang must fail fast)."""
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0)
            )
        return self._client

    # --- publishing -------------------------------------------------------------------

    async def _publish(self, data: dict[str, Any]) -> None:
        """python-socketio's publish hook: queue, never wait."""
        for channel, payload, sharded in self._route(data):
            self._enqueue(channel, payload, sharded)

    def _route(self, data: dict[str, Any]) -> list[tuple[str, bytes | str, bool]]:
        """Where a python-socketio message is published: here, the one global channel."""
        return [(self.channel, self.json.dumps(data), False)]

    def publish_notice(self, notice: dict[str, Any]) -> None:
        self._enqueue(self.notice_channel, orjson.dumps({**notice, "origin": self.host_id}))

    def _enqueue(self, channel: str, payload: bytes | str, sharded: bool = False) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self._dropped()
        self._queue.append((channel, payload, sharded))
        self._wake.set()
        if not self._closed and (self._publisher_task is None or self._publisher_task.done()):
            self._publisher_task = asyncio.get_running_loop().create_task(self._publisher(), name="redis-publisher")

    def _dropped(self, count: int = 1) -> None:
        self._lost = True
        if self.metrics is not None:
            self.metrics.fanout_dropped.inc(count)

    async def _send(self, batch: list[tuple[str, bytes | str, bool]]) -> None:
        """PUBLISH or SPUBLISH each, in order; a batch in one pipeline (one round trip)."""
        client = self.client()
        if len(batch) == 1:
            channel, payload, sharded = batch[0]
            await (client.spublish(channel, payload) if sharded else client.publish(channel, payload))
            return
        pipe = client.pipeline(transaction=False)
        for channel, payload, sharded in batch:
            if sharded:
                pipe.spublish(channel, payload)
            else:  # not pipe.publish: redis-py's cluster pipeline refuses it by name, not by command
                pipe.execute_command("PUBLISH", channel, payload)
        await pipe.execute()

    async def _publisher(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(PUBLISH_BATCH, len(self._queue)))]
            if time.monotonic() < self._retry_at:
                self._dropped(len(batch))
                continue
            try:
                await asyncio.wait_for(self._send(batch), self.timeout * 2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._dropped(len(batch))
                self._retry_at = time.monotonic() + RETRY_SECONDS
                self.health.report_down("publish", exc)
                continue
            if self._lost:
                # Some events never reached the other instances: their sockets recover by seq.
                self._lost = False
                resync = {"method": "emit", "event": "resync", "data": [{"reason": "fanout_restored"}],
                          "binary": False, "namespace": "/", "room": None, "skip_sid": None, "callback": None,
                          "host_id": self.host_id}
                self._queue.appendleft((self.channel, self.json.dumps(resync), False))

    # --- listening --------------------------------------------------------------------

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        """python-socketio's listener, subscribed to our channels too, logging through
        RedisHealth (once per outage) instead of once per retry."""
        retry = LISTEN_RETRY_FIRST
        subscribed = False
        self.listening = False
        while True:
            try:
                if not subscribed:
                    await self._close_pubsub()
                    self._redis_connect()  # type: ignore[attr-defined]
                    self.pubsub.ignore_subscribe_messages = False  # room subscriptions wait for their confirmation
                    await asyncio.wait_for(
                        self.pubsub.subscribe(self.channel, self.notice_channel, self.probe_channel), self.timeout * 2
                    )
                    subscribed = True
                    self.listening = True
                    self.hearing.forget()
                    await self._listener_subscribed()
                    retry = LISTEN_RETRY_FIRST
                async for message in self.pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                subscribed = False
                self.listening = False
                self._listener_lost()
                self.health.report_down("listen", exc)
                log.debug("Redis listener retrying in %s s: %r", retry, exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, LISTEN_RETRY_MAX)

    async def _close_pubsub(self) -> None:
        """Close the previous listener connection and client before making new ones
        (python-socketio's reconnect leaves them open)."""
        for old in (getattr(self, "pubsub", None), getattr(self, "redis", None)):
            if old is not None:
                try:
                    await asyncio.wait_for(old.aclose(), self.timeout)
                except Exception:
                    pass

    async def _listener_subscribed(self) -> None:
        """Hook: the listener holds a new connection, subscribed to the global channels."""

    def _listener_lost(self) -> None:
        """Hook: the listener's connection (and every subscription on it) is gone."""

    async def _check_server(self) -> bool:
        """Hook: once Redis answers, check it can do what this manager needs; False: ask again."""
        return True

    def _shard_message(self, message: dict[str, Any]) -> bytes | None:
        """Hook: a sharded message or confirmation; returns an event for python-socketio."""
        return None

    def _count(self, kind: str, size: int) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.redis_received.labels(kind).inc()
            metrics.redis_received_bytes.labels(kind).inc(size)

    async def _listen(self) -> AsyncIterator[bytes]:
        channel = self.channel.encode()
        notices = self.notice_channel.encode()
        probes = self.probe_channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("type") != "message" or "data" not in message:
                data = self._shard_message(message)
                if data is not None:
                    yield data
                continue
            if message["channel"] == channel:
                data = message["data"]
                self._count("global", len(data))
                if self._own_marker in data and self.metrics is not None and b'"method":"callback"' not in data:
                    self.metrics.redis_emits.labels("own").inc()
                yield data
            elif message["channel"] == probes:
                self._count("probe", len(message["data"]))
                self.hearing.heard(self.probe_channel)
                waiter = self._probes.pop(int(message["data"]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif message["channel"] == notices:
                self._count("notices", len(message["data"]))
                await self._handle_notice(message["data"])

    async def _handle_notice(self, raw: bytes) -> None:
        try:
            notice = orjson.loads(raw)
            if notice.get("origin") == self.host_id or self.on_notice is None:
                return
            await self.on_notice(notice)
        except Exception:
            log.exception("socket notice failed")

    def reset_listener(self) -> None:
        """Drop the listener's connection so it resubscribes (it errors out of listen())."""
        conn = getattr(self.pubsub, "connection", None)
        if conn is not None:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    # --- health -----------------------------------------------------------------------

    async def probe(self) -> bool | None:
        """Publish to our own probe channel and wait for our listener to hear it. A publish
        that fails or hangs is an outage (False); so is a listener that heard none of its
        probes for `hearing.deaf_after` seconds. A probe heard late is neither: None,
        nothing is decided this round (see `ProbeHearing`)."""
        self._probe_seq += 1
        seq = self._probe_seq
        heard = asyncio.get_running_loop().create_future()
        self._probes = {seq: heard}  # older probes are abandoned
        if self.listening is not None:
            self.hearing.published(self.probe_channel)  # before sending: the listener may hear it first
        try:
            await asyncio.wait_for(self.client().publish(self.probe_channel, str(seq)), self.timeout * 2)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.report_down("probe", exc)
            self.hearing.forget()  # Redis is down: the deaf clock runs only while probes go out
            return False
        if self.listening is None:  # no socket has connected yet: nothing listens, nothing to tell
            return True
        try:
            await asyncio.wait_for(heard, self.timeout * 2)
        except TimeoutError:
            return self._unheard([self.probe_channel], lambda _: "the listener heard none of this instance's probes")
        return True

    def _unheard(self, channels: list[str], describe: Callable[[list[str]], str]) -> bool | None:
        """Probes on these channels were not heard in time: late (None), or deaf (False:
        the outage is reported and the listener reset)."""
        deaf = self.hearing.deaf(channels)
        if not deaf:
            if self.metrics is not None:
                self.metrics.redis_probes_late.inc()
            log.debug("probe heard late: not deaf yet", extra={"channels": channels})
            return None
        self.health.report_down("listen", f"{describe(deaf)} for {self.hearing.deaf_after:g} s")
        if self.listening:
            self.reset_listener()
        return False

    async def watch(self, sio: socketio.AsyncServer, interval: float) -> None:
        """Probe every `interval`; after an outage, tell local sockets to resync."""
        try:
            while True:
                answered = await self.probe()
                if answered and not self._server_checked:
                    self._server_checked = await self._check_server()
                if answered and self.health.report_up():
                    await sio.emit("resync", {"reason": "fanout_restored"}, ignore_queue=True)
                await asyncio.sleep(interval)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop publishing (the app is shutting down) and close the publishing client."""
        self._closed = True
        task, self._publisher_task = self._publisher_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=self.timeout * 2)  # never hold shutdown up on Redis
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.aclose(), self.timeout * 2)
            except Exception:
                pass


class QueuedRedisManager(RoomChannels, ClusterRedis, ResilientRedis, socketio.AsyncRedisManager):
    """python-socketio's Redis manager with queued publishing and room channels
    (STUDYHALL_FANOUT=stock); on a Redis Cluster with a `redis+cluster://` URL
    (server/rediscluster.py)."""
