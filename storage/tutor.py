"""SQL for the AI tutor: per-conversation advisory locks, the decision log, usage, streams,
and the queries that find student messages still waiting for an answer.

An answer is linked to the student message it replies to by `metadata.reply_to` on the
tutor's message, so "is this message answered?" is a lookup, whichever instance answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

# Seed for hashtextextended(): keeps tutor lock keys apart from other advisory-lock users.
_LOCK_SEED = 0x7475746F72  # "tutor"


# ---- advisory locks (session level, on a connection the caller keeps open) ---------------

async def try_lock_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> bool:
    """Take the conversation's tutor lock for this session, without waiting."""
    return await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtextextended($1::text, $2))", str(conversation_id), _LOCK_SEED
    )


async def unlock_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> bool:
    return await conn.fetchval(
        "SELECT pg_advisory_unlock(hashtextextended($1::text, $2))", str(conversation_id), _LOCK_SEED
    )


# ---- what needs an answer -----------------------------------------------------------

async def is_answered(conn: asyncpg.Connection, conversation_id: UUID, seq: int, message_id: UUID) -> bool:
    """Whether a later message in the conversation replies to this one (`metadata.reply_to`)."""
    return await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM messages
                          WHERE conversation_id = $1 AND seq > $2 AND metadata->>'reply_to' = $3)""",
        conversation_id, seq, str(message_id),
    )


async def unanswered(
    conn: asyncpg.Connection, *, min_age_seconds: float, max_age_seconds: float, limit: int = 100
) -> list[tuple[UUID, UUID, int]]:
    """(conversation_id, message_id, seq) of student messages left without an answer, oldest first.

    A tutor conversation in mode `ai` whose newest message is a student's qualifies; its
    trailing student messages (after the last message that is not the student's) are all
    returned, in seq order, so two questions left by a crash are both answered, in order.
    """
    rows = await conn.fetch(
        """WITH waiting AS (
               SELECT c.id FROM conversations c
               JOIN messages newest ON newest.conversation_id = c.id AND newest.seq = c.last_seq
               WHERE c.kind = 'tutor' AND c.mode = 'ai' AND c.status = 'open'
                 AND c.updated_at > now() - make_interval(secs => $2)
                 AND newest.role = 'user' AND NOT newest.deleted
                 AND newest.created_at <= now() - make_interval(secs => $1)
               ORDER BY c.updated_at LIMIT $3
           )
           SELECT w.id AS conversation_id, m.id AS message_id, m.seq FROM waiting w
           CROSS JOIN LATERAL (
               SELECT id, seq FROM messages
               WHERE conversation_id = w.id AND role = 'user' AND NOT deleted
                 AND seq > coalesce((SELECT max(seq) FROM messages
                                     WHERE conversation_id = w.id AND role <> 'user'), 0)
           ) m
           ORDER BY w.id, m.seq""",
        float(min_age_seconds), float(max_age_seconds), limit,
    )
    return [(r["conversation_id"], r["message_id"], r["seq"]) for r in rows]


# ---- streams in progress --------------------------------------------------------------

async def start_stream(
    conn: asyncpg.Connection, conversation_id: UUID, answer_id: UUID, instance_id: UUID, usage_id: int | None = None
) -> UUID | None:
    """Record the answer now streaming. A row left by an answer that was never committed
    (its instance crashed) is replaced: its answer id is returned, so members can be told
    to drop that partial text."""
    return await conn.fetchval(
        """WITH old AS (SELECT answer_id FROM tutor_streams WHERE conversation_id = $1 FOR UPDATE),
                saved AS (
                    INSERT INTO tutor_streams (conversation_id, answer_id, instance_id, usage_id)
                    VALUES ($1, $2, $3, $4)
                    ON CONFLICT (conversation_id) DO UPDATE
                    SET answer_id = $2, instance_id = $3, stop_requested = false, started_at = now(),
                        touched_at = now(), usage_id = $4
                    RETURNING 1)
           SELECT old.answer_id FROM old, saved
           WHERE old.answer_id <> $2 AND NOT EXISTS (SELECT 1 FROM messages WHERE id = old.answer_id)""",
        conversation_id, answer_id, instance_id, usage_id,
    )


async def touch_stream(
    conn: asyncpg.Connection, conversation_id: UUID, answer_id: UUID, *,
    usage_id: int | None = None, completion_tokens: int = 0, cost_usd: float = 0.0,
) -> None:
    """The streaming instance is alive; its usage row gets the tokens streamed so far."""
    await conn.execute(
        """WITH touched AS (UPDATE tutor_streams SET touched_at = now() WHERE conversation_id = $1 AND answer_id = $2)
           UPDATE llm_usage SET completion_tokens = $4, cost_usd = $5 WHERE id = $3""",
        conversation_id, answer_id, usage_id, completion_tokens, cost_usd,
    )


async def take_abandoned_streams(conn: asyncpg.Connection, stale_seconds: float) -> list[tuple[UUID, UUID, bool]]:
    """Remove and return streams whose instance stopped touching them for `stale_seconds`
    or is gone: (conversation_id, answer_id, committed). Several instances may sweep at
    once; each row goes to one of them."""
    rows = await conn.fetch(
        """DELETE FROM tutor_streams s
           WHERE s.touched_at < now() - make_interval(secs => $1)
              OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = s.instance_id)
           RETURNING s.conversation_id, s.answer_id,
                     EXISTS (SELECT 1 FROM messages m WHERE m.id = s.answer_id) AS committed""",
        float(stale_seconds),
    )
    return [(r["conversation_id"], r["answer_id"], r["committed"]) for r in rows]


async def end_stream(conn: asyncpg.Connection, conversation_id: UUID, answer_id: UUID) -> None:
    await conn.execute(
        "DELETE FROM tutor_streams WHERE conversation_id = $1 AND answer_id = $2", conversation_id, answer_id
    )


async def request_stop(conn: asyncpg.Connection, conversation_id: UUID) -> UUID | None:
    """Ask whichever instance streams in this conversation to stop; returns that instance."""
    return await conn.fetchval(
        "UPDATE tutor_streams SET stop_requested = true WHERE conversation_id = $1 RETURNING instance_id",
        conversation_id,
    )


async def stream_status(conn: asyncpg.Connection, conversation_id: UUID, answer_id: UUID) -> tuple[str | None, bool]:
    """(conversation mode, stop requested for this answer): the cheap poll while streaming."""
    row = await conn.fetchrow(
        """SELECT c.mode, coalesce(s.stop_requested, false) AS stop
           FROM conversations c
           LEFT JOIN tutor_streams s ON s.conversation_id = c.id AND s.answer_id = $2
           WHERE c.id = $1""",
        conversation_id, answer_id,
    )
    return (row["mode"], row["stop"]) if row else (None, False)


# ---- decision log -----------------------------------------------------------------------

_DECISION_COLUMNS = """id, conversation_id, message_id, answer_id, action, reason, confidence, category,
    urgent, outcome, model, prompt_tokens, completion_tokens, latency_ms, details, created_at"""


async def log_decision(
    conn: asyncpg.Connection,
    *,
    conversation_id: UUID,
    message_id: UUID | None,
    answer_id: UUID | None,
    action: str,
    reason: str,
    confidence: float,
    category: str | None,
    urgent: bool,
    outcome: str,
    model: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latency_ms: int = 0,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""INSERT INTO tutor_decisions (conversation_id, message_id, answer_id, action, reason, confidence,
                category, urgent, outcome, model, prompt_tokens, completion_tokens, latency_ms, details)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            RETURNING {_DECISION_COLUMNS}""",
        conversation_id, message_id, answer_id, action, reason, confidence, category, urgent, outcome,
        model, prompt_tokens, completion_tokens, latency_ms, details or {},
    )
    return dict(row)


