// Never losing or doubling a message: each conversation keeps its messages by seq, knows the
// highest seq it holds with no hole below it, and asks the server (`sync`) for what is
// missing after a reconnect, a `resync` from the server, or a seq that jumps and does not
// fill by itself within GAP_GRACE_MS. Sends carry a client_id and are retried until
// acknowledged; the server makes a repeat harmless.
import { ApiError, isRetryable, newId } from "./client.js";

/**
 * How long a hole in seqs may stay open before `sync` asks for it. With several instances a
 * message from another instance comes through Redis and can arrive a few milliseconds after
 * the next local one (bench/cluster_bench.py: every hole filled within 6-55 ms); syncing
 * at once made every member on that instance sync for every such hole.
 */
export const GAP_GRACE_MS = 250;

/** The messages of one conversation, ordered and deduplicated by seq and id. */
export class Timeline {
  constructor(conversationId) {
    this.id = conversationId;
    this.bySeq = new Map();
    this.seqOfId = new Map();
    this.lastSeq = 0; // every seq in (base, lastSeq] is held
    this.topSeq = 0; // the highest seq held
    this.loaded = false; // false until a history page or a sync set the baseline
    this.hasOlder = false;
    this.listeners = new Set();
  }

  /** `fn(message)` runs for every message added or changed. */
  subscribe(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  /** Messages in seq order. */
  list() { return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq); }

  /** The newest page of history sets the baseline: nothing before it is expected. */
  loadLatest(messages, hasMore) {
    this.hasOlder = hasMore;
    const top = messages.length ? messages[messages.length - 1].seq : 0;
    if (!this.loaded) this.lastSeq = Math.max(this.lastSeq, messages.length ? messages[0].seq - 1 : top);
    this.loaded = true;
    messages.forEach((m) => this.add(m));
    this._advance();
  }

  /** Add or update one message; returns true when it left a hole (the caller syncs). */
  add(message) {
    if (message.conversation_id && message.conversation_id !== this.id) return false;
    const known = this.bySeq.get(message.seq);
    if (known && known.id === message.id && !isNewer(message, known)) return false;
    this.bySeq.set(message.seq, message);
    this.seqOfId.set(message.id, message.seq);
    this.topSeq = Math.max(this.topSeq, message.seq);
    this._advance();
    this.listeners.forEach((fn) => fn(message));
    return this.loaded && message.seq > this.lastSeq + 1;
  }

  get(id) { return this.bySeq.get(this.seqOfId.get(id)); }

  /** Whether a seq below the highest one held is missing. */
  hasHole() { return this.loaded && this.topSeq > this.lastSeq; }

  _advance() {
    if (!this.loaded) return;
    while (this.bySeq.has(this.lastSeq + 1)) this.lastSeq += 1;
  }
}

function isNewer(a, b) {
  return (a.edited_at || "") !== (b.edited_at || "") || a.deleted !== b.deleted || a.content !== b.content;
}

/**
 * Keeps every Timeline of a connection complete. Listens to message:new/message:updated,
 * reconnects and `resync`, and fills holes with `sync {since}` (paged until complete).
 */
export class Recovery {
  constructor(live, { onUnknown = () => {}, onRecovered = () => {}, gapGraceMs = GAP_GRACE_MS } = {}) {
    this.live = live;
    this.timelines = new Map();
    this.onUnknown = onUnknown; // a message for a conversation no timeline holds
    this.onRecovered = onRecovered;
    this.gapGraceMs = gapGraceMs;
    this.gapTimer = null;
    this.syncing = null;
    this.again = false;
    live.on("message:new", ({ message }) => this.receive(message));
    live.on("message:updated", ({ message }) => this.receive(message));
    live.on("resync", () => this.sync());
    live.on("connect", () => this.sync()); // a no-op until some timeline is loaded
  }

  timeline(conversationId) {
    let t = this.timelines.get(conversationId);
    if (!t) {
      t = new Timeline(conversationId);
      this.timelines.set(conversationId, t);
    }
    return t;
  }

  /** Start following a conversation: load its newest page unless already loaded. */
  async follow(conversationId, { limit = 50 } = {}) {
    const t = this.timeline(conversationId);
    if (!t.loaded) {
      const page = await this.live.call("history", { conversation_id: conversationId, limit });
      t.loadLatest(page.messages, page.has_more);
      if (t.hasHole()) this.sync(); // live messages that came in before the page did
    }
    return t;
  }

  /** Use messages the server handed over with another answer (e.g. room:join) as the baseline. */
  adopt(conversationId, messages) {
    const t = this.timeline(conversationId);
    t.loadLatest(messages, messages.length > 0 && messages[0].seq > 1);
    return t;
  }

