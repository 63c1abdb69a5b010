// Agent console: the ticket queue by SLA with live updates, the transcript with the AI's
// decisions and sources, replies, internal notes, claim, transfer and resolve.
import { requireSession, userBadge } from "./auth.js";
import { Http, Live } from "./client.js";
import { $, announce, formatDateTime, formatTime, h, MessageList, relative } from "./dom.js";
import { connectionBadge, Typing } from "./common.js";
import { Outbox, Recovery } from "./timeline.js";

const main = $("#main");
const session = await requireSession(main, { title: "Agent sign in", roles: ["agent", "admin"], hint: "For support agents and admins." });
const me = session.user;
$("#who").replaceChildren(userBadge(session));

const http = new Http("", session.token);
const live = new Live("", session.token, { onStatus: connectionBadge($("#conn")) });
const recovery = new Recovery(live);
const tickets = new Map(); // id -> ticket
const names = new Map([[me.id, me.name]]);
let filter = "active";
let selected = null; // {ticket, conversation, unsubscribe}

// ---- layout ---------------------------------------------------------------------------
const filters = [["active", "Active"], ["mine", "Mine"], ["all", "All"]];
const filterBar = h("div", { class: "row", role: "radiogroup", "aria-label": "Show tickets" },
  filters.map(([value, label]) => h("label", { class: "row" },
    h("input", { type: "radio", name: "filter", value, checked: value === filter, onchange: () => { filter = value; loadQueue(); } }), label)));
const queueEl = h("ul", { class: "list", id: "queue", "aria-label": "Tickets by SLA due time" });
const aside = h("aside", { class: "card" }, h("h2", {}, "Queue"), h("p", { class: "muted" }, "Ordered by SLA due time."), filterBar, queueEl);

const detailEl = h("section", { class: "card", id: "ticket", "aria-label": "Ticket" }, h("p", { class: "empty" }, "Pick a ticket from the queue."));
main.replaceChildren(h("div", { class: "split" }, aside, detailEl));

// ---- the queue ------------------------------------------------------------------------
function matches(t) {
  if (filter === "active") return t.status === "open" || t.status === "assigned";
  if (filter === "mine") return t.assigned_to === me.id && (t.status === "open" || t.status === "assigned");
  return true;
}

function sorted() {
  return [...tickets.values()].filter(matches).sort((a, b) => (a.sla_due_at || "").localeCompare(b.sla_due_at || ""));
}

function slaText(t) {
  if (t.status === "resolved" || t.status === "closed") return t.status;
  return t.sla_breached ? `SLA breached ${relative(t.sla_due_at)}` : `due ${relative(t.sla_due_at)}`;
}

function renderQueue() {
  const list = sorted();
  if (!list.length) {
    queueEl.replaceChildren(h("li", { class: "empty" }, "No tickets here."));
    return;
  }
  queueEl.replaceChildren(...list.map((t) => h("li", {},
    h("button", { type: "button", class: "item", "aria-current": selected?.ticket.id === t.id ? "true" : "false", dataset: { id: t.id, number: t.number }, onclick: () => select(t.id) },
      h("span", { class: "grow" },
        h("strong", {}, t.number), " ", t.subject || "",
        h("br"),
        h("span", { class: "muted" }, `${t.assigned_to ? (t.assigned_to === me.id ? "yours" : `with ${names.get(t.assigned_to) || "another agent"}`) : "unassigned"} · ${slaText(t)}`)),
      h("span", { class: `badge ${t.priority}` }, t.priority),
      t.sla_breached ? h("span", { class: "badge breached" }, "SLA") : null))));
}

async function loadQueue() {
  const status = filter === "all" ? "all" : "";
  const query = filter === "mine" ? "?assigned=me" : status ? `?status=${status}` : "";
  const { tickets: list } = await http.get(`/api/tickets${query}`);
  if (filter !== "all") [...tickets.values()].filter((t) => matches(t)).forEach((t) => tickets.delete(t.id));
  list.forEach((t) => tickets.set(t.id, t));
  renderQueue();
}

