// Chat participants held by the official socket.io-client through nginx, for
// tests/test_deploy_nginx.py: cross-instance delivery over each transport, and the drain.
//
// usage: node deploy_clients.mjs CONFIG_JSON
//   {url, cid, count, pauseMs, participants: [{name, token, xff, transports}]}
// Each participant stands behind its own address (X-Forwarded-For, which the test's nginx
// believes as from a front load balancer) and sends `count` messages, one at a time, each
// with its own client_id. A send that is not acked (the connection dropped, the ack timed
// out) is retried with the same client_id once connected again, as the widget's outbox
// does: the server answers a repeat with the first message. A gap in seqs, a reconnect and
// the end all `sync` from the last contiguous seq.
// Prints JSON lines: {type: "acked", name, total} as sends are acked, then
// {type: "done", participants: [{name, acked, view, duplicates, connects, resent, transport}]}.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require(process.env.SOCKET_IO_CLIENT || "socket.io-client");

const config = JSON.parse(process.argv[2]);
const { url, cid, count } = config;
const pauseMs = config.pauseMs ?? 0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let totalAcked = 0;
const emit = (line) => process.stdout.write(JSON.stringify(line) + "\n");

function participant({ name, token, xff, transports }) {
  const socket = io(url, {
    auth: { token },
    transports,
    extraHeaders: { "X-Forwarded-For": xff },
    rejectUnauthorized: false, // the test's nginx has a self-signed certificate
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
  });
  const p = { name, socket, view: new Map(), delivered: new Set(), duplicates: [], acked: [], connects: 0, resent: 0 };
  const contiguous = () => { let s = 0; while (p.view.has(s + 1)) s += 1; return s; };
  const record = (m) => {
    if (m.conversation_id !== cid) return;
    if (p.view.has(m.seq) && p.view.get(m.seq) !== m.id) throw new Error(`${name}: seq ${m.seq} changed id`);
    p.view.set(m.seq, m.id);
  };
  p.sync = async () => {
    for (;;) {
      const ack = await socket.timeout(5000).emitWithAck("sync", { since: { [cid]: contiguous() } });
      if (!ack.ok) throw new Error(`${name}: sync failed ${JSON.stringify(ack)}`);
      const got = ack.conversations[cid];
      got.messages.forEach(record);
      if (got.complete) return;
    }
  };
  socket.on("message:new", ({ message }) => {
    if (message.conversation_id !== cid) return;
    if (p.delivered.has(message.seq)) p.duplicates.push(message.seq);
    p.delivered.add(message.seq);
    const gap = message.seq > contiguous() + 1;
    record(message);
    if (gap) p.sync().catch(() => {});
  });
  socket.on("resync", () => p.sync().catch(() => {}));
  socket.on("connect", () => {
    p.connects += 1;
    if (p.connects > 1) p.sync().catch(() => {});
  });
  const connected = () => socket.connected ? Promise.resolve() : new Promise((r) => socket.once("connect", r));
  p.ready = connected();

  p.send = async (n) => {
    const payload = { conversation_id: cid, content: `${name} ${n}`, client_id: `${name}-${n}` };
    for (let attempt = 0; attempt < 200; attempt += 1) {
      if (attempt > 0) p.resent += 1;
      await connected();
      let ack;
      try {
        ack = await socket.timeout(3000).emitWithAck("message:send", payload);
      } catch {
        continue; // no ack (dropped or timed out): send it again, same client_id
      }
      if (ack.ok) {
        p.acked.push({ client_id: payload.client_id, id: ack.message.id, seq: ack.message.seq });
        totalAcked += 1;
        emit({ type: "acked", name, total: totalAcked });
        return;
      }
      if (!["unavailable", "rate_limited", "timeout"].includes(ack.error?.code)) {
        throw new Error(`${name}: ${JSON.stringify(ack.error)}`);
      }
      await sleep(200);
    }
    throw new Error(`${name}: message ${n} never acked`);
  };
  return p;
}

const people = config.participants.map(participant);
await Promise.all(people.map((p) => p.ready));
emit({ type: "connected" });
await Promise.all(people.map(async (p) => {
  for (let n = 0; n < count; n += 1) {
    await p.send(n);
    if (pauseMs) await sleep(pauseMs);
  }
}));
// Everyone has sent: let the last deliveries land, then sync to close any gap.
const expected = people.length * count;
const deadline = Date.now() + 10000;
while (Date.now() < deadline && people.some((p) => p.view.size < expected)) {
  await sleep(100);
  await Promise.all(people.filter((p) => p.view.size < expected && p.socket.connected).map((p) => p.sync().catch(() => {})));
}
const done = JSON.stringify({
  type: "done",
  participants: people.map((p) => ({
    name: p.name,
    acked: p.acked,
    view: Object.fromEntries(p.view),
    duplicates: p.duplicates,
    connects: p.connects,
    resent: p.resent,
    transport: p.socket.io.engine?.transport?.name ?? null,
  })),
});
people.forEach((p) => p.socket.disconnect());
// Exit once the (long) last line is written: process.exit would cut a pipe's write short.
process.stdout.write(done + "\n", () => process.exit(0));
