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
from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers.errors import ApiError
from handlers.platform import keys, operations
from handlers.platform.keys import AppActor
from server import schemas as out
from server.apidoc import QueryInt, QueryText, api
from server.documents import NewDocument, read_document_json
from server.http import bearer_token, client_ip, core_of, header_ascii, path_uuid, read_json, require_actor
from server.jsonutil import json_response
from server.rooms import SessionType
from server.validation import Content, IsoTime, Name, Payload, Storable, Title

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
    scheduled_start_time: IsoTime | None = None
    type: SessionType = "lecture"


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=255), Storable]


class MessageBody(Payload):
    content: Content
    # The socket protocol's client_id; the Idempotency-Key header says the same (see post_message).
    client_id: IdempotencyKey | None = None


class TicketBody(Payload):
    conversation_id: UUID
    reason: Annotated[str, Field(max_length=500), Storable] = "requested by the platform"
    urgent: bool = False


# --- admins: keys ------------------------------------------------------------------------

@api("Create an API key for an app (admins)", body=NewKeyBody, ok=(201, out.KeyCreated), auth="session", tag="apps")
async def create_key(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    body = await read_json(request, NewKeyBody)
    result = await keys.create(core_of(request), actor, path_uuid(request, "id", "app"), name=body.name,
                               scopes=list(body.scopes), ip=client_ip(request))
    return json_response(result, status=201)


@api("An app's API keys (admins)", ok=out.KeyList, auth="session", tag="apps")
async def list_keys(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await keys.list_keys(core_of(request), actor, path_uuid(request, "id", "app")))


@api("Revoke an API key (admins)", ok=out.KeyResult, auth="session", tag="apps", errors=(409,))
async def revoke_key(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await keys.revoke(core_of(request), actor, path_uuid(request, "id", "app"),
                                           path_uuid(request, "key_id", "API key"), ip=client_ip(request)))


@api("Rotate an API key (admins)", body=RotateBody, ok=(201, out.KeyRotated), auth="session", tag="apps", errors=(409,))
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
    token = bearer_token(request)
    if not keys.is_api_key(token):
        raise ApiError("unauthorized", "An API key is required (Authorization: Bearer sh_live_…).")
    return await keys.authenticate(core_of(request), token)


def path_sub(request: web.Request) -> str:
    """The app's user id from the path (`{sub}`); one that cannot be a sub is `not_found`,
    like an unknown one."""
    sub = request.match_info["sub"]
    if not sub or len(sub) > 255:
        raise ApiError("not_found", "This app has no user with this sub.")
    return sub


SUB = {"sub": {"type": "string", "minLength": 1, "maxLength": 255, "description": "The user's id in the app"}}


@api("Create or update the app's user", body=UserBody, ok=out.PlatformUserUpserted, also={201: out.PlatformUserUpserted},
     auth="api_key", tag="platform", path=SUB, errors=(409,))
async def put_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, UserBody)
    result = await operations.upsert_user(core_of(request), app, path_sub(request), name=body.name, email=body.email,
                                          role=body.role, ip=client_ip(request))
    return json_response(result, status=201 if result["created"] else 200)


@api("Deactivate the app's user", ok=out.PlatformUser, auth="api_key", tag="platform", path=SUB)
async def deactivate_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    return json_response(await operations.set_active(core_of(request), app, path_sub(request), active=False,
                                                     ip=client_ip(request)))


@api("Reactivate the app's user", ok=out.PlatformUser, auth="api_key", tag="platform", path=SUB)
async def reactivate_user(request: web.Request) -> web.Response:
    app = await require_app(request)
    return json_response(await operations.set_active(core_of(request), app, path_sub(request), active=True,
                                                     ip=client_ip(request)))


@api("Add a document to the knowledge base", body=NewDocument, ok=(201, out.DocumentCreated), also={200: out.DocumentCreated},
     auth="api_key", tag="platform")