/** Newer of two states of a ticket (events and acks can arrive out of order). */
function newest(a, b) {
  if (!a) return b;
  return (a.updated_at || "") > (b.updated_at || "") ? a : b;
}

function upsertTicket(incoming, { isNew = false } = {}) {
  const t = newest(tickets.get(incoming.id), incoming);
  tickets.set(t.id, t);
  renderQueue();
  if (isNew) announce($("#announcer"), `New ticket ${t.number}: ${t.subject || ""}`);
  if (selected?.ticket.id === t.id) {
    const wasMember = selected.ticket.assigned_to === me.id;
    selected.ticket = t;
    renderHeader();
    // Now a member of the conversation: live messages flow; sync what came meanwhile.
    if (!wasMember && t.assigned_to === me.id) recovery.sync();
  }
}

live.on("ticket:new", ({ ticket }) => upsertTicket(ticket, { isNew: true }));
live.on("ticket:updated", ({ ticket }) => upsertTicket(ticket));
live.on("ticket:note", ({ ticket_id, note }) => {
  if (selected?.ticket.id === ticket_id) addNote(note);
});
live.on("connect", () => loadQueue().catch(() => {}));
setInterval(renderQueue, 30000); // SLA clocks

// ---- one ticket -----------------------------------------------------------------------
const headerEl = h("div", { id: "ticket-header" });
const actionsEl = h("div", { class: "toolbar", id: "ticket-actions" });
const messagesEl = h("ol", { class: "messages", id: "messages", "aria-label": "Transcript" });
const transcript = h("div", { class: "scroll", "data-scroll": "" }, messagesEl);
const typingEl = h("div", { class: "typing", "aria-live": "polite" });
const decisionsEl = h("ol", { class: "list", id: "decisions" });
const input = h("textarea", { id: "reply", rows: "3", placeholder: "Reply to the student" });
const modeReply = h("input", { type: "radio", name: "compose-mode", value: "reply", id: "mode-reply", checked: true });
const modeNote = h("input", { type: "radio", name: "compose-mode", value: "note", id: "mode-note" });
const sendBtn = h("button", { type: "submit", class: "primary", id: "send" }, "Send reply");
const composeError = h("p", { class: "form-error", role: "alert" });
const composer = h("form", { id: "composer" },
  h("div", { class: "row", role: "radiogroup", "aria-label": "Write" },
    h("label", { class: "row", for: "mode-reply" }, modeReply, "Reply to the student"),
    h("label", { class: "row", for: "mode-note" }, modeNote, "Internal note (agents only)")),
  h("div", { class: "composer" }, h("label", { for: "reply", class: "sr-only", id: "reply-label" }, "Reply"), input, sendBtn),
  composeError);
const view = new MessageList(messagesEl, {
  selfId: me.id, names, onRetry: (id) => outbox.retry(id),
  extra: (m) => (m.role === "assistant" ? decisionLine(m.metadata || {}) : null),
});
const outbox = new Outbox(live, recovery, { onChange: (e) => e.conversation_id === selected?.ticket.conversation_id && view.pending(e) });
const typing = new Typing(live, typingEl, names);

function decisionLine(meta) {
  const bits = [];
  const d = meta.decision;
  if (d) bits.push(typeof d === "string" ? d : `${d.action || ""}${d.confidence != null ? ` (${Math.round(d.confidence * 100)}%)` : ""}`);
  if (meta.model) bits.push(meta.model);
  if (meta.latency_ms != null) bits.push(`${meta.latency_ms} ms`);
  const scores = (meta.citations || []).map((c) => `${c.title || "source"} ${Number(c.score || 0).toFixed(3)}`);
  return h("div", { class: "msg-note" }, bits.join(" · "), scores.length ? h("div", {}, `Retrieved: ${scores.join("; ")}`) : null);
}

function setComposeMode() {
  const note = modeNote.checked;
  composer.classList.toggle("note-mode", note);
  input.placeholder = note ? "Internal note: only agents and admins see this" : "Reply to the student";
  $("#reply-label", composer).textContent = note ? "Internal note" : "Reply";
  sendBtn.textContent = note ? "Add internal note" : "Send reply";
  renderHeader();
}
modeReply.addEventListener("change", setComposeMode);
modeNote.addEventListener("change", setComposeMode);

