// Talking to a Studyhall server: HTTP with a bearer token, and Socket.IO through the
// official socket.io-client (vendored in server/vendor/, served at /vendor/ by server/pages.py).
import { io } from "../../vendor/socket.io.esm.min.js";

/** An error from the server ({error: {code, message}} or a failed ack), or "timeout"/"network". */
export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
}

/** A random id for client_id: crypto.randomUUID needs a secure context, getRandomValues does not. */
export function newId() {
  if (globalThis.crypto?.randomUUID && globalThis.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** HTTP calls to the API. `server` is an origin such as "http://localhost:8080" ("" = this page's). */
export class Http {
  constructor(server = "", token = null) {
    this.server = server.replace(/\/$/, "");
    this.token = token;
  }

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(this.server + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError("network", "The server cannot be reached.");
    }
    if (resp.status === 204) return {};
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const e = data.error || {};
      throw new ApiError(e.code || "internal", e.message || `HTTP ${resp.status}`, resp.status);
    }
    return data;
  }

  get(path) { return this.request("GET", path); }
  post(path, body = {}) { return this.request("POST", path, body); }
}

/**
 * One Socket.IO connection. `call` resolves with the ack's result or throws ApiError
 * (code "timeout" when no ack came, e.g. the connection dropped mid-call).
 * `onStatus(status)` hears "connecting" | "online" | "offline" | "unauthorized".
 */
export class Live {
  constructor(server, token, { onStatus = () => {}, ackTimeout = 10000 } = {}) {
    this.ackTimeout = ackTimeout;
    this.onStatus = onStatus;
    this.token = token;
    this.socket = io(server || undefined, {
      auth: (cb) => cb({ token: this.token }), // read at each (re)connect: see setToken
      reconnectionDelay: 300,
      reconnectionDelayMax: 3000,
    });
    this.socket.on("connect", () => this.onStatus("online"));
    this.socket.on("disconnect", (reason) => {
      this.onStatus("offline");
      // socket.io-client does not reconnect by itself after the server closed the socket
      // (a restart or deploy closes them all): come back after a short random pause. If
      // the token was revoked, the next connect is refused and `unauthorized` ends it.
      if (reason === "io server disconnect") setTimeout(() => this.socket.connect(), 500 + Math.random() * 1500);
    });
    this.socket.io.on("reconnect_attempt", () => this.onStatus("connecting"));
    this.socket.on("connect_error", (err) => {
      if (err?.data?.code === "unauthorized") {
        this.onStatus("unauthorized");
        this.socket.disconnect();
      } else {
        this.onStatus("offline");
      }
    });
    onStatus("connecting");
  }

  get connected() { return this.socket.connected; }

  on(event, fn) { this.socket.on(event, fn); return this; }

  off(event, fn) { this.socket.off(event, fn); return this; }

  async call(event, data = {}, timeout = this.ackTimeout) {
    let ack;
    try {
      ack = await this.socket.timeout(timeout).emitWithAck(event, data);
    } catch (err) {
      throw new ApiError("timeout", "No answer from the server.");
    }
    if (ack && ack.ok) return ack;
    const e = (ack && ack.error) || {};
    throw new ApiError(e.code || "internal", e.message || "The request failed.");
  }

  /** Carry on with another session token (a refreshed sign-in of the same user): the
   * socket reconnects with it, and `connect` listeners (sync, outbox) run as after any drop. */
  setToken(token) {
    this.token = token;
    if (this.socket.connected) this.socket.disconnect();
    this.socket.connect();
  }

  /** The token the next (re)connect signs in with, without dropping the socket (the
   * server was told of it with `auth:refresh`). */
  useToken(token) { this.token = token; }

  close() { this.socket.disconnect(); }
}

/** Error codes worth retrying after a reconnect (the rest are final answers). */
export function isRetryable(err) {
  return ["timeout", "network", "unavailable", "rate_limited", "internal"].includes(err?.code);
}
