"""The python-socketio / python-engineio internals server/fanout.py, server/guarded_sio.py and
server/ws_deflate.py rely on. pyproject caps both below their next major version; this catches a minor release
that renames or reshapes one of them, naming it, before anything subtler breaks.

Each check is the exact attribute, method or call shape the two modules use. When one fails,
read the new release's code for that name and adapt the module (not this list) first.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import aiohttp.web_ws
import socketio
from aiohttp.http_websocket import WebSocketWriter
from engineio import async_socket, exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp
from socketio import packet as sio_packet
from socketio.async_pubsub_manager import AsyncPubSubManager

from server import fanout, guarded_sio


def _takes(func: Any, *positional: str, keywords: tuple[str, ...] = ()) -> str | None:
    """None if `func` accepts these positional arguments (by count) and keywords (by name)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        return f"no signature ({exc})"
    if params and params[0].name == "self":
        params = params[1:]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional_ok = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    if len(positional_ok) < len(positional) and not var_pos:
        problems.append(f"takes {len(positional_ok)} positional arguments, "
                        f"we pass {len(positional)} ({', '.join(positional)})")
    names = {p.name for p in params}
    missing = [k for k in keywords if k not in names and not var_kw]
    if missing:
        problems.append(f"has no keyword argument {', '.join(missing)}")
    return "; ".join(problems) or None


def _check(problems: list[str], where: str, obj: Any, name: str, *positional: str,
           keywords: tuple[str, ...] = (), call: bool = True) -> Any:
    value = getattr(obj, name, None)
    if value is None:
        problems.append(f"{where}.{name} is gone")
        return None
    if call:
        if not callable(value):
            problems.append(f"{where}.{name} is no longer callable")
        else:
            why = _takes(value, *positional, keywords=keywords)
            if why:
                problems.append(f"{where}.{name} {why}")
    return value


def test_versions_are_within_the_caps() -> None:
    """The versions installed are the ones pyproject allows (5.x and 4.x)."""
    assert version("python-socketio").split(".")[0] == "5", version("python-socketio")
    assert version("python-engineio").split(".")[0] == "4", version("python-engineio")


