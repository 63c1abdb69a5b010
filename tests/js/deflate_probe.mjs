// The official socket.io-client over websocket, offering permessage-deflate as it does by
// default, reports what the server answered to that offer. Driven by tests/test_ws_deflate.py.
//
// usage: node deflate_probe.mjs URL TOKEN CONVERSATION_ID
// Prints one JSON line: {offered, answered, negotiated, ack}: the request's and the 101
// response's Sec-WebSocket-Extensions headers (null when absent), the extensions the client
// then uses, and the ack of a message:send long enough that the client compresses it when
// deflate was agreed (socket.io-client's threshold is 1024 bytes).
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require(process.env.SOCKET_IO_CLIENT || "socket.io-client");
const { NodeWebSocket } = require("engine.io-client");

const [url, token, cid] = process.argv.slice(2);
const seen = { offered: null, answered: null, negotiated: null };

// The stock Node websocket transport, watching its own handshake.
class WatchedWebSocket extends NodeWebSocket {
  createSocket(uri, protocols, opts) {
    const ws = super.createSocket(uri, protocols, opts);
    seen.offered = ws._req ? ws._req.getHeader("sec-websocket-extensions") ?? null : null;
    ws.on("upgrade", (res) => { seen.answered = res.headers["sec-websocket-extensions"] ?? null; });
    ws.on("open", () => { seen.negotiated = ws.extensions; });
    return ws;
  }
}

const socket = io(url, { auth: { token }, transports: [WatchedWebSocket], reconnection: false });
await new Promise((resolve, reject) => {
  socket.once("connect", resolve);
  socket.once("connect_error", reject);
});
const content = "deflate me ".repeat(300);
const ack = await socket.timeout(10000).emitWithAck("message:send", { conversation_id: cid, content, client_id: "deflate-probe" });
socket.close();
process.stdout.write(JSON.stringify({ ...seen, ack }) + "\n", () => process.exit(0));
