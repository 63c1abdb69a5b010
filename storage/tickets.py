"""Tickets, their internal notes, the SLA lookup table, and the tutor's decision log (read only)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from storage.records import Ticket

TICKET_COLUMNS = (
    "t.id, t.number, t.conversation_id, t.user_id, t.subject, t.category, t.priority, t.status, "
    "t.assigned_to, t.escalation_reason, t.escalated_by, t.escalation_source, t.parent_ticket_id, "
    "t.sla_due_at, t.sla_breached, t.resolution, t.handback, t.resolved_by, t.created_at, "
    "t.updated_at, t.assigned_at, t.resolved_at, t.closed_at"
)
ACTIVE = ("open", "assigned")
# Advisory lock ids (arbitrary constants, distinct from the migration lock).
SLA_LOCK_ID = 0x5348_5449_434B_01  # "SHTICK" 1: one SLA sweep at a time across instances
ASSIGN_LOCK_ID = 0x5348_5449_434B_02  # one auto-assignment decision at a time (limits hold)


async def priorities(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT priority, rank, sla_hours, name_en, name_fr, name_ar FROM ticket_priorities ORDER BY rank"
    )
    return [dict(r) for r in rows]


async def set_sla_hours(conn: asyncpg.Connection, priority: str, hours: float) -> bool:
    """Change a priority's SLA; tickets created afterwards take it."""
    status = await conn.execute("UPDATE ticket_priorities SET sla_hours = $2 WHERE priority = $1", priority, hours)
    return status.endswith(" 1")


async def get(conn: asyncpg.Connection, ticket_id: UUID, *, for_update: bool = False) -> Ticket | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.id = $1{lock}", ticket_id)
    return Ticket.from_row(row) if row else None


async def active_for_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> Ticket | None:
    row = await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.conversation_id = $1 AND t.status IN ('open', 'assigned')",
        conversation_id,
    )
    return Ticket.from_row(row) if row else None


async def latest_for_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> Ticket | None:
    row = await conn.fetchrow(
        f"""SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.conversation_id = $1
            ORDER BY t.created_at DESC, t.number DESC LIMIT 1""",
        conversation_id,
    )
    return Ticket.from_row(row) if row else None


async def list_for_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> list[Ticket]:
    rows = await conn.fetch(
        f"SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.conversation_id = $1 ORDER BY t.created_at, t.number",
        conversation_id,
    )
    return [Ticket.from_row(r) for r in rows]


async def insert(
    conn: asyncpg.Connection,
    *,
    conversation_id: UUID,
    user_id: UUID | None,
    subject: str,
    category: str | None,
    priority: str,
    escalation_reason: str,
    escalated_by: UUID | None,
    escalation_source: str,
    parent_ticket_id: UUID | None,
) -> Ticket:
    """A new open ticket; its SLA due time comes from the priority's hours in the lookup table.

    Raises asyncpg.UniqueViolationError when the conversation already has an active ticket.
    """
    row = await conn.fetchrow(
        f"""INSERT INTO tickets AS t (conversation_id, user_id, subject, category, priority, escalation_reason,
                                      escalated_by, escalation_source, parent_ticket_id, sla_due_at)
            SELECT $1, $2, $3, $4, p.priority, $6, $7, $8, $9, now() + make_interval(secs => p.sla_hours * 3600)
            FROM ticket_priorities p WHERE p.priority = $5
            RETURNING {TICKET_COLUMNS}""",
        conversation_id, user_id, subject, category, priority, escalation_reason,
        escalated_by, escalation_source, parent_ticket_id,
    )
    if row is None:
        raise LookupError(f"unknown ticket priority {priority!r}")
    return Ticket.from_row(row)


async def claim(conn: asyncpg.Connection, ticket_id: UUID, agent_id: UUID) -> Ticket | None:
    """Take an open, unassigned ticket. Under concurrent claims exactly one UPDATE matches:
    the others wait on the row lock, re-check the WHERE on the new row version, and get None."""
    row = await conn.fetchrow(
        f"""UPDATE tickets t SET status = 'assigned', assigned_to = $2, assigned_at = now(), updated_at = now()
            WHERE t.id = $1 AND t.status = 'open' AND t.assigned_to IS NULL
            RETURNING {TICKET_COLUMNS}""",
        ticket_id, agent_id,
    )
    return Ticket.from_row(row) if row else None


async def reassign(conn: asyncpg.Connection, ticket_id: UUID, agent_id: UUID) -> Ticket | None:
    """Give an active ticket to another agent (transfer)."""
    row = await conn.fetchrow(
        f"""UPDATE tickets t SET status = 'assigned', assigned_to = $2, assigned_at = now(), updated_at = now()
            WHERE t.id = $1 AND t.status IN ('open', 'assigned')
            RETURNING {TICKET_COLUMNS}""",
        ticket_id, agent_id,
    )
    return Ticket.from_row(row) if row else None


async def finish(
    conn: asyncpg.Connection,
    ticket_id: UUID,
    *,
    status: str,
    resolution: str | None,
    handback: str,
    resolved_by: UUID,
) -> Ticket | None:
    """Resolve (handed back to the AI) or close an active ticket."""
    row = await conn.fetchrow(
        f"""UPDATE tickets t SET status = $2, resolution = $3, handback = $4, resolved_by = $5,
                   resolved_at = now(), closed_at = CASE WHEN $2 = 'closed' THEN now() END, updated_at = now()
            WHERE t.id = $1 AND t.status IN ('open', 'assigned')
            RETURNING {TICKET_COLUMNS}""",
        ticket_id, status, resolution, handback, resolved_by,
    )
    return Ticket.from_row(row) if row else None


