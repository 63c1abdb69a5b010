"""python-socketio's server, guarded against hand-written frames.

Clients that write their own Socket.IO frames can reach corners the official clients
never do. This server keeps every such frame from running server logic, answers it the
protocol's way when it carries an ack id, and keeps the connection up:

- Reserved event names. `42["disconnect"]` would run the server's own disconnect
  handler (python-socketio looks the name up among the registered handlers first) while
  the transport stays open and in its rooms, so logout, expiry or bans could no longer
  reach it. Names python-socketio or the clients treat specially (`RESERVED_EVENTS`), and
  events that are not `[name: str, ...]`, are answered `bad_request` and go no further.
- A second CONNECT for a namespace the socket is already connected to is ignored (stock:
  an ERROR traceback per frame and a CONNECT_ERROR); the session is never replaced.
- Engine.IO frames no client sends (empty, an unknown packet type) are dropped before
  python-engineio sees them (stock: an empty or non-digit frame kills the connection with
  a traceback, an unknown type logs a traceback per frame and keeps it).
- Undecodable frames (a lone UTF-16 surrogate, JSON nested past orjson's limit, garbage
  after the packet type): stock python-socketio logs an ERROR traceback per frame and
  never answers. Here the ack id is read from the packet header (`42<id>[...]`, before
  the JSON) and answered `bad_request`; the log gets one sampled line per `LOG_EVERY_SECONDS`.
- A socket the server disconnects (logout, expiry, role change) is sent DISCONNECT, and
  its Engine.IO connection is then closed too once no namespace is left on it: a client
  that ignores the DISCONNECT packet does not keep a transport open.
- Long-polling: socket.io-client sends everything queued during a poll in one POST, and
  python-engineio refuses a POST of more than 16 packets outright (all of them are lost,
  none acked). Here a POST may carry `max_poll_packets` (derived from the rate-limit burst
  by `create_sio`); events past that are answered `rate_limited`, like the events past
  the burst on a websocket. A client's CLOSE ends its pending poll at once (stock: the
  GET waited for the ping timeout, and python-socketio's client 25 s with it).
- Long-polling answers: python-engineio hands a pending GET everything queued, however
  many packets, but its own client (python-socketio's) refuses a payload of more than 16
  (`Payload.max_decode_packets`) and then hears nothing more: a burst of 17 events during
  one poll (a group commit of a busy room) silenced it. Each answer here carries at most
  `POLL_ANSWER_PACKETS`; the rest wait, in order, for the client's next GET, which it
  sends at once.

Every refused frame is answered through `refuse_frame(sid, code, message) -> ack`, which the
gateway sets (server/gateway.py) so that refusals count against the event rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Any, Protocol

import socketio
from engineio import async_socket, exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from socketio import packet as sio_packet

log = logging.getLogger(__name__)

# Server-side handlers python-socketio calls by these names, names socket.io clients
# reserve for themselves, and the catch-all handler's own key.
RESERVED_EVENTS = frozenset({
    "connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener",
    "message", "__disconnect_final", "*",
})
LOG_EVERY_SECONDS = 10.0
MAX_ACK_ID_DIGITS = 15


class Refuse(Protocol):
    """The gateway's `refuse_frame`: the ack for a refused event (see server/gateway.py)."""

    def __call__(self, sid: str | None, code: str, message: str, *, count: bool = True) -> dict[str, Any]: ...


def _default_refuse(sid: str | None, code: str, message: str, *, count: bool = True) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class SampledLog:
    """At most one line per kind per `every` seconds, with how many were left out."""

    def __init__(self, every: float = LOG_EVERY_SECONDS) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, **extra: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        log.warning(message, extra={"kind": kind, "skipped_since_last": skipped, **extra})


def engine_frame_ok(frame: str | bytes) -> bool:
    """An Engine.IO frame python-engineio can take: binary, or text starting with a packet
    type 0-6 (or `b`, base64 binary over polling)."""
    return isinstance(frame, bytes) or (bool(frame) and frame[0] in "0123456b")


