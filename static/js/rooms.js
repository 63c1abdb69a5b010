// Live rooms for mentors and students. Mentors schedule, start, end and moderate; students
// find live rooms, join, chat and raise a hand. One page: the lobby, then the room.
import { requireSession, userBadge } from "./auth.js";
import { Http, Live } from "./client.js";
import { $, announce, fill, formatDateTime, h, MessageList } from "./dom.js";
import { connectionBadge } from "./common.js";
import { Outbox, Recovery } from "./timeline.js";

const main = $("#main");
const session = await requireSession(main, { title: "Sign in to live rooms", allowRegister: true });
const me = session.user;
const canHost = me.role === "mentor" || me.role === "admin";
$("#who").replaceChildren(userBadge(session));

const http = new Http("", session.token);
const live = new Live("", session.token, { onStatus: connectionBadge($("#conn")) });
const recovery = new Recovery(live);
const names = new Map([[me.id, me.name]]);
const outbox = new Outbox(live, recovery, { onChange: (e) => room && e.conversation_id === room.session.conversation_id && view?.pending(e) });
const say = (text) => announce($("#announcer"), text);
let room = null; // {session, participants: Map, unsubscribe}
let view = null;

const noticeEl = h("div", { class: "notice", id: "notice", role: "alert", hidden: true });
function notice(text, warn = false) {
  noticeEl.hidden = !text;
  noticeEl.textContent = text || "";
  noticeEl.classList.toggle("warn", warn);
}

// ---- lobby ----------------------------------------------------------------------------
const liveList = h("ul", { class: "list", id: "live-rooms", "aria-label": "Live rooms" });
const myList = h("ul", { class: "list", id: "my-rooms", "aria-label": "Your rooms" });

function scheduleForm() {
  const title = h("input", { id: "room-title", required: true, maxlength: "200" });
  const max = h("input", { id: "room-max", type: "number", min: "1", max: "10000", value: "30", required: true });
  const type = h("select", { id: "room-type" }, ["lecture", "workshop", "office_hours", "q_and_a"].map((t) => h("option", { value: t }, t.replace(/_/g, " "))));
  const start = h("input", { id: "room-start", type: "datetime-local" });
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "card", id: "schedule", "aria-labelledby": "schedule-h" },
    h("h2", { id: "schedule-h" }, "Schedule a room"),
    h("div", { class: "field" }, h("label", { for: "room-title" }, "Title"), title),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "room-max" }, "Max participants"), max),
      h("div", { class: "field" }, h("label", { for: "room-type" }, "Type"), type)),
    h("div", { class: "field" }, h("label", { for: "room-start" }, "Starts at (optional)"), start),
    error, h("button", { type: "submit", class: "primary" }, "Schedule"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const body = { title: title.value.trim(), max_participants: Number(max.value), type: type.value };
      if (start.value) body.scheduled_start_time = new Date(start.value).toISOString();
      await http.post("/api/live-sessions", body);
      title.value = "";
      await refreshLobby();
      say("Room scheduled");
    } catch (err) {
      error.textContent = err.message;
    }
  });
  return form;
}

function roomLine(s, buttons) {
  return h("li", { dataset: { id: s.id }, style: "padding:.6rem .25rem" },
    h("div", { class: "row" },
      h("strong", { class: "grow" }, s.title),
      h("span", { class: "badge status" }, s.status),
      h("span", { class: "muted" }, `${s.current_participants} / ${s.max_participants}`)),
    h("div", { class: "muted" }, `${s.host?.name ? `with ${s.host.name} · ` : ""}${s.type || ""}${s.scheduled_start_time ? ` · ${formatDateTime(s.scheduled_start_time)}` : ""}`),
    h("div", { class: "row", style: "margin-top:.35rem" }, buttons));
}

async function lifecycle(s, action) {
  notice(null);
  try {
    const { live_session } = await http.post(`/api/live-sessions/${s.id}/${action}`);
    if (action === "start") await enter(live_session);
    else if (room && room.session.id === s.id) leaveView(action === "end" ? "You ended the room." : null);
    else await refreshLobby();
  } catch (err) {
    notice(err.message, true);
  }
}

async function refreshLobby() {
  const { live_sessions: liveNow } = await http.get("/api/live-sessions?status=live");
  liveList.replaceChildren(...(liveNow.length ? liveNow.map((s) => roomLine(s, [
    h("button", { type: "button", class: "primary", "aria-label": `Join ${s.title}`, onclick: () => enter(s) }, "Join"),
    s.host_id !== me.id ? h("button", { type: "button", class: "link", onclick: () => follow(s) }, `Tell me when ${s.host?.name || "this mentor"} goes live`) : null,
  ])) : [h("li", { class: "empty" }, "No live rooms right now.")]));
  if (!canHost) return;
  const { live_sessions: mine } = await http.get(`/api/live-sessions?host_id=${me.id}`);
  myList.replaceChildren(...(mine.length ? mine.map((s) => roomLine(s, [
    s.status === "scheduled" ? h("button", { type: "button", class: "primary", "aria-label": `Start ${s.title}`, onclick: () => lifecycle(s, "start") }, "Start") : null,
    s.status === "scheduled" ? h("button", { type: "button", class: "danger", "aria-label": `Cancel ${s.title}`, onclick: () => lifecycle(s, "cancel") }, "Cancel") : null,
    s.status === "live" ? h("button", { type: "button", "aria-label": `Enter ${s.title}`, onclick: () => enter(s) }, "Enter") : null,
    s.status === "live" ? h("button", { type: "button", class: "danger", "aria-label": `End ${s.title}`, onclick: () => lifecycle(s, "end") }, "End") : null,
  ])) : [h("li", { class: "empty" }, "You have no rooms yet.")]));
}

