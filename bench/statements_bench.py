"""What the message pipeline's statements cost PostgreSQL, and whether they are re-planned.

    .venv/bin/python bench/statements_bench.py [--seconds 5] [--senders 100] [--rows 0]
        [--plan-cache both|auto|generic] [--kind group|room]

Starts its own embedded PostgreSQL with `pg_stat_statements` (planning tracked), migrates
it, and drives the pipeline's two statements in this process, without sockets: each of
`--senders` senders in one group conversation looks its conversation up
(`ConversationLoader`, `conversations.get_many_with_membership`) and commits a message
(`MessageWriter`, `messages.insert_batch`), again and again. It prints per statement:
calls, how many of them were planned, mean planning and execution time, and the
statement time per message; and the plan cache of the writer's connections
(`pg_prepared_statements`: custom and generic plans).

`--plan-cache auto` runs the pipeline on a pool with PostgreSQL's default
`plan_cache_mode`; `generic` on the pipeline's own connections as the server opens them
(storage/db.py `Database.connection(pipeline=True)`); `both` runs one after the other.

`--kind room`: the conversation is a live room's and the senders are its present
participants; each send skips the look-up and carries the room's guard, checked in the
insert statement (`RoomSendGuard`), as handlers/pipeline.py sends to a known room.

`--rows N` first fills the messages table with N rows over 10,000 conversations (and
ANALYZEs it), then prints EXPLAIN ANALYZE of the insert batch's custom and generic plans
at that size: what the generic plan costs at 10M messages (`--rows 10000000`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.writer import ConversationLoader, MessageWriter  # noqa: E402
from storage import messages  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from storage.messages import NewMessage, RoomSendGuard  # noqa: E402
from storage.migrate import migrate  # noqa: E402


async def enable_pg_stat_statements(pg: EmbeddedPostgres) -> str:
    url = pg.url()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
    finally:
        await conn.close()
    await asyncio.to_thread(pg.stop)
    url = await asyncio.to_thread(pg.start)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()
    return url


async def make_group(conn: asyncpg.Connection, members: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    users = [r["id"] for r in await conn.fetch(
        """INSERT INTO users (email, name, role, password_hash)
           SELECT 'b' || i || '-' || gen_random_uuid() || '@example.com', 'B' || i, 'student', 'x'
           FROM generate_series(1, $1) i RETURNING id""", members)]
    cid = await conn.fetchval("INSERT INTO conversations (kind, title, created_by) VALUES ('group', 'bench', $1) RETURNING id",
                              users[0])
    await conn.execute("""INSERT INTO conversation_members (conversation_id, user_id)
                          SELECT $1, unnest($2::uuid[])""", cid, users)
    return cid, users


async def make_room(conn: asyncpg.Connection, members: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A live session's room conversation with `members` present participants (and a host)."""
    host, users = await make_group(conn, members)
    await conn.execute("UPDATE conversations SET kind = 'room' WHERE id = $1", host)
    cid = host
    session = await conn.fetchval(
        """INSERT INTO live_sessions (title, host_id, status, max_participants, conversation_id, started_at)
           VALUES ('bench', $2, 'live', 10000, $1, now()) RETURNING id""", cid, users[0])
    await conn.execute("DELETE FROM conversation_members WHERE conversation_id = $1", cid)
    await conn.execute("""INSERT INTO room_participants (live_session_id, user_id)
                          SELECT $1, unnest($2::uuid[])""", session, users[1:])
    return cid, users


async def fill_messages(conn: asyncpg.Connection, rows: int) -> None:
    """`rows` messages over 10,000 two-member conversations, then ANALYZE."""
    if rows <= 0:
        return
    started = time.monotonic()
    cid, users = await make_group(conn, 2)
    await conn.execute(
        """INSERT INTO conversations (kind, title, created_by)
           SELECT 'group', 'filler', $1 FROM generate_series(1, 10000)""", users[0])
    convs = [r["id"] for r in await conn.fetch("SELECT id FROM conversations WHERE title = 'filler'")]
    per = rows // len(convs)
    await conn.execute("ALTER TABLE messages SET (autovacuum_enabled = false)")
    await conn.execute(
        """INSERT INTO messages (conversation_id, seq, sender_id, role, content, client_id)
           SELECT c, s, $2, 'user', 'filler message ' || s, 'f' || s
           FROM unnest($1::uuid[]) c, generate_series(1, $3) s""", convs, users[0], per)
    await conn.execute("UPDATE conversations SET last_seq = $2 WHERE id = ANY($1::uuid[])", convs, per)
    await conn.execute("ALTER TABLE messages RESET (autovacuum_enabled)")
    await conn.execute("VACUUM ANALYZE messages")
    await conn.execute("VACUUM ANALYZE conversations")
    print(f"filled messages with {per * len(convs):,} rows in {time.monotonic() - started:.0f} s", flush=True)


async def drive(db: Database, cid: uuid.UUID, users: list[uuid.UUID], seconds: float, *, room: bool = False) -> int:
    writer = MessageWriter(db)
    loader = ConversationLoader(db)
    deadline = time.monotonic() + seconds
    sent = 0
    guard = RoomSendGuard(moderator=False) if room else None

    async def sender(user: uuid.UUID) -> None:
        nonlocal sent
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if not room:
                conv = await loader.load(cid, user)
                assert conv is not None and conv.is_member
            await writer.insert(NewMessage(conversation_id=cid, sender_id=user, role="user",
                                           content="benchmark message", client_id=f"{user}-{n}", guard=guard))
            sent += 1
    await asyncio.gather(*(sender(u) for u in users))
    return sent


