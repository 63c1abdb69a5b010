"""The agents' side of tickets: the queue, a ticket's full context, SLA watch, auto-assignment."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from handlers.background import repeat
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.events import STAFF_ROOM
from handlers.threads import describe
from handlers.tickets.seating import announce_agent_joined, seat_agent
from handlers.webhooks.outbox import emit as emit_webhook
from storage import audit, connections, messages, users
from storage import tickets as store
from storage.availability import DatabaseUnavailable
from storage.records import Role, Ticket

log = logging.getLogger(__name__)

STATUSES = ("open", "assigned", "resolved", "closed")
TRANSCRIPT_LIMIT = 1000  # messages in a ticket's detail; `messages_complete` says if that was all
SWEEP_BATCH = 50
MIN_WATCH_SECONDS = 0.05  # a zero setting must not turn the watcher into a busy loop


def parse_statuses(raw: str | None) -> list[str] | None:
    """`?status=` : empty → the active queue (open, assigned); `all`; or a comma list."""
    if raw is None or raw.strip() == "":
        return list(store.ACTIVE)
    if raw.strip() == "all":
        return None
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise ApiError("bad_request", f"status must be 'all' or among {', '.join(STATUSES)}.")
    return wanted


async def list_queue(core: Core, actor: Actor, *, status: str | None, assigned: str | None, limit: int) -> dict[str, Any]:
    statuses = parse_statuses(status)
    assigned_to: UUID | None = None
    unassigned = False
    if assigned in (None, ""):
        pass
    elif assigned == "me":
        assigned_to = actor.user_id
    elif assigned == "none":
        unassigned = True
    else:
        try:
            assigned_to = UUID(assigned)
        except ValueError:
            raise ApiError("bad_request", "assigned must be 'me', 'none' or a user id.") from None
    async with core.db.connection() as conn:
        rows = await store.list_tickets(conn, statuses=statuses, assigned_to=assigned_to, unassigned=unassigned, limit=limit)
    return {"tickets": [r.to_wire() for r in rows]}


async def detail(core: Core, ticket_id: UUID) -> dict[str, Any]:
    """Everything an agent needs to take over: the transcript (AI answers keep their
    `metadata.citations`, the sources behind them), the internal notes, the tutor's
    decisions, and the conversation's other tickets."""
    async with core.db.connection() as conn:
        row = await store.get(conn, ticket_id)
        if row is None:
            raise ApiError("not_found", "No such ticket.")
        cid = row.conversation_id
        transcript, has_more = await messages.history(conn, cid, before_seq=None, limit=TRANSCRIPT_LIMIT)
        notes = await store.list_notes(conn, [ticket_id])
        decisions = await store.tutor_decisions(conn, cid)
        related = await store.list_for_conversation(conn, cid)
    return {
        "ticket": row.to_wire(),
        "messages": transcript,
        "messages_complete": not has_more,
        "notes": notes,
        "decisions": decisions,
        "conversation": await describe(core, cid),
        "related_tickets": [r.to_wire() for r in related if r.id != ticket_id],
    }


async def priorities(core: Core) -> dict[str, Any]:
    async with core.db.connection() as conn:
        rows = await store.priorities(conn)
    return {
        "priorities": [
            {"priority": r["priority"], "sla_hours": float(r["sla_hours"]),
             "names": {"en": r["name_en"], "fr": r["name_fr"], "ar": r["name_ar"]}}
            for r in rows
        ]
    }


async def check_sla(core: Core) -> list[Ticket]:
    """Flag breached tickets once (one instance sweeps at a time) and tell the staff."""
    async with core.db.transaction() as conn:
        rows = await store.mark_sla_breaches(conn)
        for r in rows or []:
            await audit.record(conn, "ticket.sla_breached", target_type="ticket", target_id=r.id,
                               details={"number": r.number, "sla_due_at": r.sla_due_at.isoformat()})
        await emit_webhook(core, conn, "ticket.sla_breached", *({"ticket": r.to_wire()} for r in rows or []))
    tickets = rows or []
    for ticket in tickets:
        await core.events.to_rooms([STAFF_ROOM], "ticket:updated", {"ticket": ticket.to_wire()})
    return tickets


async def auto_assign(core: Core, ticket_ids: list[UUID]) -> list[Ticket]:
    """Give open tickets to online agents, round-robin (least recently assigned first), each
    under `ticket_agent_limit` assigned tickets. Returns the tickets it assigned.

    One advisory lock serialises these decisions across instances, so two escalations at
    once cannot both take an agent's last free slot; the conditional claim means a ticket
    an agent claimed by hand meanwhile is left alone.
    """
    done: list[tuple[Ticket, UUID]] = []
    async with core.db.transaction() as conn:
        await store.lock_assignment(conn)
        for ticket_id in ticket_ids:
            candidates = await store.agents_under_limit(conn, core.settings.tickets.agent_limit)
            online = await connections.online_users(conn, candidates) if candidates else set()
            agent_id = next((a for a in candidates if a in online), None)
            if agent_id is None:
                break
            row = await store.claim(conn, ticket_id, agent_id)
            if row is None:
                continue
            await seat_agent(conn, row.conversation_id, agent_id)
            await audit.record(conn, "ticket.auto_assigned", target_type="ticket", target_id=ticket_id,
                               details={"number": row.number, "agent_id": str(agent_id)})
            await emit_webhook(core, conn, "ticket.claimed", {"ticket": row.to_wire(), "agent_id": agent_id,
                                                              "auto_assigned": True})
            done.append((row, agent_id))
        names = {u.id: u.name for u in await users.get_users(conn, [a for _, a in done])} if done else {}
    out = []
    for ticket, agent_id in done:
        await announce_agent_joined(core, ticket, agent_id, names.get(agent_id, "An agent"), event="assigned")
        out.append(ticket)
    return out


async def assign_waiting(core: Core) -> list[Ticket]:
    """Auto-assign tickets still waiting (no agent was free or online when they came in)."""
    async with core.db.connection() as conn:
        waiting = await store.open_unassigned(conn, SWEEP_BATCH)
    return await auto_assign(core, waiting) if waiting else []


async def agent_connected(core: Core, actor: Actor) -> None:
    """Gateway hook: an agent coming online may take waiting tickets (auto-assignment only)."""
    if core.settings.tickets.auto_assign and actor.role == Role.AGENT:
        core.spawn(_safely(assign_waiting(core)), name="ticket-assign-waiting")


async def watch(core: Core) -> None:
    """Background loop on every instance; the SLA sweep's advisory lock lets one work at a time."""

    async def one_pass() -> None:
        await check_sla(core)
        if core.settings.tickets.auto_assign:
            await assign_waiting(core)

    await repeat(one_pass, every=max(core.settings.tickets.sla_check_seconds, MIN_WATCH_SECONDS), what="ticket watch")


async def _safely(coro: Any) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except DatabaseUnavailable:
        pass  # logged once per outage by the database's tracker
    except Exception:
        log.exception("ticket background work failed")
