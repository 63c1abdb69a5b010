// The yardstick for bench/conversation_bench.py and bench/socket_memory_bench.py: Node's
// socket.io 4.8 (defaults: no permessage-deflate) relaying `message:send` to everyone as
// `message:new`, with a message object of Studyhall's shape (PROTOCOL.md), and the ack.
// It keeps nothing, checks nothing and writes nothing to disk: a lower bound on the work.
//
// usage: node bench/node_relay.mjs PORT   (prints "listening" once it accepts connections)
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false, pingInterval: 20000, pingTimeout: 20000 });
let seq = 0;
io.on("connection", (socket) => {
  socket.join("room");
  const userId = randomUUID();
  socket.on("message:send", (data, ack) => {
    const message = {
      id: randomUUID(), conversation_id: data.conversation_id, seq: ++seq, sender_id: userId, role: "user",
      content: data.content, client_id: data.client_id, metadata: {}, created_at: new Date().toISOString(),
      edited_at: null, deleted: false,
    };
    io.to("room").emit("message:new", { message });
    if (typeof ack === "function") ack({ ok: true, message });
  });
});
httpServer.listen(Number(process.argv[2]), "127.0.0.1", () => console.log("listening"));
