// The official socket.io-client signs in with a platform's identity token instead of a
// Studyhall token. Driven by tests/test_identity_js.py.
//
// usage: node identity_client.mjs URL IDENTITY_WS IDENTITY_POLLING BAD_IDENTITY PEER_ID
// Connects with `auth: {identity}` over websocket and over long-polling (two tokens: a
// token with a `jti` is single-use), opens a direct conversation with PEER_ID on each, then
// tries BAD_IDENTITY. Prints one JSON line:
// {ws: {conversation}, polling: {conversation}, refused: connect_error data}.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require(process.env.SOCKET_IO_CLIENT || "socket.io-client");

const [url, identityWs, identityPolling, badIdentity, peerId] = process.argv.slice(2);

function connect(identity, transports) {
  const socket = io(url, { auth: { identity }, transports, reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

async function openConversation(identity, transports) {
  const socket = await connect(identity, transports);
  const ack = await socket.timeout(10000).emitWithAck("conversation:create", { kind: "direct", member_ids: [peerId] });
  socket.disconnect();
  if (!ack.ok) throw new Error(`conversation:create failed: ${JSON.stringify(ack)}`);
  return ack.conversation;
}

const ws = await openConversation(identityWs, ["websocket"]);
const polling = await openConversation(identityPolling, ["polling"]);
let refused = null;
try {
  const socket = await connect(badIdentity, ["websocket"]);
  socket.disconnect();
} catch (err) {
  refused = err.data ?? { message: err.message };
}
console.log(JSON.stringify({ ws: { conversation: ws }, polling: { conversation: polling }, refused }));
process.exit(0);
