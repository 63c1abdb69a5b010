"""Identity sign-in: a verified platform token → one Studyhall user and a session token.

(app, sub) maps to exactly one user, made on first sight and updated from each later
token's claims (handlers/identity/subjects.py, shared with the platform API's upsert);
a deactivated user is refused.

A token's `jti`, when present, is recorded in the same transaction as the sign-in and
refused if seen again before the token would have expired. Attempts count against the
per-address login limit (handlers/signin_limits.py) before anything else is done.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from handlers import disconnects, signin_limits
from handlers.auth import hash_token
from handlers.core import Core
from handlers.errors import ApiError
from handlers.identity import carryover, policy
from handlers.identity.jwks import JwksCache
from handlers.identity.subjects import Profile, map_subject
from handlers.identity.verify import Claims, IdentityRefused, peek, verify
from storage import apps, audit, identities, users
from storage.apps import AppRecord

log = logging.getLogger(__name__)


async def sign_in(
    core: Core, jwks: JwksCache, *, token: Any, app_id: Any = None, ip: str | None, origin: str | None = None
) -> dict[str, Any]:
    """`{user, token}` like a password login; `unauthorized` with a short reason otherwise.
    `origin`: the browser's Origin header (`forbidden` when the app does not list it)."""
    await signin_limits.check(core, "login", ip)
    carried: carryover.Carried | None = None
    try:
        app, claims = await _verified(core, jwks, token, app_id)
        if not policy.origin_allowed(app, origin):
            await _refused_origin(core, app, origin, ip)
        async with core.db.transaction() as conn:
            if claims.jti is not None:
                until = claims.expires_at + timedelta(seconds=core.settings.identity.leeway_seconds)
                if not await identities.use_jti(conn, app.id, claims.jti, until):
                    raise IdentityRefused("replayed jti", "This identity token was already used.", app.id)
            profile = Profile(role=claims.role, name=claims.name, email=claims.email,
                              avatar_url=claims.avatar_url, courses=claims.courses)
            subject = await map_subject(core, conn, app.id, claims.sub, profile, via="identity",
                                        refuse_deactivated=True)
            user_row, created = subject.user, subject.created
            if claims.guest_token is not None:
                carried = await carryover.carry_over(conn, guest_token=claims.guest_token, user_id=user_row.id,
                                                     app_id=app.id, ip=ip)
            session = secrets.token_urlsafe(32)
            expires = datetime.now(UTC) + timedelta(hours=core.settings.identity.session_hours)
            await users.insert_token(conn, user_row.id, hash_token(session), expires)
            await audit.record(
                conn, "login.identity", actor_id=user_row.id, target_type="user", target_id=user_row.id, ip=ip,
                details={"app_id": str(app.id), "sub": claims.sub, "created": created},
            )
    except IdentityRefused as refused:
        log.info("identity sign-in refused", extra={"reason": refused.reason, "app_id": str(refused.app_id)})
        async with core.db.transaction() as conn:
            await audit.record(conn, "login.identity_failed", target_type="app", target_id=refused.app_id, ip=ip,
                               details={"reason": refused.reason})
        raise ApiError("unauthorized", refused.message) from None
    if carried is not None:
        await disconnects.close(core, carried.sockets)
    # expires_at: when the session ends; a client refreshes a little before (auth:refresh).
    return {"user": user_row.public(), "token": session, "expires_at": expires}


async def _refused_origin(core: Core, app: AppRecord, origin: str | None, ip: str | None) -> None:
    log.info("identity sign-in refused", extra={"reason": "origin not allowed", "app_id": str(app.id)})
    async with core.db.transaction() as conn:
        await audit.record(conn, "login.identity_failed", target_type="app", target_id=app.id, ip=ip,
                           details={"reason": "origin not allowed", "origin": (origin or "")[:300]})
    raise ApiError("forbidden", policy.ORIGIN_REFUSED)


async def _verified(core: Core, jwks: JwksCache, token: Any, app_id: Any) -> tuple[AppRecord, Claims]:
    header, unverified = peek(token)
    async with core.db.connection() as conn:
        if app_id is not None:
            try:
                app = await apps.get(conn, UUID(str(app_id)))
            except ValueError:
                raise IdentityRefused("malformed app_id") from None
        else:
            issuer = unverified.get("iss")
            app = await apps.by_issuer(conn, issuer) if isinstance(issuer, str) and len(issuer) <= 300 else None
    if app is None:
        raise IdentityRefused("unknown app")
    return app, await verify(app, token, header, jwks, core.settings.identity)


async def sweep_jtis(core: Core) -> int:
    """Forget used token ids whose tokens have expired."""
    total = 0
    while not core.closing:
        async with core.db.connection() as conn:
            done = await identities.sweep_jtis(conn)
        total += done
        if done < 10_000:
            break
    return total
