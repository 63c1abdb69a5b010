"""A test "platform": keys generated here, tokens signed with PyJWT, apps made over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.client import Api, User


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass
class Platform:
    """One app as the platform sees it: its issuer, audience, algorithm and signing key."""

    app_id: str
    issuer: str
    audience: str
    alg: str
    key: Any  # the HMAC secret, or the private key
    kid: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)

    def claims(self, sub: str = "user-1", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        out = {"sub": sub, "iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + 300,
               "jti": uuid.uuid4().hex}
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}

    def sign(self, claims: dict[str, Any] | None = None, **extra: Any) -> str:
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims if claims is not None else self.claims(**extra), self.key, algorithm=self.alg,
                          headers=headers)


def unsigned_token(claims: dict[str, Any]) -> str:
    """`alg: none`: no signature at all."""
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(claims).encode())}."


def hmac_token(claims: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """HS256 by hand, with any bytes as the secret (PyJWT refuses a PEM key as a secret):
    the algorithm-confusion attack signs with the app's public key."""
    signing_input = f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64url(json.dumps(claims).encode())}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"


async def create_app(api: Api, admin: User, **body: Any) -> tuple[int, dict[str, Any]]:
    base = {"name": "Platform", "issuer": f"https://platform-{uuid.uuid4().hex[:6]}.example", "audience": "studyhall"}
    return await api.request("POST", "/api/apps", admin, json={**base, **body})


async def hs256_platform(api: Api, admin: User, **body: Any) -> Platform:
    """An app with a generated HS256 secret (the secret comes back once, at creation)."""
    status, created = await create_app(api, admin, **body)
    assert status == 201, created
    app = created["app"]
    return Platform(app["id"], app["issuer"], app["audience"], "HS256", created["secret"])


async def key_platform(api: Api, admin: User, private: Any, alg: str, **body: Any) -> Platform:
    status, created = await create_app(api, admin, public_key=public_pem(private), **body)
    assert status == 201, created
    assert "secret" not in created
    app = created["app"]
    return Platform(app["id"], app["issuer"], app["audience"], alg, private)


async def sign_in(api: Api, token: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return await api.request("POST", "/api/auth/identity", json={"identity": token, **extra})


# --- API keys (the platform's backend) ------------------------------------------------------

@dataclass
class Backend:
    """The platform's backend holding an API key of its app."""

    api: Api
    app_id: str
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.api.request(method, "/api/platform" + path, headers=self.headers, **kwargs)


async def api_key(api: Api, admin: User, app_id: str, scopes: list[str], name: str = "backend") -> Backend:
    status, body = await api.request("POST", f"/api/apps/{app_id}/keys", admin, json={"name": name, "scopes": scopes})
    assert status == 201, body
    return Backend(api, app_id, body["key"]["id"], body["secret"])
