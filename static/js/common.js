// Pieces several pages share: the connection badge and typing indicators.

const STATUS_TEXT = {
  connecting: "Connecting…",
  online: "Connected",
  offline: "Offline — reconnecting…",
  unauthorized: "Signed out",
};

/** Returns an onStatus callback that shows the connection state in `el`. */
export function connectionBadge(el) {
  return (status) => {
    el.hidden = false;
    el.dataset.status = status;
    el.textContent = STATUS_TEXT[status] || status;
    if (status === "unauthorized") {
      sessionStorage.removeItem("studyhall:session");
      location.reload();
    }
  };
}

/**
 * Typing state for one watched conversation: shows "Ana is typing…" from `typing` events
 * (expiring after a few seconds, since a stop can be lost) and sends our own typing,
 * at most every 2 s, with a stop after a pause.
 */
export class Typing {
  constructor(live, el, names) {
    this.live = live;
    this.el = el;
    this.names = names;
    this.conversationId = null;
    this.who = new Map(); // user_id -> timer
    this.lastSent = 0;
    this.idleTimer = null;
    live.on("typing", ({ conversation_id, user_id, typing }) => {
      if (conversation_id !== this.conversationId) return;
      if (typing) this.started(user_id);
      else this.stopped(user_id);
    });
  }

  watch(conversationId) {
    this.conversationId = conversationId;
    this.who.forEach((t) => clearTimeout(t));
    this.who.clear();
    this.render();
  }

  started(userId) {
    clearTimeout(this.who.get(userId));
    this.who.set(userId, setTimeout(() => this.stopped(userId), 6000));
    this.render();
  }

  stopped(userId) {
    if (!this.who.has(userId)) return;
    clearTimeout(this.who.get(userId));
    this.who.delete(userId);
    this.render();
  }

  render() {
    const names = [...this.who.keys()].map((id) => this.names.get(id) || "Someone");
    this.el.textContent = names.length === 0 ? ""
      : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
  }

  sendTyping(conversationId) {
    const now = Date.now();
    if (now - this.lastSent > 2000) {
      this.lastSent = now;
      this.live.call("typing", { conversation_id: conversationId, typing: true }).catch(() => {});
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.sendStop(conversationId), 4000);
  }

  sendStop(conversationId) {
    clearTimeout(this.idleTimer);
    if (!this.lastSent) return;
    this.lastSent = 0;
    this.live.call("typing", { conversation_id: conversationId, typing: false }).catch(() => {});
  }
}
