"""Studyhall's Redis traffic on a Redis Cluster (`REDIS_URL=redis+cluster://host:port,...`).

On a Cluster each sharded channel lives on the master that owns its hash slot: SPUBLISH
and SSUBSCRIBE must go to that node (`-MOVED` otherwise), and one SSUBSCRIBE may name
channels of one slot only (`-CROSSSLOT`). A classic PUBLISH is copied to every node, so
a classic SUBSCRIBE on any node hears it.

- Publishing (`ClusterRedis.client`): redis-py's `RedisCluster` routes SPUBLISH, and
  PUBLISH too, by the channel's slot, so each channel's events leave in order through one
  node; a queued batch is one cluster pipeline (one round trip per node, in parallel).
  Measured here (one process, 3,000 SPUBLISHes in batches of 12 rooms): 37-38 µs of CPU
  per SPUBLISH on a 3-master Cluster against 23 µs on one server, since the batch becomes
  one pipeline per master; a hand-written publisher with one plain client per master
  measured the same (38-39 µs), so redis-py's is kept.
  The `limits` counters use the `limits` library's own cluster storage
  (handlers/ratelimit.py), and probes and INFO go through the same client.
- Listening (`ClusterListener`): the global channels (events, notices, this instance's
  probe) are subscribed on the node that owns the global channel's slot; each room
  channel on the node that owns its slot, one connection per node, each read by its own
  task into one queue. redis-py's `ClusterPubSub` polls its node connections in turn
  (`get_sharded_message(timeout=...)`), which trades latency for CPU; a reader per node
  delivers each message as soon as it arrives.
- Probes: ResilientRedis's probe checks the global channels' master; on a Cluster the
  listener also holds one sharded probe channel on every master (a name whose slot that
  master owns), and each probe SPUBLISHes on all of them and waits to hear every one. A
  master whose listener connection went deaf (a partition that never closes it) is found
  like the global one: an outage, a reset, everything subscribed again, `resync`. It also
  keeps a connection to every master, so a master that goes away is seen at once.
- Failures: any node connection that fails, an SSUBSCRIBE answered `-MOVED`, or a
  SUNSUBSCRIBE this instance did not ask for (Redis 7 sends one when the slot moves to
  another node: resharding or failover) ends the listener. ResilientRedis then does what
  it does after any lost connection: report the outage once, reconnect with back-off,
  read the slot map again, subscribe everything again, and `resync` the sockets.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from handlers.settings import is_cluster_url


def cluster_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis+cluster://[user:password@]host:port[,host:port...][/0]` → startup nodes and
    connection options (credentials, TLS for `rediss+cluster`)."""
    if not is_cluster_url(url):
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    options: dict[str, Any] = {}
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, password = auth.partition(":") if ":" in auth else ("", "", auth)
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if scheme.lower().startswith("rediss"):
        options["ssl"] = True
    nodes: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = part.strip(), "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes or not nodes[0][0]:
        raise ValueError(f"a Redis Cluster URL needs at least one host: {url!r}")
    return nodes, options


def cluster_client(url: str, *, timeout: float | None) -> RedisCluster:
    """A cluster client that fails fast: no retries inside redis-py (the callers have their
    own: the publisher's drop-and-resync, the listener's back-off)."""
    nodes, options = cluster_parts(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **options,
    )


def redis_client(url: str, *, timeout: float) -> aioredis.Redis | RedisCluster:
    """A client for REDIS_URL, whichever kind it names (the health check's ping)."""
    if is_cluster_url(url):
        return cluster_client(url, timeout=timeout)
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


class SlotMoved(RedisConnectionError):
    """A room channel's slot left the node this instance subscribed it on."""