// The action bar is built once, so typed values and focus survive ticket updates.
const transferInput = h("input", { id: "transfer-to", placeholder: "agent user id", "aria-label": "Transfer to agent (user id)" });
const resolutionInput = h("input", { id: "resolution", placeholder: "Resolution (optional)", "aria-label": "Resolution" });
const handbackSelect = h("select", { id: "handback", "aria-label": "After resolving" },
  h("option", { value: "ai" }, "Hand back to the AI tutor"), h("option", { value: "close" }, "Close the conversation"));
const actions = {
  claim: h("button", { type: "button", class: "primary", onclick: () => act("ticket:claim", { ticket_id: selected.ticket.id }) }, "Claim"),
  transfer: h("span", { class: "row" }, transferInput,
    h("button", { type: "button", onclick: () => transferInput.value.trim() && act("ticket:transfer", { ticket_id: selected.ticket.id, agent_id: transferInput.value.trim() }) }, "Transfer")),
  resolve: h("span", { class: "row" }, resolutionInput, handbackSelect,
    h("button", { type: "button", class: "primary", onclick: () => act("ticket:resolve", { ticket_id: selected.ticket.id, handback: handbackSelect.value, resolution: resolutionInput.value.trim() || undefined }) }, "Resolve")),
  finished: h("span", { class: "muted" }),
};
actionsEl.append(actions.claim, actions.transfer, actions.resolve, actions.finished);

function renderHeader() {
  if (!selected) return;
  const t = selected.ticket;
  const user = selected.conversation?.members?.find((m) => m.id === t.user_id);
  const mine = t.assigned_to === me.id;
  const active = t.status === "open" || t.status === "assigned";
  headerEl.replaceChildren(
    h("h2", {}, `${t.number} · ${t.subject || "Ticket"}`),
    h("p", { class: "row" },
      h("span", { class: `badge ${t.priority}` }, `priority: ${t.priority}`),
      h("span", { class: "badge status", id: "ticket-status" }, t.status),
      t.sla_breached ? h("span", { class: "badge breached" }, "SLA breached") : null,
      h("span", { class: "muted" }, `${slaText(t)} · ${user ? `from ${user.name}` : ""} · opened ${formatDateTime(t.created_at)}`)),
    h("p", { class: "muted" }, `Why: ${t.escalation_reason || "—"}${t.category ? ` · category: ${t.category}` : ""}${t.assigned_to ? ` · assigned to ${t.assigned_to === me.id ? "you" : names.get(t.assigned_to) || t.assigned_to}` : ""}`));

  const holder = mine || me.role === "admin";
  actions.claim.hidden = !(active && !t.assigned_to); // a held ticket moves by transfer
  actions.transfer.hidden = !(active && holder);
  actions.resolve.hidden = !(active && holder);
  actions.finished.hidden = active;
  actions.finished.textContent = `This ticket is ${t.status}${t.handback ? ` (handed back: ${t.handback})` : ""}.`;
  const canReply = mine && active;
  input.disabled = modeReply.checked && !canReply;
  sendBtn.disabled = input.disabled;
  if (modeReply.checked && !canReply) input.placeholder = active ? "Claim the ticket to reply" : "This ticket is finished";
}

async function act(event, payload) {
  composeError.textContent = "";
  try {
    const { ticket } = await live.call(event, payload);
    upsertTicket(ticket);
  } catch (err) {
    composeError.textContent = err.message;
    loadQueue().catch(() => {});
  }
}