/** Favorite the host with notify_when_online: `live:started` tells us about their next room. */
async function follow(s) {
  try {
    await http.post("/api/favorites", { user_id: s.host_id, notify_when_online: true });
    notice(`You will be told when ${s.host?.name || "this mentor"} starts a room.`);
  } catch (err) {
    notice(err.message, true);
  }
}

function showLobby() {
  room = null;
  main.replaceChildren(noticeEl, h("div", { class: "split" },
    h("div", {}, canHost ? scheduleForm() : h("div", { class: "card" }, h("h2", {}, "Live rooms"), h("p", { class: "muted" }, "Join a live room to chat with the mentor and other students.")),
      canHost ? h("div", { class: "card", style: "margin-top:1rem" }, h("h2", {}, "Your rooms"), myList) : null),
    h("div", { class: "card" }, h("div", { class: "row" }, h("h2", { class: "grow", style: "flex:1" }, "Live now"),
      h("button", { type: "button", onclick: () => refreshLobby() }, "Refresh")), liveList)));
  refreshLobby().catch((err) => notice(err.message, true));
}

// ---- in a room ------------------------------------------------------------------------
const JOIN_ERRORS = {
  room_full: "This room is full. Try again when someone leaves.",
  not_live: "This room is not live (yet, or any more).",
  forbidden: "You are banned from this room.",
};

async function enter(s) {
  notice(null);
  let joined;
  try {
    joined = await live.call("room:join", { live_session_id: s.id });
  } catch (err) {
    notice(JOIN_ERRORS[err.code] || err.message, true);
    say(JOIN_ERRORS[err.code] || err.message);
    await refreshLobby().catch(() => {});
    return;
  }
  room = { session: joined.live_session, participants: new Map(), ended: false, removed: false };
  joined.participants.forEach((p) => { room.participants.set(p.id, p); names.set(p.id, p.name); });
  renderRoom();
  const timeline = recovery.adopt(room.session.conversation_id, joined.messages);
  timeline.list().forEach((m) => view.upsert(m));
  room.unsubscribe = timeline.subscribe((m) => view.upsert(m));
  say(`Joined ${room.session.title}`);
}

const isHost = () => room && (room.session.host_id === me.id || me.role === "admin");

// The room's skeleton is built once per visit (so the chat log is never rebuilt and
// screen readers only hear new messages); participants, hands and controls re-render.
function renderRoom() {
  const s = room.session;
  const messagesEl = h("ol", { class: "messages", id: "messages", "aria-label": "Room chat" });
  view = new MessageList(messagesEl, { selfId: me.id, names, onRetry: (id) => outbox.retry(id) });
  const input = h("textarea", { id: "chat-input", rows: "2" });
  const sendBtn = h("button", { type: "submit", class: "primary", id: "chat-send" }, "Send");
  const composer = h("form", { class: "composer" }, h("label", { for: "chat-input", class: "sr-only" }, "Message"), input, sendBtn);
  composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || room.ended) return;
    outbox.send(s.conversation_id, text);
    input.value = "";
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); composer.requestSubmit(); }
  });
  room.el = {
    input, sendBtn,
    count: h("span", { class: "muted", id: "count" }),
    status: h("span", { class: "badge status", id: "room-status" }),
    side: h("div", {}),
    controls: h("div", { class: "toolbar" }),
  };
  main.replaceChildren(noticeEl,
    h("div", { class: "split" },
      h("aside", { class: "card" }, h("h2", {}, "Participants ", room.el.count), room.el.side),
      h("section", { class: "card chat", "aria-labelledby": "room-title-h" },
        h("h2", { id: "room-title-h" }, s.title, " ", room.el.status),
        room.el.controls,
        h("div", { class: "scroll", "data-scroll": "" }, messagesEl), composer)));
  recovery.timeline(s.conversation_id).list().forEach((m) => view.upsert(m));
  outbox.pending(s.conversation_id).forEach((e) => view.pending(e));
  rerender();
}