async def list_tickets(
    conn: asyncpg.Connection,
    *,
    statuses: list[str] | None,
    assigned_to: UUID | None = None,
    unassigned: bool = False,
    limit: int = 100,
) -> list[Ticket]:
    """The queue: most pressing SLA first."""
    rows = await conn.fetch(
        f"""SELECT {TICKET_COLUMNS} FROM tickets t
            WHERE ($1::text[] IS NULL OR t.status = ANY($1::text[]))
              AND ($2::uuid IS NULL OR t.assigned_to = $2)
              AND (NOT $3 OR t.assigned_to IS NULL)
            ORDER BY t.sla_due_at, t.created_at, t.number LIMIT $4""",
        statuses, assigned_to, unassigned, limit,
    )
    return [Ticket.from_row(r) for r in rows]


async def mark_sla_breaches(conn: asyncpg.Connection) -> list[Ticket] | None:
    """Flag active tickets past their due time. Call inside a transaction; returns None when
    another instance holds the sweep lock (it is doing the same work right now)."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SLA_LOCK_ID):
        return None
    rows = await conn.fetch(
        f"""UPDATE tickets t SET sla_breached = true, updated_at = now()
            WHERE NOT t.sla_breached AND t.status IN ('open', 'assigned') AND t.sla_due_at <= now()
            RETURNING {TICKET_COLUMNS}"""
    )
    return [Ticket.from_row(r) for r in rows]


async def lock_assignment(conn: asyncpg.Connection) -> None:
    """Serialise auto-assignment decisions (inside a transaction) so two instances cannot both
    give an agent their last free slot."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ASSIGN_LOCK_ID)


async def agents_under_limit(conn: asyncpg.Connection, limit: int) -> list[UUID]:
    """Agents holding fewer than `limit` assigned tickets, least recently given one first
    (that order is what makes auto-assignment round-robin)."""
    rows = await conn.fetch(
        """SELECT u.id FROM users u
               LEFT JOIN tickets t ON t.assigned_to = u.id
           WHERE u.role = 'agent'
           GROUP BY u.id
           HAVING count(*) FILTER (WHERE t.status = 'assigned') < $1
           ORDER BY max(t.assigned_at) NULLS FIRST, u.id""",
        limit,
    )
    return [r["id"] for r in rows]


async def open_unassigned(conn: asyncpg.Connection, limit: int) -> list[UUID]:
    rows = await conn.fetch(
        """SELECT id FROM tickets WHERE status = 'open' AND assigned_to IS NULL
           ORDER BY sla_due_at, created_at LIMIT $1""",
        limit,
    )
    return [r["id"] for r in rows]


async def insert_note(conn: asyncpg.Connection, ticket_id: UUID, author_id: UUID, content: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        """WITH n AS (INSERT INTO ticket_notes (ticket_id, author_id, content) VALUES ($1, $2, $3)
                      RETURNING id, ticket_id, author_id, content, created_at)
           SELECT n.*, u.name AS author_name FROM n LEFT JOIN users u ON u.id = n.author_id""",
        ticket_id, author_id, content,
    )
    assert row is not None
    return dict(row)


async def list_notes(conn: asyncpg.Connection, ticket_ids: list[UUID]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT n.id, n.ticket_id, n.author_id, n.content, n.created_at, u.name AS author_name
           FROM ticket_notes n LEFT JOIN users u ON u.id = n.author_id
           WHERE n.ticket_id = ANY($1::uuid[]) ORDER BY n.created_at, n.id""",
        ticket_ids,
    )
    return [dict(r) for r in rows]


async def tutor_decisions(conn: asyncpg.Connection, conversation_id: UUID, *, limit: int = 500) -> list[dict[str, Any]]:
    """The AI tutor's decisions in a conversation, oldest first.

    The table belongs to the tutor feature (migration 0004): when it is absent this returns
    an empty list, and rows are read whole (`to_jsonb`) so a column added there shows up here.
    """
    if await conn.fetchval("SELECT to_regclass('tutor_decisions')") is None:
        return []
    rows = await conn.fetch(
        """SELECT to_jsonb(d) AS row FROM tutor_decisions d WHERE d.conversation_id = $1
           ORDER BY d.created_at, d.id LIMIT $2""",
        conversation_id, limit,
    )
    return [r["row"] for r in rows]


async def escalation_owner(conn: asyncpg.Connection, conversation_id: UUID) -> tuple[UUID, str, bool] | None:
    """(owner id, owner role, has an open or assigned ticket) of a conversation, for the
    escalation limits: only an escalation that would open a new ticket counts."""
    row = await conn.fetchrow(
        """SELECT c.created_by, u.role,
                  EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_id = c.id
                          AND t.status IN ('open', 'assigned')) AS active
           FROM conversations c JOIN users u ON u.id = c.created_by WHERE c.id = $1""",
        conversation_id,
    )
    return (row["created_by"], row["role"], row["active"]) if row else None