def ack_header(encoded: str) -> tuple[int | None, str, int | None]:
    """(packet type, namespace, ack id) read from a Socket.IO packet's header without
    decoding its JSON: `<type>[<attachments>-][<namespace>,][<id>]<json>`. Unknown parts
    are None (the namespace defaults to "/")."""
    if not encoded or not encoded[0].isdigit():
        return None, "/", None
    kind, rest = int(encoded[0]), encoded[1:]
    if kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        dash = rest.find("-")
        if 0 < dash <= 10 and rest[:dash].isdigit():
            rest = rest[dash + 1:]
    namespace = "/"
    if rest.startswith("/"):
        comma = rest.find(",")
        if comma == -1:
            return kind, rest.split("?", 1)[0], None
        namespace, rest = rest[:comma].split("?", 1)[0], rest[comma + 1:]
    digits = 0
    while digits < len(rest) and digits <= MAX_ACK_ID_DIGITS and rest[digits].isdigit():
        digits += 1
    if digits == 0 or digits > MAX_ACK_ID_DIGITS:
        return kind, namespace, None
    return kind, namespace, int(rest[:digits])


class GuardedServer(socketio.AsyncServer):
    """`socketio.AsyncServer` that refuses hostile frames (see the module docstring)."""

    def __init__(self, *args: Any, max_poll_packets: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_poll_packets = max(eio_payload.Payload.max_decode_packets, max_poll_packets)
        self.refuse_frame: Refuse = _default_refuse
        self.sampled_log = SampledLog()
        self._background: set[Any] = set()

    # --- answering refused frames -----------------------------------------------------

    async def _refuse(self, eio_sid: str, namespace: str, ack_id: int | None, code: str, message: str,
                      *, count: bool = True) -> None:
        """Answer a refused event when it has an ack id and its namespace is connected;
        `count`: it takes a token from the event rate limits."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        ack = self.refuse_frame(sid, code, message, count=count)
        if ack_id is not None:
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=ack_id, data=[ack]))

    async def _refuse_undecodable(self, eio_sid: str, data: Any, exc: BaseException) -> None:
        kind, namespace, ack_id = ack_header(data) if isinstance(data, str) else (None, "/", None)
        self.sampled_log.warning("undecodable", "refused undecodable Socket.IO frames", error=str(exc)[:200])
        if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            await self._refuse(eio_sid, namespace, ack_id, "bad_request", "The event could not be decoded.")
        elif kind == sio_packet.CONNECT and self.manager.sid_from_eio_sid(eio_sid, namespace) is None:
            message = "The connect packet could not be decoded."
            refusal = {"message": message, "data": {"code": "bad_request", "message": message}}
            await self._send_packet(eio_sid, self.packet_class(sio_packet.CONNECT_ERROR, data=refusal, namespace=namespace))

    def guard_websockets(self) -> None:
        """Drop Engine.IO frames no client sends before python-engineio reads them. Call it
        after anything else that wraps the websocket driver (server/fanout.py's `install`):
        this subclasses whatever driver is in place."""
        driver = self.eio._async["websocket"]
        sampled_log = self.sampled_log

        class FilteredWebSocket(driver):  # type: ignore[misc, valid-type]
            async def wait(self) -> Any:
                while True:
                    frame = await super().wait()
                    if engine_frame_ok(frame):
                        return frame
                    sampled_log.warning("undecodable", "dropped invalid Engine.IO frames")

        self.eio._async = {**self.eio._async, "websocket": FilteredWebSocket}

    # --- python-socketio's entry points ---------------------------------------------

    async def disconnect(self, sid: str, namespace: str | None = None, ignore_queue: bool = False) -> None:
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace or "/")
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if eio_sid is None or eio_sid not in self.eio.sockets:
            return
        if any(self.manager.sid_from_eio_sid(eio_sid, n) is not None for n in self.manager.get_namespaces()):
            return
        # In the background: closing waits for the DISCONNECT packet to be written out,
        # which a client that stopped reading must not hold the caller up for.
        task = self.start_background_task(self.eio.disconnect, eio_sid)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await super()._handle_eio_connect(eio_sid, environ)
        sock = self.eio.sockets.get(eio_sid)
        if isinstance(sock, async_socket.AsyncSocket):
            sock.handle_post_request = _PollPost(self, sock)
            sock.poll = _CappedPoll(sock)
        return result

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Decode once; an undecodable frame is refused instead of raising."""
        if eio_sid in self._binary_packet or not isinstance(data, str):
            try:
                await super()._handle_eio_message(eio_sid, data)
            except Exception as exc:  # a stray or broken binary attachment
                self._binary_packet.pop(eio_sid, None)
                self.sampled_log.warning("undecodable", "refused an unexpected binary frame", error=str(exc)[:200])
            return
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as exc:
            await self._refuse_undecodable(eio_sid, data, exc)
            return
        kind, namespace = pkt.packet_type, pkt.namespace or "/"
        if kind == sio_packet.CONNECT:
            await self._handle_connect(eio_sid, namespace, pkt.data)
        elif kind == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, namespace, self.reason.CLIENT_DISCONNECT)
        elif kind == sio_packet.EVENT:
            await self._handle_event(eio_sid, namespace, pkt.id, pkt.data)
        elif kind == sio_packet.ACK:
            await self._handle_ack(eio_sid, namespace, pkt.id, pkt.data)
        elif kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK) and self.manager.sid_from_eio_sid(eio_sid, namespace):
            self._binary_packet[eio_sid] = pkt
        else:  # CONNECT_ERROR, an unknown type, binary before connecting: not for a server
            self.sampled_log.warning("unexpected", "ignored an unexpected Socket.IO packet", packet_type=kind)

    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        namespace = namespace or "/"
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            self.sampled_log.warning("reconnect", "ignored a CONNECT for an already connected namespace")
            return
        await super()._handle_connect(eio_sid, namespace, data)

    async def _handle_event(self, eio_sid: str, namespace: str, id: int | None, data: Any) -> None:  # `id`: python-socketio's parameter name
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            await self._refuse(eio_sid, namespace, id, "bad_request", "An event is [name, payload].")
            return
        if data[0] in RESERVED_EVENTS:
            await self._refuse(eio_sid, namespace, id, "bad_request", f"{data[0]!r} is a reserved event name.")
            return
        await super()._handle_event(eio_sid, namespace, id, data)


