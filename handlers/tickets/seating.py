"""What both halves of tickets do to a conversation: the ticket object sent out, seating and
unseating an agent, and the notices after a change. The service (escalation, agent
actions) and the queue (auto-assignment) both import it; neither imports the other's
callers back (docs/architecture.md, "Imports").
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg

from handlers.core import Core
from handlers.events import STAFF_ROOM
from handlers.pipeline import commit_message
from handlers.threads import announce_conversation
from storage import conversations

log = logging.getLogger(__name__)

TICKET_FIELDS = (
    "id", "number", "conversation_id", "user_id", "subject", "category", "priority", "status",
    "assigned_to", "escalation_reason", "sla_due_at", "sla_breached", "created_at", "resolved_at",
    # additions to the protocol's ticket object
    "escalated_by", "escalation_source", "parent_ticket_id", "resolution", "handback", "resolved_by",
    "assigned_at", "closed_at", "updated_at",
)


def ticket_out(row: dict[str, Any]) -> dict[str, Any]:
    """The protocol's ticket object (plus documented extra fields)."""
    return {k: row.get(k) for k in TICKET_FIELDS}


async def seat_agent(conn: asyncpg.Connection, conversation_id: UUID, agent_id: UUID) -> None:
    """The agent joins (so fan-out reaches their sockets) and the AI stays silent (`human`)."""
    await conversations.add_members(conn, conversation_id, [agent_id], member_role="agent")
    await conversations.set_mode(conn, conversation_id, "human")


async def unseat_agent(conn: asyncpg.Connection, conversation_id: UUID, agent_id: UUID) -> None:
    """Remove an agent who joined for a ticket; never a member who was there in another role."""
    membership = await conversations.get_with_membership(conn, conversation_id, agent_id)
    if membership and membership["is_member"] and membership["member_role"] == "agent":
        await conversations.remove_member(conn, conversation_id, agent_id)


async def announce_agent_joined(
    core: Core, ticket: dict[str, Any], agent_id: UUID, agent_name: str, *, event: str, left: list[UUID] | None = None
) -> None:
    """After commit: the user sees who joined; members (the agent included) get the new state."""
    cid = ticket["conversation_id"]
    await system_message(core, ticket, f"{agent_name} from the support team joined the conversation.", event,
                         agent={"id": agent_id, "name": agent_name})
    conv = await announce_conversation(core, cid)
    await core.events.to_users([agent_id], "conversation:new", {"conversation": conv})
    if left:
        await core.events.to_users(left, "conversation:updated", {"conversation": conv})
    await core.events.to_rooms([STAFF_ROOM], "ticket:updated", {"ticket": ticket})


async def system_message(core: Core, ticket: dict[str, Any], content: str, event: str, **extra: Any) -> None:
    try:
        await commit_message(
            core, ticket["conversation_id"], sender=None, role="system", content=content,
            metadata={"ticket_id": ticket["id"], "ticket_number": ticket["number"], "event": event, **extra},
        )
    except Exception:
        # The ticket change is committed; the notice is a courtesy, its loss must not undo it.
        log.exception("ticket system message failed", extra={"ticket_id": str(ticket["id"])})

