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
order they arrived, which is their seq order. Once a batch has committed, its messages
are fanned out (each message's `Delivery`, the pipeline's) before the conversation's next
batch is taken, so members receive a conversation's messages in seq order. Consecutive
messages of one conversation with the same audience go out in one call (`Delivery.send`
with the run, in seq order): the frames are built once, the audience is walked once and
each socket gets the run in one write (server/fanout.py `emit_many`), its senders' acks
included (the outbox flushes a turn later). No timer: an idle conversation's message is
committed at once, alone, and delivered as soon as it is committed.

The look-up a send makes first (the conversation, the sender's membership and the member
list) is batched the same way (`storage.conversations.get_many_with_membership`). Every
look-up also notes the conversation's kind (`KindCache`; a kind never changes), so that a
live-room send can skip the look-up: it goes to the writer with a `RoomSendGuard`, which
the batch's statement checks in SQL (handlers/pipeline.py `commit_message`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
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


# Set by the transport around an event whose order only matters up to the writer's queue
# (`message:send`, server/gateway.py): called once the message is queued, in order, so
# the socket's next event may start while this one commits (one sender's messages then
# share batches instead of each waiting for the previous one's commit).
QUEUED: ContextVar[Callable[[], None] | None] = ContextVar("studyhall_message_queued", default=None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a message is fanned out once committed (not for a duplicate): the pipeline's.
    `audience` names who receives it (hashable: a room, or a member list); a run of a
    batch's messages of one conversation with equal audiences is delivered by one call
    of the first one's `send`, with the messages in seq order."""

    audience: Hashable
    send: Callable[[list[Message]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Job:
    message: NewMessage
    then: Delivery | None


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

    async def insert(self, message: NewMessage, then: Delivery | None = None) -> Inserted:
        """(message, duplicate), or raises like `storage.messages.insert`; `bad_request`
        for text the database cannot store. `then` delivers the message after the commit,
        in seq order with the conversation's other messages (with the run of them that
        shares its audience), before this returns; if that raises, this raises it (the
        message stays committed)."""
        refusal = unstorable(message)
        if refusal is not None:
            raise refusal
        outcome = self.batcher.enqueue(_Job(message, then))
        queued = QUEUED.get()
        if queued is not None:  # its place in the conversation's order is taken
            queued()
        return await outcome

    async def _run(self, jobs: list[_Job]) -> list[Inserted | BaseException]:
        outcomes = await self._commit([j.message for j in jobs])
        for delivery, run in _runs(jobs, outcomes):
            try:
                await delivery.send([m for _, m in run])
            except Exception as exc:  # this run's fan-out alone; the others still go
                log.exception("fan-out failed", extra={"conversation_id": str(run[0][1].conversation_id)})
                for i, _ in run:
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


def unstorable(message: NewMessage) -> ApiError | None:
    """`bad_request` for text PostgreSQL cannot hold (refused before the batch is built)."""
    for value in (message.content, message.client_id):
        what = unstorable_reason(value) if value is not None else None
        if what is not None:
            return ApiError("bad_request", f"A message cannot contain {what}.")
    return None


class KindCache:
    """Conversation id -> kind, for the conversations recently looked up (least recently
    used dropped past `size`). A conversation's kind never changes, so an entry is never
    stale; one whose conversation was deleted only sends a guarded send to the full path."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._kinds: OrderedDict[UUID, str] = OrderedDict()

    def get(self, conversation_id: UUID) -> str | None:
        kind = self._kinds.get(conversation_id)
        if kind is not None:
            self._kinds.move_to_end(conversation_id)
        return kind

    def put(self, conversation_id: UUID, kind: str) -> None:
        self._kinds[conversation_id] = kind
        self._kinds.move_to_end(conversation_id)
        if len(self._kinds) > self.size:
            self._kinds.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kinds)


class ConversationLoader:
    """`load(conversation_id, user_id)`: what `conversations.get_with_membership` returns,
    looked up together with the other sends in flight. `kinds` remembers the kind of each
    conversation looked up."""

    def __init__(self, db: Database, *, max_batch: int = 200, concurrency: int = 2, kinds: int = 4096) -> None:
        self.db = db
        self.batcher: Batcher[tuple[UUID, UUID | None], ConversationMembership | None] = Batcher(
            self._load, max_batch=max_batch, concurrency=concurrency
        )
        self.kinds = KindCache(kinds)

    async def load(self, conversation_id: UUID, user_id: UUID | None) -> ConversationMembership | None:
        conv = await self.batcher.submit((conversation_id, user_id))
        if conv is not None:
            self.kinds.put(conv.id, conv.kind)
        return conv

    async def _load(self, keys: list[tuple[UUID, UUID | None]]) -> list[ConversationMembership | BaseException | None]:
        async with self.db.connection(pipeline=True) as conn:
            return list(await conversations.get_many_with_membership(conn, keys))


def _runs(jobs: list[_Job], outcomes: list[Inserted | BaseException]) -> list[tuple[Delivery, list[tuple[int, Message]]]]:
    """The committed (not duplicate) messages to deliver, as runs: per conversation, its
    messages in batch order (= seq order), cut wherever the audience changes. Runs are in
    the order of their first message, so each conversation's runs go out in seq order;
    two conversations' messages have no order between them and never share a run."""
    runs: list[tuple[Delivery, list[tuple[int, Message]]]] = []
    open_run: dict[UUID, tuple[Hashable, list[tuple[int, Message]]]] = {}  # conversation -> its last run
    for i, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
        if job.then is None or not isinstance(outcome, tuple) or outcome[1]:
            continue
        cid = job.message.conversation_id
        last = open_run.get(cid)
        if last is not None and last[0] == job.then.audience:
            last[1].append((i, outcome[0]))
            continue
        run = [(i, outcome[0])]
        runs.append((job.then, run))
        open_run[cid] = (job.then.audience, run)
    return runs
