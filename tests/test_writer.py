"""Group commit (handlers/writer.py) against the real database: concurrent messages share
batches, and every caller still gets exactly its own committed message, in seq order per
conversation; a bad message fails alone; a retried client_id is a duplicate even inside
one batch."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from handlers.writer import MessageWriter
from storage import conversations, messages, users
from storage.db import Database
from storage.messages import NewMessage


async def make_conversations(db: Database, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with db.transaction() as conn:
        user = await users.insert_user(conn, email=f"w-{uuid.uuid4().hex[:8]}@example.com", name="Writer",
                                  password_hash="x", role="student")
        ids = []
        for i in range(n):
            conv = await conversations.insert_conversation(conn, kind="group", title=f"g{i}", created_by=user.id)
            await conversations.add_members(conn, conv.id, [user.id])
            ids.append(conv.id)
    return user.id, ids


async def test_concurrent_messages_share_batches_and_keep_order(db: Database) -> None:
    sender, convs = await make_conversations(db, 20)
    writer = MessageWriter(db, concurrency=1)

    async def send_all(cid: uuid.UUID) -> list[int]:
        seqs = []
        for i in range(10):  # one conversation's messages one after another, as the pipeline's lock makes them
            message, duplicate = await writer.insert(NewMessage(cid, sender, "user", f"m{i}", client_id=f"c{i}"))
            assert not duplicate and message.content == f"m{i}" and message.conversation_id == cid
            seqs.append(message.seq)
        return seqs

    results = await asyncio.gather(*(send_all(c) for c in convs))
    assert all(seqs == list(range(1, 11)) for seqs in results)
    assert writer.batcher.requests == 200
    assert writer.batcher.batches < 100, "20 conversations sending at once must share commits"
    async with db.connection() as conn:
        for cid in convs:
            history, _ = await messages.history(conn, cid, before_seq=None, limit=100)
            assert [m.content for m in history] == [f"m{i}" for i in range(10)]
            assert (await conversations.get_with_membership(conn, cid, sender)).last_seq == 10


async def test_one_bad_message_fails_alone(db: Database) -> None:
    sender, (cid,) = await make_conversations(db, 1)
    _, (other,) = await make_conversations(db, 1)
    writer = MessageWriter(db, concurrency=1)
    # Submitted in the same turn, the four go in one batch; the message from a sender who
    # does not exist breaks the foreign key and so the batch's single statement.
    first = asyncio.ensure_future(writer.insert(NewMessage(cid, sender, "user", "first")))
    batch = [
        writer.insert(NewMessage(cid, sender, "user", "kept")),
        writer.insert(NewMessage(other, uuid.uuid4(), "user", "nobody's")),
        writer.insert(NewMessage(uuid.uuid4(), sender, "user", "no such conversation")),
    ]
    outcomes = await asyncio.gather(first, *batch, return_exceptions=True)
    assert (writer.batcher.batches, writer.batcher.requests) == (1, 4), "the four shared one batch"
    assert outcomes[0][0].seq == 1 and outcomes[1][0].seq == 2 and outcomes[1][0].content == "kept"
    assert isinstance(outcomes[2], Exception) and "foreign key" in str(outcomes[2])
    assert isinstance(outcomes[3], LookupError)
    async with db.connection() as conn:
        history, _ = await messages.history(conn, cid, before_seq=None, limit=10)
        assert [m.content for m in history] == ["first", "kept"]
        assert (await messages.history(conn, other, before_seq=None, limit=10))[0] == []


async def test_retry_in_the_same_batch_is_a_duplicate(db: Database) -> None:
    sender, (cid,) = await make_conversations(db, 1)
    writer = MessageWriter(db, concurrency=1)
    # All three are submitted in one turn, so they reach the batcher together.
    earlier = asyncio.ensure_future(writer.insert(NewMessage(cid, sender, "user", "before")))
    one, two = await asyncio.gather(
        writer.insert(NewMessage(cid, sender, "user", "hello", client_id="same")),
        writer.insert(NewMessage(cid, sender, "user", "hello", client_id="same")),
    )
    await earlier
    assert one[0].id == two[0].id and one[0].seq == 2
    assert (one[1], two[1]) == (False, True)
    # The retry waited for a batch of its own instead of breaking the first batch's
    # statement on the unique index (which the one-by-one fallback would then hide).
    assert (writer.batcher.batches, writer.batcher.requests) == (2, 3)


async def test_mode_is_checked_per_message(db: Database) -> None:
    sender, (cid,) = await make_conversations(db, 1)
    writer = MessageWriter(db)
    with pytest.raises(messages.ModeChanged):
        await writer.insert(NewMessage(cid, None, "assistant", "answer", require_mode="ai"))
    message, _ = await writer.insert(NewMessage(cid, sender, "user", "still fine"))
    assert message.seq == 1