POLL_ANSWER_PACKETS = 16  # python-engineio's clients refuse more in one payload


class _CappedPoll:
    """python-engineio's `AsyncSocket.poll` (wait for the first packet, then take what is
    queued without waiting), taking at most `POLL_ANSWER_PACKETS`. The websocket writer of
    python-engineio uses the same method; there the cap only splits its loop."""

    def __init__(self, sock: async_socket.AsyncSocket) -> None:
        self.sock = sock

    async def __call__(self) -> list[eio_packet.Packet]:
        sock = self.sock
        try:
            first = await asyncio.wait_for(sock.queue.get(), sock.server.ping_interval + sock.server.ping_timeout)
            sock.queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise exceptions.QueueEmpty() from None
        if first is None:
            return []
        packets = [first]
        while len(packets) < POLL_ANSWER_PACKETS:
            try:
                pkt = sock.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            sock.queue.task_done()
            if pkt is None:  # the end of the socket: leave it for the next poll
                sock.queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


class _PollPost:
    """A long-polling socket's POST handler: python-engineio's, with the server's packet
    limit instead of the process-wide 16, and the events past it refused, not dropped."""

    def __init__(self, server: GuardedServer, sock: async_socket.AsyncSocket) -> None:
        self.server = server
        self.sock = sock

    async def __call__(self, environ: dict[str, Any]) -> None:
        sock, eio = self.sock, self.sock.server
        length = int(environ.get("CONTENT_LENGTH", "0"))
        if length > eio.max_http_buffer_size:
            raise exceptions.ContentTooLongError()
        try:
            body = (await environ["wsgi.input"].read(length)).decode("utf-8")
        except UnicodeDecodeError:
            self.server.sampled_log.warning("undecodable", "dropped a long-polling POST that is not UTF-8")
            return
        if body.startswith("d="):  # JSONP, as python-engineio's Payload reads it
            body = urllib.parse.parse_qs(body).get("d", [""])[0]
        encoded = body.split("\x1e") if body else []
        limit = self.server.max_poll_packets
        for raw in encoded[:limit]:
            if not engine_frame_ok(raw):
                self.server.sampled_log.warning("undecodable", "dropped invalid Engine.IO frames")
                continue
            try:
                pkt = eio_packet.Packet(encoded_packet=raw)
            except Exception as exc:
                self.server.sampled_log.warning("undecodable", "refused an undecodable Engine.IO packet", error=str(exc)[:200])
                continue
            try:
                await sock.receive(pkt)
            except exceptions.UnknownPacketError:
                self.server.sampled_log.warning("unexpected", "ignored an unexpected Engine.IO packet")
            if pkt.packet_type == eio_packet.CLOSE:
                # python-engineio closes the socket but leaves the client's pending GET waiting
                # for packets until the ping timeout (a polling client's disconnect took 25 s):
                # end that poll now, as its own shutdown does (None: no more packets).
                sock.queue.put_nowait(None)
        for raw in encoded[limit:]:
            if raw.startswith("4"):
                kind, namespace, ack_id = ack_header(raw[1:])
                if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
                    # Not counted: the events before it, still queued, must find their tokens.
                    await self.server._refuse(sock.sid, namespace, ack_id, "rate_limited",
                                              "Too many events in one poll; slow down.", count=False)