async def report(url: str, db: Database, sent: int, seconds: float, label: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """SELECT calls, plans, total_plan_time, total_exec_time, mean_plan_time, mean_exec_time,
                      left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS q
               FROM pg_stat_statements
               WHERE query ~ 'FROM unnest|WITH req' AND query !~ 'pg_stat_statements'
               ORDER BY total_plan_time + total_exec_time DESC LIMIT 4""")
    finally:
        await conn.close()
    print(f"\n{label}: {sent:,} messages in {seconds:.0f} s ({sent / seconds:,.0f}/s, in this process)")
    print("| statement | calls | planned | mean plan ms | mean exec ms | plan + exec µs per message |")
    print("|---|---|---|---|---|---|")
    plan_total = exec_total = 0.0
    for r in rows:
        kind = "insert batch" if "WITH req" in r["q"] else "conversation look-up"
        plan_total += r["total_plan_time"]
        exec_total += r["total_exec_time"]
        print(f"| {kind} | {r['calls']:,} | {r['plans']:,} | {r['mean_plan_time']:.3f} | {r['mean_exec_time']:.3f} "
              f"| {1000 * (r['total_plan_time'] + r['total_exec_time']) / max(sent, 1):.0f} |")
    print(f"per message: planning {1000 * plan_total / max(sent, 1):.0f} µs, execution {1000 * exec_total / max(sent, 1):.0f} µs")
    async with db.connection(pipeline=True) as c:
        plans = await c.fetch("SELECT generic_plans, custom_plans, left(regexp_replace(statement, '\\s+', ' ', 'g'), 40) AS s "
                              "FROM pg_prepared_statements WHERE statement ~ 'WITH req|FROM unnest'")
        mode = await c.fetchval("SHOW plan_cache_mode")
    for p in plans:
        print(f"  one pipeline connection (plan_cache_mode {mode}): {p['s']!r}: "
              f"{p['custom_plans']} custom plans, {p['generic_plans']} generic")


async def explain_at_size(url: str, rows: int) -> None:
    """EXPLAIN ANALYZE of a one-message batch into a big conversation, custom then generic
    plan, each rolled back."""
    conn = await asyncpg.connect(url)
    try:
        cid = await conn.fetchval("SELECT id FROM conversations WHERE title = 'filler' LIMIT 1")
        sender = await conn.fetchval("SELECT sender_id FROM messages WHERE conversation_id = $1 LIMIT 1", cid)
        await conn.execute("PREPARE ins(uuid[], uuid[], text[], text[], text[], jsonb[], uuid[], text[], boolean[], boolean[]) AS "
                           + messages.statement(webhooks=False))
        # EXECUTE takes no bind parameters: the one message's arrays as literals.
        arguments = (f"ARRAY['{cid}']::uuid[], ARRAY['{sender}']::uuid[], ARRAY['user'], ARRAY['x'], "
                     "ARRAY['explained'], ARRAY['{}']::jsonb[], ARRAY[NULL]::uuid[], ARRAY[NULL]::text[], "
                     "ARRAY[NULL]::boolean[], ARRAY[NULL]::boolean[]")
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            tx = conn.transaction()
            await tx.start()
            try:
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) EXECUTE ins({arguments})")
            finally:
                await tx.rollback()
            print(f"\nEXPLAIN ANALYZE, one message into a conversation of {rows // 10000:,} among {rows:,} messages, {mode}:")
            for line in plan:
                print("    " + line[0])
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--plan-cache", choices=["both", "auto", "generic"], default="both")
    parser.add_argument("--kind", choices=["group", "room"], default="group",
                        help="room: guarded sends without the look-up (a live room's, issue 16)")
    args = parser.parse_args()
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port())
    os.chmod(pg.data_dir, 0o755)
    await asyncio.to_thread(pg.start)
    try:
        url = await enable_pg_stat_statements(pg)
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            await fill_messages(conn, args.rows)
        finally:
            await conn.close()
        modes = ["auto", "generic"] if args.plan_cache == "both" else [args.plan_cache]
        for mode in modes:
            conn = await asyncpg.connect(url)
            try:
                cid, users = await (make_room if args.kind == "room" else make_group)(conn, args.senders)
                await conn.execute("SELECT pg_stat_statements_reset()")
            finally:
                await conn.close()
            db = await Database.connect(url, pipeline_plan_cache_mode=None if mode == "auto" else "force_generic_plan")
            try:
                sent = await drive(db, cid, users[1:] if args.kind == "room" else users, args.seconds,
                                   room=args.kind == "room")
                label = "auto (the default)" if mode == "auto" else "force_generic_plan on the pipeline connections"
                await report(url, db, sent, args.seconds, f"plan_cache_mode {label}")
            finally:
                await db.close()
        if args.rows > 0:
            await explain_at_size(url, args.rows)
    finally:
        await asyncio.to_thread(pg.destroy)


if __name__ == "__main__":
    asyncio.run(main())
