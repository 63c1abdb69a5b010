"""Accounts and sign-in: register, login with lockout, guests, tokens, roles.

The public sign-in routes are limited per client address (handlers/signin_limits.py).

Passwords are hashed with argon2 (argon2-cffi's recommended parameters). Tokens are 32
random bytes; only their SHA-256 is stored, so a database leak does not leak sessions,
and a lookup is one indexed equality (argon2 would make every socket connect cost ~50 ms).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from handlers import disconnects, signin_limits
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.settings import AuthSettings
from handlers.webhooks import outbox as webhooks
from storage import audit, connections, login_failures, users
from storage.records import Role

ROLES = tuple(Role)
# How stale `users.last_active_at` may get: refreshing it at most this often keeps token
# checks read-only (one write per user per hour), and is precise enough for expiring guests.
ACTIVITY_RESOLUTION = timedelta(hours=1)
_hasher = PasswordHasher()
# Verified when the email is unknown, so that a wrong email costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("studyhall-timing-equaliser")


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow (~50 ms): keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def _issue_token(core: Core, conn: Any, user_id: UUID, role: str) -> str:
    s = core.settings.auth
    hours = s.guest_token_ttl_hours if role == "guest" else s.token_ttl_hours
    token = secrets.token_urlsafe(32)
    await users.insert_token(conn, user_id, hash_token(token), datetime.now(UTC) + timedelta(hours=hours))
    return token


async def register(core: Core, *, email: str, password: str, name: str, ip: str | None) -> dict[str, Any]:
    if not core.settings.auth.allow_registration:
        raise ApiError("forbidden", "Public sign-up is turned off on this server; ask an administrator for an account.")
    await signin_limits.check(core, "register", ip)
    password_hash = await hash_password(password)
    async with core.db.transaction() as conn:
        row = await users.insert_user(conn, email=email, name=name, role=Role.STUDENT, password_hash=password_hash)
        if row is None:
            raise ApiError("conflict", "An account with this email already exists.")
        token = await _issue_token(core, conn, row.id, row.role)
        await audit.record(conn, "user.register", actor_id=row.id, target_type="user", target_id=row.id, ip=ip)
        await webhooks.emit(core, conn, "user.created", webhooks.user_data(row, "register"))
    return {"user": row.public(), "token": token}


async def create_user(core: Core, *, email: str, password: str, name: str, role: str) -> dict[str, Any]:
    """Make an account from the command line (the first admin, staff)."""
    if role not in ROLES:
        raise ApiError("bad_request", f"role must be one of {', '.join(ROLES)}")
    password_hash = await hash_password(password)
    async with core.db.transaction() as conn:
        row = await users.insert_user(conn, email=email, name=name, role=role, password_hash=password_hash)
        if row is None:
            raise ApiError("conflict", "An account with this email already exists.")
        await audit.record(conn, "user.create", target_type="user", target_id=row.id, details={"role": role, "via": "cli"})
        await webhooks.emit(core, conn, "user.created", webhooks.user_data(row, "cli"))
    return row.public()


WRONG_CREDENTIALS = "Wrong email or password."


async def login(core: Core, *, email: str, password: str, ip: str | None) -> dict[str, Any]:
    """Sign in, telling nobody which emails have accounts.

    Every attempt verifies a password (a dummy hash for an unknown email), and a locked
    account answers exactly as a wrong password does, so status, message and time are
    the same for an unknown email, a wrong password and a lock. Lockout is keyed on
    (account, client address): `lockout_attempts` failures from one address within
    `lockout_minutes` lock that address out of that account, while the real user signing
    in from elsewhere is unaffected; `lockout_account_attempts` failures from all
    addresses together lock the account everywhere (a distributed attack, slowed). Failures
    are committed before the error is raised, so the audit log sees every attempt.
    """
    s = core.settings.auth
    await signin_limits.check(core, "login", ip)
    address = ip or "unknown"
    async with core.db.transaction() as conn:
        row = await users.get_user_by_email(conn, email)
        failures = await _count_attempt(s, conn, row.id, address) if row else None
    password_ok = await _verify_password(row.password_hash if row else None, password)
    if row is None or failures is None:
        async with core.db.transaction() as conn:
            await audit.record(conn, "login.failed", target_type="user", ip=ip, details={"email": email.lower()})
        raise ApiError("unauthorized", WRONG_CREDENTIALS)

    if _locked(s, failures):
        async with core.db.transaction() as conn:
            await audit.record(
                conn, "login.locked", actor_id=row.id, target_type="user", target_id=row.id, ip=ip,
                details={"from_address": failures.from_address, "total": failures.total},
            )
        raise ApiError("unauthorized", WRONG_CREDENTIALS)

    if not password_ok:  # the failure was counted up front by _count_attempt
        async with core.db.transaction() as conn:
            after = login_failures.FailureCounts(failures.from_address + 1, failures.total + 1)
            await audit.record(
                conn, "login.failed", actor_id=row.id, target_type="user", target_id=row.id, ip=ip,
                details={"email": email.lower(), "locked": _locked(s, after)},
            )
        raise ApiError("unauthorized", WRONG_CREDENTIALS)

    async with core.db.transaction() as conn:
        await login_failures.clear(conn, row.id, address)  # this attempt's row too
        token = await _issue_token(core, conn, row.id, row.role)
        await audit.record(conn, "login.success", actor_id=row.id, target_type="user", target_id=row.id, ip=ip)
    return {"user": row.public(), "token": token}


async def _count_attempt(
    settings: AuthSettings, conn: Any, user_id: UUID, address: str
) -> login_failures.FailureCounts:
    """The failures before this attempt; unless locked, this attempt is counted as a failure
    now, before the password is checked (a success clears it), under a per-account lock.
    Counting after the check would let parallel guesses all read the same count: 100 at
    once would all be tried. The lock is held for a count and an insert, not for argon2."""
    await login_failures.lock_account(conn, user_id)
    failures = await login_failures.counts(conn, user_id, address, settings.lockout_minutes)
    if not _locked(settings, failures):
        await login_failures.record(conn, user_id, address)
    return failures


def _locked(settings: AuthSettings, failures: login_failures.FailureCounts) -> bool:
    """Locked out: too many failures from this address, or from everywhere (0 turns one off)."""
    per_address, per_account = settings.lockout_attempts, settings.lockout_account_attempts
    return (0 < per_address <= failures.from_address) or (0 < per_account <= failures.total)


async def guest(core: Core, *, name: str | None, ip: str | None) -> dict[str, Any]:
    if not core.settings.auth.allow_guests:
        raise ApiError("forbidden", "Guest access is turned off on this server; sign in or create an account.")
    await signin_limits.check(core, "guest", ip)
    async with core.db.transaction() as conn:
        row = await users.insert_user(conn, email=None, name=name or "Guest", role=Role.GUEST, password_hash=None)
        assert row is not None
        token = await _issue_token(core, conn, row.id, Role.GUEST)
        await audit.record(conn, "login.guest", actor_id=row.id, target_type="user", target_id=row.id, ip=ip)
        await webhooks.emit(core, conn, "user.created", webhooks.user_data(row, "guest"))
    return {"user": row.public(), "token": token}


async def authenticate(core: Core, token: str | None, sid: str | None = None) -> Actor:
    """The actor behind a token; `unauthorized` for a missing, unknown, expired or revoked one."""
    if not token or not isinstance(token, str) or len(token) > 200:
        raise ApiError("unauthorized", "A valid token is required.")
    async with core.db.connection() as conn:
        row = await users.find_token_user(conn, hash_token(token))
    if row is None:
        raise ApiError("unauthorized", "This token is unknown, expired or revoked.")
    if row.last_active_at < datetime.now(UTC) - ACTIVITY_RESOLUTION:
        async with core.db.connection() as conn:
            await users.touch_active(conn, row.id)
    return Actor(
        user_id=row.id, role=row.role, name=row.name, token_id=row.token_id, sid=sid,
        token_expires_at=row.expires_at,
    )


async def refresh_socket(core: Core, actor: Actor, token: str) -> Actor:
    """The actor a connected socket becomes with a fresh session `token` of the same user
    and role (`auth:refresh`, docs/protocol.md): it then lives as long as that session, with
    no reconnect. Another user's token is `forbidden`; a changed role is `conflict` (the
    client reconnects: staff rooms are joined at connect)."""
    fresh = await authenticate(core, token, sid=actor.sid)
    if fresh.user_id != actor.user_id:
        raise ApiError("forbidden", "This token belongs to another user; reconnect to switch users.")
    if fresh.role != actor.role:
        raise ApiError("conflict", "This token carries another role; reconnect with it.")
    if actor.sid is not None:
        async with core.db.connection() as conn:
            await connections.set_token(conn, actor.sid, fresh.token_id)
    return fresh


async def logout(core: Core, actor: Actor, *, ip: str | None) -> None:
    """Revoke the token and drop its open sockets on every instance."""
    async with core.db.transaction() as conn:
        await users.revoke_token(conn, actor.token_id)
        await audit.record(conn, "logout", actor_id=actor.user_id, target_type="user", target_id=actor.user_id, ip=ip)
        closing = await disconnects.of_tokens(conn, [actor.token_id])
    await disconnects.close(core, closing)


async def me(core: Core, actor: Actor) -> dict[str, Any]:
    async with core.db.connection() as conn:
        row = await users.get_user(conn, actor.user_id)
    if row is None:
        raise ApiError("unauthorized", "This account no longer exists.")
    return {"user": row.public()}


async def set_role(core: Core, actor: Actor, user_id: UUID, role: str, *, ip: str | None) -> dict[str, Any]:
    if actor.role != Role.ADMIN:
        raise ApiError("forbidden", "Only an admin can change roles.")
    if role not in ROLES:
        raise ApiError("bad_request", f"role must be one of {', '.join(ROLES)}")
    async with core.db.transaction() as conn:
        before = await users.get_user(conn, user_id)
        if before is None:
            raise ApiError("not_found", "No such user.")
        row = await users.set_role(conn, user_id, role)
        assert row is not None
        await audit.record(
            conn, "user.role", actor_id=actor.user_id, target_type="user", target_id=user_id, ip=ip,
            details={"from": before.role, "to": role},
        )
        # Open sockets carry the old role: close them so the client reconnects with the new one.
        closing = await disconnects.of_user(conn, user_id)
    await disconnects.close(core, closing)
    return {"user": row.public()}
