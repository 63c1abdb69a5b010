"""Transport for live rooms: HTTP routes for sessions and favorites, Socket.IO room events,
and the socket operations the room service needs. Wired in server/assembly.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import socketio
from aiohttp import web
from pydantic import Field

from handlers.core import Actor, Core
from handlers.rooms import live as rooms_live
from handlers.rooms import sessions as rooms
from server.gateway import EventSpec, Gateway
from server.http import core_of, path_uuid, query_int, query_uuid, read_json, require_actor
from server.jsonutil import json_response
from server.validation import Payload, Storable, Title

SessionType = Annotated[str, Field(min_length=1, max_length=50), Storable]


class CreateSession(Payload):
    title: Title
    max_participants: Annotated[int, Field(ge=1, le=10_000)]
    scheduled_start_time: datetime | None = None
    type: SessionType = "lecture"
    is_featured: bool = False


class FavoriteBody(Payload):
    user_id: UUID
    notify_when_online: bool = True


class RoomRef(Payload):
    live_session_id: UUID


class Hand(Payload):
    live_session_id: UUID
    raised: bool


class Moderate(Payload):
    live_session_id: UUID
    user_id: UUID
    action: Literal["mute", "unmute", "kick", "ban"]


# --- Socket.IO ----------------------------------------------------------------------

async def on_join(core: Core, actor: Actor, p: RoomRef) -> dict:
    return await rooms_live.join(core, actor, p.live_session_id)


async def on_leave(core: Core, actor: Actor, p: RoomRef) -> dict:
    return await rooms_live.leave(core, actor, p.live_session_id)


async def on_hand(core: Core, actor: Actor, p: Hand) -> dict:
    return await rooms_live.hand(core, actor, p.live_session_id, p.raised)


async def on_moderate(core: Core, actor: Actor, p: Moderate) -> dict:
    return await rooms_live.moderate(core, actor, p.live_session_id, p.user_id, p.action)


EVENTS = [
    EventSpec("room:join", on_join, RoomRef),
    EventSpec("room:leave", on_leave, RoomRef),
    EventSpec("room:hand", on_hand, Hand),
    EventSpec("room:moderate", on_moderate, Moderate),
]


# --- HTTP ---------------------------------------------------------------------------

async def create_session(request: web.Request) -> web.Response:
    actor = await require_actor(request, roles=rooms.CREATOR_ROLES)
    body = await read_json(request, CreateSession)
    result = await rooms.create(
        core_of(request), actor, title=body.title, type=body.type, scheduled_start_time=body.scheduled_start_time,
        max_participants=body.max_participants, is_featured=body.is_featured,
    )
    return json_response(result, status=201)


async def list_sessions(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    host_id = query_uuid(request, "host_id")
    limit = query_int(request, "limit", 100, lo=1, hi=500)
    assert limit is not None
    status = request.query.get("status") or None
    return json_response(await rooms.list_sessions(core_of(request), actor, status=status, host_id=host_id, limit=limit))


async def get_session(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    return json_response(await rooms.get(core_of(request), actor, path_uuid(request, "id", "live session")))


def _status_route(action: str):  # type: ignore[no-untyped-def]
    async def route(request: web.Request) -> web.Response:
        actor = await require_actor(request)
        session_id = path_uuid(request, "id", "live session")
        return json_response(await rooms.change_status(core_of(request), actor, session_id, action))

    route.__name__ = f"{action}_session"
    return route


async def add_favorite(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    body = await read_json(request, FavoriteBody)
    result = await rooms.favorite(core_of(request), actor, user_id=body.user_id, notify_when_online=body.notify_when_online)
    return json_response(result, status=201)


async def remove_favorite(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    await rooms.unfavorite(core_of(request), actor, user_id=path_uuid(request, "user_id", "favorite"))
    return web.Response(status=204)


async def list_favorites(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    return json_response(await rooms.list_favorites(core_of(request), actor))


def setup(app: web.Application) -> None:
    """Add routes; called by the app factory before startup."""
    app.router.add_post("/api/live-sessions", create_session)
    app.router.add_get("/api/live-sessions", list_sessions)
    app.router.add_get("/api/live-sessions/{id}", get_session)
    for action in rooms.TRANSITIONS:
        app.router.add_post(f"/api/live-sessions/{{id}}/{action}", _status_route(action))
    app.router.add_post("/api/favorites", add_favorite)
    app.router.add_get("/api/favorites", list_favorites)
    app.router.add_delete("/api/favorites/{user_id}", remove_favorite)


def room_service(sio: socketio.AsyncServer, gateway: Gateway) -> rooms.RoomService:
    """The app's room state, with the two socket operations rooms need (server/assembly.py)."""

    async def enter_socket(sid: str, room: str) -> None:
        if sid in gateway.sockets:
            await sio.enter_room(sid, room)

    async def close_socket_room(room: str) -> None:
        await sio.close_room(room)

    return rooms.RoomService(enter_socket=enter_socket, close_socket_room=close_socket_room)