async def decisions(conn: asyncpg.Connection, conversation_id: UUID, *, limit: int = 100) -> list[dict[str, Any]]:
    """A conversation's decisions, oldest first (the newest `limit`)."""
    rows = await conn.fetch(
        f"""SELECT * FROM (SELECT {_DECISION_COLUMNS} FROM tutor_decisions
                           WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2) d ORDER BY id""",
        conversation_id, limit,
    )
    return [dict(r) for r in rows]


# ---- usage ----------------------------------------------------------------------------

async def record_usage(
    conn: asyncpg.Connection,
    *,
    user_id: UUID | None,
    conversation_id: UUID,
    message_id: UUID | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float,
    estimated: bool,
    usage_id: int | None = None,
) -> int:
    """Insert a usage row, or (with `usage_id`) complete the one written when the call began."""
    if usage_id is not None:
        done = await conn.fetchval(
            """UPDATE llm_usage SET message_id = $2, model = $3, prompt_tokens = $4, completion_tokens = $5,
                                    cost_usd = $6, estimated = $7
               WHERE id = $1 RETURNING id""",
            usage_id, message_id, model, prompt_tokens, completion_tokens, cost_usd, estimated,
        )
        if done is not None:
            return done
    return await conn.fetchval(
        """INSERT INTO llm_usage (user_id, conversation_id, message_id, model, prompt_tokens,
                                  completion_tokens, cost_usd, estimated)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
        user_id, conversation_id, message_id, model, prompt_tokens, completion_tokens, cost_usd, estimated,
    )


async def delete_usage(conn: asyncpg.Connection, usage_id: int) -> None:
    """Drop a usage row written when a call began that turned out to cost nothing."""
    await conn.execute("DELETE FROM llm_usage WHERE id = $1", usage_id)


async def usage_for_user(conn: asyncpg.Connection, user_id: UUID, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per model: calls, tokens and cost for one user (since a time, or ever)."""
    rows = await conn.fetch(
        """SELECT model, count(*) AS calls, sum(prompt_tokens)::bigint AS prompt_tokens,
                  sum(completion_tokens)::bigint AS completion_tokens, sum(cost_usd)::float8 AS cost_usd
           FROM llm_usage WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
           GROUP BY model ORDER BY model""",
        user_id, since,
    )
    return [dict(r) for r in rows]