  /** Page older history into a timeline. */
  async loadOlder(conversationId, limit = 50) {
    const t = this.timeline(conversationId);
    const first = t.list()[0];
    if (!first || !t.hasOlder) return 0;
    const page = await this.live.call("history", { conversation_id: conversationId, before_seq: first.seq, limit });
    t.hasOlder = page.has_more;
    page.messages.forEach((m) => t.add(m));
    return page.messages.length;
  }

  receive(message) {
    const t = this.timelines.get(message.conversation_id);
    if (!t) {
      this.onUnknown(message);
      return;
    }
    if (t.add(message)) this._syncUnlessFilled();
  }

  /** Sync once the grace is over if a hole is still open (the messages that close it
   * usually arrive meanwhile); one timer covers every hole opened during it. */
  _syncUnlessFilled() {
    if (this.gapTimer !== null) return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null;
      if ([...this.timelines.values()].some((t) => t.hasHole())) this.sync();
    }, this.gapGraceMs);
  }

  /** Ask for everything after each timeline's lastSeq; repeats while pages are incomplete. */
  sync() {
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    // `.finally` runs after this assignment even when the loop finishes synchronously.
    this.syncing = this._syncLoop().finally(() => { this.syncing = null; });
    return this.syncing;
  }

  async _syncLoop() {
    try {
      do {
        this.again = false;
        const since = {};
        for (const t of this.timelines.values()) if (t.loaded) since[t.id] = t.lastSeq;
        if (!Object.keys(since).length) return;
        const { conversations } = await this.live.call("sync", { since });
        for (const [cid, { messages, complete }] of Object.entries(conversations)) {
          const t = this.timelines.get(cid);
          if (!t) continue;
          messages.forEach((m) => t.add(m));
          if (!complete) this.again = true;
        }
      } while (this.again);
      this.onRecovered();
    } catch (err) {
      if (!(err instanceof ApiError) || !isRetryable(err)) throw err;
      // Offline again: the next `connect` syncs.
    }
  }
}

/**
 * Messages typed while offline or unacknowledged. Each keeps its client_id, so a resend
 * after a reconnect returns the first message instead of making a second one.
 * `onChange(entry)` hears entry.state: "sending" | "sent" | "failed".
 */
export class Outbox {
  constructor(live, recovery, { onChange = () => {} } = {}) {
    this.live = live;
    this.recovery = recovery;
    this.onChange = onChange;
    this.entries = new Map(); // client_id -> entry, in send order
    live.on("connect", () => this.flush());
    // A call in flight when the connection drops never gets its ack: resend on reconnect.
    live.on("disconnect", () => { for (const e of this.entries.values()) e.inflight = false; });
  }

  send(conversationId, content) {
    const entry = { client_id: newId(), conversation_id: conversationId, content, state: "sending", attempt: 0 };
    this.entries.set(entry.client_id, entry);
    this.onChange(entry);
    if (this.live.connected) this._try(entry);
    return entry;
  }

  pending(conversationId) {
    return [...this.entries.values()].filter((e) => e.conversation_id === conversationId);
  }

  flush() {
    for (const entry of this.entries.values()) if (entry.state === "sending") this._try(entry);
  }

  retry(clientId) {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    entry.state = "sending";
    this.onChange(entry);
    if (this.live.connected) this._try(entry);
  }

  discard(clientId) {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    this.entries.delete(clientId);
    entry.state = "discarded";
    this.onChange(entry);
  }

  async _try(entry) {
    if (entry.inflight) return;
    entry.inflight = true;
    const attempt = ++entry.attempt;
    try {
      const { message } = await this.live.call("message:send", {
        conversation_id: entry.conversation_id, content: entry.content, client_id: entry.client_id,
      });
      this.recovery.receive(message);
      if (!this.entries.delete(entry.client_id)) return; // an earlier attempt already landed
      entry.state = "sent";
      entry.message = message;
      this.onChange(entry);
    } catch (err) {
      if (attempt !== entry.attempt || entry.state !== "sending") return; // superseded
      if (isRetryable(err)) {
        // Still "sending": retried on the next connect, or shortly if still connected.
        if (this.live.connected) setTimeout(() => this._retryIfCurrent(entry, attempt), 1000 * Math.min(attempt, 5));
      } else {
        entry.state = "failed";
        entry.error = err;
        this.onChange(entry);
      }
    } finally {
      if (attempt === entry.attempt) entry.inflight = false;
    }
  }

  _retryIfCurrent(entry, attempt) {
    if (entry.attempt === attempt && entry.state === "sending" && this.live.connected) this._try(entry);
  }
}
