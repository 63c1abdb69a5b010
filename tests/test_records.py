"""Typed records put the same bytes on the wire as the row dicts they replaced."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from server.jsonutil import dumps_bytes
from storage.messages import MSG_COLUMNS
from storage.records import STAFF_ROLES, LiveSession, Message, Role, Ticket, User

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_a_message_encodes_like_its_row() -> None:
    values: list[Any] = [uuid.uuid4(), uuid.uuid4(), 7, None, "user", "hi \u00e9", None, {"a": [1, None]}, NOW, None, False]
    row = dict(zip(MSG_COLUMNS.split(", "), values, strict=True))
    assert dumps_bytes({"message": Message.from_row(row)}) == dumps_bytes({"message": row})


def test_ticket_to_wire_is_the_old_ticket_object() -> None:
    old_fields = (
        "id", "number", "conversation_id", "user_id", "subject", "category", "priority", "status",
        "assigned_to", "escalation_reason", "sla_due_at", "sla_breached", "created_at", "resolved_at",
        "escalated_by", "escalation_source", "parent_ticket_id", "resolution", "handback", "resolved_by",
        "assigned_at", "closed_at", "updated_at",
    )
    row: dict[str, Any] = dict.fromkeys(old_fields)
    row |= {"id": uuid.uuid4(), "number": "SH-000001", "conversation_id": uuid.uuid4(), "subject": "s",
            "priority": "high", "status": "open", "escalation_reason": "r", "sla_due_at": NOW,
            "sla_breached": False, "created_at": NOW, "escalation_source": "user", "updated_at": NOW}
    ticket = Ticket.from_row(row)
    assert dumps_bytes(ticket.to_wire()) == dumps_bytes({k: row.get(k) for k in old_fields})
    assert dumps_bytes(ticket) == dumps_bytes(ticket.to_wire())


def test_live_session_to_wire_is_the_old_session_object() -> None:
    host = uuid.uuid4()
    row: dict[str, Any] = {
        "id": uuid.uuid4(), "title": "Room", "host_id": host, "status": "live", "type": "qa",
        "scheduled_start_time": None, "started_at": NOW, "ended_at": None, "max_participants": 5,
        "current_participants": 2, "conversation_id": uuid.uuid4(), "is_featured": True, "created_at": NOW,
        "host_name": "Mona", "host_role": "mentor",
    }
    old = {k: v for k, v in row.items() if k not in ("host_name", "host_role", "created_at")}
    old |= {"host": {"id": host, "name": "Mona", "role": "mentor"}, "created_at": NOW}
    assert dumps_bytes(LiveSession.from_row(row).to_wire()) == dumps_bytes(old)


def test_roles_are_strings() -> None:
    user = User.from_row({"id": uuid.uuid4(), "email": None, "name": "G", "role": "guest", "password_hash": "secret",
                          "created_at": NOW, "last_active_at": NOW})
    assert user.role is Role.GUEST and user.role == "guest" and "secret" not in repr(user)
    assert dumps_bytes(user.public()) == dumps_bytes({"id": user.id, "name": "G", "role": "guest"})
    assert "admin" in STAFF_ROLES and Role.STUDENT not in STAFF_ROLES
