"""HTTP: sign-in, accounts, health and metrics."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers import auth
from handlers.errors import ApiError
from handlers.identity import policy
from server import schemas as out
from server.apidoc import api
from server.http import client_ip, core_of, path_uuid, read_json, require_actor
from server.jsonutil import json_response
from server.keys import METRICS
from server.metrics_access import may_read_metrics
from server.validation import Name, NewAccount, Payload, Storable, Text


class RegisterBody(NewAccount):
    """Self-registration: the rules of every new account (server/validation.py)."""

    app_id: UUID | None = None  # the embedding app (handlers/identity/policy.py)


class LoginBody(Payload):
    email: Annotated[str, Field(min_length=3, max_length=320), Storable]
    password: Annotated[str, Field(min_length=1, max_length=256), Storable]


class GuestBody(Payload):
    name: Name | None = None
    app_id: UUID | None = None  # the embedding app (handlers/identity/policy.py)


class RoleBody(Payload):
    role: Text


@api("Register an account", body=RegisterBody, ok=(201, out.SignedIn), auth="none", tag="accounts", errors=(403, 409, 429))
async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterBody)
    await policy.check_unverified_sign_up(core_of(request), app_id=body.app_id, origin=request.headers.get("Origin"))
    result = await auth.register(core_of(request), email=str(body.email), password=body.password, name=body.name, ip=client_ip(request))
    return json_response(result, status=201)


@api("Sign in with email and password", body=LoginBody, ok=out.SignedIn, auth="none", tag="accounts", errors=(401, 429))
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    return json_response(await auth.login(core_of(request), email=body.email, password=body.password, ip=client_ip(request)))


@api("Sign in as a guest", body=GuestBody, ok=(201, out.SignedIn), auth="none", tag="accounts", errors=(403, 429))
async def guest(request: web.Request) -> web.Response:
    body = await read_json(request, GuestBody)
    await policy.check_unverified_sign_up(core_of(request), app_id=body.app_id, origin=request.headers.get("Origin"))
    return json_response(await auth.guest(core_of(request), name=body.name, ip=client_ip(request)), status=201)


@api("Sign out (revoke this token)", ok=(204, None), auth="session", tag="accounts")
async def logout(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    await auth.logout(core_of(request), actor, ip=client_ip(request))
    return web.Response(status=204)


@api("The signed-in user", ok=out.UserResult, auth="session", tag="accounts")
async def me(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    return json_response(await auth.me(core_of(request), actor))


@api("Change a user's role (admins)", body=RoleBody, ok=out.UserResult, auth="session", tag="accounts")
async def set_role(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    user_id = path_uuid(request, "id", "user")
    body = await read_json(request, RoleBody)
    return json_response(await auth.set_role(core_of(request), actor, user_id, body.role, ip=client_ip(request)))


@api("Health of the server, its database and Redis", ok=out.Health, also={503: out.Health}, auth="none", tag="operations",
     description="503 (with the same body) while the database is down.")
async def health(request: web.Request) -> web.Response:
    core = core_of(request)
    database = "ok" if await core.db.ping() else "down"
    redis_state = "disabled"
    if core.settings.cluster.redis_url:
        from server.rediscluster import redis_client

        client = redis_client(core.settings.cluster.redis_url, timeout=1)
        try:
            redis_state = "ok" if await client.ping() else "down"
        except Exception:
            redis_state = "down"
        finally:
            await client.aclose()
    status = "ok" if database == "ok" and redis_state != "down" else "degraded"
    return json_response({"status": status, "database": database, "redis": redis_state}, status=200 if database == "ok" else 503)


@api("Prometheus metrics", ok=(200, None), content_type="text/plain", auth="metrics", tag="operations",
     description="404, like an unknown path, unless the bearer token or the client address is allowed.")
async def metrics(request: web.Request) -> web.Response:
    if not may_read_metrics(request):  # not advertised: the answer of an unknown path
        raise ApiError("not_found", "No such endpoint.")
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/auth/register", register)
    app.router.add_post("/api/auth/login", login)
    app.router.add_post("/api/auth/guest", guest)
    app.router.add_post("/api/auth/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_put("/api/users/{id}/role", set_role)
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
