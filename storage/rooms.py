"""Live sessions, their participants, and favorites.

Capacity is enforced by the caller holding the session row lock (`lock_session`) while it
counts present participants and inserts: every seat-taking write goes through that lock,
so two instances can never both take the last seat. Leaving only frees seats and needs
no lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage.records import LiveSession, RoomAccess, RoomParticipant, SessionLock

_PRESENT_COUNT = """(SELECT count(*) FROM room_participants p
                     WHERE p.live_session_id = s.id AND p.left_at IS NULL AND p.user_id <> s.host_id)"""

SESSION_SELECT = f"""
SELECT s.id, s.title, s.host_id, s.status, s.type, s.scheduled_start_time, s.started_at, s.ended_at,
       s.max_participants, {_PRESENT_COUNT} AS current_participants, s.conversation_id, s.is_featured,
       s.created_at, u.name AS host_name, u.role AS host_role
FROM live_sessions s JOIN users u ON u.id = s.host_id
"""


# --- live sessions ------------------------------------------------------------------

async def insert_session(
    conn: asyncpg.Connection,
    *,
    session_id: UUID,
    title: str,
    host_id: UUID,
    type: str,
    scheduled_start_time: datetime | None,
    max_participants: int,
    is_featured: bool,
    conversation_id: UUID,
) -> UUID:
    return await conn.fetchval(
        """INSERT INTO live_sessions (id, title, host_id, type, scheduled_start_time, max_participants, is_featured, conversation_id)
           VALUES ($8, $1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        title, host_id, type, scheduled_start_time, max_participants, is_featured, conversation_id, session_id,
    )


async def get_session(conn: asyncpg.Connection, session_id: UUID) -> LiveSession | None:
    row = await conn.fetchrow(SESSION_SELECT + " WHERE s.id = $1", session_id)
    return LiveSession.from_row(row) if row else None


async def lock_session(conn: asyncpg.Connection, session_id: UUID) -> SessionLock | None:
    """Lock the session row for this transaction (serialises seat-taking across instances).

    Counts are read afterwards in their own statement: under READ COMMITTED a new
    statement sees everything committed by whoever held the lock before.
    """
    row = await conn.fetchrow(
        """SELECT id, status, host_id, max_participants, conversation_id FROM live_sessions
           WHERE id = $1 FOR UPDATE""",
        session_id,
    )
    return SessionLock.from_row(row) if row else None


async def list_sessions(
    conn: asyncpg.Connection, *, status: str | None, host_id: UUID | None, limit: int
) -> list[LiveSession]:
    """Featured first; live rooms by start, scheduled ones by their planned start, the rest newest first."""
    rows = await conn.fetch(
        SESSION_SELECT
        + """ WHERE ($1::text IS NULL OR s.status = $1) AND ($2::uuid IS NULL OR s.host_id = $2)
              ORDER BY s.is_featured DESC,
                       CASE s.status WHEN 'live' THEN 0 WHEN 'scheduled' THEN 1 ELSE 2 END,
                       CASE WHEN s.status = 'scheduled' THEN s.scheduled_start_time END ASC NULLS LAST,
                       coalesce(s.ended_at, s.started_at, s.created_at) DESC
              LIMIT $3""",
        status, host_id, limit,
    )
    return [LiveSession.from_row(r) for r in rows]


async def transition(conn: asyncpg.Connection, session_id: UUID, from_status: str, to_status: str) -> bool:
    """Move the status on only from `from_status`; False when the session is elsewhere."""
    result = await conn.execute(
        """UPDATE live_sessions SET status = $3,
               started_at = CASE WHEN $3 = 'live' THEN now() ELSE started_at END,
               ended_at = CASE WHEN $3 IN ('ended', 'cancelled') THEN now() ELSE ended_at END,
               host_away_since = NULL
           WHERE id = $1 AND status = $2""",
        session_id, from_status, to_status,
    )
    return result.endswith(" 1")


