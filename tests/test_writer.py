"""Group commit (handlers/writer.py) against the real database: concurrent messages share
batches, and every caller still gets exactly its own committed message, in seq order per
conversation; a bad message fails alone; a retried client_id is a duplicate even inside
one batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Hashable

import pytest

from handlers.writer import Delivery, MessageWriter
from storage import conversations, messages, users
from storage.db import Database
from storage.messages import NewMessage


def each(deliver: Callable[[messages.Message], Awaitable[None]], audience: Hashable = "everyone") -> Delivery:
    """A Delivery that hands a run's messages to `deliver` one by one, in order."""

    async def send(run: list[messages.Message]) -> None:
        for m in run:
            await deliver(m)

    return Delivery(audience, send)


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
        for i in range(10):  # one conversation's messages one after another, each awaited before the next
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


async def make_group(db: Database, members: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with db.transaction() as conn:
        ids = [(await users.insert_user(conn, email=f"g-{uuid.uuid4().hex[:8]}@example.com", name=f"G{i}",
                                        password_hash="x", role="student")).id for i in range(members)]
        conv = await conversations.insert_conversation(conn, kind="group", title="busy", created_by=ids[0])
        await conversations.add_members(conn, conv.id, ids)
    return conv.id, ids


async def test_one_conversation_commits_in_batches_in_acceptance_order(db: Database) -> None:
    """Many senders in one conversation, sending without waiting for their answers: what
    arrives while a batch commits goes in the next one; seq order is the order the writer
    accepted them; each message's `then` (the fan-out) runs in seq order, a batch's only
    after the previous batch's, and before its sender is answered."""
    cid, members = await make_group(db, 10)
    writer = MessageWriter(db)
    delivered: list[int] = []

    async def deliver(message: messages.Message) -> None:
        await asyncio.sleep(0.002)  # a fan-out that waits must still not be overtaken
        delivered.append(message.seq)

    async def send(content: str, sender: uuid.UUID) -> tuple[int, bool]:
        message, duplicate = await writer.insert(NewMessage(cid, sender, "user", content, client_id=content), then=each(deliver))
        assert not duplicate and message.content == content
        return message.seq, message.seq in delivered

    accepted: list[str] = []
    sends = []
    for wave in range(20):
        for sender in members:
            accepted.append(f"{wave}-{sender}")
            sends.append(asyncio.ensure_future(send(accepted[-1], sender)))  # started in this order
        await asyncio.sleep(0.003)  # the next wave arrives while earlier batches commit
    outcomes = await asyncio.gather(*sends)
    assert [seq for seq, _ in outcomes] == list(range(1, 201)), "seq order is acceptance order"
    assert all(answered_after for _, answered_after in outcomes), "answered only after its own fan-out"
    assert delivered == list(range(1, 201)), "fanned out once each, in seq order"
    async with db.connection() as conn:
        history, _ = await messages.history(conn, cid, before_seq=None, limit=500)
    assert [m.content for m in history] == accepted
    # One conversation, yet far fewer commits than messages (the pipeline's old lock made
    # it one commit per message).
    assert writer.batcher.requests == 200 and writer.batcher.batches <= 100, writer.batcher.batches


async def test_an_idle_conversation_commits_at_once(db: Database) -> None:
    """No timer: a lone message is committed in a batch of its own straight away."""
    cid, (sender, *_) = await make_group(db, 2)
    writer = MessageWriter(db)
    loop = asyncio.get_running_loop()
    started = loop.time()
    message, _ = await writer.insert(NewMessage(cid, sender, "user", "alone"))
    assert message.seq == 1 and (writer.batcher.batches, writer.batcher.requests) == (1, 1)
    assert loop.time() - started < 2.0


async def test_a_bad_message_in_a_conversations_batch_fails_alone(db: Database) -> None:
    """One message the database refuses (its sender does not exist) inside one
    conversation's batch: it fails alone, is fanned out to nobody, and the others keep
    consecutive seqs in acceptance order."""
    cid, (sender, *_) = await make_group(db, 2)
    writer = MessageWriter(db)
    delivered: list[str] = []

    async def deliver(message: messages.Message) -> None:
        delivered.append(message.content)

    first = asyncio.ensure_future(writer.insert(NewMessage(cid, sender, "user", "first"), then=each(deliver)))
    await asyncio.sleep(0)  # `first` is in flight; the next five wait and share a batch
    rest = [NewMessage(cid, sender, "user", "a"), NewMessage(cid, sender, "user", "b"),
            NewMessage(cid, uuid.uuid4(), "user", "nobody's"),
            NewMessage(cid, sender, "user", "c"), NewMessage(cid, sender, "user", "d")]
    outcomes = await asyncio.gather(first, *(writer.insert(m, then=each(deliver)) for m in rest), return_exceptions=True)
    assert isinstance(outcomes[3], Exception) and "foreign key" in str(outcomes[3])
    kept = [o for i, o in enumerate(outcomes) if i != 3]
    assert [(m.content, m.seq) for m, _ in kept] == [("first", 1), ("a", 2), ("b", 3), ("c", 4), ("d", 5)]
    assert delivered == ["first", "a", "b", "c", "d"]
    async with db.connection() as conn:
        history, _ = await messages.history(conn, cid, before_seq=None, limit=10)
        assert [m.content for m in history] == ["first", "a", "b", "c", "d"]
        assert (await conversations.get_with_membership(conn, cid, sender)).last_seq == 5


async def test_a_retry_inside_one_conversations_batch_is_a_duplicate_and_overtakes_nothing(db: Database) -> None:
    """A retried client_id queued with other messages of its conversation: it waits for the
    next batch (so it finds the first one committed) and so do the messages queued after it,
    so seq order stays acceptance order and the retry is delivered to nobody."""
    cid, (alice, bob, *_) = await make_group(db, 3)
    writer = MessageWriter(db)
    delivered: list[str] = []

    async def deliver(message: messages.Message) -> None:
        delivered.append(message.content)

    first = asyncio.ensure_future(writer.insert(NewMessage(cid, alice, "user", "hello", client_id="x"), then=each(deliver)))
    await asyncio.sleep(0)
    queued = [
        NewMessage(cid, bob, "user", "bob 1", client_id="b1"),
        NewMessage(cid, alice, "user", "hello (retry)", client_id="x"),
        NewMessage(cid, bob, "user", "bob 2", client_id="b2"),
    ]
    (m1, d1), (b1, _), (retry, dup), (b2, _) = await asyncio.gather(
        first, *(writer.insert(m, then=each(deliver)) for m in queued))
    assert (d1, dup) == (False, True) and retry.id == m1.id and retry.content == "hello"
    assert [m1.seq, b1.seq, b2.seq] == [1, 2, 3]
    assert delivered == ["hello", "bob 1", "bob 2"], "the retry is delivered to nobody again"


async def test_a_batch_is_delivered_in_runs_per_audience_in_seq_order(db: Database) -> None:
    """A batch's messages of one conversation go out in one call per run of equal
    audiences, cut where the audience changes (a member joined between two sends), so a
    socket in both audiences still gets them in seq order; another conversation's
    messages in the same batch never join its runs."""
    cid, (sender, *_) = await make_group(db, 2)
    other, (sender2, *_) = await make_group(db, 2)
    writer = MessageWriter(db, concurrency=1)  # one batch at a time: the queued seven share the second
    calls: list[tuple[str, list[int]]] = []

    def to(audience: str) -> Delivery:
        async def send(run: list[messages.Message]) -> None:
            calls.append((audience, [m.seq if m.conversation_id == cid else -m.seq for m in run]))
        return Delivery(audience, send)

    first = asyncio.ensure_future(writer.insert(NewMessage(cid, sender, "user", "first"), then=to("A")))
    await asyncio.sleep(0)  # `first` is in flight; the rest share the next batch
    queued = [(cid, sender, "A"), (cid, sender, "A"), (other, sender2, "A"), (cid, sender, "B"),
              (other, sender2, "A"), (cid, sender, "A"), (cid, sender, "A")]
    done = await asyncio.gather(first, *(writer.insert(NewMessage(c, s, "user", "m"), then=to(a)) for c, s, a in queued))
    assert [m.seq for m, _ in done] == [1, 2, 3, 1, 4, 2, 5, 6]
    assert writer.batcher.batches == 2
    assert calls == [("A", [1]), ("A", [2, 3]), ("A", [-1, -2]), ("B", [4]), ("A", [5, 6])]
