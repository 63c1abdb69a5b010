"""Broadcast to big rooms: encode once, write one pre-built websocket frame per socket.

python-socketio's `AsyncManager.emit` encodes a broadcast once but then makes one asyncio
task per recipient; each task queues the packet for the socket's writer task, which
UTF-8-encodes it again, builds a frame header and writes it (and compresses it again
per socket when the client negotiated permessage-deflate). For a room of 1,000 that is
thousands of task switches and syscalls per message.

`FastFanout` replaces that local delivery step (and only it): the Socket.IO packet, the
Engine.IO packet and the websocket frame bytes are built once per emit, then appended
to each websocket recipient's pending output; one `transport.write` per socket per
event-loop turn flushes everything that socket got in that turn. Sockets on long-polling,
still upgrading or still connecting, and emits with callbacks or binary data, go the
stock way. Frames are sent uncompressed (RFC 7692 allows uncompressed messages on a
deflate connection), which also saves the per-socket compression.

A socket whose unsent output passes `MAX_BUFFERED_BYTES` is a consumer that cannot keep
up: it is closed (the client reconnects and recovers by seq) rather than letting the
server's memory grow without bound.

Acks to such sockets take the same path (`install` wraps the server's packet sender), so
a sender's ack and its own `message:new` leave in one write. Ordering: frames to one
socket leave in the order they were produced; only what still goes the stock way (emits
with callbacks or binary data, sockets not yet upgraded) can be overtaken by a later
frame (clients dedupe by seq; nothing in the protocol depends on acks before events).

Wiring (server/realtime.py's `create_sio`, the default; STUDYHALL_FANOUT=stock turns it
off): the manager comes from `create_manager(settings.cluster)`, then `install(sio)` runs once
after creating the server. With Redis the manager is python-socketio's AsyncRedisManager
with this local step swapped in, so each instance publishes once per room (per-room
channels, server/roomchannels.py) and delivers locally with the fast path.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import socketio
from engineio import packet as eio_packet
from engineio.async_drivers.aiohttp import WebSocket as EngineWebSocket
from socketio import packet as sio_packet
from socketio.async_pubsub_manager import AsyncPubSubManager

from handlers.settings import ClusterSettings
from server.redisbus import ResilientRedis
from server.rediscluster import ClusterRedis
from server.roomchannels import RoomChannels

log = logging.getLogger(__name__)

MAX_BUFFERED_BYTES = 8 * 1024 * 1024


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed websocket text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def message_frame(eio_pkt: eio_packet.Packet) -> bytes:
    """The websocket frame that carries an Engine.IO packet."""
    return text_frame(eio_pkt.encode().encode("utf-8"))


class Outbox:
    """Frames waiting to be written, grouped by transport.

    The flush runs two event-loop turns after the first frame is put, not one: a batch's
    fan-out settles its senders' futures in the same turn as it puts the frames, and the
    senders' tasks, woken in the next turn, produce their acks there. Flushing a turn
    later lets each sender's ack leave in the same write as the batch's `message:new`
    frames (one write per socket per batch, not two). A turn is not a timer: on an idle
    server both turns run back to back, within microseconds."""

    def __init__(self) -> None:
        self.pending: dict[asyncio.Transport, list[bytes]] = {}
        self.scheduled = False
        self.slow_consumers_closed = 0

    def put(self, transport: asyncio.Transport, frame: bytes) -> None:
        frames = self.pending.get(transport)
        if frames is None:
            self.pending[transport] = [frame]
        else:
            frames.append(frame)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, {}
        for transport, frames in pending.items():
            if transport.is_closing():
                continue
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
                self.slow_consumers_closed += 1
                log.warning("closing a socket that cannot keep up with its events")
                transport.abort()


class FastFanout(socketio.AsyncManager):
    """AsyncManager whose local delivery writes pre-built frames (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.websockets: dict[str, asyncio.Transport] = {}  # eio sid -> its websocket's transport
        self.outbox = Outbox()

    def websocket_transport(self, eio_sid: str) -> asyncio.Transport | None:
        """The Engine.IO socket's websocket transport when it is open and upgraded, else None."""
        transport = self.websockets.get(eio_sid)
        if transport is None or transport.is_closing():
            return None
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or not sock.upgraded or sock.upgrading or sock.closed:
            return None
        return transport

    def _transport(self, sid: str, eio_sid: str, namespace: str) -> asyncio.Transport | None:
        """The socket's websocket transport when the fast path is safe for it, else None."""
        if sid in self.pending_connect.get(namespace, ()):  # its CONNECT packet is not out yet
            return None
        return self.websocket_transport(eio_sid)

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        room = to or room
        if callback is not None or namespace not in self.rooms:
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
        pkt = self._event_packet(event, data, namespace)
        if pkt is None:  # binary attachments: leave them to python-socketio
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, **kwargs)
        await self._deliver(namespace, room, skip_sid, [pkt], message_frame(pkt))

    async def emit_many(self, event: str, datas: Sequence[Any], namespace: str, room: Any) -> None:
        """`emit(event, data)` for each of `datas`, in order, to the same room(s): the frames
        are built once and joined, and the room's participants are walked once, so each
        websocket gets the run as one piece of its next write (a batch of a conversation's
        messages: one put per socket, not one per message). With a pub/sub manager (other
        instances must hear each event) or anything but plain text events, one emit each."""
        packets: list[eio_packet.Packet] = []
        if len(datas) > 1 and not isinstance(self, AsyncPubSubManager) and namespace in self.rooms:
            for data in datas:
                pkt = self._event_packet(event, data, namespace)
                if pkt is None:  # binary attachments
                    break
                packets.append(pkt)
        if len(packets) != len(datas) or len(packets) < 2:  # one message (the usual run at low load), or not for here
            for data in datas:
                await self.emit(event, data, namespace, room=room)
            return
        await self._deliver(namespace, room, None, packets, b"".join(message_frame(p) for p in packets))

    def _event_packet(self, event: str, data: Any, namespace: str) -> eio_packet.Packet | None:
        """The event's Engine.IO packet, encoded once for every recipient; None for one with
        binary attachments (several packets: python-socketio's own path)."""
        args = list(data) if isinstance(data, tuple) else ([data] if data is not None else [])
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        return None if isinstance(encoded, list) else eio_packet.Packet(eio_packet.MESSAGE, encoded)

    async def _deliver(self, namespace: str, room: Any, skip_sid: Any, packets: list[eio_packet.Packet],
                       frame: bytes) -> None:
        """`frame` (the packets' websocket frames, joined) into the next write of every
        upgraded websocket in the room(s); the packets one by one, through python-socketio's
        queue, to every other socket (polling, upgrading, not yet connected)."""
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        slow: list[str] = []
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            transport = self._transport(sid, eio_sid, namespace)
            if transport is None:
                slow.append(eio_sid)
            else:
                self.outbox.put(transport, frame)
        for eio_sid in slow:  # queue puts; nothing here waits on the network
            for p in packets:
                await self.server._send_eio_packet(eio_sid, p)


