// Small DOM helpers and the message list every page shares. Text always goes in as text
// (textContent), never as HTML, so a message cannot inject markup; what the tutor, agents
// and platforms write is Markdown, rendered and sanitised by markdown.js into DOM nodes.
import { renderMarkdown } from "./markdown.js";

/** h("button", {class: "x", onclick: fn, "aria-label": "..."}, "text", child) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    // Through the CSSOM: a style *attribute* is inline style, which the pages' CSP refuses.
    else if (key === "style" && typeof value === "string") el.style.cssText = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replace an element's children, skipping null/false (conditional parts). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function formatDateTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

/** "in 3 h 20 min" / "12 min ago" for SLA clocks. */
export function relative(iso, now = Date.now()) {
  const ms = new Date(iso).getTime() - now;
  const mins = Math.round(Math.abs(ms) / 60000);
  const text = mins >= 60 ? `${Math.floor(mins / 60)} h ${mins % 60} min` : `${mins} min`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

function isUrl(value) {
  return typeof value === "string" && /^https?:\/\//i.test(value);
}

/** The sources under an AI answer: title, linked when the citation has a URL source. */
export function renderCitations(citations) {
  if (!Array.isArray(citations) || !citations.length) return null;
  const seen = new Set();
  const items = [];
  for (const c of citations) {
    const key = c.document_id || c.chunk_id || c.title;
    if (seen.has(key)) continue;
    seen.add(key);
    const title = c.title || "Source";
    const body = isUrl(c.source) ? h("a", { href: c.source, target: "_blank", rel: "noopener noreferrer" }, title) : title;
    items.push(h("li", { class: "citation", dataset: { documentId: c.document_id || "" } }, body));
  }
  return h("div", { class: "citations" }, h("span", { class: "citations-label" }, "Sources"), h("ol", {}, items));
}

const ROLE_LABEL = { assistant: "Tutor (AI)", system: "Studyhall", agent: "Agent" };

/** Who wrote a message, as a reader sees it. */
export function senderName(msg, { selfId, names }) {
  if (msg.sender_id && msg.sender_id === selfId) return "You";
  if (msg.role === "assistant" || msg.role === "system") return ROLE_LABEL[msg.role];
  if (msg.role === "app") return msg.metadata?.app?.name || "App"; // posted by a platform's backend
  const name = names?.get?.(msg.sender_id);
  if (msg.role === "agent") return name ? `${name} (agent)` : "Agent";
  return name || "Someone";
}

// Who writes Markdown: the tutor, agents and platforms (their texts are formatted for
// reading). A student's or member's own text shows exactly as typed (docs/browser.md).
const MARKDOWN_ROLES = new Set(["assistant", "agent", "app"]);

/** A message's body: Markdown for MARKDOWN_ROLES, plain text otherwise. */
export function renderBody(msg) {
  if (msg.deleted) return h("div", { class: "msg-body" }, "This message was deleted.");
  if (!MARKDOWN_ROLES.has(msg.role)) return h("div", { class: "msg-body" }, msg.content);
  return h("div", { class: "msg-body md" }, renderMarkdown(msg.content, { citations: msg.metadata?.citations }));
}

export function renderMessage(msg, ctx) {
  const mine = msg.sender_id && msg.sender_id === ctx.selfId;
  const cls = ["msg", `msg-${msg.role}`, mine ? "msg-mine" : "", msg.deleted ? "msg-deleted" : ""].join(" ").trim();
  const meta = msg.metadata || {};
  return h("li", { class: cls, dataset: { id: msg.id, seq: String(msg.seq), clientId: msg.client_id || "" } },
    msg.role === "system" ? null : h("div", { class: "msg-head" },
      h("span", { class: "msg-sender" }, senderName(msg, ctx)),
      h("time", { datetime: msg.created_at }, formatTime(msg.created_at)),
      msg.edited_at && !msg.deleted ? h("span", { class: "msg-edited" }, "edited") : null),
    renderBody(msg),
    meta.stopped || meta.partial ? h("div", { class: "msg-note" }, "Answer stopped before it was finished.") : null,
    msg.role === "assistant" ? renderCitations(meta.citations) : null,
    ctx.extra ? ctx.extra(msg) : null);
}

/**
 * A chat log (<ol role="log" aria-live="polite">) kept in seq order, keyed by message id.
 * Pending sends (by client_id) and streaming drafts (by message id) sit at the end until
 * the committed message replaces them.
 */
export class MessageList {
  constructor(ol, ctx) {
    this.ol = ol;
    this.ctx = ctx;
    ol.setAttribute("role", "log");
    ol.setAttribute("aria-live", "polite");
    ol.setAttribute("aria-relevant", "additions");
  }

  clear() { this.ol.replaceChildren(); }

  _byData(name, value) {
    return value ? [...this.ol.children].find((el) => el.dataset[name] === value) : undefined;
  }

  upsert(msg) {
    const el = renderMessage(msg, this.ctx);
    const old = this._byData("id", msg.id);
    const pending = msg.client_id && this._byData("pendingId", msg.client_id);
    if (pending) pending.remove();
    if (old && old.dataset.seq === String(msg.seq) && !old.classList.contains("draft")) {
      old.replaceWith(el);
      return el;
    }
    if (old) old.remove();
    this.insertAt(el, msg.seq);
    return el;
  }

  /**
   * Put an element at position `pos` among committed messages (by seq). Other items,
   * such as an agent's internal notes, carry `data-pos` (e.g. 4.5: after message 4).
   */
  insertAt(el, pos) {
    const at = (c) => c.dataset.seq ?? c.dataset.pos;
    const children = [...this.ol.children];
    const after = children.find((c) => at(c) !== undefined && Number(at(c)) > pos);
    const firstLoose = children.find((c) => at(c) === undefined);
    this.ol.insertBefore(el, after || firstLoose || null);
    this._stickToBottom();
  }

  pending(entry) {
    let el = this._byData("pendingId", entry.client_id);
    if (entry.state === "sent" || entry.state === "discarded") {
      el?.remove();
      return;
    }
    const state = entry.state === "failed"
      ? h("div", { class: "msg-note msg-error" }, `Not sent: ${entry.error?.message || "error"}. `,
          h("button", { type: "button", class: "link", onclick: () => this.ctx.onRetry?.(entry.client_id) }, "Retry"))
      : h("div", { class: "msg-note" }, "Sending…");
    const fresh = h("li", { class: "msg msg-mine msg-pending", dataset: { pendingId: entry.client_id } },
      h("div", { class: "msg-body" }, entry.content), state);
    if (el) el.replaceWith(fresh);
    else this.ol.append(fresh);
    this._stickToBottom();
  }

  /** Append streamed text to the draft of an answer (hidden from screen readers until final). */
  delta(messageId, text) {
    let el = this._byData("id", messageId);
    if (el && !el.classList.contains("draft")) return; // the final message is already here
    if (!el) {
      el = h("li", { class: "msg msg-assistant draft", "aria-hidden": "true", dataset: { id: messageId } },
        h("div", { class: "msg-head" }, h("span", { class: "msg-sender" }, "Tutor (AI)"), h("span", { class: "msg-note" }, "writing…")),
        h("div", { class: "msg-body" }));
      this.ol.append(el);
    }
    el.querySelector(".msg-body").append(text);
    this._stickToBottom();
  }

  /** A streamed answer that will not be committed (e.g. a person took over): remove it. */
  dropDraft(messageId) {
    const el = this._byData("id", messageId);
    if (el?.classList.contains("draft")) el.remove();
  }

  dropDrafts() {
    this.ol.querySelectorAll(".draft").forEach((el) => el.remove());
  }

  _stickToBottom() {
    const box = this.ol.closest("[data-scroll]") || this.ol;
    box.scrollTop = box.scrollHeight;
  }
}

/** A visually hidden polite status line for screen readers. */
export function announce(region, text) {
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 30);
}
