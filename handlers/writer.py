"""Group commit for messages, and batched conversation look-ups for sends.

Every message costs PostgreSQL a statement and a commit (a WAL flush). Messages that
arrive while a batch is being committed go together in the next one: one statement
(`storage.messages.insert_batch`), one commit, one round trip. Each sender is answered
only after its own batch has committed, so an ack still means "durable".

One message the database would refuse must not cost the others their commit: text
PostgreSQL cannot hold (a NUL character) is refused before the batch is built, and if a
batch still fails as a whole (a deadlock with another writer, one row the database
refuses), it is split in halves and each half committed on its own, down to the bad row,
so it fails alone and the others go through in about 2·log2(n) statements rather than n.

Within one conversation (handlers/batching.py `exclusive_key`), one batch is in flight at
a time: the messages that arrive while it commits go together in the next one, in the
order they arrived, which is their seq order. Each message's `then` (the pipeline's
fan-out) runs once its batch has committed, in seq order, before the conversation's next
batch is taken, so members receive a conversation's messages in seq order; run back to
back, a batch's frames to one socket can share one write (server/fanout.py's outbox
flushes once per event-loop turn). No timer: an idle conversation's message is
committed at once, alone.

The look-up a send makes first (the conversation, the sender's membership and the member
list) is batched the same way (`storage.conversations.get_many_with_membership`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import asyncpg

from handlers.batching import Batcher
from handlers.errors import ApiError
from storage import conversations, messages
from storage.db import Database
from storage.messages import Inserted, NewMessage
from storage.records import ConversationMembership, Message
from storage.text import unstorable_reason

log = logging.getLogger(__name__)


class BatchOutbox(Protocol):
    """Whether a batch's statement also writes `message.created` deliveries (webhooks'
    outbox, handlers/webhooks/outbox.py `MessageOutbox`): the writer does not import it."""

    def wants_messages(self) -> bool: ...


# Runs after a message is committed (not for a duplicate): the pipeline's fan-out.
AfterInsert = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Job:
    message: NewMessage
    then: AfterInsert | None


class MessageWriter:
    """`insert(message)` commits with the next seq of its conversation, in a batch."""

    def __init__(self, db: Database, *, max_batch: int = 200, concurrency: int = 2) -> None:
        self.db = db
        # A retry of a client_id already in a batch waits for the next one, so that it
        # finds the first message committed and is answered as a duplicate.
        self.batcher: Batcher[_Job, Inserted] = Batcher(
            self._run, max_batch=max_batch, concurrency=concurrency,
            conflict_key=lambda j: (
                (j.message.conversation_id, j.message.sender_id, j.message.client_id)
                if j.message.client_id is not None else None
            ),
            exclusive_key=lambda j: j.message.conversation_id,
        )
        self.statements = 0  # insert statements run (a failed batch and its halves count)
        # Webhooks (handlers/webhooks/outbox.py): while anyone subscribes to message.created,
        # a batch's statement writes its outbox rows too.
        self.outbox: BatchOutbox | None = None

    async def insert(self, message: NewMessage, then: AfterInsert | None = None) -> Inserted:
        """(message, duplicate), or raises like `storage.messages.insert`; `bad_request`
        for text the database cannot store. `then(message)` runs after the commit, in seq
        order with the conversation's other messages, before this returns; if it raises,
        this raises that (the message stays committed)."""
        for value in (message.content, message.client_id):
            what = unstorable_reason(value) if value is not None else None
            if what is not None:
                raise ApiError("bad_request", f"A message cannot contain {what}.")
        return await self.batcher.submit(_Job(message, then))

    async def _run(self, jobs: list[_Job]) -> list[Inserted | BaseException]:
        outcomes = await self._commit([j.message for j in jobs])
        for i, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
            if job.then is None or not isinstance(outcome, tuple) or outcome[1]:
                continue
            try:
                await job.then(outcome[0])
            except Exception as exc:  # this message's fan-out alone; the others still go
                log.exception("after-insert step failed", extra={"conversation_id": str(job.message.conversation_id)})
                outcomes[i] = exc
        return outcomes

    async def _commit(self, batch: list[NewMessage]) -> list[Inserted | BaseException]:
        try:
            self.statements += 1
            webhooks = self.outbox is not None and self.outbox.wants_messages()
            async with self.db.connection(pipeline=True) as conn:
                return list(await messages.insert_batch(conn, batch, webhooks=webhooks))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if len(batch) == 1:
                return [exc]
            log.warning("message batch failed, committing it in halves", extra={"size": len(batch), "error": str(exc)})
            half = len(batch) // 2
            return [*await self._commit(batch[:half]), *await self._commit(batch[half:])]


class ConversationLoader:
    """`load(conversation_id, user_id)`: what `conversations.get_with_membership` returns,
    looked up together with the other sends in flight."""

    def __init__(self, db: Database, *, max_batch: int = 200, concurrency: int = 2) -> None:
        self.db = db
        self.batcher: Batcher[tuple[UUID, UUID | None], ConversationMembership | None] = Batcher(
            self._load, max_batch=max_batch, concurrency=concurrency
        )

    async def load(self, conversation_id: UUID, user_id: UUID | None) -> ConversationMembership | None:
        return await self.batcher.submit((conversation_id, user_id))

    async def _load(self, keys: list[tuple[UUID, UUID | None]]) -> list[ConversationMembership | BaseException | None]:
        async with self.db.connection(pipeline=True) as conn:
            return list(await conversations.get_many_with_membership(conn, keys))
