"""What both halves of tickets do to a conversation: seating and
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
from storage.records import Ticket

log = logging.getLogger(__name__)

async def seat_agent(conn: asyncpg.Connection, conversation_id: UUID, agent_id: UUID) -> None:
    """The agent joins (so fan-out reaches their sockets) and the AI stays silent (`human`)."""
    await conversations.add_members(conn, conversation_id, [agent_id], member_role="agent")
    await conversations.set_mode(conn, conversation_id, "human")


async def unseat_agent(conn: asyncpg.Connection, conversation_id: UUID, agent_id: UUID) -> None:
    """Remove an agent who joined for a ticket; never a member who was there in another role."""
    membership = await conversations.get_with_membership(conn, conversation_id, agent_id)
    if membership and membership.is_member and membership.member_role == "agent":
        await conversations.remove_member(conn, conversation_id, agent_id)


async def announce_agent_joined(
    core: Core, ticket: Ticket, agent_id: UUID, agent_name: str, *, event: str, left: list[UUID] | None = None
) -> None:
    """After commit: the user sees who joined; members (the agent included) get the new state."""
    cid = ticket.conversation_id
    await system_message(core, ticket, f"{agent_name} from the support team joined the conversation.", event,
                         agent={"id": agent_id, "name": agent_name})
    conv = await announce_conversation(core, cid)
    await core.events.to_users([agent_id], "conversation:new", {"conversation": conv})
    if left:
        await core.events.to_users(left, "conversation:updated", {"conversation": conv})
    await core.events.to_rooms([STAFF_ROOM], "ticket:updated", {"ticket": ticket.to_wire()})


async def system_message(core: Core, ticket: Ticket, content: str, event: str, **extra: Any) -> None:
    try:
        await commit_message(
            core, ticket.conversation_id, sender=None, role="system", content=content,
            metadata={"ticket_id": ticket.id, "ticket_number": ticket.number, "event": event, **extra},
        )
    except Exception:
        # The ticket change is committed; the notice is a courtesy, its loss must not undo it.
        log.exception("ticket system message failed", extra={"ticket_id": str(ticket.id)})

