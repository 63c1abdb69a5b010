"""Messages: the one insert path, history and gap recovery by seq."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from storage.records import Message
from storage.webhooks import MESSAGE_CREATED_CTE

MSG_COLUMNS = "id, conversation_id, seq, sender_id, role, content, client_id, metadata, created_at, edited_at, deleted"

# Group commit: one statement inserts a batch of messages, possibly for many
# conversations, and commits them together (one WAL flush for all). Per conversation it
# takes the row lock (in id order, so two batches never deadlock each other), returns the
# first message for a retried client_id, and gives the others consecutive seqs in request
# order. A retry committed by another instance after this statement's snapshot is stopped
# by the unique index; the caller runs the statement again and gets the first message.
# `updated_at` (activity order; indexed for tutor crash recovery) moves at most once a
# second: an update that changes no indexed column is HOT, so a busy conversation's row
# does not leave a trail of index entries behind that every look-up must step over.
# The retry look-up is a LATERAL index probe per message that the planner cannot turn
# into a join: as a join, with statistics from when the table was small (autovacuum
# analyses it only every minute or so), it scanned the whole messages table per batch.
_BATCH_CTES = f"""
WITH req AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::uuid[], $8::text[],
                         $9::boolean[], $10::boolean[])
        WITH ORDINALITY AS r(conversation_id, sender_id, role, content, client_id, metadata, message_id, require_mode,
                             guard_moderator, guard_agent, idx)
), locked AS MATERIALIZED (
    SELECT id, last_seq, mode, kind, title FROM conversations WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
), refused AS MATERIALIZED (
    -- Guarded room sends (`RoomSendGuard`) the sender may not make now: handlers/rooms/live.py
    -- `RoomPolicy.check_send` in SQL, read once the conversation row is locked. Refused
    -- before the duplicate check, so a resend tells a refused sender nothing.
    SELECT r.idx FROM req r
    LEFT JOIN locked l ON l.id = r.conversation_id
    LEFT JOIN live_sessions s ON s.conversation_id = r.conversation_id
    LEFT JOIN room_participants p ON p.live_session_id = s.id AND p.user_id = r.sender_id
    WHERE r.guard_moderator IS NOT NULL AND NOT coalesce(
        l.kind = 'room' AND s.status = 'live' AND (
            s.host_id = r.sender_id OR r.guard_moderator
            OR (p.user_id IS NOT NULL AND p.left_at IS NULL AND NOT p.banned AND NOT p.muted)
        ), false)
), existing AS MATERIALIZED (
    SELECT r.idx, m.* FROM req r CROSS JOIN LATERAL (
        SELECT {MSG_COLUMNS} FROM messages
        WHERE conversation_id = r.conversation_id AND sender_id = r.sender_id AND client_id = r.client_id
        LIMIT 1  -- unique anyway; keeps the planner from turning this into a join
    ) m
    WHERE r.idx NOT IN (SELECT idx FROM refused)
), todo AS MATERIALIZED (
    -- A guarded send whose role the pipeline left to derive (`guard_agent`: a staff sender)
    -- writes as `agent` when the sender is the conversation's agent, as `commit_message` does.
    SELECT r.*, l.last_seq + row_number() OVER (PARTITION BY r.conversation_id ORDER BY r.idx) AS seq,
           CASE WHEN NOT coalesce(r.guard_agent, false) THEN r.role
                WHEN EXISTS (SELECT 1 FROM conversation_members cm WHERE cm.conversation_id = r.conversation_id
                             AND cm.user_id = r.sender_id AND cm.member_role = 'agent') THEN 'agent'
                ELSE r.role END AS role_written
    FROM req r JOIN locked l ON l.id = r.conversation_id
    WHERE r.idx NOT IN (SELECT idx FROM existing) AND r.idx NOT IN (SELECT idx FROM refused)
      AND (r.require_mode IS NULL OR l.mode = r.require_mode)
), bump AS (
    UPDATE conversations c SET last_seq = t.top,
        updated_at = CASE WHEN c.updated_at < now() - interval '1 second' THEN now() ELSE c.updated_at END
    FROM (SELECT conversation_id, max(seq) AS top FROM todo GROUP BY conversation_id) t
    WHERE c.id = t.conversation_id AND c.id = ANY($1::uuid[])
), ins AS (
    INSERT INTO messages (id, conversation_id, seq, sender_id, role, content, client_id, metadata)
    SELECT coalesce(message_id, gen_random_uuid()), conversation_id, seq, sender_id, role_written, content, client_id, metadata
    FROM todo
    RETURNING {MSG_COLUMNS}
)"""
_BATCH_RESULT = """
SELECT t.idx, ins.*, false AS duplicate FROM ins JOIN todo t ON t.conversation_id = ins.conversation_id AND t.seq = ins.seq
UNION ALL
SELECT e.*, true AS duplicate FROM existing e
"""
_INSERT_BATCH = _BATCH_CTES + _BATCH_RESULT
# While an endpoint subscribes to `message.created`: the same statement with one more CTE
# that writes the new messages' deliveries (storage/webhooks.py). One statement is one
# transaction: the messages and their outbox rows commit, or roll back, together, and a
# batch costs the same round trips as without webhooks.
_INSERT_BATCH_WITH_WEBHOOKS = _BATCH_CTES + ",\n" + MESSAGE_CREATED_CTE + _BATCH_RESULT


class ModeChanged(LookupError):
    """`require_mode` was given and the conversation is no longer in that mode."""


class GuardFailed(LookupError):
    """A guarded send (`NewMessage.guard`) was refused by its guard, or its conversation is
    gone: nothing was written and nothing about why is said. The caller takes the full
    path (look-up and policy), which gives the protocol's error or lets it through."""


