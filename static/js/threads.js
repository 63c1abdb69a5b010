// Threads page: direct and group conversations with unread counts, presence and recovery.
import { requireSession, userBadge } from "./auth.js";
import { Http, Live } from "./client.js";
import { $, announce, h, MessageList } from "./dom.js";
import { connectionBadge, Typing } from "./common.js";
import { Outbox, Recovery } from "./timeline.js";

const main = $("#main");
const session = await requireSession(main, { title: "Sign in to your threads", allowRegister: true });
const me = session.user;
$("#who").replaceChildren(userBadge(session));

const http = new Http("", session.token);
const live = new Live("", session.token, { onStatus: connectionBadge($("#conn")) });
const conversations = new Map(); // id -> conversation object
const online = new Set();
const names = new Map([[me.id, me.name]]);
let current = null; // open conversation id
let unsubscribe = () => {};

const recovery = new Recovery(live, { onUnknown: (m) => noteActivity(m) });
const ctx = { selfId: me.id, names, onRetry: (id) => outbox.retry(id) };

// ---- layout ---------------------------------------------------------------------------
const listEl = h("ul", { class: "list", id: "conversations", "aria-label": "Conversations" });
const memberInput = h("input", { id: "new-members", name: "members", placeholder: "user id, another id…", required: true });
const titleInput = h("input", { id: "new-title", name: "title", placeholder: "Optional for groups" });
const kindSelect = h("select", { id: "new-kind", name: "kind" }, h("option", { value: "direct" }, "Direct (one person)"), h("option", { value: "group" }, "Group"));
const createError = h("p", { class: "form-error", role: "alert" });
const createForm = h("form", { class: "card", id: "new-conversation", "aria-labelledby": "new-title-h" },
  h("h2", { id: "new-title-h" }, "New conversation"),
  h("p", { class: "muted" }, "Add people by their user id (they see theirs on this page)."),
  h("div", { class: "field" }, h("label", { for: "new-kind" }, "Kind"), kindSelect),
  h("div", { class: "field" }, h("label", { for: "new-members" }, "Member user ids (comma separated)"), memberInput),
  h("div", { class: "field" }, h("label", { for: "new-title" }, "Title"), titleInput),
  createError,
  h("button", { type: "submit", class: "primary" }, "Create"));

const myId = h("code", { id: "my-id" }, me.id);
const aside = h("aside", {},
  h("div", { class: "card" },
    h("p", { class: "muted" }, "Your user id: ", myId, " ",
      h("button", { type: "button", class: "link", onclick: () => navigator.clipboard?.writeText(me.id) }, "Copy")),
    h("h2", {}, "Conversations"), listEl),
  h("div", { style: "height:1rem" }), createForm);

const threadTitle = h("h2", { id: "thread-title" }, "Pick a conversation");
const memberLine = h("p", { class: "muted", id: "thread-members" });
const messagesEl = h("ol", { class: "messages", id: "messages", "aria-labelledby": "thread-title" });
const scroll = h("div", { class: "scroll", "data-scroll": "" }, messagesEl);
const olderBtn = h("button", { type: "button", hidden: true, onclick: loadOlder }, "Load older messages");
const typingEl = h("div", { class: "typing", "aria-live": "polite" });
const input = h("textarea", { id: "composer", name: "content", rows: "2", placeholder: "Write a message", disabled: true });
const sendBtn = h("button", { type: "submit", class: "primary", disabled: true }, "Send");
const composer = h("form", { class: "composer" }, h("label", { for: "composer", class: "sr-only" }, "Message"), input, sendBtn);
const section = h("section", { class: "card chat", "aria-label": "Conversation" }, threadTitle, memberLine, olderBtn, scroll, typingEl, composer);
main.replaceChildren(h("div", { class: "split" }, aside, section));

const view = new MessageList(messagesEl, ctx);
const outbox = new Outbox(live, recovery, { onChange: (e) => e.conversation_id === current && view.pending(e) });
const typing = new Typing(live, typingEl, names);

// ---- conversation list ----------------------------------------------------------------
function titleOf(conv) {
  if (conv.title) return conv.title;
  const others = conv.members.filter((m) => m.id !== me.id);
  return others.map((m) => m.name).join(", ") || "Just you";
}

function peerOf(conv) {
  return conv.kind === "direct" ? conv.members.find((m) => m.id !== me.id) : null;
}

function renderList() {
  const items = [...conversations.values()];
  if (!items.length) {
    listEl.replaceChildren(h("li", { class: "empty" }, "No conversations yet."));
    return;
  }
  listEl.replaceChildren(...items.map((conv) => {
    const peer = peerOf(conv);
    const isOnline = peer ? online.has(peer.id) : conv.members.some((m) => m.id !== me.id && online.has(m.id));
    return h("li", {},
      h("button", { type: "button", class: "item", "aria-current": conv.id === current ? "true" : "false", dataset: { id: conv.id }, onclick: () => open(conv.id) },
        h("span", { class: `dot${isOnline ? " online" : ""}`, role: "img", "aria-label": isOnline ? "online" : "offline" }),
        h("span", { class: "grow" }, titleOf(conv), conv.kind === "group" ? h("span", { class: "muted" }, ` · group of ${conv.members.length}`) : null),
        conv.unread ? h("span", { class: "badge unread", "aria-label": `${conv.unread} unread` }, String(conv.unread)) : null));
  }));
}