async def emit_many(sio: socketio.AsyncServer, event: str, datas: Sequence[Any], to: Any) -> None:
    """Several events of one name to the same room(s), in order: through `FastFanout.emit_many`
    when the server has it, else one `sio.emit` each (STUDYHALL_FANOUT=stock)."""
    manager = sio.manager
    if isinstance(manager, FastFanout):
        await manager.emit_many(event, datas, "/", to)
    else:
        for data in datas:
            await sio.emit(event, data, to=to)


class FastRedisFanout(RoomChannels, ClusterRedis, ResilientRedis, socketio.AsyncRedisManager, FastFanout):
    """AsyncRedisManager (publish once per room channel, deliver on the instances that hold
    the room's sockets: server/roomchannels.py) with FastFanout's local step and
    ResilientRedis's queued publishing (server/redisbus.py), on one Redis or, with a
    `redis+cluster://` URL, on a Redis Cluster (ClusterRedis: server/rediscluster.py).

    MRO: RoomChannels → ResilientRedis → AsyncRedisManager → AsyncPubSubManager → FastFanout →
    AsyncManager, so the pub/sub manager's `super().emit` for local delivery lands in
    FastFanout.emit, and RoomChannels sees every local room change first.
    """


REDIS_OPTIONS = {"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 10}


def create_manager(cluster: ClusterSettings) -> socketio.AsyncManager:
    """The client manager for `socketio.AsyncServer(client_manager=...)` (`settings.cluster`)."""
    if cluster.redis_url:
        manager = FastRedisFanout(cluster.redis_url, channel=cluster.redis_channel, redis_options=REDIS_OPTIONS)
        manager.configure(timeout=cluster.redis_timeout_seconds, queue_size=cluster.redis_publish_queue)
        manager.configure_rooms(cluster.redis_channels, cluster.redis_room_emit_limit)
        return manager
    return FastFanout()


def install(sio: socketio.AsyncServer) -> None:
    """Let the manager find each socket's websocket: wrap Engine.IO's aiohttp websocket driver
    (on this server only) so every websocket registers its transport while it is open."""
    manager = sio.manager
    if not isinstance(manager, FastFanout):
        raise TypeError("install() needs a server built with create_manager()")
    eio = sio.eio

    class TrackedWebSocket(EngineWebSocket):
        def __init__(self, handler: Callable[[Any], Any], server: Any) -> None:
            engine_socket = getattr(handler, "__self__", None)

            async def tracked(ws: Any) -> None:
                eio_sid = getattr(engine_socket, "sid", None)
                writer = getattr(ws._sock, "_writer", None)  # aiohttp's WebSocketWriter, set by prepare()
                transport = writer.transport if writer is not None else None
                if eio_sid is not None and transport is not None:
                    manager.websockets[eio_sid] = transport
                try:
                    await handler(ws)
                finally:
                    if eio_sid is not None:
                        manager.websockets.pop(eio_sid, None)

            super().__init__(tracked, server)

    eio._async = {**eio._async, "websocket": TrackedWebSocket}

    stock_send_packet = sio._send_packet

    async def send_packet(eio_sid: str, pkt: Any) -> None:
        """Acks take the fast path too: no task switch to Engine.IO's writer, and an ack
        leaves in the same write as the events the same turn produced for that socket
        (a sender's ack and its own `message:new`), in the order they were produced."""
        if pkt.packet_type == sio_packet.ACK:
            transport = manager.websocket_transport(eio_sid)
            if transport is not None:
                encoded = pkt.encode()
                if isinstance(encoded, str):
                    manager.outbox.put(transport, message_frame(eio_packet.Packet(eio_packet.MESSAGE, encoded)))
                    return
        await stock_send_packet(eio_sid, pkt)

    sio._send_packet = send_packet
