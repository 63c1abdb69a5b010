// Load generator for bench/threads_bench.py: real Socket.IO clients (the official
// socket.io-client) sending `message:send` and timing `message:new`.
//
// Why Node: the benchmark runs on a shared 2-core machine together with the servers and
// PostgreSQL. python-socketio clients cost ~0.4 ms of CPU per message, so a Python load
// generator takes cores away from the server and the benchmark measures itself. The Node
// client costs far less per message, leaving the cores to what is being measured.
//
// Input (one JSON object on stdin):
//   {clients: [{url, token, conversation_id}], seconds, half_seconds, warmup_seconds?}
// Output (stdout, one JSON object per line):
//   {"phase": "closed-start"}   the closed loop begins (the parent starts measuring CPU)
//   {"phase": "closed-end"}     the closed loop has ended (every client has its last ack)
//   {acked_rate, deliveries_rate, max_p50_ms, max_p99_ms, half_rate, half_p50_ms,
//    half_p99_ms, half_deliveries_rate, errors, first_error, cpu_closed_pct, cpu_open_pct}
//
// Closed loop: every client sends, waits for its ack, sends again, for `seconds`.
// Open loop: `half_seconds` at half the acked rate, exponential inter-arrival times per
// client, not waiting for acks. Latency = receive time - send time embedded in client_id
// (`<phase><n>-<client>|<ms>`); all clients live in this process, so one monotonic clock.

import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const CONNECT_BATCH = 50;
const ACK_TIMEOUT_MS = 30000;
const now = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function readStdin() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

function connect({ url, token }) {
  return new Promise((resolve, reject) => {
    // No permessage-deflate (browsers would offer it): python-socketio clients do not
    // offer it either, so both load generators cost the server the same work; and ws
    // inflates every compressed frame (the acks) on the libuv threadpool behind a
    // concurrency limit of 10, which adds CPU and latency on the client side.
    const socket = io(url, {
      auth: { token },
      transports: ["websocket"],
      reconnection: false,
      timeout: 10000,
      perMessageDeflate: false,
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`connect to ${url} failed: ${err.message}`));
    });
  });
}

// Same as Python's statistics.quantiles(method="inclusive"): linear interpolation.
function percentileMs(values, q) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const pos = ((sorted.length - 1) * q) / 100;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

const config = await readStdin();
const errors = { count: 0, first: null };
function recordError(what) {
  errors.count += 1;
  if (errors.first === null) errors.first = what;
}

// Deliveries and latencies of the current phase only; other phases' stragglers are ignored.
let phase = "";
let delivered = 0;
let latencies = [];
function startPhase(prefix) {
  phase = prefix;
  delivered = 0;
  latencies = [];
}

const clients = [];
for (let i = 0; i < config.clients.length; i += CONNECT_BATCH) {
  const batch = config.clients.slice(i, i + CONNECT_BATCH);
  const sockets = await Promise.all(batch.map(connect));
  sockets.forEach((socket, j) => clients.push({ socket, conversationId: batch[j].conversation_id, index: i + j }));
}
for (const { socket } of clients) {
  socket.on("message:new", (data) => {
    const clientId = data?.message?.client_id;
    if (typeof clientId !== "string" || !clientId.startsWith(phase)) return;
    delivered += 1;
    latencies.push(now() - Number(clientId.slice(clientId.indexOf("|") + 1)));
  });
}

function send(client, prefix, n) {
  const payload = {
    conversation_id: client.conversationId,
    content: "benchmark message",
    client_id: `${prefix}${n}-${client.index}|${now().toFixed(3)}`,
  };
  return client.socket
    .timeout(ACK_TIMEOUT_MS)
    .emitWithAck("message:send", payload)
    .then(
      (ack) => {
        if (ack && ack.ok) return true;
        recordError(ack);
        return false;
      },
      (err) => {
        recordError(`${err.message} (no ack within ${ACK_TIMEOUT_MS} ms)`);
        return false;
      },
    );
}

async function closedLoop(prefix, seconds) {
  const deadline = now() + seconds * 1000;
  let acked = 0;
  await Promise.all(
    clients.map(async (client) => {
      for (let n = 1; now() < deadline; n++) {
        if (await send(client, prefix, n)) acked += 1;
      }
    }),
  );
  return acked;
}

async function openLoop(prefix, seconds, rate) {
  const perClientMs = clients.length / rate * 1000; // mean gap between one client's sends
  const deadline = now() + seconds * 1000;
  await Promise.all(
    clients.map(async (client) => {
      const pending = [];
      await sleep(Math.random() * perClientMs);
      for (let n = 1; now() < deadline; n++) {
        pending.push(send(client, prefix, n));
        await sleep(-Math.log(1 - Math.random()) * perClientMs);
      }
      await Promise.all(pending);
    }),
  );
}

if (config.warmup_seconds > 0) {
  startPhase("warm-");
  await closedLoop("warm-", config.warmup_seconds);
  await sleep(1000);
}

// Closed loop: the maximum.
startPhase("max-");
emit({ phase: "closed-start" });
const started = now();
const cpuBefore = process.cpuUsage();
const acked = await closedLoop("max-", config.seconds);
const cpu = process.cpuUsage(cpuBefore);
emit({ phase: "closed-end" });
await sleep(1000);
const elapsed = (now() - started) / 1000;
const result = {
  acked_rate: acked / config.seconds,
  deliveries_rate: delivered / elapsed,
  max_p50_ms: percentileMs(latencies, 50),
  max_p99_ms: percentileMs(latencies, 99),
  cpu_closed_pct: (100 * (cpu.user + cpu.system)) / 1e6 / config.seconds,
};

// Open loop at half the maximum: latency below saturation.
const halfRate = result.acked_rate / 2;
startPhase("half-");
let openCpu = { user: 0, system: 0 };
if (halfRate > 0) {
  emit({ phase: "open-start" });
  const openCpuBefore = process.cpuUsage();
  await openLoop("half-", config.half_seconds, halfRate);
  openCpu = process.cpuUsage(openCpuBefore);
  emit({ phase: "open-end" });
  await sleep(1000);
}
Object.assign(result, {
  half_rate: halfRate,
  cpu_open_pct: (100 * (openCpu.user + openCpu.system)) / 1e6 / config.half_seconds,
  half_p50_ms: percentileMs(latencies, 50),
  half_p99_ms: percentileMs(latencies, 99),
  half_deliveries_rate: delivered / config.half_seconds,
  errors: errors.count,
  first_error: errors.first,
});
emit(result);

for (const { socket } of clients) socket.disconnect();
process.exit(0);
