"""Shared set-up for the ticket tests: tutor conversations made through storage, escalation
through the running server's own TicketService, audit look-ups."""

from __future__ import annotations

import uuid
from typing import Any

from handlers.core import Core
from server.keys import CORE
from storage import audit, conversations, messages
from storage.db import Database
from tests.client import Instance, User


async def tutor_conversation(db: Database, student: User, question: str | None = "How do I add fractions?") -> str:
    """A tutor conversation in mode ai, as the tutor feature makes them, with one question in it."""
    async with db.transaction() as conn:
        conv = await conversations.insert_conversation(
            conn, kind="tutor", title="Fractions", created_by=uuid.UUID(student.id), mode="ai"
        )
        assert conv is not None
        await conversations.add_members(conn, conv.id, [uuid.UUID(student.id)])
        if question:
            await messages.insert(conn, conversation_id=conv.id, sender_id=uuid.UUID(student.id), role="user",
                                  content=question, client_id="q1")
    return str(conv.id)


def core_of(instance: Instance) -> Core:
    return instance.app[CORE]


async def escalate(instance: Instance, cid: str, reason: str = "human_requested", **kw: Any) -> dict[str, Any]:
    """Escalate the way the tutor does: through `core.tickets` on a running instance."""
    core = core_of(instance)
    kw.setdefault("escalated_by", None)
    kw.setdefault("source", "tutor")
    assert core.tickets is not None
    return await core.tickets.escalate(core, conversation_id=uuid.UUID(cid), reason=reason, **kw)


async def audit_actions(db: Database, prefix: str = "ticket.") -> list[dict[str, Any]]:
    async with db.connection() as conn:
        entries = await audit.list_entries(conn, limit=500)
    return [e for e in reversed(entries) if e["action"].startswith(prefix)]
