"""Webhook endpoints and the outbox of deliveries (migration 0016, docs/webhooks.md).

The outbox rows are written by `enqueue` inside the transaction that makes the change;
messages write one row per batch instead (`MESSAGE_CREATED_CTE` in the batch's own
statement, migration 0020), which the claims expand into deliveries. The delivery loops
take deliveries with `claim` (a lease, FOR UPDATE SKIP LOCKED; it records the last pass's
successes and expands batches too) and settle them with `succeeded_many` / `retry_later` / `give_up`, each
only while their claim is still the row's (a claim retaken after its lease ran out is not
theirs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

ENDPOINT_COLUMNS = (
    "id, app_id, url, description, events, secret, enabled, disabled_reason, disabled_at, created_at, created_by"
)
DELIVERY_COLUMNS = (
    "id, endpoint_id, event_type, payload, created_at, status, attempts, next_attempt_at, claimed_by, "
    "last_attempt_at, last_status_code, last_error, last_latency_ms, delivered_at"
)
DELIVERIES_CHANNEL = "studyhall_webhook_deliveries"
# Held shared by every insert into the outbox until it commits, taken (try, never waited
# for) by a delivery loop announcing it sleeps: migration 0019, `fall_asleep`.
SLEEP_LOCK_ID = 0x5748_534C_4550  # "WHSLEP"
# A sleeping loop renews its announcement this often; one not renewed for STALE_SLEEPER is
# an instance that died asleep, whose row would make every insert NOTIFY for nothing.
SLEEPER_RENEW_SECONDS = 60.0
STALE_SLEEPER_SECONDS = 300.0
ENDPOINTS_CHANNEL = "studyhall_webhook_endpoints"


@dataclass(frozen=True)
class EndpointRecord:
    id: UUID
    app_id: UUID
    url: str
    description: str
    events: tuple[str, ...]
    secret: str
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    created_by: UUID | None

    @classmethod
    def from_row(cls, row: Any) -> EndpointRecord:
        return cls(
            id=row["id"], app_id=row["app_id"], url=row["url"], description=row["description"],
            events=tuple(row["events"]), secret=row["secret"], enabled=row["enabled"],
            disabled_reason=row["disabled_reason"], disabled_at=row["disabled_at"], created_at=row["created_at"],
            created_by=row["created_by"],
        )


@dataclass(frozen=True)
class Claimed:
    """A delivery this instance holds the lease of: what it needs to send it."""

    id: UUID
    claim: UUID
    endpoint_id: UUID
    url: str
    secret: str
    event_type: str
    data: bytes  # the payload as PostgreSQL wrote it (jsonb text): sent as is, never parsed
    created_at: datetime
    attempts: int  # including this one
    late_seconds: float  # how long it had been due when claimed: the outbox lag


# ---- endpoints -----------------------------------------------------------------------


async def insert_endpoint(
    conn: asyncpg.Connection, *, app_id: UUID, url: str, description: str, events: list[str], secret: str,
    created_by: UUID | None,
) -> EndpointRecord:
    row = await conn.fetchrow(
        f"""INSERT INTO webhook_endpoints (app_id, url, description, events, secret, created_by)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}""",
        app_id, url, description, events, secret, created_by,
    )
    assert row is not None
    return EndpointRecord.from_row(row)


async def get_endpoint(conn: asyncpg.Connection, endpoint_id: UUID) -> EndpointRecord | None:
    row = await conn.fetchrow(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return EndpointRecord.from_row(row) if row else None


async def list_endpoints(conn: asyncpg.Connection, app_id: UUID | None = None) -> list[EndpointRecord]:
    rows = await conn.fetch(
        f"""SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE $1::uuid IS NULL OR app_id = $1
            ORDER BY created_at, id""",
        app_id,
    )
    return [EndpointRecord.from_row(r) for r in rows]


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id: UUID) -> bool:
    status = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return status.endswith(" 1")


async def set_enabled(conn: asyncpg.Connection, endpoint_id: UUID, enabled: bool, reason: str | None = None) -> bool:
    """Enable (clearing the reason) or disable with a reason; False if there is no such endpoint."""
    status = await conn.execute(
        """UPDATE webhook_endpoints SET enabled = $2,
                  disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END,
                  disabled_at = CASE WHEN $2 THEN NULL ELSE now() END
           WHERE id = $1""",
        endpoint_id, enabled, reason,
    )
    return status.endswith(" 1")


async def subscribed_events(conn: asyncpg.Connection) -> set[str]:
    """Every event type some enabled endpoint subscribes to."""
    rows = await conn.fetch("SELECT DISTINCT unnest(events) AS e FROM webhook_endpoints WHERE enabled")
    return {r["e"] for r in rows}


# ---- the outbox ----------------------------------------------------------------------


async def enqueue(conn: asyncpg.Connection, event_type: str, payloads: list[dict[str, Any]]) -> None:
    """One delivery per payload per enabled endpoint subscribed to `event_type`; call in
    the transaction that makes the change."""
    await conn.execute(
        """INSERT INTO webhook_deliveries (endpoint_id, event_type, payload)
           SELECT e.id, $1, x.p FROM unnest($2::jsonb[]) WITH ORDINALITY AS x(p, i)
           CROSS JOIN webhook_endpoints e
           WHERE e.enabled AND $1 = ANY(e.events)
           ORDER BY x.i""",
        event_type, payloads,
    )


# `message.created` for a batch of messages: one more CTE of the batch's own statement
# (storage/messages.py `insert_batch(..., webhooks=True)`), so the messages and their
# outbox row are one statement and one commit, and roll back together. It reads the rows
# the statement inserts (`ins`) and the conversations it locked (`locked`: id, kind, title)
# and writes ONE row (migration 0020): the endpoints subscribed now, and a copy of the
# committed messages in seq order per conversation. The delivery loops expand it into one
# delivery per message per endpoint (`_CLAIM`, `_EXPAND`). The endpoints are picked here,
# so a stale subscription cache costs an empty INSERT.
MESSAGE_CREATED_CTE = """
hooks AS (
    INSERT INTO webhook_message_batches (endpoint_ids, messages)
    SELECT e.ids, m.rows
    FROM (SELECT array_agg(id ORDER BY id) AS ids FROM webhook_endpoints
          WHERE enabled AND 'message.created' = ANY(events)) e,
         (SELECT array_agg(ROW(i.id, i.conversation_id, i.seq, i.sender_id, i.role, i.content, i.client_id,
                               i.metadata, i.created_at, l.kind, l.title)::webhook_message
                           ORDER BY i.conversation_id, i.seq) AS rows
          FROM ins i JOIN locked l ON l.id = i.conversation_id) m
    WHERE e.ids IS NOT NULL AND m.rows IS NOT NULL
)"""

# A claim expands up to this many message batches into deliveries (their rows become
# claimable at the next pass); one while the pipeline is saturated, so the paced loop does
# not turn a backlog of batches into thousands of rows on the message path's cores.
EXPAND_BATCHES = 16

# Batches of messages (`MESSAGE_CREATED_CTE`) taken by one claim, oldest first, skipping
# those another instance is taking right now, and their deliveries: one per message per
# endpoint that still exists, due since the batch committed (so the outbox lag counts from
# the commit), with the payload documented in docs/webhooks.md.
_EXPAND = """
taken AS (
    DELETE FROM webhook_message_batches b
    WHERE b.id IN (SELECT id FROM webhook_message_batches ORDER BY id LIMIT $8 FOR UPDATE SKIP LOCKED)
    RETURNING b.id, b.endpoint_ids, b.messages, b.created_at
), expanded AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_type, payload, created_at, next_attempt_at)
    SELECT e.id, 'message.created', jsonb_build_object(
        'message', jsonb_build_object(
            'id', m.id, 'conversation_id', m.conversation_id, 'seq', m.seq, 'sender_id', m.sender_id,
            'role', m.role, 'content', m.content, 'client_id', m.client_id, 'metadata', m.metadata,
            'created_at', m.created_at),
        'conversation', jsonb_build_object('id', m.conversation_id, 'kind', m.kind, 'title', m.title)),
        t.created_at, t.created_at
    FROM taken t CROSS JOIN LATERAL unnest(t.messages) WITH ORDINALITY AS m
    JOIN webhook_endpoints e ON e.id = ANY(t.endpoint_ids)
    ORDER BY t.id, m.ordinality, e.id
    RETURNING 1
)"""


# One statement per pass of a delivery loop: record the deliveries that succeeded since
# the last pass (their claims must still be this loop's), expand up to $8 batches of
# messages into deliveries, then claim what is due, skipping rows another instance is
# claiming right now. One commit for all three. The rows it expands are not yet visible to
# its own claim (one snapshot per statement): it says how many it made (`expanded`, on a
# row of its own when nothing is claimed), and the loop claims again at once. It is also
# the only statement that records successes (`succeeded_many` runs it with limits of 0),
# so the success UPDATE exists once and is prepared once per connection.
_CLAIM = """
WITH done AS (
    UPDATE webhook_deliveries d SET status = 'succeeded', delivered_at = now(), claim = NULL,
           last_status_code = x.code, last_latency_ms = x.ms, last_error = NULL
    FROM unnest($4::uuid[], $5::uuid[], $6::int[], $7::real[]) AS x(id, claim, code, ms)
    WHERE d.id = x.id AND d.claim = x.claim
    RETURNING d.id
), """ + _EXPAND.strip() + """, due AS (
    SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
    JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.enabled
    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND d.id <> ALL($4::uuid[])
    ORDER BY d.next_attempt_at
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d
    SET next_attempt_at = now() + make_interval(secs => $2), claim = gen_random_uuid(), claimed_by = $3,
        attempts = d.attempts + 1, last_attempt_at = now()
    FROM due, webhook_endpoints e
    WHERE d.id = due.id AND e.id = d.endpoint_id
    RETURNING d.id, d.claim, d.endpoint_id, e.url, e.secret, d.event_type, d.payload::text AS data, d.created_at,
              d.attempts, greatest(0, extract(epoch FROM clock_timestamp() - due.next_attempt_at))::float8 AS late_seconds
)
SELECT c.*, x.expanded FROM (SELECT count(*) AS expanded FROM expanded) x LEFT JOIN claimed c ON true
"""

Succeeded = tuple[Claimed, int, float]  # the claim, the status code, the latency in ms


@dataclass(frozen=True)
class ClaimPass:
    """What one claim did: the deliveries it took, and how many it made from batches of
    messages (claimable from the next pass on)."""

    claimed: list[Claimed]
    expanded: int


async def claim(
    conn: asyncpg.Connection, *, limit: int, lease_seconds: float, instance_id: UUID | None,
    succeeded: list[Succeeded] | None = None, expand: int = EXPAND_BATCHES,
) -> ClaimPass:
    """Take up to `limit` due deliveries of enabled endpoints for `lease_seconds`. Rows
    another instance is claiming right now are skipped, not waited for; a row it has
    claimed is not due until its lease runs out. `succeeded`: record these first, in the
    same statement and commit. `expand`: turn up to that many batches of messages into
    deliveries too (none while `limit` is 0)."""
    done = succeeded or []
    rows = await conn.fetch(
        _CLAIM, limit, lease_seconds, instance_id,
        [c.id for c, _, _ in done], [c.claim for c, _, _ in done], [code for _, code, _ in done],
        [ms for _, _, ms in done], expand if limit > 0 else 0,
    )
    claimed = [
        Claimed(id=r["id"], claim=r["claim"], endpoint_id=r["endpoint_id"], url=r["url"], secret=r["secret"],
                event_type=r["event_type"], data=r["data"].encode(), created_at=r["created_at"],
                attempts=r["attempts"], late_seconds=r["late_seconds"])
        for r in rows if r["id"] is not None
    ]
    return ClaimPass(claimed, rows[0]["expanded"] if rows else 0)


async def succeeded_many(conn: asyncpg.Connection, done: list[Succeeded]) -> None:
    """Mark deliveries (claimed, status code, latency ms) succeeded in one statement and one
    commit: the claim statement, claiming nothing."""
    await claim(conn, limit=0, lease_seconds=0, instance_id=None, succeeded=done)


async def retry_later(
    conn: asyncpg.Connection, c: Claimed, *, delay_seconds: float, status_code: int | None, error: str,
    latency_ms: float | None,
) -> bool:
    done = await conn.execute(
        """UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $3), claim = NULL,
                  last_status_code = $4, last_error = $5, last_latency_ms = $6
           WHERE id = $1 AND claim = $2""",
        c.id, c.claim, delay_seconds, status_code, error, latency_ms,
    )
    return done.endswith(" 1")


async def give_up(
    conn: asyncpg.Connection, c: Claimed, *, status_code: int | None, error: str, latency_ms: float | None, reason: str
) -> bool:
    """The last attempt failed: the delivery fails and its endpoint is disabled with `reason`
    (call in a transaction)."""
    done = await conn.execute(
        """UPDATE webhook_deliveries SET status = 'failed', claim = NULL,
                  last_status_code = $3, last_error = $4, last_latency_ms = $5
           WHERE id = $1 AND claim = $2""",
        c.id, c.claim, status_code, error, latency_ms,
    )
    if not done.endswith(" 1"):
        return False
    await conn.execute(
        """UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, disabled_at = now()
           WHERE id = $1 AND enabled""",
        c.endpoint_id, reason,
    )
    return True


async def list_deliveries(
    conn: asyncpg.Connection, endpoint_id: UUID, *, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
            WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2)
            ORDER BY created_at DESC, id LIMIT $3""",
        endpoint_id, status, limit,
    )
    return [dict(r) for r in rows]