function remember(conv) {
  const known = conversations.get(conv.id);
  conv.unread = conv.unread ?? known?.unread ?? 0;
  conv.members.forEach((m) => names.set(m.id, m.name));
  conversations.set(conv.id, conv);
}

async function loadConversations() {
  const { conversations: list } = await http.get("/api/conversations");
  list.filter((c) => c.kind === "direct" || c.kind === "group").forEach(remember);
  renderList();
}

async function loadPresence() {
  const { online: ids } = await http.get("/api/presence");
  online.clear();
  ids.forEach((id) => online.add(id));
  renderList();
  renderMembers();
}

// A message in a conversation that is not open: count it, move the conversation to the top.
function noteActivity(message) {
  const conv = conversations.get(message.conversation_id);
  if (!conv) {
    loadConversations();
    return;
  }
  if (message.seq <= conv.last_seq) return;
  conv.last_seq = message.seq;
  if (message.sender_id !== me.id) {
    conv.unread = (conv.unread || 0) + 1;
    announce($("#announcer"), `New message in ${titleOf(conv)}`);
  }
  conversations.delete(conv.id);
  conversations.set(conv.id, conv);
  const reordered = new Map([[conv.id, conv], ...conversations]);
  conversations.clear();
  reordered.forEach((v, k) => conversations.set(k, v));
  renderList();
}

// ---- one open thread ------------------------------------------------------------------
function renderMembers() {
  const conv = conversations.get(current);
  if (!conv) return;
  memberLine.replaceChildren(...conv.members.map((m) =>
    h("span", { class: "row", style: "display:inline-flex;margin-right:.75rem" },
      h("span", { class: `dot${online.has(m.id) || m.id === me.id ? " online" : ""}`, "aria-hidden": "true" }),
      `${m.id === me.id ? "You" : m.name}${online.has(m.id) && m.id !== me.id ? " (online)" : ""}`)));
}

async function open(id) {
  unsubscribe();
  current = id;
  const conv = conversations.get(id);
  threadTitle.textContent = titleOf(conv);
  renderMembers();
  view.clear();
  typing.watch(id);
  input.disabled = sendBtn.disabled = false;
  renderList();
  const timeline = await recovery.follow(id);
  if (current !== id) return;
  timeline.list().forEach((m) => view.upsert(m));
  outbox.pending(id).forEach((e) => view.pending(e));
  olderBtn.hidden = !timeline.hasOlder;
  unsubscribe = timeline.subscribe((m) => {
    view.upsert(m);
    if (m.sender_id && m.sender_id !== me.id) typing.stopped(m.sender_id);
    markRead();
  });
  markRead();
  input.focus();
}

async function loadOlder() {
  const added = await recovery.loadOlder(current);
  recovery.timeline(current).list().slice(0, added).forEach((m) => view.upsert(m));
  olderBtn.hidden = !recovery.timeline(current).hasOlder;
}

function markRead() {
  const conv = conversations.get(current);
  const timeline = recovery.timeline(current);
  if (!conv || document.hidden || !timeline.lastSeq) return;
  conv.last_seq = Math.max(conv.last_seq, timeline.lastSeq);
  if (conv.unread) {
    conv.unread = 0;
    renderList();
  }
  live.call("read", { conversation_id: current, seq: timeline.lastSeq }).catch(() => {});
}

composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  if (!text || !current) return;
  outbox.send(current, text);
  typing.sendStop(current);
  input.value = "";
  input.focus();
});
input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    composer.requestSubmit();
  }
});
input.addEventListener("input", () => current && typing.sendTyping(current));
document.addEventListener("visibilitychange", markRead);

createForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  createError.textContent = "";
  const ids = memberInput.value.split(/[\s,]+/).filter(Boolean);
  try {
    const { conversation } = await live.call("conversation:create", {
      kind: kindSelect.value, member_ids: ids, title: titleInput.value.trim() || undefined,
    });
    remember(conversation);
    renderList();
    loadPresence().catch(() => {});
    memberInput.value = titleInput.value = "";
    open(conversation.id);
  } catch (err) {
    createError.textContent = err.message;
  }
});

// ---- live events ----------------------------------------------------------------------
live.on("message:new", ({ message }) => {
  if (message.conversation_id !== current) noteActivity(message);
  else conversations.get(current) && (conversations.get(current).last_seq = Math.max(conversations.get(current).last_seq, message.seq));
});
live.on("conversation:new", ({ conversation }) => {
  if (conversation.kind !== "direct" && conversation.kind !== "group") return;
  remember(conversation);
  renderList();
  loadPresence().catch(() => {}); // someone new shares a conversation: are they online?
});
live.on("conversation:updated", ({ conversation }) => {
  if (!conversations.has(conversation.id)) return;
  remember({ ...conversation, unread: conversations.get(conversation.id).unread });
  renderList();
  if (conversation.id === current) renderMembers();
});
live.on("presence", ({ user_id, status }) => {
  if (status === "online") online.add(user_id);
  else online.delete(user_id);
  renderList();
  renderMembers();
});
live.on("connect", () => {
  loadPresence().catch(() => {});
  loadConversations().catch(() => {});
});

await loadConversations();
