"""HTTP for API keys (admins) and the platform API (apps' backends, with a key).

Admins (`Authorization: Bearer <admin session token>`):
- `POST /api/apps/{id}/keys` `{name?, scopes}` → 201 `{key, secret}` (the secret only here)
- `GET /api/apps/{id}/keys` → `{keys}`
- `DELETE /api/apps/{id}/keys/{key_id}` → `{key}` (revoked)
- `POST /api/apps/{id}/keys/{key_id}/rotate` `{overlap_hours?}` → 201 `{key, secret, old_key}`

Apps (`Authorization: Bearer sh_live_…`), under `/api/platform/`: see `setup` and
docs/integration.md. A user session token there is `unauthorized`, like a bad key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers.errors import ApiError
from handlers.platform import keys, operations
from handlers.platform.keys import AppActor
from server.documents import _from_json as document_from_json
from server.http import client_ip, core_of, header_ascii, path_uuid, query_int, read_json, require_actor
from server.jsonutil import json_response
from server.rooms import SessionType
from server.validation import Content, Name, Payload, Storable, Title

Sub = Annotated[str, Field(min_length=1, max_length=255), Storable]
Scope = Annotated[str, Field(min_length=1, max_length=40)]


class NewKeyBody(Payload):
    name: Annotated[str, Field(max_length=100), Storable] = ""
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=len(keys.SCOPES))]


class RotateBody(Payload):
    overlap_hours: Annotated[float, Field(ge=0, le=keys.MAX_OVERLAP_HOURS)] | None = None


class UserBody(Payload):
    name: Name | None = None
    email: Annotated[str, Field(min_length=1, max_length=320), Storable] | None = None
    role: Annotated[str, Field(max_length=20)] | None = None


class SessionBody(Payload):
    host_sub: Sub
    title: Title
    max_participants: Annotated[int, Field(ge=1, le=10_000)] = 100
    scheduled_start_time: datetime | None = None
    type: SessionType = "lecture"


class MessageBody(Payload):
    content: Content


class TicketBody(Payload):
    conversation_id: UUID
    reason: Annotated[str, Field(max_length=500), Storable] = "requested by the platform"
    urgent: bool = False


# --- admins: keys ------------------------------------------------------------------------

async def create_key(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    body = await read_json(request, NewKeyBody)
    result = await keys.create(core_of(request), actor, path_uuid(request, "id", "app"), name=body.name,
                               scopes=list(body.scopes), ip=client_ip(request))
    return json_response(result, status=201)


async def list_keys(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await keys.list_keys(core_of(request), actor, path_uuid(request, "id", "app")))


async def revoke_key(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await keys.revoke(core_of(request), actor, path_uuid(request, "id", "app"),
                                           path_uuid(request, "key_id", "API key"), ip=client_ip(request)))


async def rotate_key(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    body = await read_json(request, RotateBody)
    result = await keys.rotate(core_of(request), actor, path_uuid(request, "id", "app"),
                               path_uuid(request, "key_id", "API key"), overlap_hours=body.overlap_hours,
                               ip=client_ip(request))
    return json_response(result, status=201)


# --- apps: the platform API --------------------------------------------------------------

async def require_app(request: web.Request) -> AppActor:
    """The app behind `Authorization: Bearer sh_live_…`; anything else is `unauthorized`."""
    header = header_ascii(request, "Authorization") or ""
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    if not keys.is_api_key(token):
        raise ApiError("unauthorized", "An API key is required (Authorization: Bearer sh_live_…).")
    return await keys.authenticate(core_of(request), token)


def _sub(request: web.Request) -> str:
    sub = request.match_info["sub"]
    if not sub or len(sub) > 255:
        raise ApiError("not_found", "This app has no user with this sub.")
    return sub


async def put_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, UserBody)
    result = await operations.upsert_user(core_of(request), app, _sub(request), name=body.name, email=body.email,
                                          role=body.role, ip=client_ip(request))
    return json_response(result, status=201 if result["created"] else 200)


async def deactivate_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    return json_response(await operations.set_active(core_of(request), app, _sub(request), active=False,
                                                     ip=client_ip(request)))


async def reactivate_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    return json_response(await operations.set_active(core_of(request), app, _sub(request), active=True,
                                                     ip=client_ip(request)))


async def create_document(request: web.Request) -> web.Response:
    app = await require_app(request)
    app.require("documents:write")
    body = await document_from_json(request)
    document, created = await operations.add_document(
        core_of(request), app, title=body.title, content=body.content, source=body.source, language=body.language,
        course=body.course, ip=client_ip(request),
    )
    return json_response({"document": document, "created": created}, status=201 if created else 200)


async def delete_document(request: web.Request) -> web.Response:
    app = await require_app(request)
    document = await operations.delete_document(core_of(request), app, path_uuid(request, "id", "document"),
                                                ip=client_ip(request))
    return json_response({"document": document})


async def create_session(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, SessionBody)
    result = await operations.create_session(
        core_of(request), app, host_sub=body.host_sub, title=body.title, type=body.type,
        scheduled_start_time=body.scheduled_start_time, max_participants=body.max_participants, ip=client_ip(request),
    )
    return json_response(result, status=201)


def _session_action(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        app = await require_app(request)
        return json_response(await operations.change_session(
            core_of(request), app, path_uuid(request, "id", "live session"), action, ip=client_ip(request)))

    return handle


async def list_conversations(request: web.Request) -> web.Response:
    app = await require_app(request)
    sub = request.query.get("sub") or None
    limit = query_int(request, "limit", 50, lo=1, hi=200)
    assert limit is not None
    return json_response(await operations.list_conversations(core_of(request), app, sub=sub, limit=limit))


async def get_transcript(request: web.Request) -> web.Response:
    app = await require_app(request)
    limit = query_int(request, "limit", 100, lo=1, hi=500)
    assert limit is not None
    return json_response(await operations.transcript(
        core_of(request), app, path_uuid(request, "id", "conversation"),
        before_seq=query_int(request, "before_seq", None, lo=1, hi=2**62), limit=limit,
    ))


async def post_message(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, MessageBody)
    result = await operations.post_message(core_of(request), app, path_uuid(request, "id", "conversation"),
                                           content=body.content, ip=client_ip(request))
    return json_response(result, status=201)


async def open_ticket(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, TicketBody)
    result = await operations.open_ticket(core_of(request), app, body.conversation_id, reason=body.reason,
                                          urgent=body.urgent, ip=client_ip(request))
    return json_response(result, status=201)


async def conversation_tickets(request: web.Request) -> web.Response:
    app = await require_app(request)
    return json_response(await operations.conversation_tickets(core_of(request), app,
                                                               path_uuid(request, "id", "conversation")))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/apps/{id}/keys", create_key)
    r.add_get("/api/apps/{id}/keys", list_keys)
    r.add_delete("/api/apps/{id}/keys/{key_id}", revoke_key)
    r.add_post("/api/apps/{id}/keys/{key_id}/rotate", rotate_key)
    r.add_put("/api/platform/users/{sub}", put_user)
    r.add_post("/api/platform/users/{sub}/deactivate", deactivate_user)
    r.add_post("/api/platform/users/{sub}/reactivate", reactivate_user)
    r.add_post("/api/platform/documents", create_document)
    r.add_delete("/api/platform/documents/{id}", delete_document)
    r.add_post("/api/platform/sessions", create_session)
    for action in ("start", "end", "cancel"):
        r.add_post(f"/api/platform/sessions/{{id}}/{action}", _session_action(action))
    r.add_get("/api/platform/conversations", list_conversations)
    r.add_get("/api/platform/conversations/{id}/messages", get_transcript)
    r.add_post("/api/platform/conversations/{id}/messages", post_message)
    r.add_get("/api/platform/conversations/{id}/tickets", conversation_tickets)
    r.add_post("/api/platform/tickets", open_ticket)