/** Update what changes with room events: counts, status, people, hands, buttons. */
function rerender() {
  if (!room?.el) return;
  const s = room.session;
  const mePart = room.participants.get(me.id);
  const muted = !!mePart?.muted && !isHost();
  room.el.count.textContent = `${s.current_participants} / ${s.max_participants}`;
  room.el.status.textContent = s.status;
  room.el.input.disabled = room.el.sendBtn.disabled = muted || room.ended;
  room.el.input.placeholder = room.ended ? "The room has ended" : muted ? "The host muted you" : "Say something to the room";
  const focusId = document.activeElement?.id;
  room.el.side.replaceChildren(handsBlock(), participantList());
  const handUp = !!mePart?.hand_raised;
  fill(room.el.controls,
    !isHost() ? h("button", { type: "button", id: "hand", "aria-pressed": String(handUp), disabled: room.ended, onclick: () => raiseHand(!handUp) }, handUp ? "Lower hand" : "Raise hand") : null,
    isHost() && !room.ended ? h("button", { type: "button", class: "danger", id: "end-room", onclick: () => lifecycle(s, "end") }, "End room") : null,
    h("button", { type: "button", id: "leave", onclick: () => leaveRoom() }, room.ended ? "Back to rooms" : "Leave"));
  if (focusId && document.activeElement === document.body) document.getElementById(focusId)?.focus();
}

function handsBlock() {
  const raised = [...room.participants.values()].filter((p) => p.hand_raised);
  return h("div", { id: "hands", "aria-live": "polite" },
    raised.length ? h("p", { class: "notice hands" }, `Raised hands (${raised.length}): ${raised.map((p) => p.name).join(", ")}`) : null);
}

function participantList() {
  const moderate = (p, action) => live.call("room:moderate", { live_session_id: room.session.id, user_id: p.id, action })
    .catch((err) => notice(err.message, true));
  return h("ul", { class: "list", id: "participants" }, [...room.participants.values()].map((p) =>
    h("li", { dataset: { userId: p.id }, style: "padding:.5rem .25rem" },
      h("div", { class: "row" },
        h("span", { class: "grow", style: "flex:1" }, p.id === me.id ? `${p.name} (you)` : p.name,
          p.is_host ? h("span", { class: "badge" }, " host") : null),
        p.hand_raised ? h("span", { class: "badge hand", "aria-label": "hand raised" }, "hand up") : null,
        p.muted ? h("span", { class: "badge", "aria-label": "muted" }, "muted") : null),
      isHost() && !p.is_host && p.id !== me.id && !room.ended ? h("div", { class: "row" },
        h("button", { type: "button", "aria-label": `${p.muted ? "Unmute" : "Mute"} ${p.name}`, onclick: () => moderate(p, p.muted ? "unmute" : "mute") }, p.muted ? "Unmute" : "Mute"),
        h("button", { type: "button", class: "danger", "aria-label": `Kick ${p.name}`, onclick: () => moderate(p, "kick") }, "Kick"),
        h("button", { type: "button", class: "danger", "aria-label": `Ban ${p.name}`, onclick: () => moderate(p, "ban") }, "Ban")) : null)));
}

async function raiseHand(raised) {
  try {
    await live.call("room:hand", { live_session_id: room.session.id, raised });
  } catch (err) {
    notice(err.message, true);
  }
}

async function leaveRoom() {
  if (room && !room.ended && !room.removed) await live.call("room:leave", { live_session_id: room.session.id }).catch(() => {});
  leaveView(null);
}

function leaveView(message) {
  room?.unsubscribe?.();
  showLobby();
  if (message) notice(message);
}

const ACTION_TEXT = {
  joined: "joined", left: "left", hand_raised: "raised a hand", hand_lowered: "lowered their hand",
  muted: "was muted", unmuted: "was unmuted", kicked: "was removed", banned: "was banned",
};

live.on("room:participant", ({ live_session_id, user, action }) => {
  if (!room || room.session.id !== live_session_id) return;
  names.set(user.id, user.name);
  if (user.id === me.id && (action === "kicked" || action === "banned")) {
    room.removed = true;
    const text = action === "banned" ? "The host banned you from this room." : "The host removed you from this room. You may join again.";
    leaveView(text);
    say(text);
    return;
  }
  if (action === "left" || action === "kicked" || action === "banned") room.participants.delete(user.id);
  else room.participants.set(user.id, { ...room.participants.get(user.id), ...user });
  if (user.id === me.id && (action === "muted" || action === "unmuted")) notice(action === "muted" ? "The host muted you." : "The host unmuted you.");
  say(`${user.id === me.id ? "You" : user.name} ${ACTION_TEXT[action] || action}`);
  rerender();
});

live.on("room:updated", ({ live_session }) => {
  if (room && room.session.id === live_session.id) {
    room.session = live_session;
    if (live_session.status !== "live") room.ended = true;
    rerender();
  } else if (!room) {
    refreshLobby().catch(() => {});
  }
});

live.on("room:ended", ({ live_session_id }) => {
  if (!room || room.session.id !== live_session_id) return;
  room.ended = true;
  room.session = { ...room.session, status: "ended" };
  rerender();
  notice("This room has ended. Thanks for coming!");
  say("The room has ended");
});

live.on("live:started", ({ live_session }) => {
  const text = `${live_session.host?.name || "A mentor"} started “${live_session.title}”.`;
  say(text);
  if (!room) {
    notice(text);
    refreshLobby().catch(() => {});
  }
});

// After a reconnect the server puts our new socket back in the room's chat; sync fills gaps.
live.on("connect", () => { if (!room) refreshLobby().catch(() => {}); });

showLobby();