class ClusterListener:
    """The listener's subscriptions on a Cluster, with PubSub's `subscribe`, `ssubscribe`,
    `sunsubscribe`, `listen` and `aclose` (what server/redisbus.py and
    server/roomchannels.py call). One instance per listener connection: after any
    failure the manager closes it and builds a new one."""

    def __init__(self, cluster: RedisCluster, connect_timeout: float) -> None:
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.ignore_subscribe_messages = False
        self.pubsubs: dict[str, PubSub] = {}  # node name -> its connection
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.where: dict[str, str] = {}  # room channel -> node name it is subscribed on
        # SUNSUBSCRIBEs sent and not yet confirmed, per channel: a confirmation beyond them is
        # Redis ending the subscription itself (its slot moved). Counted, because a room left
        # and entered again can have its SSUBSCRIBE sent before the SUNSUBSCRIBE's answer.
        self.leaving: dict[str, int] = {}
        self.queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self.initialized = False
        self.probe_channels: dict[str, str] = {}  # one per master (`subscribe_probes`): channel -> node
        self._probe_wire: set[bytes] = set()  # the same names as they arrive: no decode per room message
        self.probe_waiters: dict[str, asyncio.Future[None]] = {}
        self.on_probe_heard: Callable[[str], None] | None = None  # every probe heard, however late

    async def _ensure_topology(self) -> None:
        if not self.initialized:
            await self.cluster.initialize()  # reads the slot map from a reachable node
            self.initialized = True

    def _pubsub(self, node: ClusterNode) -> PubSub:
        pubsub = self.pubsubs.get(node.name)
        if pubsub is None:
            options = self.cluster.get_connection_kwargs()
            client = aioredis.Redis(
                host=node.host, port=int(node.port), username=options.get("username"), password=options.get("password"),
                ssl=bool(options.get("ssl")), socket_connect_timeout=self.connect_timeout,
                socket_timeout=None,  # a quiet channel is not a dead one; failures end the read
                retry=Retry(NoBackoff(), 0),  # no silent reconnect to a node that may have lost its slots
            )
            pubsub = client.pubsub()
            self.pubsubs[node.name] = pubsub
        return pubsub

    def _read(self, name: str) -> None:
        if name not in self.readers:
            self.readers[name] = asyncio.get_running_loop().create_task(
                self._reader(self.pubsubs[name]), name=f"redis-cluster-listen:{name}")

    async def _reader(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.handle_message(await pubsub.parse_response(block=True))
                if message is None:
                    continue
                if message.get("type") == "sunsubscribe":
                    channel = message.get("channel")
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    left = self.leaving.get(name, 0)
                    if left <= 0:
                        raise SlotMoved(f"Redis moved {name} to another node")
                    if left == 1:
                        del self.leaving[name]
                    else:
                        self.leaving[name] = left - 1
                    continue
                if message.get("type") == "smessage" and message.get("channel") in self._probe_wire:
                    name = message["channel"].decode()
                    if self.on_probe_heard is not None:
                        self.on_probe_heard(name)
                    waiter = self.probe_waiters.pop(name, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                    continue
                self.queue.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.queue.put_nowait(exc)

    async def subscribe(self, *channels: str) -> None:
        """The global channels, on the node that owns the first one's slot (where redis-py
        sends its PUBLISH too)."""
        await self._ensure_topology()
        node = self.cluster.get_node_from_key(channels[0])
        if node is None:
            raise RedisConnectionError(f"no node serves {channels[0]}")
        await self._pubsub(node).subscribe(*channels)
        self._read(node.name)

    async def ssubscribe(self, *channels: str) -> None:
        """Each channel on the node that owns its slot; one command per slot (CROSSSLOT)."""
        await self._ensure_topology()
        by_slot: dict[tuple[str, int], list[str]] = defaultdict(list)
        nodes: dict[str, ClusterNode] = {}
        for channel in channels:
            slot = key_slot(channel.encode())
            node = self.cluster.nodes_manager.get_node_from_slot(slot)
            nodes[node.name] = node
            by_slot[(node.name, slot)].append(channel)
        for (name, _), group in by_slot.items():
            await self._pubsub(nodes[name]).ssubscribe(*group)
            for channel in group:
                self.where[channel] = name
            self._read(name)

    async def sunsubscribe(self, *channels: str) -> None:
        for channel in channels:  # one command per channel: one slot per command here too
            name = self.where.pop(channel, None)
            if name is not None and name in self.pubsubs:
                self.leaving[channel] = self.leaving.get(channel, 0) + 1
                await self.pubsubs[name].sunsubscribe(channel)

    async def subscribe_probes(self, prefix: str) -> None:
        """One sharded probe channel per master: `prefix:{n}` with the first n whose slot
        that master owns (a few tries each: a master owns a third of the slots here)."""
        await self._ensure_topology()
        masters = {node.name for node in self.cluster.get_primaries()}
        found: dict[str, str] = {}
        n = 0
        while len(found) < len(masters) and n < 100_000:
            channel = f"{prefix}:{{{n}}}"
            node = self.cluster.nodes_manager.get_node_from_slot(key_slot(channel.encode()))
            found.setdefault(node.name, channel)
            n += 1
        self.probe_channels = {channel: name for name, channel in found.items()}
        self._probe_wire = {channel.encode() for channel in self.probe_channels}
        await self.ssubscribe(*self.probe_channels)
        for channel in self.probe_channels:
            self.where.pop(channel, None)  # not a room channel: never unsubscribed on its own

    def nodes_of(self) -> dict[str, str]:
        """Room channel → the node (`host:port`) this listener subscribed it on."""
        return dict(self.where)

    def fail(self, error: BaseException) -> None:
        """End `listen()` with this error (the manager then reconnects and resubscribes)."""
        self.queue.put_nowait(error)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        readers, self.readers = self.readers, {}
        for task in readers.values():
            task.cancel()
        if readers:
            await asyncio.wait(readers.values(), timeout=self.connect_timeout)
        pubsubs, self.pubsubs = self.pubsubs, {}
        for pubsub in pubsubs.values():
            try:
                await pubsub.aclose()
                await pubsub.connection_pool.disconnect()
            except Exception:
                pass


class ClusterRedis:
    """Mixin placed before ResilientRedis (server/redisbus.py) in the Redis managers'
    bases: when REDIS_URL names a Cluster, the publishing client and the listener speak to
    the Cluster (see the module docstring); with any other URL it changes nothing."""

    redis_url: str
    timeout: float
    redis: Any
    pubsub: Any
    connected: bool
    listening: bool | None
    health: Any
    probe_channel: str
    hearing: Any  # server/redisbus.py ProbeHearing
    _client: Any

    @property
    def on_cluster(self) -> bool:
        return is_cluster_url(self.redis_url)

    def configure(self, **options: Any) -> None:
        """A malformed cluster URL stops the start here, not as an outage retried forever."""
        if self.on_cluster:
            cluster_parts(self.redis_url)
        super().configure(**options)  # type: ignore[misc]

    def client(self) -> Any:
        if not self.on_cluster:
            return super().client()  # type: ignore[misc]
        if self._client is None:
            self._client = cluster_client(self.redis_url, timeout=self.timeout)
        return self._client

    def _redis_connect(self) -> None:
        """python-socketio's hook, called by the listener before it subscribes."""
        if not self.on_cluster:
            return super()._redis_connect()  # type: ignore[misc]
        self.redis = cluster_client(self.redis_url, timeout=max(self.timeout, 1.0))
        self.pubsub = ClusterListener(self.redis, connect_timeout=max(self.timeout, 1.0))
        self.pubsub.on_probe_heard = self.hearing.heard
        self.connected = True

    async def _listener_subscribed(self) -> None:
        await super()._listener_subscribed()  # type: ignore[misc]
        if isinstance(self.pubsub, ClusterListener):
            await self.pubsub.subscribe_probes(f"{self.probe_channel}:shard")

    async def probe(self) -> bool | None:
        """The global channels' probe, then on a Cluster one SPUBLISH per master, each heard
        (late: None, as for the global one; see server/redisbus.py `ProbeHearing`)."""
        answered: bool | None = await super().probe()  # type: ignore[misc]
        listener = self.pubsub
        if answered is False or not self.listening or not isinstance(listener, ClusterListener) or not listener.probe_channels:
            return answered
        loop = asyncio.get_running_loop()
        waiters = {channel: loop.create_future() for channel in listener.probe_channels}
        listener.probe_waiters = dict(waiters)
        for channel in waiters:
            self.hearing.published(channel)
        try:
            pipe = self.client().pipeline(transaction=False)
            for channel in waiters:
                pipe.spublish(channel, b"probe")
            await asyncio.wait_for(pipe.execute(), self.timeout * 2)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.report_down("probe", exc)
            self.hearing.forget()
            return False
        try:
            await asyncio.wait_for(asyncio.gather(*waiters.values()), self.timeout * 2)
        except TimeoutError:
            # wait_for cancelled the unheard ones; the heard ones hold a result
            unheard = [c for c, w in waiters.items() if w.cancelled() or not w.done()]
            nodes = listener.probe_channels
            return self._unheard(  # type: ignore[attr-defined]
                unheard, lambda deaf: f"the listener heard no probe on Cluster masters {sorted(nodes[c] for c in deaf)}")
        return answered

    def reset_listener(self) -> None:
        if isinstance(self.pubsub, ClusterListener):
            self.pubsub.fail(RedisConnectionError("listener reset"))
            return
        super().reset_listener()  # type: ignore[misc]
