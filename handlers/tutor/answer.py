"""How the tutor handles one student message: decide, retrieve, stream, commit, log.

Runs inside the conversation's worker (handlers/tutor/service.py), which holds the conversation's
advisory lock, so one answer at a time per conversation across all instances. Nothing
here blocks a student's send: the pipeline hook only queues the message.

Every outcome commits exactly one tutor message whose `metadata.reply_to` is the student
message, which is what marks it answered (for crash recovery and for the other instances),
except a cut-off by a mode change: then a person has taken over and the AI says nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from handlers.core import Core
from handlers.errors import ApiError
from handlers.pipeline import commit_message
from handlers.tutor import texts as tutor_texts
from handlers.tutor.modelstatus import ModelFailureLog
from rag.decide import Decision, SentinelFilter, decide, model_cannot_help
from rag.llm import ChatModel, ModelUnavailable, StreamResult, count_message_tokens
from rag.offline import OfflineStream, stream_offline
from rag.prompts import SESSION_TYPES, Passage, build_messages, cited_passages, system_prompt
from rag.relevance import Judgement, Thresholds, judge
from rag.retrieval import KnowledgeBase, SearchResult
from rag.tokens import count_tokens
from storage import conversations, messages
from storage import tutor as store
from storage.records import Conversation, Message

log = logging.getLogger(__name__)

RETRIEVE_K = 5
HISTORY_SLACK = 20  # extra rows read, for later questions that are skipped
CANNOT_HELP = Decision("escalate", "model_cannot_help", 0.7, "model_cannot_help")


def numbered(cited: list[Passage], passages: list[Passage]) -> list[dict[str, object]]:
    """`metadata.citations`: each cited passage with `n`, the number the answer cites it by
    (`[n]` is passage n of the prompt), so clients link `[n]` to the right source even though
    the list is in order of first citation."""
    return [{**p.citation(), "n": passages.index(p) + 1} for p in cited]


@dataclass
class Job:
    """A student message waiting for the tutor."""

    conversation_id: UUID
    message_id: UUID
    seq: int
    enqueued_at: float = field(default_factory=time.perf_counter)
    recovered: bool = False


@dataclass
class LiveAnswer:
    """The message this instance is handling in a conversation; `stop()` cuts its stream."""

    conversation_id: UUID
    answer_id: UUID = field(default_factory=uuid.uuid4)
    task: asyncio.Task[Any] | None = None
    shown: list[str] = field(default_factory=list)
    cut: str | None = None  # "stopped" (tutor:stop) | "mode_changed" | "cancelled"
    stream_started: float | None = None
    first_raw: float | None = None
    first_delta: float | None = None

    def stop(self, reason: str) -> None:
        if self.cut is None:
            self.cut = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()

    @property
    def text(self) -> str:
        return "".join(self.shown)


class Answerer(Protocol):
    """What answering needs of the tutor service (handlers/tutor/service.py's TutorService
    satisfies it): a port, so this module does not import the service that imports it."""

    core: Core
    kb: KnowledgeBase
    model: ChatModel | None
    live: dict[UUID, LiveAnswer]
    poll_seconds: float
    model_failures: ModelFailureLog | None

    def relevance_thresholds(self, embedder_name: str) -> Thresholds: ...

    @property
    def model_name(self) -> str: ...


# ---- relevance ----------------------------------------------------------------------------

def passages_of(judgement: Judgement) -> list[Passage]:
    """The hits as prompt passages, in the search's order, `score` = calibrated confidence (0..1)."""
    return [
        Passage(str(j.hit.chunk_id), str(j.hit.document_id), j.hit.title, j.hit.content, j.confidence, j.hit.source)
        for j in judgement.judged
    ]


def prior_messages(recent: Sequence[Message], question_seq: int, limit: int) -> list[Message]:
    """What came before the question: earlier messages, plus tutor and staff messages
    committed after it (two quick questions: answering the second, the first one's answer
    has a higher seq than the second question but belongs before it). Later student
    questions are not history yet."""
    kept = [m for m in recent if m.seq < question_seq or (m.seq > question_seq and m.role != "user")]
    return kept[-limit:] if limit > 0 else []


def history_turns(history: Sequence[Message]) -> list[dict[str, str]]:
    """Earlier messages as chat turns; a staff member's words are marked as theirs."""
    turns = []
    for m in history:
        content = (m.content or "").strip()
        if m.deleted or not content:
            continue
        if m.role == "user":
            turns.append({"role": "user", "content": content})
        elif m.role == "assistant":
            turns.append({"role": "assistant", "content": content})
        elif m.role == "agent":
            turns.append({"role": "assistant", "content": f"(a staff member wrote) {content}"})
    return turns