async def create_document(request: web.Request) -> web.Response:
    app = await require_app(request)
    app.require("documents:write")
    body = await read_document_json(request)
    document, created = await operations.add_document(
        core_of(request), app, title=body.title, content=body.content, source=body.source, language=body.language,
        course=body.course, ip=client_ip(request),
    )
    return json_response({"document": document, "created": created}, status=201 if created else 200)


@api("Delete a document", ok=out.DocumentResult, auth="api_key", tag="platform")
async def delete_document(request: web.Request) -> web.Response:
    app = await require_app(request)
    document = await operations.delete_document(core_of(request), app, path_uuid(request, "id", "document"),
                                                ip=client_ip(request))
    return json_response({"document": document})


@api("Create a live session hosted by the app's user", body=SessionBody, ok=(201, out.LiveSessionResult), auth="api_key",
     tag="platform", errors=(409,))
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

    return api(f"{action.title()} a live session", ok=out.LiveSessionResult, auth="api_key", tag="platform",
               errors=(409,))(handle)


SUB_FILTER = QueryText("sub", "Only this user's conversations.")
CONVERSATIONS_LIMIT = QueryInt("limit", 50, lo=1, hi=200)
TRANSCRIPT_LIMIT = QueryInt("limit", 100, lo=1, hi=500)
BEFORE_SEQ = QueryInt("before_seq", None, lo=1, hi=2**62)


@api("The conversations of the app's users", ok=out.ConversationList, query=(SUB_FILTER, CONVERSATIONS_LIMIT), auth="api_key",
     tag="platform")
async def list_conversations(request: web.Request) -> web.Response:
    app = await require_app(request)
    sub = SUB_FILTER.read(request)
    limit = CONVERSATIONS_LIMIT.read(request)
    assert limit is not None
    return json_response(await operations.list_conversations(core_of(request), app, sub=sub, limit=limit))


@api("A conversation's messages", ok=out.Transcript, query=(BEFORE_SEQ, TRANSCRIPT_LIMIT), auth="api_key", tag="platform")
async def get_transcript(request: web.Request) -> web.Response:
    app = await require_app(request)
    limit = TRANSCRIPT_LIMIT.read(request)
    assert limit is not None
    return json_response(await operations.transcript(
        core_of(request), app, path_uuid(request, "id", "conversation"),
        before_seq=BEFORE_SEQ.read(request), limit=limit,
    ))


IDEMPOTENCY_HEADER = "Idempotency-Key"


def _idempotency_key(request: web.Request, body: MessageBody) -> str | None:
    """The key from the `Idempotency-Key` header or the body's `client_id` (both: equal)."""
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    header = header_ascii(request, IDEMPOTENCY_HEADER)
    if raw is not None and (header is None or not 1 <= len(header.strip()) <= 255):
        raise ApiError("bad_request", "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    header = header.strip() if header is not None else None
    if header is not None and body.client_id is not None and header != body.client_id:
        raise ApiError("bad_request", "Idempotency-Key and client_id differ; send one, or the same in both.")
    return header or body.client_id


@api("Post a message as the app", body=MessageBody, ok=(201, out.MessageResult), also={200: out.MessageResult},
     auth="api_key", tag="platform", errors=(409,),
     headers={IDEMPOTENCY_HEADER: "A key of your choosing (1-255 characters): a retry with it returns the first "
                                  "message (200, `Idempotent-Replayed: true`) and posts nothing."})
async def post_message(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, MessageBody)
    result, replayed = await operations.post_message(
        core_of(request), app, path_uuid(request, "id", "conversation"), content=body.content,
        idempotency_key=_idempotency_key(request, body), ip=client_ip(request),
    )
    response = json_response(result, status=200 if replayed else 201)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@api("Open a ticket on a conversation", body=TicketBody, ok=(201, out.TicketResult), auth="api_key", tag="platform",
     errors=(409,))
async def open_ticket(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, TicketBody)
    result = await operations.open_ticket(core_of(request), app, body.conversation_id, reason=body.reason,
                                          urgent=body.urgent, ip=client_ip(request))
    return json_response(result, status=201)


@api("A conversation's tickets", ok=out.TicketList, auth="api_key", tag="platform")
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
