"""Escalation into support tickets and the agent's takeover of a tutor conversation.

Every change follows one shape: one transaction changes the ticket, the conversation's
mode and membership and writes the audit entry; only after commit are people told (a
system message through the one message pipeline, `conversation:updated` to the members,
`ticket:*` to the staff room). Nobody hears of a change that was rolled back.

Races are settled by PostgreSQL: the conversation row lock plus a partial unique index
make a second escalation return the first ticket; a conditional UPDATE makes exactly one
concurrent claim win, on any instance.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.events import STAFF_ROOM
from handlers.threads import announce_conversation
from handlers.tickets.queue import auto_assign
from handlers.tickets.seating import announce_agent_joined, seat_agent, system_message, unseat_agent
from handlers.webhooks.outbox import emit as emit_webhook
from rag.decide import HUMAN, NO_MATERIAL, NO_MATERIAL_AGAIN, SAFETY, safety_concern
from storage import audit, conversations, messages, users
from storage import tickets as store
from storage.records import STAFF_ROLES, ConversationMembership, Message, Role, Ticket

log = logging.getLogger(__name__)

# Where an escalation came from: tutor (its decision), user (tutor:escalate), staff, reopen.
SOURCES = frozenset({"tutor", "user", "staff", "reopen", "system"})
SOURCE_ALIASES = {"student": "user", "guest": "user", "agent": "staff", "admin": "staff"}
MAX_SOURCE_CHARS = 30
PRIORITIES = ("low", "normal", "high", "urgent")
REOPEN_REASON = "reopened_after_close"
MAX_REASON_CHARS = 500
SUBJECT_CHARS = 120

def priority_for(reason: str, *, urgent: bool, category: str | None, source: str) -> str:
    """Safety signals are urgent; an explicit request for a person is high; the rest normal."""
    if urgent or category == "safety" or reason == SAFETY or safety_concern(reason):
        return "urgent"
    if reason == HUMAN or category == "human_request" or source == "user":
        return "high"
    return "normal"


def category_for(reason: str, *, category: str | None, priority: str, source: str) -> str:
    if category:
        return category
    if priority == "urgent":
        return "safety"
    if reason == HUMAN or source == "user":
        return "human_request"
    if reason in (NO_MATERIAL, NO_MATERIAL_AGAIN):
        return "no_results"
    if source == "reopen":
        return "reopened"
    return "other"


def _subject(recent: list[Message], title: str | None, fallback: str) -> str:
    for msg in reversed(recent):
        if msg.role == "user" and not msg.deleted and msg.content.strip():
            line = " ".join(msg.content.split())
            return line if len(line) <= SUBJECT_CHARS else line[: SUBJECT_CHARS - 1] + "…"
    return title or fallback


def _escalated_text(ticket: Ticket) -> str:
    text = f"A member of our support team will join this conversation shortly (ticket {ticket.number})."
    if ticket.priority == "urgent":
        text += " If you are in danger right now, please contact your local emergency services."
    return text


class TicketService:
    """`core.tickets` (the `Escalations` port): the tutor calls `admit` and `escalate`;
    the agents' events call the rest (server/tickets.py)."""

    async def escalate(
        self,
        core: Core,
        *,
        conversation_id: UUID,
        reason: str,
        escalated_by: Actor | None,
        source: str,
        urgent: bool = False,
        category: str | None = None,
        priority: str | None = None,
        admitted: bool = False,
    ) -> dict[str, Any]:
        """Open a ticket for a tutor conversation (or return its open one) and hand it to people.

        The mode becomes `waiting` in the same transaction, so the tutor, which reads the
        mode, stays silent from the commit on; a stream in progress on this instance is
        cancelled at once (other instances see the mode on their next check).
        Unless staff escalate (or the caller already passed `admit`), a new ticket counts
        against the owner's escalation limit: `rate_limited` when over it.
        """
        return await self._escalate(
            core, conversation_id=conversation_id, reason=reason,
            escalated_by_id=escalated_by.user_id if escalated_by else None,
            source=source, urgent=urgent, category=category, priority=priority, admitted=admitted,
        )

    async def admit(
        self, core: Core, *, conversation_id: UUID, reason: str, source: str, urgent: bool = False,
        category: str | None = None, priority: str | None = None,
    ) -> None:
        """Count an escalation that would open a new ticket against its owner's limits (and,
        for a guest, the deployment-wide guest cap); `rate_limited` when over. Staff
        escalations and conversations that already have an active ticket are not counted."""
        source = SOURCE_ALIASES.get(source, source)
        gate = core.tutor_limits
        if gate is None or source == "staff":
            return
        async with core.db.connection() as conn:
            owner = await store.escalation_owner(conn, conversation_id)
        if owner is None or owner[2]:
            return  # not_found later, or the existing ticket is returned: nothing new opens
        prio = priority or priority_for(reason or "", urgent=urgent, category=category, source=source)
        await gate.escalation(owner[0], owner[1], urgent=prio == "urgent")

    async def _escalate(
        self,
        core: Core,
        *,
        conversation_id: UUID,
        reason: str,
        escalated_by_id: UUID | None,
        source: str,
        urgent: bool = False,
        category: str | None = None,
        priority: str | None = None,
        admitted: bool = False,
    ) -> dict[str, Any]:
        if not admitted:
            await self.admit(core, conversation_id=conversation_id, reason=reason, source=source, urgent=urgent,
                             category=category, priority=priority)
        source = SOURCE_ALIASES.get(source, source)[:MAX_SOURCE_CHARS] or "system"
        if priority is not None and priority not in PRIORITIES:
            raise ApiError("bad_request", f"priority must be one of {', '.join(PRIORITIES)}.")
        reason = (reason or "").strip()[:MAX_REASON_CHARS] or "escalated"
        try:
            async with core.db.transaction() as conn:
                conv = await conversations.get(conn, conversation_id, for_update=True)
                if conv is None:
                    raise ApiError("not_found", "No such conversation.")
                if conv.kind != "tutor":
                    raise ApiError("bad_request", "Only tutor conversations can be escalated.")
                existing = await store.active_for_conversation(conn, conversation_id)
                if existing is not None:
                    return existing.to_wire()
                previous = await store.latest_for_conversation(conn, conversation_id)
                recent = await messages.recent(conn, conversation_id, 20)
                prio = priority or priority_for(reason, urgent=urgent, category=category, source=source)
                row = await store.insert(
                    conn,
                    conversation_id=conversation_id,
                    user_id=conv.created_by,
                    subject=_subject(recent, conv.title, "Help requested"),
                    category=category_for(reason, category=category, priority=prio, source=source),
                    priority=prio,
                    escalation_reason=reason,
                    escalated_by=escalated_by_id,
                    escalation_source=source,
                    parent_ticket_id=previous.id if previous else None,
                )
                await conversations.set_mode(conn, conversation_id, "waiting")
                if conv.status == "closed":
                    await conversations.set_status(conn, conversation_id, "open")
                await audit.record(
                    conn, "ticket.escalated", actor_id=escalated_by_id, target_type="ticket", target_id=row.id,
                    details={"number": row.number, "conversation_id": str(conversation_id), "reason": reason,
                             "source": source, "priority": prio,
                             "parent_ticket_id": str(row.parent_ticket_id) if row.parent_ticket_id else None},
                )
                await emit_webhook(core, conn, "ticket.created", {"ticket": row.to_wire()})
                await emit_webhook(core, conn, "tutor.escalated", {
                    "conversation_id": conversation_id, "ticket_id": row.id, "reason": reason, "source": source,
                    "escalated_by": escalated_by_id, "priority": prio})
        except asyncpg.UniqueViolationError:
            # Only reachable if a conversation row lock was bypassed; the index still holds.
            async with core.db.connection() as conn:
                existing = await store.active_for_conversation(conn, conversation_id)
            if existing is None:
                raise
            return existing.to_wire()

        ticket = row
        await _cancel_ai(core, conversation_id)
        await system_message(core, ticket, _escalated_text(ticket), "escalated")
        await announce_conversation(core, conversation_id)
        await core.events.to_rooms([STAFF_ROOM], "ticket:new", {"ticket": ticket.to_wire()})
        if core.settings.tickets.auto_assign:
            assigned = await auto_assign(core, [ticket.id])
            if assigned:
                ticket = assigned[0]
            else:
                # The watcher's sweep may have assigned it in between: answer with what is stored.
                async with core.db.connection() as conn:
                    current = await store.get(conn, ticket.id)
                if current is not None:
                    ticket = current
        return ticket.to_wire()

    async def reopen_after_close(self, core: Core, conv: ConversationMembership, message: Message) -> None:
        """Pipeline hook: a user writing in a closed tutor conversation opens one new ticket,
        linked to the last. Only user messages count, so the system notices it writes cannot
        loop; concurrent messages meet the conversation row lock and find the new ticket."""
        if conv.kind != "tutor" or conv.status != "closed" or message.role != "user":
            return
        core.spawn(self._reopen(core, conv.id, message), name=f"ticket-reopen:{conv.id}")

    async def _reopen(self, core: Core, conversation_id: UUID, message: Message) -> None:
        try:
            await self._escalate(
                core, conversation_id=conversation_id, reason=REOPEN_REASON, escalated_by_id=message.sender_id,
                source="reopen", urgent=safety_concern(message.content),
            )
        except ApiError as err:
            if err.code != "rate_limited":
                log.exception("reopening a ticket failed", extra={"conversation_id": str(conversation_id)})
            else:  # the conversation stays closed; the user's next message tries again
                log.warning("reopening a ticket refused by the escalation limit",
                            extra={"conversation_id": str(conversation_id)})
        except Exception:
            log.exception("reopening a ticket failed", extra={"conversation_id": str(conversation_id)})

    # ---- agent actions -------------------------------------------------------------------

    async def claim(self, core: Core, actor: Actor, ticket_id: UUID) -> dict[str, Any]:
        """Exactly one claimer wins; the others get `conflict`. Claiming one's own ticket again is a no-op."""
        async with core.db.transaction() as conn:
            row = await store.claim(conn, ticket_id, actor.user_id)
            if row is None:
                current = await store.get(conn, ticket_id)
                if current is None:
                    raise ApiError("not_found", "No such ticket.")
                if current.status == "assigned" and current.assigned_to == actor.user_id:
                    return {"ticket": current.to_wire()}
                if current.status in ("resolved", "closed"):
                    raise ApiError("conflict", f"Ticket {current.number} is already {current.status}.")
                raise ApiError("conflict", f"Ticket {current.number} is already taken by another agent.")
            await seat_agent(conn, row.conversation_id, actor.user_id)
            await audit.record(conn, "ticket.claimed", actor_id=actor.user_id, target_type="ticket", target_id=ticket_id,
                               details={"number": row.number, "conversation_id": str(row.conversation_id)})
            await emit_webhook(core, conn, "ticket.claimed", {"ticket": row.to_wire(), "agent_id": actor.user_id,
                                                              "auto_assigned": False})
        await announce_agent_joined(core, row, actor.user_id, actor.name, event="claimed")
        return {"ticket": row.to_wire()}

    async def add_note(self, core: Core, actor: Actor, ticket_id: UUID, content: str) -> dict[str, Any]:
        """Internal: stored apart from messages and sent only to the staff room."""
        async with core.db.transaction() as conn:
            row = await store.get(conn, ticket_id)
            if row is None:
                raise ApiError("not_found", "No such ticket.")
            note = await store.insert_note(conn, ticket_id, actor.user_id, content)
            await audit.record(conn, "ticket.note_added", actor_id=actor.user_id, target_type="ticket", target_id=ticket_id,
                               details={"number": row.number, "note_id": str(note["id"]), "chars": len(content)})
        await core.events.to_rooms([STAFF_ROOM], "ticket:note", {"ticket_id": ticket_id, "note": note})
        return {"note": note}

    async def transfer(self, core: Core, actor: Actor, ticket_id: UUID, agent_id: UUID) -> dict[str, Any]:
        """Hand an active ticket to another agent or admin: the old assignee leaves, the new one joins."""
        async with core.db.transaction() as conn:
            current = await store.get(conn, ticket_id, for_update=True)
            if current is None:
                raise ApiError("not_found", "No such ticket.")
            if current.status not in store.ACTIVE:
                raise ApiError("conflict", f"Ticket {current.number} is already {current.status}.")
            _check_holder(current, actor, "transfer")
            target = await users.get_user(conn, agent_id)
            if target is None or target.role not in STAFF_ROLES:
                raise ApiError("bad_request", "agent_id must be an agent or an admin.")
            previous = current.assigned_to
            if previous == agent_id:
                return {"ticket": current.to_wire()}
            row = await store.reassign(conn, ticket_id, agent_id)
            assert row is not None
            if previous is not None:
                await unseat_agent(conn, row.conversation_id, previous)
            await seat_agent(conn, row.conversation_id, agent_id)
            await audit.record(conn, "ticket.transferred", actor_id=actor.user_id, target_type="ticket", target_id=ticket_id,
                               details={"number": row.number, "from": str(previous) if previous else None, "to": str(agent_id)})
            await emit_webhook(core, conn, "ticket.transferred", {"ticket": row.to_wire(), "from_agent_id": previous,
                                                                  "to_agent_id": agent_id, "by": actor.user_id})
        await announce_agent_joined(core, row, agent_id, target.name, event="transferred",
                                    left=[previous] if previous else [])
        return {"ticket": row.to_wire()}

    async def resolve(self, core: Core, actor: Actor, ticket_id: UUID, *, resolution: str | None, handback: str) -> dict[str, Any]:
        """`handback: "ai"` → ticket `resolved`, mode `ai`; `"close"` → ticket and conversation `closed`.

        Either way the assigned agent leaves the conversation (the transcript stays in the
        ticket), so the agent stops receiving a conversation they no longer handle.
        """
        async with core.db.transaction() as conn:
            current = await store.get(conn, ticket_id, for_update=True)
            if current is None:
                raise ApiError("not_found", "No such ticket.")
            if current.status not in store.ACTIVE:
                raise ApiError("conflict", f"Ticket {current.number} is already {current.status}.")
            _check_holder(current, actor, "resolve")
            status = "resolved" if handback == "ai" else "closed"
            row = await store.finish(conn, ticket_id, status=status, resolution=resolution, handback=handback,
                                     resolved_by=actor.user_id)
            assert row is not None
            cid = row.conversation_id
            if handback == "ai":
                await conversations.set_mode(conn, cid, "ai")
            else:
                await conversations.set_status(conn, cid, "closed")
            left = [current.assigned_to] if current.assigned_to else []
            for agent_id in left:
                await unseat_agent(conn, cid, agent_id)
            await audit.record(conn, "ticket.resolved" if handback == "ai" else "ticket.closed", actor_id=actor.user_id,
                               target_type="ticket", target_id=ticket_id,
                               details={"number": row.number, "handback": handback, "resolution": resolution})
            await emit_webhook(core, conn, "ticket.resolved", {"ticket": row.to_wire(), "handback": handback})
        ticket = row.to_wire()
        if handback == "ai":
            text = "Our support team has finished helping here. The AI tutor is back to answer your questions."
        else:
            text = "Our support team closed this conversation. Write again at any time if you still need help."
        await system_message(core, row, text, "resolved" if handback == "ai" else "closed")
        conv = await announce_conversation(core, cid)
        if left:
            await core.events.to_users(left, "conversation:updated", {"conversation": conv})
        await core.events.to_rooms([STAFF_ROOM], "ticket:updated", {"ticket": ticket})
        return {"ticket": ticket}


def _check_holder(ticket: Ticket, actor: Actor, verb: str) -> None:
    """Only the assignee or an admin acts on an assigned ticket; any staff on an unassigned one."""
    holder = ticket.assigned_to
    if holder is not None and holder != actor.user_id and actor.role != Role.ADMIN:
        raise ApiError("forbidden", f"Only the assigned agent or an admin may {verb} ticket {ticket.number}.")


async def _cancel_ai(core: Core, conversation_id: UUID) -> None:
    tutor = core.tutor
    if tutor is None:
        return
    try:
        await tutor.cancel(conversation_id)
    except Exception:
        log.exception("cancelling the tutor's answer failed", extra={"conversation_id": str(conversation_id)})
