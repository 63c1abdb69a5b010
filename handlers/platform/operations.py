"""What an app's backend may do with an API key (docs/integration.md, "API keys").

An app acts as itself (`AppActor`), never as a user, and reaches only its own users (the
identities it made, by `sub`) and the conversations they are members of. Where an existing
handler needs an `Actor` for a person (a live session is hosted by its mentor), the actor
is that person, and the audit log records the app and key that asked.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from handlers import disconnects, knowledge, threads
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.identity.subjects import Profile, map_subject
from handlers.pipeline import commit_message
from handlers.platform import idempotency
from handlers.platform.keys import AppActor
from handlers.rooms import sessions
from storage import app_users, audit, conversations, identities, messages, users
from storage import tickets as ticket_store
from storage.records import Role

# --- users -------------------------------------------------------------------------------

async def _user_of(conn: Any, app: AppActor, sub: str) -> identities.IdentityRecord:
    found = await identities.get(conn, app.app_id, sub)
    if found is None:
        raise ApiError("not_found", "This app has no user with this sub.")
    return found


async def upsert_user(
    core: Core, app: AppActor, sub: str, *, name: str | None, email: str | None, role: str | None,
    ip: str | None = None,
) -> dict[str, Any]:
    """Make or update the app's user `sub` (as an identity token would): `{user, created,
    deactivated}`. A role the app may not grant is `forbidden`. A changed role closes the
    user's sockets, which reconnect with the new one."""
    app.require("users:write")
    role = role or "student"
    if role not in app.roles:
        raise ApiError("forbidden", f"This app may not grant the role {role}.")
    async with core.db.transaction() as conn:
        subject = await map_subject(core, conn, app.app_id, sub, Profile(role=role, name=name, email=email),
                                    via="platform")
        user_id = subject.user.id
        await audit.record(
            conn, "platform.user.upsert", target_type="user", target_id=user_id, ip=ip,
            details=app.audit_details(sub=sub, created=subject.created, role=role),
        )
        # Open sockets carry the old role: closed below, they reconnect with the new one.
        closing = await disconnects.of_user(conn, user_id) if subject.role_changed else None
    await disconnects.close(core, closing)
    return {"user": subject.user.public(), "sub": sub, "created": subject.created, "deactivated": subject.deactivated}


async def set_active(core: Core, app: AppActor, sub: str, *, active: bool, ip: str | None = None) -> dict[str, Any]:
    """Deactivate (`active` False) the app's user: their sign-in tokens are revoked, their
    sockets closed on every instance, and identity sign-in refuses them from now on. Or
    reactivate them: they may sign in again."""
    app.require("users:write")
    async with core.db.transaction() as conn:
        # Under the subject's lock, as identity sign-in: a sign-in racing this deactivation
        # either commits its token first (revoked here) or sees the user deactivated.
        await identities.lock_subject(conn, app.app_id, sub)
        known = await _user_of(conn, app, sub)
        await app_users.set_deactivated(conn, known.user_id, not active)
        revoked = [] if active else await users.revoke_user_tokens(conn, known.user_id)
        closing = None if active else await disconnects.of_tokens(conn, revoked, user_id=known.user_id)
        await audit.record(
            conn, "platform.user.deactivate" if not active else "platform.user.reactivate", target_type="user",
            target_id=known.user_id, ip=ip, details=app.audit_details(sub=sub, tokens_revoked=len(revoked)),
        )
        row = await users.get_user(conn, known.user_id)
    assert row is not None
    await disconnects.close(core, closing)
    return {"user": row.public(), "sub": sub, "deactivated": not active}


# --- documents ---------------------------------------------------------------------------

async def add_document(
    core: Core, app: AppActor, *, title: str | None, content: str, source: str | None, language: str | None,
    course: str | None, ip: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Add text to the knowledge base, as staff do over `POST /api/documents`."""
    app.require("documents:write")
    return await knowledge.add_document(core, None, title=title, content=content, source=source, language=language,
                                        course=course, ip=ip, audit_extra=app.audit_details())


async def delete_document(core: Core, app: AppActor, document_id: UUID, *, ip: str | None = None) -> dict[str, Any]:
    app.require("documents:write")
    return await knowledge.delete_document(core, None, document_id, ip=ip, audit_extra=app.audit_details())


# --- live sessions -----------------------------------------------------------------------

def _person(known: identities.IdentityRecord) -> Actor:
    """The app's user as the actor of a handler that acts for a person (no sign-in token)."""
    return Actor(user_id=known.user_id, role=Role(known.role), name=known.name, token_id=uuid.UUID(int=0))


async def create_session(
    core: Core, app: AppActor, *, host_sub: str, title: str, type: str, scheduled_start_time: datetime | None,
    max_participants: int, ip: str | None = None,
) -> dict[str, Any]:
    """A live session hosted by the app's mentor `host_sub`."""
    app.require("sessions:write")
    async with core.db.connection() as conn:
        host = await _user_of(conn, app, host_sub)
    if host.deactivated_at is not None:
        raise ApiError("conflict", "This user is deactivated.")
    result = await sessions.create(core, _person(host), title=title, type=type,
                                   scheduled_start_time=scheduled_start_time, max_participants=max_participants,
                                   is_featured=False)
    async with core.db.connection() as conn:
        await audit.record(conn, "platform.session.create", target_type="live_session",
                           target_id=result["live_session"]["id"], ip=ip,
                           details=app.audit_details(host_sub=host_sub))
    return result


async def change_session(core: Core, app: AppActor, session_id: UUID, action: str, *, ip: str | None = None) -> dict[str, Any]:
    """start / end / cancel a session whose host is one of the app's users."""
    app.require("sessions:write")
    session = await sessions.load(core, session_id)
    async with core.db.connection() as conn:
        host = await identities.for_user(conn, session.host_id)
    if host is None or host.app_id != app.app_id:
        raise ApiError("not_found", "No such live session.")
    result = await sessions.change_status(core, _person(host), session_id, action)
    async with core.db.connection() as conn:
        await audit.record(conn, f"platform.session.{action}", target_type="live_session", target_id=session_id,
                           ip=ip, details=app.audit_details(host_sub=host.subject))
    return result


# --- conversations and messages ----------------------------------------------------------

async def _own_conversation(core: Core, app: AppActor, conversation_id: UUID) -> None:
    """`not_found` unless one of the conversation's members is one of the app's users."""
    async with core.db.connection() as conn:
        if not await app_users.conversation_has_app_member(conn, app.app_id, conversation_id):
            raise ApiError("not_found", "No such conversation.")


async def list_conversations(core: Core, app: AppActor, *, sub: str | None, limit: int) -> dict[str, Any]:
    app.require("conversations:read")
    async with core.db.connection() as conn:
        page = await app_users.app_conversations(conn, app.app_id, subject=sub, limit=limit)
        members = await conversations.members(conn, [conv.id for conv in page])
    return {"conversations": [threads.conversation_out(conv, members[conv.id]) for conv in page]}


async def transcript(
    core: Core, app: AppActor, conversation_id: UUID, *, before_seq: int | None, limit: int,
) -> dict[str, Any]:
    """A page of the conversation's messages, oldest first (deleted ones without content)."""
    app.require("conversations:read")
    await _own_conversation(core, app, conversation_id)
    conversation = await threads.describe(core, conversation_id)
    async with core.db.connection() as conn:
        page, has_more = await messages.history(conn, conversation_id, before_seq=before_seq, limit=limit)
    return {"conversation": conversation, "messages": page, "has_more": has_more}


async def post_message(
    core: Core, app: AppActor, conversation_id: UUID, *, content: str, idempotency_key: str | None = None,
    ip: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """A message from the app (`role: "app"`, `metadata.app: {id, name}`), committed and
    delivered through the one pipeline: members receive `message:new` as for any other.
    Returns (`{message}`, replayed): with an `idempotency_key` already used for this
    message, the first one, posted and delivered nothing anew (handlers/platform/idempotency.py)."""
    app.require("messages:write")
    await _own_conversation(core, app, conversation_id)
    chosen_id = idempotency.message_id(app.app_id, idempotency_key) if idempotency_key is not None else None
    if chosen_id is not None:
        async with core.db.connection() as conn:
            existing = await messages.get(conn, chosen_id)
        if existing is not None:
            return {"message": idempotency.check_replay(existing, conversation_id, content)}, True
    try:
        message, _ = await commit_message(
            core, conversation_id, sender=None, role="app", content=content, check_access=False,
            client_id=idempotency_key, message_id=chosen_id,
            metadata={"app": {"id": str(app.app_id), "name": app.app_name}},
        )
    except asyncpg.UniqueViolationError:
        if chosen_id is None:
            raise
        # A retry racing this one (here or on another instance) committed the id first.
        async with core.db.connection() as conn:
            existing = await messages.get(conn, chosen_id)
        if existing is None:
            raise
        return {"message": idempotency.check_replay(existing, conversation_id, content)}, True
    async with core.db.connection() as conn:
        await audit.record(conn, "platform.message.create", target_type="message", target_id=message.id, ip=ip,
                           details=app.audit_details(conversation_id=str(conversation_id),
                                                     idempotency_key=idempotency_key))
    return {"message": message}, False


# --- tickets -----------------------------------------------------------------------------

async def open_ticket(
    core: Core, app: AppActor, conversation_id: UUID, *, reason: str, urgent: bool, ip: str | None = None,
) -> dict[str, Any]:
    """Hand a tutor conversation of one of the app's users to people (or return its open
    ticket), as the tutor's escalation does."""
    app.require("tickets:write")
    await _own_conversation(core, app, conversation_id)
    service = core.tickets
    if service is None:
        raise ApiError("unavailable", "Tickets are not available on this server.")
    ticket: dict[str, Any] = await service.escalate(
        core, conversation_id=conversation_id, reason=reason, escalated_by=None, source="system", urgent=urgent,
        admitted=True,
    )
    async with core.db.connection() as conn:
        await audit.record(conn, "platform.ticket.open", target_type="ticket", target_id=ticket["id"], ip=ip,
                           details=app.audit_details(conversation_id=str(conversation_id)))
    return {"ticket": ticket}


async def conversation_tickets(core: Core, app: AppActor, conversation_id: UUID) -> dict[str, Any]:
    app.require("tickets:read")
    await _own_conversation(core, app, conversation_id)
    async with core.db.connection() as conn:
        rows = await ticket_store.list_for_conversation(conn, conversation_id)
    return {"tickets": [r.to_wire() for r in rows]}
