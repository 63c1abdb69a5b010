"""Per-room Redis channels: an instance hears only the rooms its own sockets are in.

python-socketio's AsyncRedisManager publishes every emit on one channel that every
instance hears, so each instance parses and discards the events of every other instance's
sockets: fan-out work grows with instances × events. With `STUDYHALL_REDIS_CHANNELS=room`
(the default) an emit to a Socket.IO room is published with SPUBLISH on that room's own
channel (`<channel>:room:<namespace>:<room>`), and an instance holds an SSUBSCRIBE on a
room's channel exactly while one of its local sockets is in the room. Sharded pub/sub
(Redis 7) hashes each channel to one shard of a Redis Cluster, so the fan-out spreads over
shards instead of being copied to all of them as a classic PUBLISH is.

What stays on the global channel (rare): broadcasts to a whole namespace (`resync`), emits
to a single sid of another instance, emits with callbacks, and python-socketio's control
messages (disconnect, enter/leave/close room, callback answers); notices and probes keep
their channels (server/redisbus.py). A room name shaped like a Socket.IO sid (20 URL-safe
base64 characters) is taken for a sid; an emit to one of this instance's own sids is not
published at all (it was delivered locally).

Joining races: `enter_room` returns only once Redis confirmed the subscription (or Redis
is known down, when the outage's `resync` covers the gap), so whatever a handler reads
from the database after entering a room, anything committed later is published after the
subscription is active: a join that returns history has no gap. Entering from inside the
listener (a remote `enter_room` or a notice) cannot wait for the listener itself; such a
socket learns of a missed message by its seq, as after any gap.

An emit to several rooms is published once per room; a socket in two of them would get it
twice, so each copy carries an emit id and the receiving instance gives each socket an
emit once (`RecentEmits`). An emit to more rooms than `STUDYHALL_REDIS_ROOM_EMIT_LIMIT` is
published once on the global channel instead: r copies, one per room, cost the fleet more
than one copy per instance once r passes the number of instances. Group conversations do
not come here any more: they have one room their members' sockets are in
(handlers/grouprooms.py), so a group of any size is one publish; what still names many
rooms is presence (to a user's partners) and a group in its first seconds (its room plus
its members' own rooms while the enter notice travels). A room named in `skip_sid` (a
`user:` room: typing and read skip their author) skips this instance's sockets in it
(`_expand_skip`). Rooms keep their order (one channel, one publisher queue); two
rooms' events may interleave differently on a Cluster (different shards), which clients
already handle (everything carries a seq).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from server.jsonutil import dumps_bytes

log = logging.getLogger(__name__)

SID_SHAPE = re.compile(r"[A-Za-z0-9_-]{20}")  # python-engineio's generate_id(): 15 random bytes, base64
SUBSCRIBE_CHUNK = 1000  # channels per SSUBSCRIBE when re-subscribing everything
DEDUPE_SECONDS = 30.0  # how long a multi-room emit's recipients are remembered

Publication = tuple[str, bytes | str, bool]  # (channel, payload, sharded)


def room_channel(prefix: str, namespace: str, room: str) -> str:
    return f"{prefix}:room:{namespace}:{room}"


class Subscriptions:
    """Which room channels this instance needs (`wanted`), which it asked Redis for on the
    current listener connection (`sent`) and which Redis confirmed. Bookkeeping only: the
    manager sends the commands. A channel asked for twice (left and re-entered before the
    first answer) is ready only after the last SSUBSCRIBE's confirmation."""

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.sent: set[str] = set()
        self.unconfirmed: dict[str, int] = {}  # channel -> SSUBSCRIBEs sent, not yet confirmed
        self.confirmed: set[str] = set()
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}

    def changes(self) -> tuple[list[str], list[str]]:
        """What to SUNSUBSCRIBE and SSUBSCRIBE to make Redis match `wanted`; marks them sent."""
        drop = sorted(self.sent - self.wanted)
        add = sorted(self.wanted - self.sent)
        for channel in drop:
            self.sent.discard(channel)
            self.confirmed.discard(channel)
        for channel in add:
            self.sent.add(channel)
            self.confirmed.discard(channel)
            self.unconfirmed[channel] = self.unconfirmed.get(channel, 0) + 1
        return drop, add

    def reset(self) -> None:
        """The listener's connection is gone, and with it every subscription."""
        self.sent.clear()
        self.unconfirmed.clear()
        self.confirmed.clear()

    def on_confirmed(self, channel: str) -> None:
        left = self.unconfirmed.get(channel, 0) - 1
        if left > 0:
            self.unconfirmed[channel] = left
            return
        self.unconfirmed.pop(channel, None)
        if channel in self.sent:
            self.confirmed.add(channel)
            for waiter in self.waiters.pop(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def ready(self, channel: str) -> asyncio.Future[None] | None:
        """None when the channel is subscribed (or not wanted); else a future for it."""
        if channel in self.confirmed or channel not in self.wanted:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(channel, []).append(waiter)
        return waiter


class RecentEmits:
    """Sockets already given a multi-room emit, by emit id, for DEDUPE_SECONDS."""

    def __init__(self) -> None:
        self.given: dict[str, set[str]] = {}
        self.expiry: deque[tuple[float, str]] = deque()

    def take(self, emit_id: str, sids: Iterable[str]) -> set[str]:
        """Record these sids as given; return those that already were."""
        now = time.monotonic()
        while self.expiry and self.expiry[0][0] < now:
            self.given.pop(self.expiry.popleft()[1], None)
        given = self.given.get(emit_id)
        if given is None:
            self.given[emit_id] = set(sids)
            self.expiry.append((now + DEDUPE_SECONDS, emit_id))
            return set()
        already = given.intersection(sids)
        given.update(sids)
        return already


class RoomChannels:
    """Mixin placed before ResilientRedis (server/redisbus.py) in a Redis manager's bases:
    routes emits to room channels and keeps this instance's subscriptions in step with its
    local sockets' rooms. `configure_rooms` once after construction."""

    channel: str
    host_id: str
    rooms: dict[str, dict[Any, Any]]
    pubsub: Any
    listening: bool | None
    timeout: float
    health: Any
    _own_marker: bytes

    def configure_rooms(self, mode: str, emit_limit: int = 16) -> None:
        self.room_mode = mode == "room"
        self.emit_limit = max(1, emit_limit)
        self.subscriptions = Subscriptions()
        self.recent = RecentEmits()
        self._emit_ids = itertools.count(1)
        self._flush_scheduled = False
        self._subscribe_lock = asyncio.Lock()
        self._listener_task: asyncio.Task[Any] | None = None
        self._room_prefix = f"{self.channel}:room:".encode()

    # --- publishing -------------------------------------------------------------------

    def _route(self, data: dict[str, Any]) -> list[Publication]:
        """Where one python-socketio message goes: room channels for emits to rooms, the
        global channel for everything else."""
        if not self.room_mode or data.get("method") != "emit" or data.get("callback") is not None:
            return super()._route(data)  # type: ignore[misc]
        room = data.get("room")
        if room is None:
            return super()._route(data)  # type: ignore[misc]
        namespace = data.get("namespace") or "/"
        names = [room] if isinstance(room, str) else list(room)
        if len(names) > self.emit_limit:
            # A big group: one copy to every instance is cheaper than one per member's room.
            return super()._route(data)  # type: ignore[misc]
        sids = [r for r in names if isinstance(r, str) and SID_SHAPE.fullmatch(r)]
        rooms = [r for r in names if not (isinstance(r, str) and SID_SHAPE.fullmatch(r))]
        out: list[Publication] = []
        remote_sids = [s for s in sids if not self.is_sid_room(namespace, s)]  # type: ignore[attr-defined]
        if remote_sids:
            out.extend(super()._route({**data, "room": remote_sids}))  # type: ignore[misc]
        if not rooms:
            return out
        common = {k: v for k, v in data.items() if k != "room"}
        if len(rooms) > 1:
            common["eid"] = f"{self.host_id}:{next(self._emit_ids)}"
        tail = dumps_bytes(common)[1:]  # encode the event once; each copy only names its room
        for r in rooms:
            out.append((room_channel(self.channel, namespace, r), b'{"room":' + dumps_bytes(r) + b"," + tail, True))
        return out

    async def _check_server(self) -> bool:
        """Sharded pub/sub needs Redis 7: on an older server, say so once and use the one
        channel (every instance sharing that Redis decides the same)."""
        if not self.room_mode:
            return True
        try:
            info = await asyncio.wait_for(self.client().info("server"), self.timeout * 2)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            raise
        except Exception:
            return False  # asked again after the next probe
        version = str(info.get("redis_version", "0"))
        if int(version.split(".")[0] or 0) < 7:
            log.error("Redis %s has no sharded pub/sub (7.0 or later): room channels are off, every event goes "
                      "on the one channel (STUDYHALL_REDIS_CHANNELS=single)", version)
            self.room_mode = False
            self.subscriptions.wanted.clear()
        return True

    # --- local membership -> subscriptions --------------------------------------------

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        new = room is not None and room != sid and room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if new and self.room_mode:
            self.subscriptions.wanted.add(room_channel(self.channel, namespace, room))
            self._schedule_flush()

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        if self.room_mode and room is not None and room != sid and room not in self.rooms.get(namespace, {}):
            channel = room_channel(self.channel, namespace, room)
            if channel in self.subscriptions.wanted:
                self.subscriptions.wanted.discard(channel)
                self._schedule_flush()

    async def enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        """Enter, and return once this instance hears the room (see the module docstring)."""
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if not self.room_mode or room is None or room == sid:
            return
        if asyncio.current_task() is self._listener_task or not self.health.up:
            return
        waiter = self.subscriptions.ready(room_channel(self.channel, namespace or "/", room))
        if waiter is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout * 2)
        except TimeoutError:
            # Redis is slow or going down: the watcher will see it and resync this socket.
            log.debug("room subscription not confirmed in time", extra={"room": room})

    def _schedule_flush(self) -> None:
        """One SUNSUBSCRIBE/SSUBSCRIBE pair per event-loop turn, however many rooms changed."""
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        asyncio.get_running_loop().create_task(self._flush(), name="redis-room-subscriptions")

    async def _flush(self) -> None:
        """Send what changed on the listener's connection. Without a listening connection
        nothing is sent: the listener subscribes everything wanted when it (re)connects."""
        async with self._subscribe_lock:
            if not self.room_mode or not self.listening or self.pubsub is None:
                return
            drop, add = self.subscriptions.changes()
            self._gauge()
            try:
                if drop:
                    await asyncio.wait_for(self.pubsub.sunsubscribe(*drop), self.timeout * 2)
                for i in range(0, len(add), SUBSCRIBE_CHUNK):
                    await asyncio.wait_for(self.pubsub.ssubscribe(*add[i:i + SUBSCRIBE_CHUNK]), self.timeout * 2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The listener's connection is broken: make it reconnect, which subscribes all.
                log.debug("room subscription failed: %r", exc)
                self.reset_listener()  # type: ignore[attr-defined]

    def _gauge(self) -> None:
        metrics = self.health.metrics
        if metrics is not None:
            metrics.redis_room_channels.set(len(self.subscriptions.wanted))

    # --- the listener -----------------------------------------------------------------

    async def _listener_subscribed(self) -> None:
        """The listener holds a new connection: subscribe every room this instance needs."""
        self._listener_task = asyncio.current_task()
        await super()._listener_subscribed()  # type: ignore[misc]
        if self.room_mode:
            self.subscriptions.reset()
            await self._flush()

    def _listener_lost(self) -> None:
        super()._listener_lost()  # type: ignore[misc]
        self.subscriptions.reset()

    def _shard_message(self, message: dict[str, Any]) -> bytes | None:
        """A message of the sharded kind: a room's event (returned for python-socketio's
        listener unless it is this instance's own echo) or a subscription's confirmation."""
        kind = message.get("type")
        channel = message.get("channel")
        if kind == "smessage" and isinstance(channel, bytes) and channel.startswith(self._room_prefix):
            data = message["data"]
            metrics = self.health.metrics
            if metrics is not None:
                metrics.redis_received.labels("room").inc()
                metrics.redis_received_bytes.labels("room").inc(len(data))
            if self._own_marker in data:  # delivered locally when it was emitted
                if metrics is not None:
                    metrics.redis_emits.labels("own").inc()
                return None
            return data
        if kind == "ssubscribe" and channel is not None:
            self.subscriptions.on_confirmed(channel.decode() if isinstance(channel, bytes) else channel)
        return None

    # --- receiving --------------------------------------------------------------------

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """Deliver another instance's emit to the local sockets it names, each once."""
        if message.get("host_id") == self.host_id:  # this instance's own emit, delivered here first
            return await super()._handle_emit(message)  # type: ignore[misc]
        namespace = message.get("namespace") or "/"
        room = message.get("room")
        skip = message.get("skip_sid")
        skip_list = skip if isinstance(skip, list) else ([] if skip is None else [skip])
        if skip_list:
            # A skipped room name (`user:<id>`: typing and read skip their author's sockets,
            # wherever they are) stands for this instance's sockets in it.
            skip_list = self._expand_skip(namespace, skip_list)
            message = {**message, "skip_sid": skip_list}
        emit_id = message.get("eid")
        if emit_id is not None and message.get("callback") is None:
            targets = [sid for sid, _ in self.get_participants(namespace, room) if sid not in skip_list]  # type: ignore[attr-defined]
            already = self.recent.take(emit_id, targets)
            if already:
                targets = [sid for sid in targets if sid not in already]
                message = {**message, "skip_sid": skip_list + sorted(already)}
            wanted = bool(targets)
        else:
            wanted = self._has_recipient(namespace, room, skip_list)
        metrics = self.health.metrics
        if metrics is not None:
            metrics.redis_emits.labels("delivered" if wanted else "ignored").inc()
        if wanted:
            await super()._handle_emit(message)  # type: ignore[misc]

    def _expand_skip(self, namespace: str, skip: list[Any]) -> list[Any]:
        ns = self.rooms.get(namespace) or {}
        out = list(skip)
        for name in skip:
            members = ns.get(name) if isinstance(name, str) else None
            if members:
                out.extend(sid for sid in members if sid not in out)
        return out

    def _has_recipient(self, namespace: str, room: Any, skip: list[Any]) -> bool:
        ns = self.rooms.get(namespace)
        if not ns:
            return False
        names = [room] if room is None or isinstance(room, str) else room
        for name in names:
            members = ns.get(name)
            if members and (not skip or any(sid not in skip for sid in members)):
                return True
        return False
