"""Apps: create (admins, or the command line), list and show. Secrets are shown once.

Every rule about an app's keys is checked here, whoever creates it: exactly one kind of key
(HMAC secrets, a PEM public key, or a JWKS URL); an algorithm allowlist of that key's
family only; roles the app may grant from student, mentor and agent (never admin: a
platform's leaked secret must not hand out control of this server); origins as
`scheme://host[:port]`; a JWKS URL over https (plain http only to this machine).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.identity import keys
from storage import apps, audit
from storage.apps import AppRecord, NewApp

GRANTABLE_ROLES = ("student", "mentor", "agent")
MAX_SECRETS = 5
MAX_ORIGINS = 50


@dataclass(frozen=True)
class AppSpec:
    """What an administrator asks for; `create` checks it and fills in defaults."""

    name: str
    issuer: str
    audience: str
    hs256_secrets: tuple[str, ...] = ()
    public_key_pem: str | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] | None = None
    roles: tuple[str, ...] = ("student",)
    origins: tuple[str, ...] = field(default_factory=tuple)
    require_identity: bool = False


def public_app(app: AppRecord) -> dict[str, Any]:
    """An app as shown to administrators: never its HMAC secrets."""
    key_type = "hmac" if app.hmac_secrets else "public_key" if app.public_key_pem else "jwks"
    return {
        "id": app.id, "name": app.name, "created_at": app.created_at, "key_type": key_type,
        "hmac_secret_count": len(app.hmac_secrets), "public_key": app.public_key_pem, "jwks_url": app.jwks_url,
        "algorithms": list(app.algorithms), "issuer": app.issuer, "audience": app.audience,
        "roles": list(app.allowed_roles), "origins": list(app.allowed_origins),
        "require_identity": app.require_identity,
    }


def _bad(message: str) -> ApiError:
    return ApiError("bad_request", message)


def _origin(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise _bad(f"origin {raw!r} must be scheme://host[:port], like https://learn.example.com")
    try:
        port = parts.port
    except ValueError:
        raise _bad(f"origin {raw!r} has an invalid port") from None
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jwks_url(raw: str) -> str:
    parts = urlsplit(raw)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise _bad("jwks_url must be an https URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise _bad("jwks_url must use https (plain http is allowed only to this machine)")
    return raw


def _algorithms(spec: AppSpec, family: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(spec.algorithms)) if spec.algorithms else default
    wrong = [a for a in chosen if a not in family]
    if wrong:
        raise _bad(f"algorithms {', '.join(wrong)} cannot be used with this key; allowed: {', '.join(family)}")
    return chosen


def check(spec: AppSpec) -> tuple[NewApp, str | None]:
    """The app to store, and the HMAC secret generated for it (None when the admin gave a key)."""
    given = sum((bool(spec.hs256_secrets), spec.public_key_pem is not None, spec.jwks_url is not None))
    if given > 1:
        raise _bad("give one kind of key: HS256 secrets, a public key, or a JWKS URL")
    generated = None
    hmac_secrets: tuple[str, ...] = ()
    public_key_pem = jwks_url = None
    if spec.public_key_pem is not None:
        try:
            key = keys.load_public_key(spec.public_key_pem)
        except keys.UnusableKey as exc:
            raise _bad(f"public_key: {exc}") from None
        family = keys.algorithms_for_key(key)
        algorithms = _algorithms(spec, family, (family[0],))
        public_key_pem = spec.public_key_pem.strip() + "\n"
    elif spec.jwks_url is not None:
        jwks_url = _jwks_url(spec.jwks_url)
        algorithms = _algorithms(spec, keys.PUBLIC_KEY_ALGORITHMS, ("RS256", "ES256"))
    else:
        if not spec.hs256_secrets:
            generated = secrets.token_urlsafe(32)
        hmac_secrets = tuple(dict.fromkeys(spec.hs256_secrets)) or (generated or "",)
        if len(hmac_secrets) > MAX_SECRETS:
            raise _bad(f"at most {MAX_SECRETS} secrets")
        if any(len(s.encode()) < keys.MIN_HMAC_SECRET_BYTES for s in hmac_secrets):
            raise _bad(f"an HS256 secret must be at least {keys.MIN_HMAC_SECRET_BYTES} bytes (32 random bytes, base64)")
        algorithms = _algorithms(spec, keys.HMAC_ALGORITHMS, ("HS256",))
    roles = tuple(dict.fromkeys(spec.roles)) or ("student",)
    if "admin" in roles:
        raise _bad("an app may not grant the admin role; make admins with `studyhall createuser`")
    if any(r not in GRANTABLE_ROLES for r in roles):
        raise _bad(f"roles must be among {', '.join(GRANTABLE_ROLES)}")
    if len(spec.origins) > MAX_ORIGINS:
        raise _bad(f"at most {MAX_ORIGINS} origins")
    origins = tuple(dict.fromkeys(_origin(o) for o in spec.origins))
    new = NewApp(
        name=spec.name, algorithms=algorithms, hmac_secrets=hmac_secrets, public_key_pem=public_key_pem,
        jwks_url=jwks_url, issuer=spec.issuer, audience=spec.audience, allowed_roles=roles,
        allowed_origins=origins, require_identity=spec.require_identity,
    )
    return new, generated


async def create(core: Core, actor: Actor | None, spec: AppSpec, *, ip: str | None = None) -> dict[str, Any]:
    """Create an app: `{app}`, plus `secret` when one was generated (shown only now).
    `actor` None: the command line."""
    if actor is not None and actor.role != "admin":
        raise ApiError("forbidden", "Only an admin can manage apps.")
    new, generated = check(spec)
    if actor is not None:
        new = replace(new, created_by=actor.user_id)
    async with core.db.transaction() as conn:
        record = await apps.insert(conn, new)
        if record is None:
            raise ApiError("conflict", "Another app already uses this issuer.")
        await audit.record(
            conn, "app.create", actor_id=actor.user_id if actor else None, target_type="app",
            target_id=record.id, ip=ip, details={"name": record.name, "issuer": record.issuer,
                                                 "via": "http" if actor else "cli"},
        )
    out: dict[str, Any] = {"app": public_app(record)}
    if generated is not None:
        out["secret"] = generated
    return out


async def list_apps(core: Core, actor: Actor | None) -> dict[str, Any]:
    if actor is not None and actor.role != "admin":
        raise ApiError("forbidden", "Only an admin can manage apps.")
    async with core.db.connection() as conn:
        return {"apps": [public_app(a) for a in await apps.list_all(conn)]}


async def get_app(core: Core, actor: Actor, app_id: UUID) -> dict[str, Any]:
    if actor.role != "admin":
        raise ApiError("forbidden", "Only an admin can manage apps.")
    async with core.db.connection() as conn:
        record = await apps.get(conn, app_id)
    if record is None:
        raise ApiError("not_found", "No such app.")
    return {"app": public_app(record)}