@dataclass(frozen=True, slots=True)
class RoomSendGuard:
    """Insert only if the sender may send to this live room now, checked in the batch's own
    statement once it holds the conversation's row lock (handlers/rooms/live.py
    `RoomPolicy.check_send`, in SQL): the conversation is a room whose live session is
    `live`, and the sender is its host, or `moderator` (an admin), or a present participant
    who is neither banned nor muted. `derive_agent`: the role was left to derive for a staff
    sender, who then writes as `agent` if they are the conversation's agent member."""

    moderator: bool
    derive_agent: bool = False


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message to insert. `message_id` gives the row a chosen id (the tutor streams
    deltas under an id picked before the answer exists); `require_mode` inserts only while
    the conversation is in that mode, checked in the same statement."""

    conversation_id: UUID
    sender_id: UUID | None
    role: str
    content: str
    client_id: str | None = None
    metadata: dict[str, Any] | None = None
    message_id: UUID | None = None
    require_mode: str | None = None
    guard: RoomSendGuard | None = None


Inserted = tuple[Message, bool]


def statement(*, webhooks: bool) -> str:
    """The batch's statement (its parameters: `batch_arguments`)."""
    return _INSERT_BATCH_WITH_WEBHOOKS if webhooks else _INSERT_BATCH


def batch_arguments(batch: list[NewMessage]) -> tuple[list[Any], ...]:
    """The statement's ten arrays, one element per message (the guard's two are NULL for
    an unguarded message)."""
    return (
        [m.conversation_id for m in batch], [m.sender_id for m in batch], [m.role for m in batch],
        [m.content for m in batch], [m.client_id for m in batch], [m.metadata or {} for m in batch],
        [m.message_id for m in batch], [m.require_mode for m in batch],
        [m.guard.moderator if m.guard else None for m in batch],
        [m.guard.derive_agent if m.guard else None for m in batch],
    )


async def insert_batch(
    conn: asyncpg.Connection, batch: list[NewMessage], *, webhooks: bool = False
) -> list[Inserted | LookupError]:
    """Insert and commit several messages in one statement; per message, in order:
    (message, duplicate), or ModeChanged / GuardFailed / LookupError (no such
    conversation) for one that was not inserted. Any other error fails the whole batch (nothing is written).
    `webhooks`: the same statement queues `message.created` for every subscribed endpoint."""
    for attempt in range(2):
        try:
            rows = await conn.fetch(statement(webhooks=webhooks), *batch_arguments(batch))
            break
        except asyncpg.UniqueViolationError:
            if attempt or conn.is_in_transaction():  # the transaction is aborted: its owner retries
                raise
    by_index: dict[int, Inserted] = {}
    for row in rows:
        by_index[row["idx"] - 1] = (Message.from_row(row), row["duplicate"])
    results: list[Inserted | LookupError] = []
    missing_modes = [m.conversation_id for i, m in enumerate(batch) if i not in by_index and m.require_mode is not None]
    existing = await _existing_conversations(conn, missing_modes) if missing_modes else set()
    for i, m in enumerate(batch):
        inserted = by_index.get(i)
        if inserted is not None:
            results.append(inserted)
        elif m.guard is not None:
            results.append(GuardFailed(f"guarded send to {m.conversation_id} refused"))
        elif m.conversation_id in existing:
            results.append(ModeChanged(f"conversation {m.conversation_id} is not in mode {m.require_mode}"))
        else:
            results.append(LookupError(f"conversation {m.conversation_id} does not exist"))
    return results


