// The official socket.io-client over long-polling only, firing a burst of events at once
// (socket.io-client then sends every queued packet in one POST). Driven by
// tests/test_hardening_gateway.py.
//
// usage: node polling_burst.mjs URL TOKEN MODE COUNT [CONVERSATION_ID]
//   MODE typing: COUNT `typing` events with no await in between
//   MODE send:   COUNT `message:send` events with no await in between
// Prints one JSON line: {acks: [ack or {timeout: true}, ...]} in the order sent.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require(process.env.SOCKET_IO_CLIENT || "socket.io-client");

const [url, token, mode, countArg, cid] = process.argv.slice(2);
const count = Number(countArg);
const socket = io(url, { auth: { token }, transports: ["polling"], reconnection: false });
await new Promise((resolve, reject) => {
  socket.once("connect", resolve);
  socket.once("connect_error", reject);
});

function payload(n) {
  if (mode === "send") return ["message:send", { conversation_id: cid, content: `burst ${n}`, client_id: `burst-${n}` }];
  return ["typing", { conversation_id: cid, typing: n % 2 === 0 }];
}

const pending = [];
for (let n = 0; n < count; n++) {
  const [event, data] = payload(n);
  pending.push(socket.timeout(20000).emitWithAck(event, data).catch(() => ({ timeout: true })));
}
const acks = await Promise.all(pending);
socket.close();
// Exit once the output is flushed: a long-poll request may still be open; do not wait for it.
process.stdout.write(JSON.stringify({ acks }) + "\n", () => process.exit(0));
