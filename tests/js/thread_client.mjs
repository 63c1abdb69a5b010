// A thread conversation held by the official socket.io-client against two Studyhall
// instances, through a Redis restart. Driven by tests/test_js_client.py.
//
// usage: node thread_client.mjs URL_A URL_B TOKEN_A TOKEN_B CONVERSATION_ID COUNT CONTROL_URL
// Alice (on A) and Bob (on B) alternate sending COUNT messages each. Halfway, the script
// asks the test (CONTROL_URL) to restart Redis. Each side recovers gaps by seq with
// `sync` on reconnect, on a `resync` hint, on a seq gap, and once at the end.
// Prints one JSON line: {alice: [ids by seq], bob: [...], acked: [...]}.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require(process.env.SOCKET_IO_CLIENT || "socket.io-client");

const [urlA, urlB, tokenA, tokenB, cid, countArg, control] = process.argv.slice(2);
const count = Number(countArg);

function participant(url, token, name, transports) {
  const socket = io(url, { auth: { token }, transports, reconnectionDelay: 100 });
  const view = new Map(); // seq -> id
  const duplicates = []; // seqs that arrived as message:new more than once
  const delivered = new Set();
  const contiguous = () => { let s = 0; while (view.has(s + 1)) s += 1; return s; };
  const record = (m) => {
    if (m.conversation_id !== cid) return;
    if (view.has(m.seq) && view.get(m.seq) !== m.id) throw new Error(`${name}: seq ${m.seq} changed id`);
    view.set(m.seq, m.id);
  };
  const sync = async () => {
    for (;;) {
      const ack = await socket.timeout(10000).emitWithAck("sync", { since: { [cid]: contiguous() } });
      if (!ack.ok) throw new Error(`${name}: sync failed ${JSON.stringify(ack)}`);
      const got = ack.conversations[cid];
      got.messages.forEach(record);
      if (got.complete) return;
    }
  };
  socket.on("message:new", ({ message }) => {
    if (message.conversation_id !== cid) return;
    if (delivered.has(message.seq)) duplicates.push(message.seq);
    delivered.add(message.seq);
    const gap = message.seq > contiguous() + 1;
    record(message);
    if (gap) sync().catch(() => {});
  });
  socket.on("resync", () => sync().catch(() => {}));
  socket.io.on("reconnect", () => sync().catch(() => {}));
  const ready = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return { socket, view, duplicates, sync, ready, name };
}

const alice = participant(urlA, tokenA, "alice", ["websocket"]);
const bob = participant(urlB, tokenB, "bob", ["polling", "websocket"]);
await Promise.all([alice.ready, bob.ready]);

const acked = [];
async function send(p, n) {
  // Retry until acked: the same client_id makes a retry return the first message.
  const payload = { conversation_id: cid, content: `${p.name} ${n}`, client_id: `${p.name}-${n}` };
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      const ack = await p.socket.timeout(5000).emitWithAck("message:send", payload);
      if (ack.ok) { acked.push(ack.message.id); return; }
    } catch (e) { /* not connected or timed out: retry */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${p.name} could not send ${n}`);
}

for (let n = 0; n < count; n++) {
  if (n === Math.floor(count / 2)) {
    await fetch(control, { method: "POST" }); // the test restarts Redis
  }
  await Promise.all([send(alice, n), send(bob, n)]);
  await new Promise((r) => setTimeout(r, 10));
}
await new Promise((r) => setTimeout(r, 500));
await alice.sync();
await bob.sync();
const bySeq = (view) => [...view.keys()].sort((a, b) => a - b).map((s) => view.get(s));
console.log(JSON.stringify({
  alice: bySeq(alice.view), bob: bySeq(bob.view),
  aliceSeqs: [...alice.view.keys()].sort((a, b) => a - b), bobSeqs: [...bob.view.keys()].sort((a, b) => a - b),
  duplicates: [...alice.duplicates, ...bob.duplicates], acked,
}));
alice.socket.close();
bob.socket.close();
