// The embeddable tutor chat. Lives in a shadow root so the host page's CSS and ours never
// mix. Streams answers, shows sources, hands over to a person, and recovers every missed
// message by seq after the network drops (see timeline.js).
import { ApiError, Http, Live } from "./client.js";
import { h, MessageList } from "./dom.js";
import { Typing } from "./common.js";
import { Outbox, Recovery } from "./timeline.js";

const MODE_TEXT = {
  ai: "AI tutor · answers from your course material",
  waiting: "Waiting for a person — we have told the support team",
  human: "A person is helping you",
};

function chatIcon() {
  const span = h("span", { class: "launcher-icon", "aria-hidden": "true" });
  span.innerHTML = '<svg width="20" height="20" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M21 12a8 8 0 0 1-11.6 7.1L4 20l1-4.6A8 8 0 1 1 21 12z"/></svg>';
  return span;
}

/** Guest identity and conversation, kept per server so a reopen shows the history. */
class Store {
  constructor(server) { this.key = `studyhall-widget:${server}`; }
  get() { try { return JSON.parse(localStorage.getItem(this.key) || "{}"); } catch { return {}; } }
  set(patch) { localStorage.setItem(this.key, JSON.stringify({ ...this.get(), ...patch })); }
  clear() { localStorage.removeItem(this.key); }
}

/** A platform's signed identity token (docs/integration.md) → a Studyhall session. */
async function exchange(options, jwt) {
  const body = { identity: jwt };
  if (options.appId) body.app_id = options.appId;
  const { token, user, expires_at } = await new Http(options.server).post("/api/auth/identity", body);
  return { token, user, guest: false, identity: true, expiresAt: Date.parse(expires_at || "") || null };
}

/** The host page's refresh callback (`Studyhall.onIdentityExpired` or `data-identity-refresh`). */
function refresher(options) {
  if (typeof options.onIdentityExpired === "function") return options.onIdentityExpired;
  const named = options.identityRefresh && window[options.identityRefresh];
  return typeof named === "function" ? named : null;
}

async function identify(options, store) {
  if (options.identity || options.signedIn) {
    // Once the page has signed its user in, the widget never falls back to a guest.
    options.signedIn = true;
    const given = options.identity;
    options.identity = null; // single use (its jti): a later sign-in asks the page again
    const refresh = refresher(options);
    let signedIn;
    try {
      if (!given && !refresh) throw new ApiError("unauthorized", "The page gave no fresh identity token.");
      signedIn = await exchange(options, given || await refresh());
    } catch (err) {
      // The page's token expired before the chat was opened: ask the page for a fresh one.
      if (!given || !(err instanceof ApiError) || err.code !== "unauthorized" || !refresh) throw err;
      signedIn = await exchange(options, await refresh());
    }
    store.set({ token: null, user: null }); // the guest session is over (carried over or not)
    return signedIn;
  }
  if (options.token) {
    const { user } = await new Http(options.server, options.token).get("/api/me");
    return { token: options.token, user, guest: false };
  }
  const saved = store.get();
  if (saved.token) {
    try {
      const { user } = await new Http(options.server, saved.token).get("/api/me");
      return { token: saved.token, user, guest: true };
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      store.clear(); // expired guest: start over as a new guest
    }
  }
  try {
    const { token, user } = await new Http(options.server).post("/api/auth/guest", options.appId ? { app_id: options.appId } : {});
    store.set({ token, user, conversation_id: null });
    return { token, user, guest: true };
  } catch (err) {
    // This site's app requires verified identity: ask the page for one, if it can.
    const refresh = refresher(options);
    if (!(err instanceof ApiError) || err.code !== "forbidden" || !refresh) throw err;
    options.signedIn = true;
    return exchange(options, await refresh());
  }
}

export async function mount(options) {
  const host = h("div", { id: "studyhall-widget", style: "visibility:hidden" });
  document.body.append(host);
  const root = host.attachShadow({ mode: "open" });
  const css = h("link", { rel: "stylesheet", href: new URL("css/widget.css", options.assets).href });
  css.addEventListener("load", () => { host.style.visibility = "visible"; });
  root.append(css);
  const widget = new Widget(root, options);
  if (options.open) widget.open();
  return widget;
}