function addNote(note) {
  if (messagesEl.querySelector(`[data-note-id="${note.id}"]`)) return;
  names.set(note.author_id, note.author_name || names.get(note.author_id));
  const el = h("li", { class: "msg internal-note", dataset: { noteId: note.id } },
    h("div", { class: "msg-head" }, h("span", { class: "msg-sender" }, `Internal note · ${note.author_id === me.id ? "you" : note.author_name || "agent"}`),
      h("span", {}, "not visible to the student"),
      h("time", { datetime: note.created_at }, formatTime(note.created_at))),
    h("div", { class: "msg-body" }, note.content));
  // A note sits after the last message written before it.
  const timeline = recovery.timeline(selected.ticket.conversation_id);
  const before = timeline.list().filter((m) => m.created_at <= note.created_at).at(-1);
  el.dataset.pos = String((before ? before.seq : 0) + 0.5);
  view.insertAt(el, Number(el.dataset.pos));
}

function renderDecisions(decisions) {
  if (!decisions.length) {
    decisionsEl.replaceChildren(h("li", { class: "empty" }, "No AI decisions logged."));
    return;
  }
  decisionsEl.replaceChildren(...decisions.map((d) => h("li", { class: "decision-item", style: "padding:.4rem 0" },
    h("strong", {}, d.action), ` · ${d.outcome || ""} · confidence ${Math.round((d.confidence || 0) * 100)}%`,
    h("div", { class: "muted" }, d.reason || ""),
    h("div", { class: "muted" }, [d.model, d.prompt_tokens != null ? `${d.prompt_tokens}+${d.completion_tokens} tokens` : null, d.latency_ms != null ? `${d.latency_ms} ms` : null, formatTime(d.created_at)].filter(Boolean).join(" · ")))));
}

async function select(id) {
  let detail;
  try {
    detail = await http.get(`/api/tickets/${id}`);
  } catch (err) {
    announce($("#announcer"), `Could not open the ticket: ${err.message}`);
    return;
  }
  selected?.unsubscribe?.();
  const t = newest(tickets.get(id), detail.ticket);
  tickets.set(t.id, t);
  transferInput.value = resolutionInput.value = "";
  detail.conversation?.members?.forEach((m) => names.set(m.id, m.name));
  selected = { ticket: t, conversation: detail.conversation };
  renderQueue();
  detailEl.replaceChildren(headerEl, actionsEl,
    h("div", { class: "split split-detail" },
      h("div", { class: "chat" }, transcript, typingEl, composer),
      h("div", {}, h("h3", {}, "AI decisions"), decisionsEl)));
  renderHeader();
  view.clear();
  const timeline = recovery.adopt(t.conversation_id, detail.messages);
  timeline.list().forEach((m) => view.upsert(m));
  detail.notes.forEach(addNote);
  outbox.pending(t.conversation_id).forEach((e) => view.pending(e));
  renderDecisions(detail.decisions || []);
  typing.watch(t.conversation_id);
  selected.unsubscribe = timeline.subscribe((m) => view.upsert(m));
  if (t.assigned_to === me.id) {
    await recovery.sync(); // anything after the snapshot
    live.call("read", { conversation_id: t.conversation_id, seq: timeline.lastSeq }).catch(() => {});
  }
}

live.on("conversation:updated", ({ conversation }) => {
  if (selected && conversation.id === selected.ticket.conversation_id) {
    selected.conversation = conversation;
    conversation.members.forEach((m) => names.set(m.id, m.name));
    renderHeader();
  }
});
live.on("message:new", ({ message }) => {
  if (selected && message.conversation_id === selected.ticket.conversation_id && message.sender_id && message.sender_id !== me.id) {
    typing.stopped(message.sender_id);
    live.call("read", { conversation_id: message.conversation_id, seq: message.seq }).catch(() => {});
  }
});

composer.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  if (!text || !selected) return;
  composeError.textContent = "";
  if (modeNote.checked) {
    try {
      const { note } = await live.call("ticket:note", { ticket_id: selected.ticket.id, content: text });
      addNote(note);
      input.value = "";
    } catch (err) {
      composeError.textContent = err.message;
    }
    return;
  }
  outbox.send(selected.ticket.conversation_id, text);
  typing.sendStop(selected.ticket.conversation_id);
  input.value = "";
});
input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) composer.requestSubmit();
});
input.addEventListener("input", () => {
  if (selected && modeReply.checked && selected.ticket.assigned_to === me.id) typing.sendTyping(selected.ticket.conversation_id);
});

await loadQueue();