def _ms(start: float | None, end: float | None) -> float | None:
    return round((end - start) * 1000, 2) if start is not None and end is not None else None


class Turn:
    """One student message being handled."""

    def __init__(self, svc: Answerer, job: Job, conv: Conversation, msg: Message, member_ids: list[UUID]) -> None:
        self.svc = svc
        self.core = svc.core
        self.job = job
        self.conv = conv
        self.msg = msg
        self.cid: UUID = conv.id
        self.member_ids = member_ids
        self.question: str = msg.content
        self.context: dict[str, Any] = conv.context or {}
        self.live = LiveAnswer(self.cid)
        self.decision = Decision("answer", "relevant_material", 0.0)
        self.relevance: Judgement | None = None  # the scores behind the decision, for its log
        # The usage row written when the model call began (updated as text streams, and
        # completed by `log`), so an instance that dies mid-answer leaves what it spent.
        self.usage_id: int | None = None
        self.usage_at_start: StreamResult | None = None
        self._touched_at = 0.0

    # ---- building blocks ------------------------------------------------------------
    async def commit(self, content: str, metadata: dict[str, Any]) -> Message | None:
        """Commit the tutor's message (under the streamed id), only while mode is still `ai`."""
        meta = {"reply_to": str(self.msg.id), "decision": self.decision.as_dict(), **metadata}
        try:
            message, _ = await commit_message(
                self.core, self.cid, sender=None, role="assistant", content=content, metadata=meta,
                message_id=self.live.answer_id, require_mode="ai",
            )
        except messages.ModeChanged:
            return None
        return message

    async def log(self, outcome: str, answer_id: UUID | None, *, usage: StreamResult | None = None,
                  details: dict[str, Any] | None = None) -> None:
        """The decision log row, and the user's usage when a model was called, together."""
        d = self.decision
        latency = round((time.perf_counter() - self.job.enqueued_at) * 1000)
        if self.relevance is not None:
            details = {**(details or {}), "relevance": self.relevance.log_details()}
        async with self.core.db.transaction() as conn:
            await store.log_decision(
                conn, conversation_id=self.cid, message_id=self.msg.id, answer_id=answer_id,
                action=d.action, reason=d.reason, confidence=d.confidence, category=d.category, urgent=d.urgent,
                outcome=outcome, model=usage.model if usage else "rules",
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                latency_ms=latency, details=details,
            )
            if usage is not None and usage.model != "offline-extractive":
                await store.record_usage(
                    conn, user_id=self.msg.sender_id, conversation_id=self.cid, message_id=answer_id,
                    model=usage.model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    cost_usd=usage.cost_usd, estimated=usage.usage_estimated, usage_id=self.usage_id,
                )
            elif self.usage_id is not None:  # the call began but nothing was streamed or billed
                await store.delete_usage(conn, self.usage_id)
            self.usage_id = None

    async def tell_cancelled(self) -> None:
        """Deltas were shown but no message will follow: clients drop the streamed text."""
        if self.live.shown:
            await self.core.events.to_users(self.member_ids, "message:cancelled", {
                "conversation_id": self.cid, "message_id": self.live.answer_id, "reason": self.live.cut or "mode_changed",
            })

    async def emit(self, text: str) -> None:
        if self.live.first_delta is None:
            self.live.first_delta = time.perf_counter()
        self.live.shown.append(text)
        await self.core.events.to_users(self.member_ids, "message:delta", {
            "conversation_id": self.cid, "message_id": self.live.answer_id, "delta": text,
            "reply_to": self.msg.id,
        })

    # ---- the three decisions ----------------------------------------------------------
    async def clarify(self) -> None:
        message = await self.commit(tutor_texts.clarify(self.question, self.context.get("lesson")), {"model": "rules"})
        await self.log("clarified" if message else "cut_off", message.id if message else None)

    async def escalate(self, usage: StreamResult | None = None) -> None:
        """Tell the student, then open the ticket (mode becomes `waiting` once it exists).

        The escalation limit is checked first, so the student is never told a person is
        coming when no ticket will open: over the limit, they hear no person can be reached
        now (the safety words are said either way) and the AI stays in charge."""
        d = self.decision
        tickets = self.core.tickets
        limited: ApiError | None = None
        if tickets is not None:
            try:
                await tickets.admit(self.core, conversation_id=self.cid, reason=d.reason, source="tutor",
                                    urgent=d.urgent, category=d.category)
            except ApiError as err:
                if err.code != "rate_limited":
                    raise
                limited = err
            except Exception:  # the check failed (database): try the escalation as before
                log.exception("escalation limit check failed", extra={"conversation_id": str(self.cid)})
        reachable = tickets is not None and limited is None
        content = tutor_texts.escalation(self.question, d.category, person_reachable=reachable)
        message = await self.commit(content, {"model": usage.model if usage else "rules",
                                              "escalation": {"category": d.category, "urgent": d.urgent,
                                                             **({"rate_limited": True} if limited else {})}})
        if message is None:  # a person took over meanwhile: nothing more to do
            await self.tell_cancelled()
            await self.log("cut_off", None, usage=usage)
            return
        ticket: dict[str, Any] | None = None
        if reachable and tickets is not None:  # reachable implies tickets; said again for mypy
            try:
                ticket = await tickets.escalate(
                    self.core, conversation_id=self.cid, reason=d.reason, escalated_by=None,
                    source="tutor", urgent=d.urgent, category=d.category, admitted=True,
                )
            except Exception:
                log.exception("escalation to a person failed", extra={"conversation_id": str(self.cid), "urgent": d.urgent})
        elif d.urgent:
            log.error("urgent escalation but no ticket could be opened",
                      extra={"conversation_id": str(self.cid), "rate_limited": limited is not None})
        await self.log("escalated", message.id, usage=usage,
                       details={"ticket_id": str(ticket["id"]) if ticket else None,
                                **({"rate_limited": True} if limited else {})})

    async def answer(self, passages: list[Passage], history: list[Message]) -> None:
        """Stream the answer as deltas, watching for tutor:stop and mode changes, then commit."""
        live = self.live
        try:
            stream, built_passages, prompt = await self._open_stream(passages, history)
        except Exception as exc:  # e.g. a prompt budget too small for the system prompt
            log.error("could not build the tutor prompt", exc_info=exc, extra={"conversation_id": str(self.cid)})
            await self._failed("internal error", [])
            return
        abandoned = False
        try:
            live.task = asyncio.create_task(self._consume(stream))
            if live.cut:
                live.task.cancel()
            # Written while the model request is in flight: only tutor:stop sent to another
            # instance needs the row; one sent in the millisecond before it exists is missed.
            # None for the offline tutor: nothing is spent.
            self.usage_at_start = start = self._estimate(prompt, "")
            async with self.core.db.transaction() as conn:
                if start is not None:
                    self.usage_id = await store.record_usage(
                        conn, user_id=self.msg.sender_id, conversation_id=self.cid, message_id=live.answer_id,
                        model=start.model, prompt_tokens=start.prompt_tokens, completion_tokens=0,
                        cost_usd=start.cost_usd, estimated=True,
                    )
                orphan = await store.start_stream(conn, self.cid, live.answer_id, self.core.instance_id, self.usage_id)
            self._touched_at = time.monotonic()
            if orphan is not None:  # an answer a crashed instance left half-streamed here
                await self.core.events.to_users(self.member_ids, "message:cancelled", {
                    "conversation_id": self.cid, "message_id": orphan, "reason": "interrupted",
                })
            await self._watch()
        except asyncio.CancelledError:
            # This instance is going away (shutdown): leave the stream's row, and the usage
            # so far, for the sweeper of whichever instance is left to tell the members.
            abandoned = True
            raise
        finally:
            if live.task is not None and not live.task.done():
                live.task.cancel()
            if not abandoned:
                async with self.core.db.connection() as conn:
                    await store.end_stream(conn, self.cid, live.answer_id)
        passages_shown = stream.passages if isinstance(stream, OfflineStream) else built_passages
        await self._finish(live.task, isinstance(stream, OfflineStream), passages_shown, prompt)

    async def _open_stream(self, passages: list[Passage], history: list[Message]) -> tuple[Any, list[Passage], list[dict[str, str]]]:
        """The model's stream (or the offline one), the passages in its prompt, and the prompt."""
        model = self.svc.model
        if model is None:
            # Sentences are picked with the model that scored the search (during a change of
            # model, the previous one), the configured one if none did.
            scored_by = await self.svc.kb.embedder_for(self.relevance.embedder) if self.relevance else None
            embedder = scored_by or self.svc.kb.embedder
            return await stream_offline(self.question, passages, embedder.embed), [], []
        session_type = self.context.get("session_type")
        built = build_messages(
            system_prompt(
                session_type if session_type in SESSION_TYPES else "interactive",
                socratic=bool(self.context.get("socratic")),
                course=self.context.get("course"), lesson=self.context.get("lesson"),
            ),
            history_turns(history), passages, self.question, self.core.settings.tutor.prompt_budget_tokens,
        )
        return model.stream(built.messages), built.passages, built.messages

    # ---- streaming internals ----------------------------------------------------------
    async def _consume(self, stream: Any) -> tuple[StreamResult, bool]:
        guard = SentinelFilter()
        self.live.stream_started = time.perf_counter()
        async with stream:
            async for delta in stream:
                if self.live.first_raw is None:
                    self.live.first_raw = time.perf_counter()
                if shown := guard.feed(delta):
                    await self.emit(shown)
            if tail := guard.flush():
                await self.emit(tail)
        return stream.result, guard.triggered

    async def _watch(self) -> None:
        """Wait for the stream, polling mode and stop requests (other instances) meanwhile."""
        task = self.live.task
        assert task is not None
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.svc.poll_seconds)
            if done:
                return
            try:
                async with self.core.db.connection() as conn:
                    mode, stop = await store.stream_status(conn, self.cid, self.live.answer_id)
            except Exception:
                log.warning("tutor stream poll failed", exc_info=True)
                continue
            if mode != "ai":
                self.live.stop("mode_changed")
            elif stop:
                self.live.stop("stopped")
            await self._touch()

    async def _touch(self) -> None:
        """Every quarter of the stale time: say this stream is alive, and record the tokens
        streamed so far in its usage row (what a crash would otherwise lose)."""
        every = max(self.svc.poll_seconds, self.core.settings.tutor.stream_stale_seconds / 4)
        if time.monotonic() - self._touched_at < every:
            return
        self._touched_at = time.monotonic()
        completion_tokens, cost_usd = 0, 0.0
        start, model = self.usage_at_start, self.svc.model
        if start is not None and model is not None:
            completion_tokens = count_tokens(self.live.text)
            cost_usd = start.cost_usd + completion_tokens * model.config.price(model.config.model)[1] / 1_000_000
        try:
            async with self.core.db.connection() as conn:
                await store.touch_stream(conn, self.cid, self.live.answer_id, usage_id=self.usage_id,
                                         completion_tokens=completion_tokens, cost_usd=cost_usd)
        except Exception:
            log.warning("tutor stream touch failed", exc_info=True)

    def _estimate(self, prompt: list[dict[str, str]], text: str) -> StreamResult | None:
        """Usage of a stream that did not finish (stopped or broken): counted locally."""
        model = self.svc.model
        if model is None:
            return None
        prompt_tokens = count_message_tokens(prompt) if prompt else 0
        completion_tokens = count_tokens(text)
        price_in, price_out = model.config.price(model.config.model)
        return StreamResult(
            text=text, model=model.config.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            usage_estimated=True, latency_ms=_ms(self.live.stream_started, time.perf_counter()) or 0,  # type: ignore[arg-type]  # float ms, JSON only
            first_token_ms=None, cost_usd=(prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000,
        )

    def _timings(self) -> dict[str, float | None]:
        """Where the time went: `first_delta_ms - model_first_token_ms` is the tutor's own."""
        live, start = self.live, self.job.enqueued_at
        return {
            "prepare_ms": _ms(start, live.stream_started),
            "model_first_token_ms": _ms(live.stream_started, live.first_raw),
            "first_delta_ms": _ms(start, live.first_delta),
        }

    def _usage_meta(self, usage: StreamResult | None) -> dict[str, Any]:
        if usage is None:
            return {}
        return {
            "model": usage.model, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cost_usd": usage.cost_usd, "usage_estimated": usage.usage_estimated, "model_latency_ms": usage.latency_ms,
        }

    async def _finish(self, task: asyncio.Task[Any] | None, offline: bool, passages: list[Passage],
                      prompt: list[dict[str, str]]) -> None:
        assert task is not None
        if task.cancelled():
            await self._stopped(prompt, passages)
            return
        error = task.exception()
        failures = self.svc.model_failures
        if error is not None:
            if not isinstance(error, ModelUnavailable):
                log.error("tutor answer failed", exc_info=error, extra={"conversation_id": str(self.cid)})
            elif failures is not None:
                failures.failed(error)
            await self._failed(error.reason if isinstance(error, ModelUnavailable) else "internal error", prompt)
            return
        result, sentinel = task.result()
        if failures is not None and not offline:
            failures.succeeded()
        if sentinel or model_cannot_help(result.text):
            self.decision = CANNOT_HELP
            await self.escalate(usage=result)
            return
        cited = passages if offline else cited_passages(result.text, passages)
        message = await self.commit(result.text.strip() or tutor_texts.text("unavailable", self.question), {
            **self._base_meta(), **self._usage_meta(result), "citations": numbered(cited, passages),
        })
        if message is None:
            await self.tell_cancelled()
            await self.log("cut_off", None, usage=result, details={"reason": "mode_changed"})
            return
        await self.log("answered", message.id, usage=result)

    def _base_meta(self) -> dict[str, Any]:
        return {"latency_ms": round((time.perf_counter() - self.job.enqueued_at) * 1000), "timings": self._timings()}

    async def _stopped(self, prompt: list[dict[str, str]], passages: list[Passage]) -> None:
        """tutor:stop keeps what was shown, marked stopped; a mode change keeps nothing."""
        live = self.live
        usage = self._estimate(prompt, live.text)
        if live.cut == "stopped":
            cited = cited_passages(live.text, passages)
            message = await self.commit(
                live.text if live.text.strip() else tutor_texts.text("stopped", self.question),
                {**self._base_meta(), **self._usage_meta(usage), "model": self.svc.model_name,
                 "citations": numbered(cited, passages), "stopped": True},
            )
            if message is not None:
                await self.log("stopped", message.id, usage=usage)
                return
        await self.tell_cancelled()
        await self.log("cut_off", None, usage=usage, details={"reason": live.cut})

    async def _failed(self, reason: str, prompt: list[dict[str, str]]) -> None:
        """The model is unavailable (after its bounded retries): say so clearly, keep any partial."""
        live = self.live
        usage = self._estimate(prompt, live.text) if live.text else None
        content = (f"{live.text.rstrip()}\n\n{tutor_texts.text('interrupted', self.question)}" if live.text.strip()
                   else tutor_texts.text("unavailable", self.question))
        message = await self.commit(content, {
            **self._base_meta(), **self._usage_meta(usage), "model": self.svc.model_name, "citations": [],
            "error": reason,
        })
        if message is None:
            await self.tell_cancelled()
        await self.log("failed" if message else "cut_off", message.id if message else None,
                       usage=usage, details={"error": reason})


async def handle(svc: Answerer, job: Job) -> None:
    """Answer one student message, unless it is answered already or the AI is not in charge."""
    core = svc.core
    async with core.db.connection() as conn:
        conv = await conversations.get(conn, job.conversation_id)
        msg = await messages.get(conn, job.message_id)
        if (conv is None or conv.kind != "tutor" or conv.mode != "ai" or conv.status != "open"
                or msg is None or msg.deleted or msg.role != "user" or msg.conversation_id != conv.id):
            return
        if await store.is_answered(conn, conv.id, msg.seq, msg.id):
            return
    context = conv.context or {}

    async def retrieve() -> tuple[list[SearchResult], str]:
        """The hits, each scored by the model whose vectors search used: during a change of
        embedding model (`studyhall reindex`) that is still the previous one, and its
        similarities need that model's thresholds, not the configured one's."""
        kb = svc.kb
        try:
            found = await kb.search_scored(msg.content, k=RETRIEVE_K, course=context.get("course"))
            return found.hits, found.model or kb.embedder.name
        except Exception:
            log.warning("retrieval failed; answering without course material", exc_info=True)
            return [], kb.embedder.name

    async def load() -> tuple[list[Message], list[dict[str, Any]], list[UUID]]:
        limit = core.settings.tutor.history_messages
        async with core.db.connection() as conn:
            recent = await messages.recent(conn, conv.id, limit + HISTORY_SLACK)
            previous = await store.decisions(conn, conv.id, limit=1)
            member_ids = await conversations.member_ids(conn, conv.id)
        return prior_messages(recent, msg.seq, limit), previous, member_ids

    # Retrieval is most of the time before the model call: overlap it with the reads.
    (hits, scored_by), (history, previous, member_ids) = await asyncio.gather(retrieve(), load())
    turn = Turn(svc, job, conv, msg, member_ids)
    svc.live[conv.id] = turn.live
    try:
        turn.relevance = judge(turn.question, hits, scored_by, svc.relevance_thresholds(scored_by))
        passages = passages_of(turn.relevance)
        turn.decision = decide(turn.question, previous, passages)
        if turn.decision.action == "escalate":
            await turn.escalate()
        elif turn.decision.action == "clarify":
            await turn.clarify()
        else:
            await turn.answer(passages, history)
    finally:
        if svc.live.get(conv.id) is turn.live:
            del svc.live[conv.id]