async def get_delivery(conn: asyncpg.Connection, delivery_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1", delivery_id)
    return dict(row) if row else None


async def redeliver(conn: asyncpg.Connection, delivery_id: UUID) -> dict[str, Any] | None:
    """Send a delivery again, under the same webhook-id, as soon as a loop is free; its
    attempt count starts over. None if there is no such delivery or it is being sent now."""
    row = await conn.fetchrow(
        f"""UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), claim = NULL
            WHERE id = $1 AND (status <> 'pending' OR claim IS NULL OR next_attempt_at < now())
            RETURNING {DELIVERY_COLUMNS}""",
        delivery_id,
    )
    if row is not None:
        await conn.execute(f"SELECT pg_notify('{DELIVERIES_CHANNEL}', '')")
    return dict(row) if row else None


# ---- waking the delivery loops (migration 0019) --------------------------------------


async def fall_asleep(conn: asyncpg.Connection, instance_id: UUID) -> bool:
    """Announce that this instance's delivery loop sleeps until a NOTIFY (or its poll), so
    that new deliveries ring again; False, with nothing written, if an insert into the
    outbox is in flight (its trigger holds SLEEP_LOCK_ID shared until it commits): the loop
    stays awake and tries later. After True the caller claims once more: every insert
    either saw this row (and notifies) or committed before this statement took the lock.
    Sleepers not renewed for STALE_SLEEPER_SECONDS (an instance that died asleep) go."""
    row = await conn.fetchval(
        """WITH stale AS (
               DELETE FROM webhook_sleepers WHERE since < now() - make_interval(secs => $3) AND instance_id <> $1
           )
           INSERT INTO webhook_sleepers (instance_id) SELECT $1 WHERE pg_try_advisory_xact_lock($2)
           ON CONFLICT (instance_id) DO UPDATE SET since = now()
           RETURNING true""",
        instance_id, SLEEP_LOCK_ID, STALE_SLEEPER_SECONDS,
    )
    return bool(row)


async def wake_up(conn: asyncpg.Connection, instance_id: UUID) -> None:
    """This instance's loop is busy again and polls: new deliveries need not ring for it."""
    await conn.execute("DELETE FROM webhook_sleepers WHERE instance_id = $1", instance_id)


async def listen(
    url: str, *, timeout: float, on_deliveries: Callable[..., None], on_endpoints: Callable[..., None],
    on_closed: Callable[..., None],
) -> asyncpg.Connection:
    """A connection of its own that LISTENs for new deliveries and changed endpoints (the
    triggers of migrations 0016 and 0019 NOTIFY them; new deliveries only while a loop sleeps); `on_closed` runs if it drops. The caller closes it."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        conn.add_termination_listener(on_closed)
        await conn.add_listener(DELIVERIES_CHANNEL, on_deliveries)
        await conn.add_listener(ENDPOINTS_CHANNEL, on_endpoints)
    except BaseException:
        await conn.close(timeout=1)
        raise
    return conn
