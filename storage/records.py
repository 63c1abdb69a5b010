"""Typed records: the rows storage/ loads, as handlers use them, and the user roles.

Records are frozen dataclasses with slots rather than pydantic models: they are built
from database rows that PostgreSQL has already typed and constrained, on hot paths (a
group commit builds one per message), so validating them again would cost time for
nothing; orjson serialises dataclasses and str-enums natively, so a record whose fields
are exactly its wire object goes to the client as it is (same keys, same values, same
bytes as the dict it replaces). Where the wire object differs from the row, the record
has a `to_wire()` that builds it. pydantic stays where data comes from outside (the
event and request schemas in server/).

Frozen: a record is a snapshot of a row; a changed row is a new record
(`dataclasses.replace`), never one edited in place that other code still holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, Self
from uuid import UUID


class Role(StrEnum):
    """A user's role (the `users.role` column). A str: compares and serialises as its value."""

    STUDENT = "student"
    MENTOR = "mentor"
    AGENT = "agent"
    ADMIN = "admin"
    GUEST = "guest"


# Support staff: see and work the ticket queue, may take a tutor conversation over.
STAFF_ROLES = (Role.AGENT, Role.ADMIN)


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _pick(cls: type, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's columns that are fields of `cls` (a query may return a few more)."""
    return {name: row[name] for name in _names(cls)}


@dataclass(frozen=True, slots=True)
class User:
    """An account (`storage.users.USER_COLUMNS`). `public()` is the protocol's user object:
    never the email, the hash or the activity time, so a User is never sent as it is."""

    id: UUID
    email: str | None  # None for guests
    name: str
    role: Role
    password_hash: str | None = field(repr=False)  # None for guests
    created_at: datetime
    last_active_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{**_pick(cls, row), "role": Role(row["role"])})

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role}


@dataclass(frozen=True, slots=True)
class TokenUser(User):
    """A live sign-in token's user (`storage.users.find_token_user`), with the token."""

    token_id: UUID
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Message:
    """A message row (`storage.messages.MSG_COLUMNS`); its fields are the protocol's
    message object, so it is sent as it is. `role` is the author's part in the
    conversation (user, assistant, agent, system), not a user `Role`."""

    id: UUID
    conversation_id: UUID
    seq: int
    sender_id: UUID | None
    role: str
    content: str
    client_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    edited_at: datetime | None
    deleted: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Message:
        return cls(**_pick(cls, row))


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation row (`storage.conversations.CONV_COLUMNS`). `mode` is set for tutor
    conversations only (ai, waiting, human); `context` is {} when none was given."""

    id: UUID
    kind: str
    title: str | None
    status: str
    mode: str | None
    context: dict[str, Any]
    created_by: UUID | None
    last_seq: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Conversation:
        return cls(**_pick(cls, row))


@dataclass(frozen=True, slots=True)
class ConversationAccess:
    """What an access check needs (`storage.conversations.access_rows`): the conversation's
    kind and status and one user's membership. Each kind's `KindPolicy` decides from
    these alone, or with a query of its own (live rooms)."""

    id: UUID
    kind: str
    status: str
    is_member: bool
    member_role: str | None  # member, agent; None when not a member

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**_pick(cls, row))


@dataclass(frozen=True, slots=True)
class ConversationMembership(ConversationAccess):
    """The conversation with one user's membership and the member list
    (`storage.conversations.get_with_membership`): everything a send needs before its
    insert. `member_ids` is empty for live rooms, whose audience is whoever joined.
    `room`: for a live room's conversation, its session's state and this user's place in
    it, read in the same statement, so the room policy's send check needs no query of
    its own; None for other kinds."""

    title: str | None
    mode: str | None
    context: dict[str, Any]
    created_by: UUID | None
    last_seq: int
    created_at: datetime
    last_read_seq: int
    member_ids: list[UUID]
    room: RoomAccess | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """From a row of `conversations.get_many_with_membership`: its `room_*` columns
        (NULL unless the conversation is a live room's) become `room`."""
        room = None
        if row["room_id"] is not None:
            room = RoomAccess(id=row["room_id"], status=row["room_status"], host_id=row["room_host_id"],
                              present=row["room_present"], banned=row["room_banned"], muted=row["room_muted"])
        return cls(**{name: row[name] for name in _names(ConversationMembership) if name != "room"}, room=room)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A support ticket (`storage.tickets.TICKET_COLUMNS`). The fields are the protocol's
    ticket object plus its documented extra fields, in the order the wire object lists
    them; `to_wire()` is that object."""

    id: UUID
    number: str  # SH-000123
    conversation_id: UUID
    user_id: UUID | None
    subject: str
    category: str | None
    priority: str
    status: str  # open, assigned, resolved, closed
    assigned_to: UUID | None
    escalation_reason: str
    sla_due_at: datetime
    sla_breached: bool
    created_at: datetime
    resolved_at: datetime | None
    # additions to the protocol's ticket object
    escalated_by: UUID | None
    escalation_source: str
    parent_ticket_id: UUID | None
    resolution: str | None
    handback: str | None  # ai, close
    resolved_by: UUID | None
    assigned_at: datetime | None
    closed_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Ticket:
        return cls(**_pick(cls, row))

    def to_wire(self) -> dict[str, Any]:
        """The protocol's ticket object (plus the documented extra fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A live session with its seat count and its host's name and role
    (`storage.rooms.SESSION_SELECT`); `to_wire()` is the protocol's live_session object."""

    id: UUID
    title: str
    host_id: UUID
    status: str  # scheduled, live, ended, cancelled
    type: str
    scheduled_start_time: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    max_participants: int
    current_participants: int  # present users other than the host
    conversation_id: UUID  # the room's chat
    is_featured: bool
    created_at: datetime
    host_name: str
    host_role: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LiveSession:
        return cls(**_pick(cls, row))

    def to_wire(self) -> dict[str, Any]:
        """The protocol's live_session object (plus `host` and `created_at`)."""
        return {
            "id": self.id, "title": self.title, "host_id": self.host_id, "status": self.status, "type": self.type,
            "scheduled_start_time": self.scheduled_start_time, "started_at": self.started_at,
            "ended_at": self.ended_at, "max_participants": self.max_participants,
            "current_participants": self.current_participants, "conversation_id": self.conversation_id,
            "is_featured": self.is_featured, "host": {"id": self.host_id, "name": self.host_name, "role": self.host_role},
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class SessionLock:
    """What `storage.rooms.lock_session` reads under the session row lock."""

    id: UUID
    status: str
    host_id: UUID
    max_participants: int
    conversation_id: UUID

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SessionLock:
        return cls(**_pick(cls, row))


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """What the room chat policy needs (`storage.rooms.session_for_conversation`): the
    session's state and one user's place in it."""

    id: UUID  # the live session
    status: str
    host_id: UUID
    present: bool
    banned: bool
    muted: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RoomAccess:
        return cls(**_pick(cls, row))


@dataclass(frozen=True, slots=True)
class RoomParticipant:
    """A user's place in a live session (a `room_participants` row), present or not."""

    live_session_id: UUID
    user_id: UUID
    joined_at: datetime
    left_at: datetime | None  # None while present
    away_since: datetime | None
    muted: bool
    hand_raised: bool
    banned: bool
    kicked_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RoomParticipant:
        return cls(**_pick(cls, row))
