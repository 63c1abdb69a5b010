"""Expiry of idle guest accounts, and pruning of old login failures.

Guests are made by anyone, without an email, and cannot sign in again once their token
is gone, so an idle guest is dead weight (and, when made by a script, a lot of it). A
guest whose last activity (`users.last_active_at`: token use, refreshed at most hourly)
is older than `guest_idle_days` is deleted with its tutor conversations, messages and
tokens. A guest with a ticket still open or assigned, or changed within the idle period,
is kept until the ticket has been quiet that long too: an agent may still be working on it.

Each batch is one transaction that locks its guests with SKIP LOCKED, so several
instances can sweep at once without waiting on or double-deleting each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from handlers.core import Core
from storage import guests, login_failures

log = logging.getLogger(__name__)

BATCH = 200


@dataclass(frozen=True)
class SweepResult:
    guests: int = 0
    conversations: int = 0
    room_messages: int = 0
    login_failures: int = 0


async def sweep(core: Core, *, now: datetime | None = None, batch: int = BATCH) -> SweepResult:
    """Delete every idle guest (in batches) and prune expired login failures."""
    s = core.settings.auth
    deleted_guests = conversations = room_messages = 0
    if s.guest_idle_days > 0:
        idle_before = (now or datetime.now(UTC)) - timedelta(days=s.guest_idle_days)
        while not core.closing:
            async with core.db.transaction() as conn:
                ids = await guests.lock_idle_batch(conn, idle_before, batch)
                if not ids:
                    break
                done = await guests.delete(conn, ids)
            deleted_guests += done.users
            conversations += done.conversations
            room_messages += done.room_messages
            if len(ids) < batch:
                break
    async with core.db.connection() as conn:
        pruned = await login_failures.prune(conn, max(s.lockout_minutes, 1))
    result = SweepResult(deleted_guests, conversations, room_messages, pruned)
    if deleted_guests or pruned:
        log.info("idle guests deleted", extra={"guests": deleted_guests, "conversations": conversations,
                                                "room_messages": room_messages, "login_failures": pruned})
    return result
