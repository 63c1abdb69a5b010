"""Checking an identity token against its app, and only its app.

Nothing in a token is believed before its signature is checked, except what finds the app:
its `iss` (or the `app_id` the caller passes alongside), which only chooses whose keys to
try. The token is then verified with that app's keys and algorithm allowlist only: an
`alg` outside the allowlist (`none` never is in one) is refused before any key is used,
HMAC secrets are used only for HS* and public keys only for their own family, so an HS256
token "signed" with a public key is refused. `iss` and `aud` must be the app's, `exp` and
`sub` are required, and a token may live at most `max_token_life_seconds`.

Every refusal is an `IdentityRefused` with a reason for the logs and audit and a short
message safe to show: a bad signature, a wrong issuer or audience, an unknown app or a
malformed token all read "The identity token is not valid."
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import jwt
from jwt import exceptions as jwt_errors

from handlers.identity import keys
from handlers.identity.jwks import JwksCache
from handlers.settings import IdentitySettings
from storage.apps import AppRecord
from storage.text import unstorable_reason

MAX_TOKEN_CHARS = 8192
NOT_VALID = "The identity token is not valid."
MAX_COURSES = 100
MAX_NAME_CHARS = 100


class IdentityRefused(Exception):
    """A token that signs nobody in: `reason` for operators, `message` for the client."""

    def __init__(self, reason: str, message: str = NOT_VALID, app_id: UUID | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.app_id = app_id


@dataclass(frozen=True)
class Claims:
    """The verified claims Studyhall uses. None: the token did not say (keep what is stored)."""

    sub: str
    expires_at: datetime
    role: str
    jti: str | None
    name: str | None
    email: str | None
    avatar_url: str | None
    courses: tuple[str, ...] | None
    # The guest session the platform says this user had (carry-over, handlers/identity/carryover.py).
    guest_token: str | None = None


def peek(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims, unverified: only to find the app and its key."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise IdentityRefused("malformed")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt_errors.PyJWTError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        raise IdentityRefused("malformed") from None
    if not isinstance(claims, dict):
        raise IdentityRefused("malformed")
    return header, claims


async def verify(
    app: AppRecord, token: str, header: dict[str, Any], jwks: JwksCache, settings: IdentitySettings
) -> Claims:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in app.algorithms or alg not in keys.SUPPORTED:
        raise IdentityRefused("algorithm not allowed", app_id=app.id)
    candidates: list[Any]
    if alg in keys.HMAC_ALGORITHMS:
        candidates = list(app.hmac_secrets)
    elif app.public_key_pem is not None:
        candidates = [keys.load_public_key(app.public_key_pem)]
    elif app.jwks_url is not None:
        kid = header.get("kid")
        key = await jwks.key_for(app.jwks_url, kid if isinstance(kid, str) else None, alg)
        candidates = [key] if key is not None else []
    else:
        candidates = []
    if not candidates:
        raise IdentityRefused("no key for this token", app_id=app.id)
    payload: dict[str, Any] | None = None
    for key in candidates:
        try:
            payload = jwt.decode(
                token, key, algorithms=[alg], audience=app.audience, issuer=app.issuer,
                leeway=settings.leeway_seconds, options={"require": ["sub", "exp", "iss", "aud"], "strict_aud": False},
            )
            break
        except jwt_errors.InvalidSignatureError:
            continue
        except jwt_errors.ExpiredSignatureError:
            raise IdentityRefused("expired", "The identity token has expired.", app.id) from None
        except jwt_errors.ImmatureSignatureError:
            raise IdentityRefused("not yet valid", "The identity token is not valid yet (check the clock).", app.id) from None
        except jwt_errors.MissingRequiredClaimError as exc:
            raise IdentityRefused(f"missing claim {exc.claim}", f"The identity token has no `{exc.claim}` claim.",
                                  app.id) from None
        except jwt_errors.InvalidAudienceError:
            raise IdentityRefused("wrong audience", app_id=app.id) from None
        except jwt_errors.InvalidIssuerError:
            raise IdentityRefused("wrong issuer", app_id=app.id) from None
        except (jwt_errors.PyJWTError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A hostile token must never become a 500: whatever the library trips on is "not valid".
            raise IdentityRefused(f"invalid: {type(exc).__name__}", app_id=app.id) from None
    if payload is None:
        raise IdentityRefused("bad signature", app_id=app.id)
    return _claims(app, payload, settings)


def _claims(app: AppRecord, payload: dict[str, Any], settings: IdentitySettings) -> Claims:
    exp, iat = payload["exp"], payload.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _bad_claim(app, "exp")
    life = exp - iat if isinstance(iat, int | float) else exp - time.time()
    if life > settings.max_token_life_seconds + (0 if isinstance(iat, int | float) else settings.leeway_seconds):
        raise IdentityRefused(
            "life too long", f"The identity token lives too long (at most {settings.max_token_life_seconds} s).", app.id,
        )
    role = payload.get("role")
    if role is None:
        role = "student"
    if not isinstance(role, str) or role not in app.allowed_roles:
        raise IdentityRefused("role not allowed", "This app may not grant the role in the identity token.", app.id)
    return Claims(
        sub=_text(app, payload, "sub", 255, required=True) or "",
        expires_at=datetime.fromtimestamp(int(exp), UTC),
        role=role,
        jti=_text(app, payload, "jti", 255),
        name=_name(app, payload),
        email=_email(app, payload),
        avatar_url=_avatar(app, payload),
        courses=_courses(app, payload),
        guest_token=_text(app, payload, "guest_token", 200),
    )


def _bad_claim(app: AppRecord, name: str) -> IdentityRefused:
    return IdentityRefused(f"bad claim {name}", f"The identity token's `{name}` claim is not valid.", app.id)


def _text(app: AppRecord, payload: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or unstorable_reason(value):
        raise _bad_claim(app, name)
    return value


def _name(app: AppRecord, payload: dict[str, Any]) -> str | None:
    value = payload.get("name")
    if value is None:
        return None
    if not isinstance(value, str) or unstorable_reason(value):
        raise _bad_claim(app, "name")
    value = " ".join(value.split())[:MAX_NAME_CHARS]
    return value or None


def _email(app: AppRecord, payload: dict[str, Any]) -> str | None:
    value = _text(app, payload, "email", 320)
    if value is not None and ("@" not in value or any(c.isspace() for c in value)):
        raise _bad_claim(app, "email")
    return value


def _avatar(app: AppRecord, payload: dict[str, Any]) -> str | None:
    value = _text(app, payload, "avatar_url", 2048)
    if value is not None and not value.lower().startswith(("https://", "http://")):
        raise _bad_claim(app, "avatar_url")  # never javascript: or data:
    return value


def _courses(app: AppRecord, payload: dict[str, Any]) -> tuple[str, ...] | None:
    value = payload.get("courses")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_COURSES:
        raise _bad_claim(app, "courses")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 200 or unstorable_reason(item):
            raise _bad_claim(app, "courses")
        out.append(item.strip())
    return tuple(dict.fromkeys(out))
