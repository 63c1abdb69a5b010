"""permessage-deflate on Socket.IO websockets: off unless `gateway.websocket_deflate` is on.

python-engineio (4.x) builds aiohttp's `WebSocketResponse` with aiohttp's default
`compress=True`, so every client that offers permessage-deflate (browsers and
socket.io-client all do) gets it, with no setting to refuse. Each such socket then holds
a zlib compressor and decompressor for its whole life: about 100 KiB more per idle socket
measured here (docs/performance.md, `bench/socket_memory_bench.py`), and more CPU per
frame. Node's socket.io does not negotiate it by default either. Chat frames are small
JSON, and broadcasts from the fast fan-out (server/fanout.py) go out uncompressed anyway,
so deflate saves little bandwidth here.

The seam: Engine.IO looks its websocket driver class up in `eio._async["websocket"]` on
every upgrade (server/fanout.py and server/guarded_sio.py subclass it the same way). This
subclass repeats the driver's short `__call__` with `compress=` passed to aiohttp. aiohttp
then answers the handshake without a `Sec-WebSocket-Extensions` header, which RFC 7692
clients read as "no compression". tests/test_socketio_internals.py checks that the driver's
`__call__` still has the shape repeated here.

aiohttp takes the window size from the client's offer and has no server-side bound on the
window or memory level, so "on" means the client's choice (usually 15-bit windows).
"""

from __future__ import annotations

from typing import Any

import socketio
from aiohttp.web import WebSocketResponse


def set_websocket_deflate(sio: socketio.AsyncServer, enabled: bool) -> None:
    """Make this server's websockets accept permessage-deflate only when `enabled`. Wraps
    whatever driver is in place (call it after `fanout.install`), on this server only."""
    driver = sio.eio._async["websocket"]

    class DeflateChoiceWebSocket(driver):  # type: ignore[misc, valid-type]
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=enabled)
            await self._sock.prepare(request)
            self.environ = environ
            await self.handler(self)
            return self._sock

    sio.eio._async = {**sio.eio._async, "websocket": DeflateChoiceWebSocket}
