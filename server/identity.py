"""HTTP and Socket.IO for signed identity (handlers/identity/, docs/integration.md).

- `POST /api/auth/identity` `{identity, app_id?}` → `{user, token}`, like a password login.
- Socket.IO connect with `auth: {identity, app_id?}` works like `auth: {token}`.
- Admins: `POST /api/apps`, `GET /api/apps`, `GET /api/apps/{id}` (secrets are shown only
  in the answer that created them).

The JWKS cache, the gateway's identity sign-in and the jti sweep are wired in
server/assembly.py.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers import auth
from handlers import identity as identity_handlers
from handlers.background import repeat
from handlers.core import Actor, Core
from handlers.identity import apps as app_handlers
from handlers.identity.keys import SUPPORTED
from server.client_address import socket_client_ip
from server.http import client_ip, core_of, path_uuid, read_json, require_actor
from server.jsonutil import json_response
from server.keys import CORE
from server.validation import Name, Payload, Storable

IDENTITY: web.AppKey[identity_handlers.JwksCache] = web.AppKey("identity_jwks")
JTI_SWEEP_SECONDS = 300.0

Short = Annotated[str, Field(min_length=1, max_length=300), Storable]
Secret = Annotated[str, Field(min_length=1, max_length=512), Storable]


class IdentityBody(Payload):
    identity: Annotated[str, Field(min_length=1, max_length=8192), Storable]
    app_id: UUID | None = None


class NewAppBody(Payload):
    """An app, from `POST /api/apps` or `studyhall app create` (one set of rules)."""

    name: Name
    issuer: Short
    audience: Short
    hs256_secrets: Annotated[tuple[Secret, ...], Field(max_length=5)] = ()
    public_key: Annotated[str, Field(min_length=1, max_length=16_384), Storable] | None = None
    jwks_url: Annotated[str, Field(min_length=1, max_length=2048), Storable] | None = None
    algorithms: Annotated[tuple[Annotated[str, Field(max_length=10)], ...],
                          Field(min_length=1, max_length=len(SUPPORTED))] | None = None
    roles: Annotated[tuple[Annotated[str, Field(max_length=20)], ...], Field(min_length=1, max_length=3)] = ("student",)
    origins: Annotated[tuple[Short, ...], Field(max_length=50)] = ()
    require_identity: bool = False

    def spec(self) -> app_handlers.AppSpec:
        return app_handlers.AppSpec(
            name=self.name, issuer=self.issuer, audience=self.audience, hs256_secrets=self.hs256_secrets,
            public_key_pem=self.public_key, jwks_url=self.jwks_url,
            algorithms=self.algorithms, roles=self.roles, origins=self.origins, require_identity=self.require_identity,
        )


async def identity_sign_in(request: web.Request) -> web.Response:
    body = await read_json(request, IdentityBody)
    result = await identity_handlers.sign_in(
        core_of(request), request.app[IDENTITY], token=body.identity, app_id=body.app_id, ip=client_ip(request),
        origin=request.headers.get("Origin"),
    )
    return json_response(result)


async def create_app(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    body = await read_json(request, NewAppBody)
    result = await app_handlers.create(core_of(request), actor, body.spec(), ip=client_ip(request))
    return json_response(result, status=201)


async def list_apps(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await app_handlers.list_apps(core_of(request), actor))


async def get_app(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await app_handlers.get_app(core_of(request), actor, path_uuid(request, "id", "app")))


def connect_with_identity(app: web.Application) -> Any:
    """The gateway's sign-in for `auth: {identity, app_id?}`: the same sign-in as over
    HTTP (limits, checks, a session token), then the session as the socket's actor."""

    async def connect(auth_data: dict[str, Any], environ: dict[str, Any], sid: str) -> Actor:
        core = app[CORE]
        ip = socket_client_ip(core.settings.http.trusted_proxies, environ)
        result = await identity_handlers.sign_in(
            core, app[IDENTITY], token=auth_data.get("identity"), app_id=auth_data.get("app_id"), ip=ip,
            origin=environ.get("HTTP_ORIGIN"),
        )
        return await auth.authenticate(core, result["token"], sid=sid)

    return connect


async def jti_sweeper(core: Core) -> None:
    """The loop that forgets expired token ids (listed in server/assembly.py)."""
    await repeat(lambda: identity_handlers.sweep_jtis(core), every=JTI_SWEEP_SECONDS, what="identity jti sweep")


def setup(app: web.Application) -> None:
    app.router.add_post("/api/auth/identity", identity_sign_in)
    app.router.add_post("/api/apps", create_app)
    app.router.add_get("/api/apps", list_apps)
    app.router.add_get("/api/apps/{id}", get_app)