async def session_for_conversation(conn: asyncpg.Connection, conversation_id: UUID, user_id: UUID) -> RoomAccess | None:
    """What the room chat policy needs: the session's state and this user's place in it."""
    row = await conn.fetchrow(
        """SELECT s.id, s.status, s.host_id, p.user_id IS NOT NULL AND p.left_at IS NULL AS present,
                  coalesce(p.banned, false) AS banned, coalesce(p.muted, false) AS muted
           FROM live_sessions s
           LEFT JOIN room_participants p ON p.live_session_id = s.id AND p.user_id = $2
           WHERE s.conversation_id = $1""",
        conversation_id, user_id,
    )
    return RoomAccess.from_row(row) if row else None


# --- participants -------------------------------------------------------------------

async def count_present(conn: asyncpg.Connection, session_id: UUID, host_id: UUID) -> int:
    """Seats taken: present participants other than the host."""
    return await conn.fetchval(
        "SELECT count(*) FROM room_participants WHERE live_session_id = $1 AND left_at IS NULL AND user_id <> $2",
        session_id, host_id,
    )


async def get_participant(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> RoomParticipant | None:
    row = await conn.fetchrow(
        "SELECT * FROM room_participants WHERE live_session_id = $1 AND user_id = $2", session_id, user_id
    )
    return RoomParticipant.from_row(row) if row else None


async def enter(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> None:
    """Make the user present (new row, or a rejoin); keeps mute and ban."""
    await conn.execute(
        """INSERT INTO room_participants (live_session_id, user_id) VALUES ($1, $2)
           ON CONFLICT (live_session_id, user_id) DO UPDATE
           SET joined_at = now(), left_at = NULL, away_since = NULL, hand_raised = false, kicked_at = NULL""",
        session_id, user_id,
    )


async def mark_back(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> None:
    await conn.execute(
        "UPDATE room_participants SET away_since = NULL WHERE live_session_id = $1 AND user_id = $2",
        session_id, user_id,
    )


async def participants(conn: asyncpg.Connection, session_id: UUID) -> list[dict[str, Any]]:
    """Present participants as protocol users plus their room state, in join order."""
    rows = await conn.fetch(
        """SELECT u.id, u.name, u.role, p.muted, p.hand_raised, p.joined_at, p.user_id = s.host_id AS is_host
           FROM room_participants p JOIN users u ON u.id = p.user_id
                JOIN live_sessions s ON s.id = p.live_session_id
           WHERE p.live_session_id = $1 AND p.left_at IS NULL ORDER BY p.joined_at, u.id""",
        session_id,
    )
    return [dict(r) for r in rows]


async def participant_out(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> dict[str, Any] | None:
    """One participant (present or not) in the same shape as `participants`."""
    row = await conn.fetchrow(
        """SELECT u.id, u.name, u.role, coalesce(p.muted, false) AS muted,
                  coalesce(p.hand_raised, false) AS hand_raised, p.joined_at, u.id = s.host_id AS is_host
           FROM users u JOIN live_sessions s ON s.id = $1
                LEFT JOIN room_participants p ON p.live_session_id = s.id AND p.user_id = u.id
           WHERE u.id = $2""",
        session_id, user_id,
    )
    return dict(row) if row else None


async def leave(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> bool:
    """Free the user's place; False if they were not present."""
    result = await conn.execute(
        """UPDATE room_participants SET left_at = now(), hand_raised = false, away_since = NULL
           WHERE live_session_id = $1 AND user_id = $2 AND left_at IS NULL""",
        session_id, user_id,
    )
    return result.endswith(" 1")


async def leave_everyone(conn: asyncpg.Connection, session_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        """UPDATE room_participants SET left_at = now(), hand_raised = false, away_since = NULL
           WHERE live_session_id = $1 AND left_at IS NULL RETURNING user_id""",
        session_id,
    )
    return [r["user_id"] for r in rows]


async def set_flag(conn: asyncpg.Connection, session_id: UUID, user_id: UUID, flag: str, value: bool, *, present_only: bool) -> bool | None:
    """Set `muted` or `hand_raised` (in a transaction). Whether it changed; None when there is no such row."""
    if flag not in ("muted", "hand_raised"):
        raise ValueError(flag)
    presence = " AND left_at IS NULL" if present_only else ""
    before = await conn.fetchval(
        f"SELECT {flag} FROM room_participants WHERE live_session_id = $1 AND user_id = $2{presence} FOR UPDATE",
        session_id, user_id,
    )
    if before is None:
        return None
    if before == value:
        return False
    await conn.execute(
        f"UPDATE room_participants SET {flag} = $3 WHERE live_session_id = $1 AND user_id = $2", session_id, user_id, value
    )
    return True


async def kick(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> bool:
    result = await conn.execute(
        """UPDATE room_participants SET left_at = now(), kicked_at = now(), hand_raised = false, away_since = NULL
           WHERE live_session_id = $1 AND user_id = $2 AND left_at IS NULL""",
        session_id, user_id,
    )
    return result.endswith(" 1")


async def ban(conn: asyncpg.Connection, session_id: UUID, user_id: UUID) -> bool:
    """Ban (present or not, even never seen); returns whether the user was present."""
    was_present = await conn.fetchval(
        """SELECT left_at IS NULL FROM room_participants WHERE live_session_id = $1 AND user_id = $2 FOR UPDATE""",
        session_id, user_id,
    )
    await conn.execute(
        """INSERT INTO room_participants (live_session_id, user_id, left_at, banned) VALUES ($1, $2, now(), true)
           ON CONFLICT (live_session_id, user_id) DO UPDATE
           SET banned = true, hand_raised = false, away_since = NULL,
               left_at = coalesce(room_participants.left_at, now())""",
        session_id, user_id,
    )
    return bool(was_present)


# --- disconnects and grace periods --------------------------------------------------

async def mark_user_away(conn: asyncpg.Connection, user_id: UUID) -> tuple[int, int]:
    """The user's last socket closed: start the grace clocks. Returns (rooms present, live rooms hosted)."""
    rows = await conn.fetchval(
        """WITH p AS (UPDATE room_participants SET away_since = now()
                      WHERE user_id = $1 AND left_at IS NULL AND away_since IS NULL RETURNING 1),
                h AS (UPDATE live_sessions SET host_away_since = now()
                      WHERE host_id = $1 AND status = 'live' AND host_away_since IS NULL RETURNING 1)
           SELECT ARRAY[(SELECT count(*) FROM p), (SELECT count(*) FROM h)]""",
        user_id,
    )
    return int(rows[0]), int(rows[1])


async def mark_user_back(conn: asyncpg.Connection, user_id: UUID) -> list[UUID]:
    """A socket of the user connected: stop the clocks. Returns the chats of live rooms they are in."""
    await conn.execute(
        "UPDATE live_sessions SET host_away_since = NULL WHERE host_id = $1 AND status = 'live' AND host_away_since IS NOT NULL",
        user_id,
    )
    rows = await conn.fetch(
        """WITH back AS (UPDATE room_participants SET away_since = NULL
                         WHERE user_id = $1 AND left_at IS NULL AND away_since IS NOT NULL)
           SELECT s.conversation_id FROM room_participants p JOIN live_sessions s ON s.id = p.live_session_id
           WHERE p.user_id = $1 AND p.left_at IS NULL AND s.status = 'live'""",
        user_id,
    )
    return [r["conversation_id"] for r in rows]


async def clear_clocks_of_connected(conn: asyncpg.Connection) -> None:
    """Sweeper: stop the clocks of people who do have a socket somewhere."""
    await conn.execute(
        """UPDATE room_participants p SET away_since = NULL
           WHERE p.left_at IS NULL AND p.away_since IS NOT NULL
             AND EXISTS (SELECT 1 FROM connections c WHERE c.user_id = p.user_id)"""
    )
    await conn.execute(
        """UPDATE live_sessions s SET host_away_since = NULL
           WHERE s.status = 'live' AND s.host_away_since IS NOT NULL
             AND EXISTS (SELECT 1 FROM connections c WHERE c.user_id = s.host_id)"""
    )


async def mark_socketless_away(conn: asyncpg.Connection) -> None:
    """Sweeper: start the clocks of people with no socket anywhere (their instance died)."""
    await conn.execute(
        """UPDATE room_participants p SET away_since = now()
           WHERE p.left_at IS NULL AND p.away_since IS NULL
             AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.user_id = p.user_id)"""
    )
    await conn.execute(
        """UPDATE live_sessions s SET host_away_since = now()
           WHERE s.status = 'live' AND s.host_away_since IS NULL
             AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.user_id = s.host_id)"""
    )


async def expire_away(conn: asyncpg.Connection, grace_seconds: float, user_id: UUID | None = None) -> list[tuple[UUID, UUID]]:
    """Free the seats of people away longer than the grace and still without a socket.

    Returns (live_session_id, user_id) for each freed seat; the UPDATE makes each seat
    freed by exactly one instance, so only one announces it.
    """
    rows = await conn.fetch(
        """UPDATE room_participants p SET left_at = now(), hand_raised = false, away_since = NULL
           WHERE p.left_at IS NULL AND p.away_since <= now() - make_interval(secs => $1)
             AND ($2::uuid IS NULL OR p.user_id = $2)
             AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.user_id = p.user_id)
           RETURNING p.live_session_id, p.user_id""",
        grace_seconds, user_id,
    )
    return [(r["live_session_id"], r["user_id"]) for r in rows]


async def hosts_gone(conn: asyncpg.Connection, grace_seconds: float, host_id: UUID | None = None) -> list[UUID]:
    """Live sessions whose host has been without a socket for longer than the grace."""
    rows = await conn.fetch(
        """SELECT s.id FROM live_sessions s
           WHERE s.status = 'live' AND s.host_away_since <= now() - make_interval(secs => $1)
             AND ($2::uuid IS NULL OR s.host_id = $2)
             AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.user_id = s.host_id)""",
        grace_seconds, host_id,
    )
    return [r["id"] for r in rows]


# --- favorites ----------------------------------------------------------------------

async def upsert_favorite(conn: asyncpg.Connection, user_id: UUID, target_user_id: UUID, notify_when_online: bool) -> dict[str, Any]:
    row = await conn.fetchrow(
        """INSERT INTO favorites (user_id, target_user_id, notify_when_online) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, target_user_id) DO UPDATE SET notify_when_online = EXCLUDED.notify_when_online
           RETURNING user_id, target_user_id, notify_when_online, created_at""",
        user_id, target_user_id, notify_when_online,
    )
    return dict(row)


async def delete_favorite(conn: asyncpg.Connection, user_id: UUID, target_user_id: UUID) -> bool:
    result = await conn.execute("DELETE FROM favorites WHERE user_id = $1 AND target_user_id = $2", user_id, target_user_id)
    return result.endswith(" 1")


async def list_favorites(conn: asyncpg.Connection, user_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT f.target_user_id, f.notify_when_online, f.created_at, u.name, u.role
           FROM favorites f JOIN users u ON u.id = f.target_user_id
           WHERE f.user_id = $1 ORDER BY f.created_at""",
        user_id,
    )
    return [dict(r) for r in rows]


async def followers_to_notify(conn: asyncpg.Connection, target_user_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT user_id FROM favorites WHERE target_user_id = $1 AND notify_when_online", target_user_id
    )
    return [r["user_id"] for r in rows]
