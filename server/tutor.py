"""Transport for the tutor: tutor:start / tutor:stop / tutor:escalate, usage and decision
routes. The service, its pipeline hooks and its loops are wired in server/assembly.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.tutor import service as tutor
from server.gateway import EventSpec
from server.http import core_of, path_uuid, query_uuid, require_actor
from server.jsonutil import json_response
from server.validation import Payload, Storable, Title

Short = Annotated[str, Field(min_length=1, max_length=200), Storable]


class StartTutor(Payload):
    title: Title | None = None
    course: Short | None = None
    lesson: Short | None = None
    session_type: Literal["lesson", "interactive", "exam_prep"] | None = None
    socratic: bool | None = None


class TutorRef(Payload):
    conversation_id: UUID


class EscalateTutor(Payload):
    conversation_id: UUID
    reason: Annotated[str, Field(max_length=2000), Storable] | None = None


async def on_start(core: Core, actor: Actor, p: StartTutor) -> dict:
    return await tutor.start(
        core, actor, title=p.title, course=p.course, lesson=p.lesson, session_type=p.session_type, socratic=p.socratic
    )


async def on_stop(core: Core, actor: Actor, p: TutorRef) -> dict:
    return await tutor.stop(core, actor, conversation_id=p.conversation_id)


async def on_escalate(core: Core, actor: Actor, p: EscalateTutor) -> dict:
    return await tutor.escalate(core, actor, conversation_id=p.conversation_id, reason=p.reason)


EVENTS = [
    EventSpec("tutor:start", on_start, StartTutor),
    EventSpec("tutor:stop", on_stop, TutorRef),
    EventSpec("tutor:escalate", on_escalate, EscalateTutor),
]


async def get_usage(request: web.Request) -> web.Response:
    """`GET /api/usage?user_id=&since=`: your model usage, or any user's for an admin."""
    actor = await require_actor(request)
    since = None
    if raw := request.query.get("since"):
        try:
            since = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError("bad_request", "since must be an ISO-8601 time.") from None
    result = await tutor.usage(core_of(request), actor, user_id=query_uuid(request, "user_id"), since=since)
    return json_response(result)


async def get_decisions(request: web.Request) -> web.Response:
    """`GET /api/tutor/{conversation_id}/decisions`: the tutor's decision log."""
    actor = await require_actor(request)
    conversation_id = path_uuid(request, "id", "conversation")
    return json_response(await tutor.decisions(core_of(request), actor, conversation_id=conversation_id))


def setup(app: web.Application) -> None:
    """Add routes; called by the app factory before startup."""
    app.router.add_get("/api/usage", get_usage)
    app.router.add_get("/api/tutor/{id}/decisions", get_decisions)
