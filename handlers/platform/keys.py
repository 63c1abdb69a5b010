"""API keys: made by admins for an app, shown once, stored as a SHA-256, scoped, revocable,
rotated with an overlap; and the check of a key on each request.

Why SHA-256 and not argon2 as for passwords: a slow hash protects secrets people choose,
which a dictionary can guess. A key is 32 random bytes no person chose: guessing it from
its hash means trying 2^256 values, out of reach at any hash speed, so a slow hash would
add nothing but ~50 ms to every request. A fast hash keeps the check one indexed equality,
as for session tokens (handlers/auth.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.ratelimit import Rule
from storage import api_keys, apps, audit
from storage.api_keys import ApiKeyRecord

KEY_PREFIX = "sh_live_"
SCOPES = (
    "users:write", "documents:write", "sessions:write", "tickets:read", "tickets:write", "conversations:read",
    "messages:write",
)
SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 6
MAX_OVERLAP_HOURS = 24 * 30
UNAUTHORIZED = "This API key is unknown, expired or revoked."


@dataclass(frozen=True)
class AppActor:
    """A request made with an API key: the app, never a user."""

    app_id: UUID
    app_name: str
    key_id: UUID
    scopes: frozenset[str]
    # The roles the app may grant its users (as for identity tokens).
    roles: tuple[str, ...]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError("forbidden", f"This API key does not have the {scope} scope.")

    def audit_details(self, **extra: Any) -> dict[str, Any]:
        return {"app_id": str(self.app_id), "key_id": str(self.key_id), **extra}


def is_api_key(token: str | None) -> bool:
    """API keys and user session tokens share the `Bearer` header: keys have a prefix."""
    return bool(token) and str(token).startswith(KEY_PREFIX)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_out(key: ApiKeyRecord) -> dict[str, Any]:
    """A key as shown to administrators: never the secret, never its hash."""
    now = datetime.now(UTC)
    state = ("revoked" if key.revoked_at else "expired" if key.expires_at and key.expires_at <= now else "active")
    return {
        "id": key.id, "app_id": key.app_id, "name": key.name, "prefix": key.prefix, "scopes": list(key.scopes),
        "created_at": key.created_at, "expires_at": key.expires_at, "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at, "replaced_by": key.replaced_by, "state": state,
    }


def _admin(actor: Actor | None) -> None:
    if actor is not None and actor.role != "admin":
        raise ApiError("forbidden", "Only an admin can manage API keys.")


def _scopes(scopes: tuple[str, ...] | list[str]) -> list[str]:
    chosen = list(dict.fromkeys(scopes))
    if not chosen:
        raise ApiError("bad_request", "Give the key at least one scope.")
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise ApiError("bad_request", f"Unknown scope {', '.join(unknown)}; scopes: {', '.join(SCOPES)}.")
    return chosen


async def _issue(conn: Any, app_id: UUID, *, name: str, scopes: list[str], created_by: UUID | None) -> tuple[ApiKeyRecord, str]:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = await api_keys.insert(conn, app_id=app_id, name=name, prefix=secret[:SHOWN_PREFIX_CHARS],
                                   key_hash=hash_key(secret), scopes=scopes, created_by=created_by)
    return record, secret


async def create(
    core: Core, actor: Actor | None, app_id: UUID, *, name: str, scopes: list[str], ip: str | None = None,
) -> dict[str, Any]:
    """`{key, secret}`: the secret is in this answer only. `actor` None: the command line."""
    _admin(actor)
    chosen = _scopes(scopes)
    async with core.db.transaction() as conn:
        if await apps.get(conn, app_id) is None:
            raise ApiError("not_found", "No such app.")
        record, secret = await _issue(conn, app_id, name=name, scopes=chosen,
                                      created_by=actor.user_id if actor else None)
        await audit.record(
            conn, "api_key.create", actor_id=actor.user_id if actor else None, target_type="api_key",
            target_id=record.id, ip=ip, details={"app_id": str(app_id), "scopes": chosen, "via": "http" if actor else "cli"},
        )
    return {"key": key_out(record), "secret": secret}


async def list_keys(core: Core, actor: Actor | None, app_id: UUID) -> dict[str, Any]:
    _admin(actor)
    async with core.db.connection() as conn:
        if await apps.get(conn, app_id) is None:
            raise ApiError("not_found", "No such app.")
        return {"keys": [key_out(k) for k in await api_keys.list_for_app(conn, app_id)]}


async def revoke(core: Core, actor: Actor | None, app_id: UUID, key_id: UUID, *, ip: str | None = None) -> dict[str, Any]:
    """Revoke at once (a second revoke changes nothing and answers the same)."""
    _admin(actor)
    async with core.db.transaction() as conn:
        if await api_keys.get(conn, app_id, key_id, for_update=True) is None:
            raise ApiError("not_found", "No such API key.")
        if await api_keys.revoke(conn, key_id):
            await audit.record(
                conn, "api_key.revoke", actor_id=actor.user_id if actor else None, target_type="api_key",
                target_id=key_id, ip=ip, details={"app_id": str(app_id), "via": "http" if actor else "cli"},
            )
        record = await api_keys.get(conn, app_id, key_id)
    assert record is not None
    return {"key": key_out(record)}


async def rotate(
    core: Core, actor: Actor | None, app_id: UUID, key_id: UUID, *, overlap_hours: float | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """A new key with the old one's name and scopes (`{key, secret, old_key}`); the old key
    keeps working for `overlap_hours` (0: it stops now), so the platform can deploy the new
    one first."""
    _admin(actor)
    hours = core.settings.platform.key_rotate_overlap_hours if overlap_hours is None else overlap_hours
    if not 0 <= hours <= MAX_OVERLAP_HOURS:
        raise ApiError("bad_request", f"overlap_hours must be between 0 and {MAX_OVERLAP_HOURS}.")
    async with core.db.transaction() as conn:
        old = await api_keys.get(conn, app_id, key_id, for_update=True)
        if old is None:
            raise ApiError("not_found", "No such API key.")
        now = datetime.now(UTC)
        if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
            raise ApiError("conflict", "This API key is revoked or expired; create a new one.")
        if old.replaced_by is not None:
            raise ApiError("conflict", "This API key was already rotated; rotate its replacement.")
        record, secret = await _issue(conn, app_id, name=old.name, scopes=list(old.scopes),
                                      created_by=actor.user_id if actor else None)
        await api_keys.retire(conn, key_id, expires_at=now + timedelta(hours=hours), replaced_by=record.id)
        await audit.record(
            conn, "api_key.rotate", actor_id=actor.user_id if actor else None, target_type="api_key",
            target_id=key_id, ip=ip, details={"app_id": str(app_id), "new_key_id": str(record.id),
                                              "overlap_hours": hours, "via": "http" if actor else "cli"},
        )
        retired = await api_keys.get(conn, app_id, key_id)
    assert retired is not None
    return {"key": key_out(record), "secret": secret, "old_key": key_out(retired)}


async def authenticate(core: Core, key: str | None) -> AppActor:
    """The app behind a key; `unauthorized` for an unknown, revoked or expired one, and
    `rate_limited` over the key's own limit. A use is recorded at most once per key per
    `key_last_used_resolution_seconds`."""
    if not key or not is_api_key(key) or len(key) > 200:
        raise ApiError("unauthorized", UNAUTHORIZED)
    async with core.db.connection() as conn:
        found = await api_keys.find_live(conn, hash_key(key))
    if found is None:
        raise ApiError("unauthorized", UNAUTHORIZED)
    settings = core.settings.platform
    await core.limiter.hit(
        Rule("api_key", settings.key_rate_limit_per_minute, 60, "Too many requests with this API key; slow down."),
        str(found.key.id),
    )
    resolution = settings.key_last_used_resolution_seconds
    last = found.key.last_used_at
    if last is None or last < datetime.now(UTC) - timedelta(seconds=resolution):
        async with core.db.connection() as conn:
            await api_keys.touch(conn, found.key.id, resolution)
    return AppActor(app_id=found.key.app_id, app_name=found.app_name, key_id=found.key.id,
                    scopes=frozenset(found.key.scopes), roles=found.app_roles)