def test_internals_still_exist() -> None:
    problems: list[str] = []
    S = "socketio.AsyncServer"

    # guarded_sio.GuardedServer overrides and calls these (with these arguments).
    _check(problems, S, socketio.AsyncServer, "_send_packet", "eio_sid", "pkt")
    _check(problems, S, socketio.AsyncServer, "_send_eio_packet", "eio_sid", "eio_pkt")  # fanout.FastFanout.emit
    _check(problems, S, socketio.AsyncServer, "_handle_eio_connect", "eio_sid", "environ")
    _check(problems, S, socketio.AsyncServer, "_handle_eio_message", "eio_sid", "data")
    _check(problems, S, socketio.AsyncServer, "_handle_connect", "eio_sid", "namespace", "data")
    _check(problems, S, socketio.AsyncServer, "_handle_disconnect", "eio_sid", "namespace", "reason")
    _check(problems, S, socketio.AsyncServer, "_handle_event", "eio_sid", "namespace", "id", "data")
    _check(problems, S, socketio.AsyncServer, "_handle_ack", "eio_sid", "namespace", "id", "data")
    _check(problems, S, socketio.AsyncServer, "disconnect", "sid", keywords=("namespace", "ignore_queue"))
    _check(problems, S, socketio.AsyncServer, "start_background_task", "target")
    reason = getattr(socketio.AsyncServer, "reason", None)
    if getattr(reason, "CLIENT_DISCONNECT", None) is None:
        problems.append(f"{S}.reason.CLIENT_DISCONNECT is gone")

    # A real server with the fast-fanout manager, as server/realtime.py builds it.
    try:
        manager = fanout.FastFanout()
        sio = guarded_sio.GuardedServer(async_mode="aiohttp", client_manager=manager)
    except Exception as exc:  # e.g. an attribute __init__ reads is gone: report what we know
        problems.append(f"building guarded_sio.GuardedServer(client_manager=FastFanout()) fails: {exc!r}")
        _fail(problems)
    for attr, kind in (("_binary_packet", dict), ("packet_class", type), ("eio", object), ("manager", object)):
        if not isinstance(getattr(sio, attr, None), kind):
            problems.append(f"{S}().{attr} is gone or no longer a {kind.__name__}")
    drivers = getattr(sio.eio, "_async", None)
    if not isinstance(drivers, dict) or drivers.get("websocket") is not eio_aiohttp.WebSocket:
        problems.append("engineio.AsyncServer()._async['websocket'] is no longer the aiohttp WebSocket driver")
    for attr in ("sockets", "max_http_buffer_size"):
        if not hasattr(sio.eio, attr):
            problems.append(f"engineio.AsyncServer().{attr} is gone")
    _check(problems, "engineio.AsyncServer", sio.eio, "disconnect", "sid")

    # The manager: FastFanout subclasses AsyncManager; GuardedServer asks it about sids.
    M = "socketio.AsyncManager"
    _check(problems, M, socketio.AsyncManager, "emit", "event", "data", "namespace",
           keywords=("room", "skip_sid", "callback"))
    _check(problems, M, socketio.AsyncManager, "get_participants", "namespace", "room")
    _check(problems, M, socketio.AsyncManager, "sid_from_eio_sid", "eio_sid", "namespace")
    _check(problems, M, socketio.AsyncManager, "eio_sid_from_sid", "sid", "namespace")
    _check(problems, M, socketio.AsyncManager, "is_connected", "sid", "namespace")
    _check(problems, M, socketio.AsyncManager, "get_namespaces")
    for attr in ("rooms", "pending_connect"):
        if not isinstance(getattr(manager, attr, None), dict):
            problems.append(f"{M}().{attr} is gone or no longer a dict")
    if getattr(manager, "server", None) is not sio:
        problems.append(f"{M}().server is no longer the server it was given")
    # FastRedisFanout: the pub/sub manager delivers locally through super().emit, which the
    # MRO sends to FastFanout.emit.
    handle_emit = getattr(AsyncPubSubManager, "_handle_emit", None)
    if handle_emit is None or "super().emit(" not in inspect.getsource(handle_emit):
        problems.append("socketio.async_pubsub_manager.AsyncPubSubManager._handle_emit no longer delivers "
                        "locally through super().emit")

    # Socket.IO packets.
    for const in ("CONNECT", "DISCONNECT", "EVENT", "ACK", "CONNECT_ERROR", "BINARY_EVENT", "BINARY_ACK"):
        if not isinstance(getattr(sio_packet, const, None), int):
            problems.append(f"socketio.packet.{const} is gone")
    if sio.packet_class is sio_packet.Packet:
        _check(problems, "socketio.packet.Packet", sio_packet, "Packet", "packet_type",
               keywords=("namespace", "id", "data", "encoded_packet"))
        pkt = sio_packet.Packet(encoded_packet='2/chat,7["hi",1]')
        if (getattr(pkt, "packet_type", None), getattr(pkt, "namespace", None), getattr(pkt, "id", None),
                getattr(pkt, "data", None)) != (sio_packet.EVENT, "/chat", 7, ["hi", 1]):
            problems.append("socketio.packet.Packet no longer decodes into packet_type/namespace/id/data")
        if not isinstance(sio_packet.Packet(sio_packet.EVENT, data=["a"]).encode(), str):
            problems.append("socketio.packet.Packet.encode() no longer returns a str for text packets")
    else:
        problems.append("socketio.AsyncServer().packet_class is no longer socketio.packet.Packet")

    # Engine.IO packets, payloads, sockets, exceptions, the aiohttp websocket driver.
    if not isinstance(getattr(eio_packet, "MESSAGE", None), int):
        problems.append("engineio.packet.MESSAGE is gone")
    _check(problems, "engineio.packet", eio_packet, "Packet", "packet_type", "data", keywords=("encoded_packet",))
    if eio_packet.Packet(eio_packet.MESSAGE, "2x").encode() != "42x":
        problems.append("engineio.packet.Packet(MESSAGE, s).encode() is no longer '4' + s")
    if not isinstance(getattr(eio_payload.Payload, "max_decode_packets", None), int):
        problems.append("engineio.payload.Payload.max_decode_packets is gone")
    for exc in ("ContentTooLongError", "UnknownPacketError"):
        if not isinstance(getattr(exceptions, exc, None), type):
            problems.append(f"engineio.exceptions.{exc} is gone")
    A = "engineio.async_socket.AsyncSocket"
    _check(problems, A, async_socket.AsyncSocket, "handle_post_request", "environ")
    _check(problems, A, async_socket.AsyncSocket, "receive", "pkt")
    sock = async_socket.AsyncSocket(sio.eio, "sid0")
    for attr in ("sid", "server", "upgraded", "upgrading", "closed"):
        if not hasattr(sock, attr):
            problems.append(f"{A}().{attr} is gone")
    W = "engineio.async_drivers.aiohttp.WebSocket"
    _check(problems, W, eio_aiohttp, "WebSocket", "handler", "server")
    if "self._sock" not in inspect.getsource(eio_aiohttp.WebSocket):
        problems.append(f"{W}._sock (the aiohttp WebSocketResponse fanout.install reads) is gone")
    # ws_deflate.set_websocket_deflate repeats the driver's __call__ with compress= added.
    try:
        call_source = inspect.getsource(eio_aiohttp.WebSocket.__call__)
    except (TypeError, OSError):
        call_source = ""
    for line in ("request = environ['aiohttp.request']",
                 "self._sock = WebSocketResponse(\n            max_msg_size=self.server.max_http_buffer_size)",
                 "await self._sock.prepare(request)", "self.environ = environ", "await self.handler(self)",
                 "return self._sock"):
        if line not in call_source:
            problems.append(f"{W}.__call__ (which server/ws_deflate.py repeats) no longer has {line!r}")
    if "compress" not in inspect.signature(aiohttp.web_ws.WebSocketResponse).parameters:
        problems.append("aiohttp.web_ws.WebSocketResponse has no compress= argument (server/ws_deflate.py)")
    # fanout.install reads the transport from aiohttp's WebSocketResponse._writer.transport.
    if "_writer" not in getattr(aiohttp.web_ws.WebSocketResponse, "__annotations__", {}) and \
            "_writer" not in inspect.getsource(aiohttp.web_ws.WebSocketResponse):
        problems.append("aiohttp.web_ws.WebSocketResponse._writer is gone")
    if "transport" not in inspect.getsource(WebSocketWriter):
        problems.append("aiohttp's WebSocketWriter.transport is gone")

    _fail(problems)


def _fail(problems: list[str]) -> None:
    assert not problems, (
        f"python-socketio {version('python-socketio')} / python-engineio "
        f"{version('python-engineio')} changed internals that server/fanout.py, "
        "server/guarded_sio.py or server/ws_deflate.py use:\n  " + "\n  ".join(problems)
    )