class Widget {
  constructor(root, options) {
    this.root = root;
    this.options = options;
    this.store = new Store(options.server);
    this.conversation = null;
    this.names = new Map();
    this.unread = 0;
    this.readSeq = 0; // highest seq another member (the agent) has read
    this.started = null;
    this.build();
  }

  build() {
    this.badge = h("span", { class: "badge", hidden: true, "aria-label": "unread messages" });
    this.launcher = h("button", { type: "button", class: "launcher", "aria-expanded": "false", "aria-controls": "sh-panel", onclick: () => this.toggle() },
      chatIcon(), h("span", { class: "launcher-text" }, "Ask the tutor"), this.badge);
    this.modeEl = h("p", { class: "mode", id: "sh-mode" }, MODE_TEXT.ai);
    this.whoEl = h("p", { class: "who", hidden: true });
    this.connEl = h("span", { class: "conn", role: "status", hidden: true });
    this.noticeEl = h("div", { class: "notice", role: "status", hidden: true });
    this.messagesEl = h("ol", { class: "messages", id: "sh-messages", "aria-label": "Conversation" });
    this.olderBtn = h("button", { type: "button", class: "older", hidden: true, onclick: () => this.loadOlder() }, "Show earlier messages");
    this.scroll = h("div", { class: "scroll", "data-scroll": "" }, this.olderBtn, this.messagesEl);
    this.typingEl = h("div", { class: "typing", "aria-live": "polite" });
    this.humanBtn = h("button", { type: "button", class: "human", onclick: () => this.escalate() }, "Talk to a person");
    this.stopBtn = h("button", { type: "button", class: "stop", hidden: true, onclick: () => this.stop() }, "Stop answer");
    this.newBtn = h("button", { type: "button", class: "human", hidden: true, onclick: () => this.startNew() }, "Start a new conversation");
    this.input = h("textarea", { id: "sh-input", rows: "2", placeholder: "Ask a question…", disabled: true });
    this.sendBtn = h("button", { type: "submit", class: "send", disabled: true }, "Send");
    this.composer = h("form", { class: "composer" },
      h("label", { for: "sh-input", class: "sr-only" }, "Your question"), this.input, this.sendBtn);
    this.panel = h("section", { id: "sh-panel", class: "panel", role: "dialog", "aria-labelledby": "sh-title", "aria-describedby": "sh-mode", hidden: true },
      h("header", {},
        h("div", { class: "titles" }, h("h2", { id: "sh-title" }, this.options.title), this.modeEl, this.whoEl),
        this.connEl,
        h("button", { type: "button", class: "close", "aria-label": "Close chat", onclick: () => this.close() }, "×")),
      this.noticeEl, this.scroll, this.typingEl,
      h("div", { class: "actions" }, this.humanBtn, this.stopBtn, this.newBtn),
      this.composer);
    this.root.append(this.launcher, this.panel);

    this.composer.addEventListener("submit", (ev) => { ev.preventDefault(); this.send(); });
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); this.send(); }
    });
    this.input.addEventListener("input", () => this.conversation && this.typing?.sendTyping(this.conversation.id));
    this.panel.addEventListener("keydown", (ev) => { if (ev.key === "Escape") this.close(); });
  }

  // ---- opening and connecting ---------------------------------------------------------
  toggle() { this.panel.hidden ? this.open() : this.close(); }

  open() {
    this.panel.hidden = false;
    this.launcher.setAttribute("aria-expanded", "true");
    this.unread = 0;
    this.renderBadge();
    this.input.focus();
    this.started ??= this.start().catch((err) => {
      this.started = null;
      this.notice(`The tutor is unavailable: ${err.message}`, true);
    });
    this.markRead();
  }

  close() {
    this.panel.hidden = true;
    this.launcher.setAttribute("aria-expanded", "false");
    this.launcher.focus();
  }

  async start() {
    this.notice("Connecting…");
    this.identity = await identify(this.options, this.store);
    this.names.set(this.identity.user.id, this.identity.user.name);
    this.whoEl.hidden = this.identity.guest;
    this.whoEl.textContent = this.identity.guest ? "" : `Signed in as ${this.identity.user.name}`;
    this.http = new Http(this.options.server, this.identity.token);
    this.live = new Live(this.options.server, this.identity.token, { onStatus: (s) => this.status(s) });
    this.recovery = new Recovery(this.live);
    this.view = new MessageList(this.messagesEl, { selfId: this.identity.user.id, names: this.names, onRetry: (id) => this.outbox.retry(id) });
    this.outbox = new Outbox(this.live, this.recovery, { onChange: (e) => this.view.pending(e) });
    this.typing = new Typing(this.live, this.typingEl, this.names);
    this.live.on("message:delta", (d) => this.onDelta(d));
    this.live.on("message:new", ({ message }) => this.onMessage(message));
    this.live.on("message:cancelled", ({ conversation_id, message_id }) => {
      if (conversation_id !== this.conversation?.id) return;
      this.view.dropDraft(message_id);
      if (!this.messagesEl.querySelector(".draft")) this.stopBtn.hidden = true;
    });
    this.live.on("conversation:updated", ({ conversation }) => this.onConversation(conversation));
    this.live.on("conversation:new", ({ conversation }) => this.onConversation(conversation));
    this.live.on("read", ({ conversation_id, user_id, seq }) => {
      if (conversation_id === this.conversation?.id && user_id !== this.identity.user.id) {
        this.readSeq = Math.max(this.readSeq, seq);
        this.renderSeen();
      }
    });
    this.live.on("disconnect", () => this.messagesEl.querySelectorAll(".draft .msg-note").forEach((n) => { n.textContent = "connection lost — the answer will follow"; }));
    this.scheduleRefresh();
    await this.openConversation();
  }

  /** Resume the stored (or latest open) tutor conversation, or start one. */
  async openConversation() {
    const savedId = this.store.get().conversation_id;
    const { conversations } = await this.http.get("/api/conversations");
    const tutor = conversations.filter((c) => c.kind === "tutor");
    let conv = tutor.find((c) => c.id === savedId) || tutor.find((c) => c.status === "open");
    if (!conv) {
      const payload = { title: this.options.title };
      if (this.options.course) payload.course = this.options.course;
      if (this.options.lesson) payload.lesson = this.options.lesson;
      conv = (await this.live.call("tutor:start", payload)).conversation;
    }
    await this.show(conv);
  }

  async show(conv) {
    this.conversation = conv;
    this.store.set({ conversation_id: conv.id });
    this.onConversation(conv);
    this.view.clear();
    this.typing.watch(conv.id);
    const timeline = await this.recovery.follow(conv.id);
    this.timeline = timeline;
    timeline.list().forEach((m) => this.view.upsert(m));
    this.olderBtn.hidden = !timeline.hasOlder;
    timeline.subscribe((m) => {
      this.view.upsert(m);
      if (m.metadata?.reply_to) this.dropSuperseded(m.metadata.reply_to, m.id);
      this.renderSeen();
    });
    this.notice(null);
    this.input.disabled = this.sendBtn.disabled = false;
    if (!this.panel.hidden) this.input.focus();
    this.markRead();
  }

  async startNew() {
    this.store.set({ conversation_id: null });
    const payload = { title: this.options.title };
    if (this.options.course) payload.course = this.options.course;
    const { conversation } = await this.live.call("tutor:start", payload);
    await this.show(conversation);
  }

  async loadOlder() {
    await this.recovery.loadOlder(this.conversation.id);
    this.timeline.list().forEach((m) => this.view.upsert(m));
    this.olderBtn.hidden = !this.timeline.hasOlder;
  }

  // ---- live events --------------------------------------------------------------------
  onDelta({ conversation_id, message_id, delta, reply_to }) {
    if (conversation_id !== this.conversation?.id) return;
    if (reply_to) this.dropSuperseded(reply_to, message_id);
    this.view.delta(message_id, delta);
    const draft = this.messagesEl.querySelector(`li.draft[data-id="${message_id}"]`);
    if (draft && reply_to) draft.dataset.replyTo = reply_to;
    this.stopBtn.hidden = false;
    this.stopBtn.dataset.conversationId = conversation_id;
  }

  /**
   * Another answer to the same question (a recovered one, after the instance streaming the
   * first died) makes the first one's draft an orphan: drop it, even if the
   * `message:cancelled` for it was missed while offline. Committed answers arrive by seq
   * (live or through `sync`), so this holds after any reconnect.
   */
  dropSuperseded(replyTo, keepId) {
    this.messagesEl.querySelectorAll("li.draft").forEach((el) => {
      if (el.dataset.replyTo === replyTo && el.dataset.id !== keepId) el.remove();
    });
    if (!this.messagesEl.querySelector(".draft")) this.stopBtn.hidden = true;
  }

  onMessage(message) {
    if (message.conversation_id !== this.conversation?.id) return;
    if (message.role === "assistant" && !this.messagesEl.querySelector(".draft")) this.stopBtn.hidden = true;
    if (message.sender_id) this.typing.stopped(message.sender_id);
    if (message.sender_id !== this.identity.user.id) {
      if (this.panel.hidden) {
        this.unread += 1;
        this.renderBadge();
      } else {
        this.markRead();
      }
    }
  }

  onConversation(conv) {
    if (this.conversation && conv.id !== this.conversation.id) return;
    this.conversation = { ...this.conversation, ...conv };
    conv.members?.forEach((m) => this.names.set(m.id, m.name));
    const agent = conv.members?.find((m) => m.role === "agent" || m.role === "admin");
    let text = MODE_TEXT[conv.mode] || MODE_TEXT.ai;
    if (conv.mode === "human" && agent) text = `${agent.name} (support) is helping you`;
    // Writing again in a closed conversation reopens it with a new ticket (server side).
    if (conv.status === "closed") text = "Closed by support · write again if you still need help";
    this.modeEl.textContent = text;
    this.panel.dataset.mode = conv.status === "closed" ? "closed" : conv.mode || "ai";
    this.humanBtn.hidden = conv.status === "closed" || conv.mode === "human";
    this.humanBtn.disabled = conv.mode !== "ai";
    this.humanBtn.textContent = conv.mode === "waiting" ? "A person is on the way…" : "Talk to a person";
    this.newBtn.hidden = conv.status !== "closed";
    if (conv.mode !== "ai") {
      this.view?.dropDrafts(); // the AI stopped when a person was asked for
      this.stopBtn.hidden = true;
    }
  }

  // ---- actions ------------------------------------------------------------------------
  send() {
    const text = this.input.value.trim();
    if (!text || !this.conversation || this.input.disabled) return;
    this.outbox.send(this.conversation.id, text);
    this.typing.sendStop(this.conversation.id);
    this.input.value = "";
    this.input.focus();
  }

  async escalate() {
    this.humanBtn.disabled = true;
    try {
      await this.live.call("tutor:escalate", { conversation_id: this.conversation.id, reason: "The student asked for a person from the chat widget." });
      this.onConversation({ ...this.conversation, mode: this.conversation.mode === "human" ? "human" : "waiting" });
    } catch (err) {
      this.humanBtn.disabled = false;
      this.notice(`Could not reach a person: ${err.message}`, true);
    }
  }

  async stop() {
    this.stopBtn.hidden = true;
    await this.live.call("tutor:stop", { conversation_id: this.conversation.id }).catch(() => {});
  }

  markRead() {
    if (this.panel.hidden || !this.timeline?.lastSeq || !this.live?.connected) return;
    if (this.timeline.lastSeq <= (this.sentRead || 0)) return;
    this.sentRead = this.timeline.lastSeq;
    this.live.call("read", { conversation_id: this.conversation.id, seq: this.timeline.lastSeq }).catch(() => { this.sentRead = 0; });
  }

  // ---- signed identity ------------------------------------------------------------------
  /** The page signed its user in, switched users or signed out (null): start over. */
  async identify(jwt) {
    clearTimeout(this.refreshTimer);
    this.options.identity = jwt || null;
    this.options.signedIn = false; // null: signed out, back to a guest
    if (!this.started) return;
    await this.started.catch(() => {});
    this.live?.close();
    this.started = null;
    this.conversation = null;
    this.timeline = null;
    this.view?.clear();
    if (!this.panel.hidden) this.open();
  }

  /**
   * The session of an identity sign-in ended: ask the page for a fresh identity token,
   * sign in again as the same user, and reconnect the same socket. Pending sends stay in
   * the outbox and go out on the reconnect; the timeline syncs from its last seq.
   */
  async refreshIdentity() {
    this.refreshing ??= (async () => {
      const refresh = refresher(this.options);
      if (!refresh) throw new Error("no refresh callback");
      const next = await exchange(this.options, await refresh());
      if (next.user.id !== this.identity.user.id) throw new Error("the page signed in someone else");
      this.identity = next;
      this.http.token = next.token;
      this.live.setToken(next.token);
      this.scheduleRefresh();
    })().catch((err) => {
      console.warn("Studyhall: could not refresh the identity:", err);
      this.live.close();
      this.started = null;
      this.notice("Your session expired; reload the page to continue.", true);
    }).finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  /**
   * Refresh ahead: a little before the session ends (a quarter of its life, at most a
   * minute), ask the page for a fresh identity token, exchange it, and hand the new session
   * to the open socket (`auth:refresh`): the server then keeps the socket past the old
   * session's end, so there is no disconnect and nothing to resync. If that fails, the
   * session-ended path above still runs when the server closes the socket.
   */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const expiresAt = this.identity?.identity ? this.identity.expiresAt : null;
    if (!expiresAt || !refresher(this.options)) return;
    const left = expiresAt - Date.now();
    const lead = Math.min(60_000, Math.max(500, left / 4));
    this.refreshTimer = setTimeout(() => this.refreshAhead(), Math.max(0, left - lead));
  }

  async refreshAhead() {
    if (this.refreshing) return;
    const live = this.live;
    try {
      const next = await exchange(this.options, await refresher(this.options)());
      if (live !== this.live || this.refreshing) return; // signed out, switched, or already refreshed
      if (next.user.id !== this.identity.user.id) throw new Error("the page signed in someone else");
      this.identity = next;
      this.http.token = next.token;
      live.useToken(next.token); // any later reconnect uses the new session
      if (live.connected) {
        try {
          await live.call("auth:refresh", { token: next.token });
        } catch (err) {
          // Another role (staff rooms are joined at connect): reconnect with it now. Offline
          // or a timeout: the reconnect already uses the new token.
          if (err instanceof ApiError && (err.code === "conflict" || err.code === "forbidden")) live.setToken(next.token);
        }
      }
      this.scheduleRefresh();
    } catch (err) {
      console.warn("Studyhall: could not refresh the identity ahead of its end:", err);
    }
  }

  // ---- rendering helpers --------------------------------------------------------------
  status(status) {
    if (status === "unauthorized" && this.identity?.identity) {
      this.connEl.hidden = false;
      this.connEl.dataset.status = "connecting";
      this.connEl.textContent = "Reconnecting…";
      this.refreshIdentity();
      return;
    }
    if (status === "unauthorized" && !this.options.token) {
      this.store.clear(); // the guest token expired: come back as a new guest
      this.live.close();
      this.started = null;
      this.notice("Your session expired; reopen the chat to start again.", true);
      return;
    }
    this.connEl.hidden = status === "online";
    this.connEl.dataset.status = status;
    this.connEl.textContent = status === "online" ? "" : status === "unauthorized" ? "Signed out" : "Reconnecting…";
    if (status === "online") this.markRead();
  }

  notice(text, warn = false) {
    this.noticeEl.hidden = !text;
    this.noticeEl.textContent = text || "";
    this.noticeEl.classList.toggle("warn", warn);
  }

  renderBadge() {
    this.badge.hidden = this.unread === 0;
    this.badge.textContent = String(this.unread);
    this.badge.setAttribute("aria-label", `${this.unread} unread messages`);
  }

  renderSeen() {
    this.messagesEl.querySelectorAll(".seen").forEach((el) => el.remove());
    if (!this.readSeq) return;
    const mine = [...this.messagesEl.querySelectorAll("li.msg-mine[data-seq]")].filter((el) => Number(el.dataset.seq) <= this.readSeq);
    mine.at(-1)?.append(h("div", { class: "seen msg-note" }, "Seen"));
  }
}
