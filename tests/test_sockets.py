"""Socket.IO connect, validation, limits and rate limiting, through python-socketio's client."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from tests.client import Api, Socket


@pytest.mark.parametrize("token", [None, "", "not-a-real-token", "x" * 500])
async def test_bad_tokens_are_refused_with_unauthorized(api: Api, token) -> None:
    sock = Socket(api.url, token)
    errors: list = []
    sock.client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sock.connect()
    # socket.io-client exposes this as err.message and err.data = {code, message}.
    assert errors and errors[0]["data"]["code"] == "unauthorized" and errors[0]["data"]["message"]


async def test_unknown_event_and_malformed_payloads_keep_the_connection(api: Api) -> None:
    user = await api.register("Ivy")
    sock = await api.socket(user)
    ack = await sock.call("definitely:unknown", {})
    assert ack == {"ok": False, "error": {"code": "bad_request", "message": "Unknown event 'definitely:unknown'."}}
    for bad in ["a string", 42, [1, 2], {"conversation_id": "not-a-uuid", "content": "x", "client_id": "c"}, {}]:
        ack = await sock.call("message:send", bad)
        assert ack["ok"] is False and ack["error"]["code"] == "bad_request", (bad, ack)
    assert sock.client.connected
    ack = await sock.call("typing", {"conversation_id": "00000000-0000-0000-0000-000000000000", "typing": True})
    assert ack["ok"] is False and ack["error"]["code"] == "not_found"


async def test_oversized_content_is_too_large(api: Api) -> None:
    a = await api.register("Jo")
    b = await api.register("Ken")
    sock = await api.socket(a)
    conv = (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    ack = await sock.call("message:send", {"conversation_id": conv["id"], "content": "é" * 9000, "client_id": "big"})
    assert ack["ok"] is False and ack["error"]["code"] == "too_large"
    ack = await sock.call("message:send", {"conversation_id": conv["id"], "content": "fits", "client_id": "small"})
    assert ack["ok"] is True
    assert sock.client.connected


@pytest.mark.slow
async def test_frames_over_one_megabyte_are_refused(api: Api) -> None:
    user = await api.register("Lu")
    sock = await api.socket(user)
    # Just under the limit: an ordinary event with an ordinary (validation) error.
    ack = await sock.call("typing", {"conversation_id": "x" * 900_000, "typing": True})
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    # Over it: the server refuses the frame and closes that connection; no ack ever comes.
    acked = None
    try:
        acked = await sock.call("typing", {"conversation_id": "x" * 1_200_000, "typing": True}, timeout=3)
    except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError, socketio.exceptions.DisconnectedError):
        pass
    assert acked is None
    for _ in range(40):
        if not sock.client.connected:
            break
        await asyncio.sleep(0.05)
    assert not sock.client.connected
    # The server is still healthy for everyone else.
    other = await api.socket(await api.register("Mo"))
    assert (await other.call("nope", {}))["error"]["code"] == "bad_request"


async def test_rate_limit(start_instance) -> None:
    import aiohttp

    inst = await start_instance(gateway__rate_limit_per_second=1, gateway__rate_limit_burst=5)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        sock = await api.socket(await api.register("Ned"))
        acks = await asyncio.gather(*[sock.call("unknown:x", {}) for _ in range(12)])
        codes = [a["error"]["code"] for a in acks]
        assert codes.count("rate_limited") >= 6 and codes.count("bad_request") >= 5
        assert sock.client.connected
        await api.close_sockets()


async def test_polling_transport_works(api: Api) -> None:
    user = await api.register("Ola")
    sock = await api.socket(user, transports=["polling"])
    assert (await sock.call("nope", {}))["error"]["code"] == "bad_request"