async def _existing_conversations(conn: asyncpg.Connection, ids: list[UUID]) -> set[UUID]:
    """Which of these conversations exist (a refused `require_mode` insert: mode changed,
    or no such conversation)."""
    rows = await conn.fetch("SELECT id FROM conversations WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def insert(conn: asyncpg.Connection, **fields: Any) -> Inserted:
    """Insert and commit one message (fields of NewMessage); returns (message, duplicate)
    or raises ModeChanged / LookupError."""
    (result,) = await insert_batch(conn, [NewMessage(**fields)])
    if isinstance(result, LookupError):
        raise result
    return result


async def get(conn: asyncpg.Connection, message_id: UUID) -> Message | None:
    row = await conn.fetchrow(f"SELECT {MSG_COLUMNS} FROM messages WHERE id = $1", message_id)
    return Message.from_row(row) if row else None


async def edit(conn: asyncpg.Connection, message_id: UUID, content: str) -> Message | None:
    row = await conn.fetchrow(
        f"UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 AND NOT deleted RETURNING {MSG_COLUMNS}",
        message_id, content,
    )
    return Message.from_row(row) if row else None


async def soft_delete(conn: asyncpg.Connection, message_id: UUID) -> Message | None:
    """Keep the seq (clients must see no gap); drop the content."""
    row = await conn.fetchrow(
        f"""UPDATE messages SET content = '', metadata = '{{}}'::jsonb, deleted = true, edited_at = now()
            WHERE id = $1 RETURNING {MSG_COLUMNS}""",
        message_id,
    )
    return Message.from_row(row) if row else None


async def history(
    conn: asyncpg.Connection, conversation_id: UUID, *, before_seq: int | None, limit: int
) -> tuple[list[Message], bool]:
    """Up to `limit` messages before `before_seq` (newest page first), in ascending seq."""
    rows = await conn.fetch(
        f"""SELECT {MSG_COLUMNS} FROM messages
            WHERE conversation_id = $1 AND ($2::bigint IS NULL OR seq < $2)
            ORDER BY seq DESC LIMIT $3""",
        conversation_id, before_seq, limit + 1,
    )
    has_more = len(rows) > limit
    return [Message.from_row(r) for r in reversed(rows[:limit])], has_more


# Per message, what its JSON adds beyond content and metadata (ids, times, keys): an
# estimate for the size bound in `since`; the caller measures the real encoding.
MESSAGE_JSON_OVERHEAD = 400

# Candidates: per conversation (in the caller's order) up to limit + 1 messages after its
# seq, with an estimated size (octet_length reads a text's stored length without
# decompressing it) and running totals over all conversations. Returned: every candidate
# within the byte budget (the first one overall always, so each call makes progress),
# plus each conversation's first candidate even when it does not fit, with no message
# columns: it says that conversation has more. Nothing over the budget leaves the server.
_SINCE = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS w(cid, after_seq, ord)
), candidates AS (
    SELECT w.cid, w.ord, c.id, c.seq,
           count(*) OVER (PARTITION BY w.cid) AS available,
           row_number() OVER (PARTITION BY w.cid ORDER BY c.seq) AS nth,
           row_number() OVER (ORDER BY w.ord, c.seq) AS overall,
           sum(c.size) OVER (ORDER BY w.ord, c.seq ROWS UNBOUNDED PRECEDING) AS running
    FROM wanted w CROSS JOIN LATERAL (
        SELECT id, seq, octet_length(content) + pg_column_size(metadata) + {MESSAGE_JSON_OVERHEAD} AS size
        FROM messages WHERE conversation_id = w.cid AND seq > w.after_seq ORDER BY seq LIMIT $3
    ) c
)
SELECT c.cid AS wanted_id, c.available, (m.id IS NOT NULL) AS kept, {", ".join("m." + col for col in MSG_COLUMNS.split(", "))}
FROM candidates c
LEFT JOIN messages m ON m.id = c.id AND (c.running <= $4 OR c.overall = 1)
WHERE m.id IS NOT NULL OR c.nth = 1
ORDER BY c.ord, c.seq
"""


async def since(
    conn: asyncpg.Connection, wanted: dict[UUID, int], *, limit: int, max_bytes: int
) -> dict[UUID, tuple[list[Message], bool]]:
    """For each conversation, messages after the given seq (ascending, at most `limit`) and
    whether that is all. Conversations are filled in the order of `wanted` until the
    messages' estimated size passes `max_bytes` (at least one message is returned): a
    conversation cut short, or not reached, is not complete."""
    if not wanted:
        return {}
    rows = await conn.fetch(_SINCE, list(wanted.keys()), list(wanted.values()), limit + 1, max_bytes)
    out: dict[UUID, list[Message]] = {cid: [] for cid in wanted}
    available: dict[UUID, int] = dict.fromkeys(wanted, 0)
    for r in rows:
        cid = r["wanted_id"]
        available[cid] = r["available"]
        if r["kept"]:
            out[cid].append(Message.from_row(r))
    return {cid: (msgs[:limit], len(msgs) == available[cid] <= limit) for cid, msgs in out.items()}


async def recent(conn: asyncpg.Connection, conversation_id: UUID, limit: int) -> list[Message]:
    msgs, _ = await history(conn, conversation_id, before_seq=None, limit=limit)
    return msgs


async def exists_for_client_id(conn: asyncpg.Connection, conversation_id: UUID, sender_id: UUID, client_id: str) -> bool:
    """Whether the sender already has a message with this client_id here (a resend)."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation_id = $1 AND sender_id = $2 AND client_id = $3)",
        conversation_id, sender_id, client_id,
    )
