"""AI tutor conversations: start, stop, escalate, usage, and the service that answers.

A student's message reaches the tutor through the pipeline's after-commit hook, which only
queues it: the send is acknowledged at once. Each conversation has one worker on this
instance that answers its queued messages in seq order; before each answer the worker
takes the conversation's PostgreSQL advisory lock, so two instances never answer the same
conversation at once. The locks live on one dedicated connection per instance: if the
instance dies, PostgreSQL drops them, and the recovery pass (at startup and every few
seconds) answers student messages that were left without a reply.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from handlers import threads
from handlers.background import repeat
from handlers.core import Actor, Core, Tutoring
from handlers.errors import ApiError
from handlers.pipeline import load_conversation
from handlers.tutor.answer import Job, LiveAnswer, handle
from handlers.tutor.modelstatus import ModelFailureLog, describe_mode, endpoint_host
from handlers.webhooks import outbox as webhooks
from rag.decide import safety_concern
from rag.llm import ChatModel
from rag.offline import MODEL_NAME as OFFLINE_MODEL
from rag.relevance import Thresholds, thresholds_for
from rag.retrieval import KnowledgeBase
from storage import conversations, messages
from storage import tutor as store
from storage.records import ConversationMembership, Message, Role

log = logging.getLogger(__name__)

SESSION_TYPES = ("lesson", "interactive", "exam_prep")


class ConversationLocks:
    """Per-conversation advisory locks, all held on one dedicated connection.

    One connection, not one per answer: an answer may stream for a minute, and holding a
    pooled connection that long per conversation would starve the pool. Session locks
    are released by PostgreSQL when the connection ends, which is what crash safety needs.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None
        self._mutex = asyncio.Lock()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._url)
        return self._conn

    async def try_acquire(self, conversation_id: UUID) -> bool:
        async with self._mutex:
            try:
                return await store.try_lock_conversation(await self._connection(), conversation_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("tutor lock connection failed", exc_info=True)
                await self._drop()
                return False

    async def acquire(self, conversation_id: UUID, timeout: float, every: float = 0.1) -> bool:
        """Wait (polling) while another instance answers in this conversation."""
        deadline = time.monotonic() + timeout
        while not await self.try_acquire(conversation_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(every)
        return True

    async def release(self, conversation_id: UUID) -> None:
        async with self._mutex:
            if self._conn is None or self._conn.is_closed():
                return  # the connection went away, and its locks with it
            try:
                await store.unlock_conversation(self._conn, conversation_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("tutor unlock failed", exc_info=True)
                await self._drop()

    async def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        async with self._mutex:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close()
            self._conn = None


class TutorService:
    """`core.tutor` (the `Tutoring` port): queues student messages and answers them, one at
    a time per conversation. `cancel(conversation_id)` cuts off an answer streaming here
    (the tickets feature calls it when a person takes over). Its loops (`recovery_loop`,
    `sweep_loop`) and `close` are started and run by server/assembly.py."""

    poll_seconds = 0.25  # how often a streaming answer re-reads the mode and stop requests
    lock_wait_seconds = 120.0
    recovery_every_seconds = 15.0
    recovery_min_age_seconds = 5.0
    recovery_max_age_seconds = 24 * 3600.0

    def __init__(self, core: Core, kb: KnowledgeBase, model: ChatModel | None) -> None:
        self.core = core
        self.kb = kb
        self.model = model
        self.locks = ConversationLocks(core.db.url)
        self.queues: dict[UUID, deque[Job]] = {}
        self.live: dict[UUID, LiveAnswer] = {}
        self._workers: set[asyncio.Task[Any]] = set()
        settings = core.settings.tutor
        # Thresholds follow the model that scored each search (its similarities differ by
        # family), not only the configured one: see relevance_thresholds.
        self._relevance_overrides = {"hashing": settings.relevance_hashing, "neural": settings.relevance_neural}
        self.model_failures: ModelFailureLog | None = None
        if model is not None:
            self.model_failures = ModelFailureLog(endpoint_host(model.config.base_url), model.config.model,
                                                  interval=settings.model_failure_log_seconds)
        # Built once per instance at start: the operator learns here which tutor answers.
        log.info("%s", describe_mode(model, kb.embedder.name),
                 extra={"tutor_model": model.config.model if model else OFFLINE_MODEL,
                        "endpoint": endpoint_host(model.config.base_url) if model else None})

    def relevance_thresholds(self, embedder_name: str) -> Thresholds:
        """The relevance thresholds for the model that scored a search: its family's measured
        defaults or the operator's override (rag/relevance.py, docs/tutor.md)."""
        return thresholds_for(embedder_name, self._relevance_overrides)

    @property
    def model_name(self) -> str:
        return self.model.config.model if self.model is not None else OFFLINE_MODEL

    # ---- queueing -------------------------------------------------------------------
    def enqueue(self, conversation_id: UUID, message_id: UUID, seq: int, *, recovered: bool = False) -> None:
        """Queue a student message; the conversation's worker answers in seq order."""
        queue = self.queues.get(conversation_id)
        if queue is not None and any(job.message_id == message_id for job in queue):
            return
        job = Job(conversation_id, message_id, seq, recovered=recovered)
        if queue is None:
            queue = self.queues[conversation_id] = deque([job])
            task = self.core.spawn(self._work(conversation_id, queue), name=f"tutor:{conversation_id}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
            return
        # After-commit hooks of two quick sends may run out of order: keep the queue by seq
        # (the head is being answered and stays where it is).
        pending = list(queue)[1:]
        at = bisect.bisect([j.seq for j in pending], seq)
        queue.insert(at + 1, job)

    async def _work(self, conversation_id: UUID, queue: deque[Job]) -> None:
        try:
            while queue:
                job = queue[0]
                try:
                    await self._handle(job)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("tutor failed on a message", extra={"conversation_id": str(conversation_id)})
                queue.popleft()
        finally:
            if self.queues.get(conversation_id) is queue:
                del self.queues[conversation_id]

    async def _handle(self, job: Job) -> None:
        cid = job.conversation_id
        if job.recovered:
            acquired = await self.locks.try_acquire(cid)
        else:
            acquired = await self.locks.acquire(cid, self.lock_wait_seconds)
        if not acquired:
            log.info("conversation busy on another instance", extra={"conversation_id": str(cid)})
            return  # the recovery pass picks the message up if it stays unanswered
        try:
            await handle(self, job)
        finally:
            await self.locks.release(cid)

    # ---- cutting answers off ---------------------------------------------------------
    async def cancel(self, conversation_id: UUID) -> bool:
        """Cut off the answer streaming here in this conversation; nothing more is committed.
        Returns whether there was one."""
        live = self.live.get(conversation_id)
        if live is None:
            return False
        live.stop("cancelled")
        return True

    def stop_local(self, conversation_id: UUID) -> bool:
        """tutor:stop for an answer streaming on this instance: keep the partial, marked."""
        live = self.live.get(conversation_id)
        if live is None:
            return False
        live.stop("stopped")
        return True

    # ---- crash recovery --------------------------------------------------------------
    async def recover(self, min_age_seconds: float) -> int:
        """Queue student messages left unanswered (by a crash, or a busy instance)."""
        async with self.core.db.connection() as conn:
            found = await store.unanswered(
                conn, min_age_seconds=min_age_seconds, max_age_seconds=self.recovery_max_age_seconds
            )
        for conversation_id, message_id, seq in found:
            self.enqueue(conversation_id, message_id, seq, recovered=True)
        return len(found)

    async def recovery_loop(self) -> None:
        """At startup anything unanswered; then, periodically, what has waited a while."""
        min_age = 0.0

        async def one_pass() -> None:
            nonlocal min_age
            age, min_age = min_age, self.recovery_min_age_seconds
            if count := await self.recover(age):
                log.info("tutor recovering unanswered messages", extra={"messages": count})

        await repeat(one_pass, every=self.recovery_every_seconds, what="tutor recovery pass", first_delay=0)

    # ---- answers abandoned by a crash ----------------------------------------------------
    async def sweep_abandoned(self) -> int:
        """Tell the members of conversations whose answer stopped streaming because its
        instance died (its row untouched for the stale time, or its instance gone) to drop
        the partial text: `message:cancelled` with reason `interrupted`. The question stays
        unanswered, so the recovery pass answers it again under a new id."""
        async with self.core.db.connection() as conn:
            taken = await store.take_abandoned_streams(conn, self.core.settings.tutor.stream_stale_seconds)
            notices = [(cid, answer_id, await conversations.member_ids(conn, cid))
                       for cid, answer_id, committed in taken if not committed]
        for cid, answer_id, member_ids in notices:
            log.warning("tutor answer abandoned by its instance", extra={"conversation_id": str(cid)})
            await self.core.events.to_users(member_ids, "message:cancelled", {
                "conversation_id": cid, "message_id": answer_id, "reason": "interrupted",
            })
        return len(notices)

    async def sweep_loop(self) -> None:
        await repeat(self.sweep_abandoned, every=self.core.settings.tutor.stream_sweep_seconds,
                     what="tutor sweep of abandoned answers", first_delay=0)

    async def close(self) -> None:
        for task in list(self._workers):
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        await self.locks.close()
        if self.model is not None:
            await self.model.aclose()


def service_of(core: Core) -> Tutoring:
    if core.tutor is None:
        raise ApiError("unavailable", "The tutor is not available on this server.")
    return core.tutor


async def check_question(
    core: Core, conv: ConversationMembership, sender: Actor, role: str, client_id: str | None
) -> None:
    """Pipeline check before commit: a question the AI will answer counts against the
    sender's question limit; refused, it is neither stored nor answered. A resend of a
    question already stored (same client_id) is let through: the pipeline returns the
    first message and nothing new is answered."""
    if conv.kind != "tutor" or role != "user" or conv.mode != "ai" or conv.status != "open":
        return
    gate = core.tutor_limits
    if gate is None:
        return
    try:
        await gate.question(sender.user_id, sender.role)
    except ApiError:
        if client_id:
            async with core.db.connection() as conn:
                if await messages.exists_for_client_id(conn, conv.id, sender.user_id, client_id):
                    return
        raise


async def on_message_committed(core: Core, conv: ConversationMembership, message: Message) -> None:
    """Pipeline hook: a student's message in an AI-answered tutor conversation is queued."""
    if conv.kind != "tutor" or message.role != "user" or conv.mode != "ai":
        return
    service = core.tutor
    if service is not None:
        service.enqueue(conv.id, message.id, message.seq)


# ---- client events ------------------------------------------------------------------

async def start(
    core: Core,
    actor: Actor,
    *,
    title: str | None,
    course: str | None,
    lesson: str | None,
    session_type: str | None,
    socratic: bool | None,
) -> dict[str, Any]:
    """Open a tutor conversation (mode `ai`) with the student as its member."""
    if session_type is not None and session_type not in SESSION_TYPES:
        raise ApiError("bad_request", f"session_type must be one of {', '.join(SESSION_TYPES)}.")
    context = {"course": course, "lesson": lesson, "session_type": session_type or "interactive", "socratic": bool(socratic)}
    if (gate := core.tutor_limits) is not None:
        await gate.session(actor.user_id, actor.role)
    title = title or (f"Tutor: {lesson or course}" if (lesson or course) else "Tutor")
    async with core.db.transaction() as conn:
        conv = await conversations.insert_conversation(
            conn, kind="tutor", title=title, created_by=actor.user_id, mode="ai", context=context
        )
        assert conv is not None
        await conversations.add_members(conn, conv.id, [actor.user_id])
        await webhooks.emit(core, conn, "conversation.created", webhooks.conversation_data(conv, [actor.user_id]))
    out = await threads.describe(core, conv.id, actor.user_id)
    await core.events.to_users([actor.user_id], "conversation:new", {"conversation": out})
    return {"conversation": out}


async def _tutor_conversation(core: Core, actor: Actor, conversation_id: UUID) -> ConversationMembership:
    async with core.db.connection() as conn:
        conv = await load_conversation(core, conn, conversation_id, actor)
    if conv.kind != "tutor":
        raise ApiError("bad_request", "This is not a tutor conversation.")
    return conv


async def stop(core: Core, actor: Actor, *, conversation_id: UUID) -> dict[str, Any]:
    """Stop the answer being streamed, on whichever instance streams it."""
    await _tutor_conversation(core, actor, conversation_id)
    if not service_of(core).stop_local(conversation_id):
        async with core.db.connection() as conn:
            await store.request_stop(conn, conversation_id)
    return {}


async def escalate(core: Core, actor: Actor, *, conversation_id: UUID, reason: str | None) -> dict[str, Any]:
    """The student (or staff) asks for a person: a ticket through the tickets feature."""
    conv = await _tutor_conversation(core, actor, conversation_id)
    tickets = core.tickets
    if tickets is None:
        raise ApiError("unavailable", "Handing over to a person is not available on this server.")
    urgent = bool(reason) and safety_concern(reason or "")
    category = "safety" if urgent else "human_request"
    # escalate() sets the mode to waiting and cuts off any answer being streamed.
    ticket = await tickets.escalate(
        core, conversation_id=conversation_id, reason=reason or "requested by the student", escalated_by=actor,
        source="agent" if actor.is_staff else "student", urgent=urgent, category=category,
    )
    async with core.db.connection() as conn:
        await store.log_decision(
            conn, conversation_id=conv.id, message_id=None, answer_id=None, action="escalate",
            reason="requested_by_staff" if actor.is_staff else "requested_by_student", confidence=1.0,
            category=category, urgent=urgent, outcome="escalated", model="rules",
            details={"ticket_id": str(ticket["id"]) if ticket and ticket.get("id") else None, "by": str(actor.user_id)},
        )
    return {"ticket": ticket}


async def usage(core: Core, actor: Actor, *, user_id: UUID | None, since: datetime | None) -> dict[str, Any]:
    """Model usage of one user: your own, or anyone's for an admin."""
    target = user_id or actor.user_id
    if target != actor.user_id and actor.role != Role.ADMIN:
        raise ApiError("forbidden", "Only admins may see other users' usage.")
    async with core.db.connection() as conn:
        by_model = await store.usage_for_user(conn, target, since=since)
    return {
        "usage": {
            "user_id": target,
            "since": since,
            "calls": sum(r["calls"] for r in by_model),
            "prompt_tokens": sum(r["prompt_tokens"] for r in by_model),
            "completion_tokens": sum(r["completion_tokens"] for r in by_model),
            "cost_usd": round(sum(r["cost_usd"] for r in by_model), 6),
            "by_model": by_model,
        }
    }


async def decisions(core: Core, actor: Actor, *, conversation_id: UUID) -> dict[str, Any]:
    """The tutor's decision log for a conversation (staff, or its members)."""
    if not actor.is_staff:
        await _tutor_conversation(core, actor, conversation_id)
    async with core.db.connection() as conn:
        return {"decisions": await store.decisions(conn, conversation_id)}
