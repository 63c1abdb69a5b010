"""Writing webhook deliveries in the transaction that makes the change.

`emit(core, conn, event, data)` is one line at each commit point. It writes nothing unless
some enabled endpoint subscribes to the event, by a set cached per instance (`Subscriptions`),
so a deployment without webhooks, or one subscribed to other events, pays one set look-up.
The set is reloaded when any endpoint changes (a NOTIFY from the database, handled in
server/webhooks.py) and every `subscriptions_refresh_seconds`. The INSERT itself picks the
endpoints, so a stale set can only cost an empty INSERT, or miss events for an endpoint
created a moment ago on another instance until this one hears of it.

Messages commit in batches (handlers/writer.py): while `MessageOutbox.wants_messages()`, the
batch's one statement writes its `message.created` rows too (storage/messages.py
`insert_batch(..., webhooks=True)`): no transaction of its own, no second statement.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from handlers.core import Core
from storage import webhooks as store
from storage.db import Database
from storage.records import Conversation, User


class Subscriptions:
    """The event types some enabled endpoint subscribes to, as last loaded."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.events: frozenset[str] = frozenset()

    def wants(self, event_type: str) -> bool:
        return event_type in self.events

    async def refresh(self) -> None:
        async with self.db.connection() as conn:
            self.events = frozenset(await store.subscribed_events(conn))


async def emit(core: Core, conn: asyncpg.Connection, event_type: str, *payloads: dict[str, Any]) -> None:
    """Queue `event_type` with each payload (its `data`) for every subscribed endpoint;
    call inside the change's transaction, so it commits or rolls back with it."""
    subs = core.webhooks
    if subs is None or not payloads or not subs.wants(event_type):
        return
    await store.enqueue(conn, event_type, list(payloads))


class MessageOutbox:
    """What handlers/writer.py asks of each batch of messages: whether its statement also
    writes the `message.created` deliveries (while any enabled endpoint subscribes)."""

    def __init__(self, subs: Subscriptions) -> None:
        self.subs = subs

    def wants_messages(self) -> bool:
        return self.subs.wants("message.created")


def conversation_data(conv: Conversation, member_ids: list[UUID]) -> dict[str, Any]:
    """`conversation.created`'s data, from the record `conversations.insert_conversation` returns."""
    return {"conversation": {
        "id": conv.id, "kind": conv.kind, "title": conv.title, "status": conv.status, "mode": conv.mode,
        "context": conv.context, "created_by": conv.created_by, "created_at": conv.created_at,
        "member_ids": member_ids,
    }}


def user_data(user: User, via: str, **extra: Any) -> dict[str, Any]:
    """`user.created`'s data: the public user (id, name, role), when, and how it was made."""
    return {"user": {**user.public(), "created_at": user.created_at}, "via": via, **extra}
