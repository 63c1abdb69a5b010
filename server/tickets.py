"""Transport for support tickets: agent events and the queue's HTTP routes. The service,
its pipeline hook and the SLA watcher are wired in server/assembly.py."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.tickets import queue as tickets_queue
from handlers.tickets.service import TicketService
from server.gateway import EventSpec
from server.http import core_of, path_uuid, query_int, require_actor
from server.jsonutil import json_response
from server.validation import Content, Payload, Storable
from storage.records import STAFF_ROLES

STAFF = frozenset(STAFF_ROLES)
Reason = Annotated[str, Field(min_length=1, max_length=500), Storable]


class TicketRef(Payload):
    ticket_id: UUID


class CreateTicket(Payload):
    conversation_id: UUID
    reason: Reason
    priority: Literal["low", "normal", "high", "urgent"] | None = None
    category: Annotated[str, Field(min_length=1, max_length=50), Storable] | None = None


class Note(Payload):
    ticket_id: UUID
    content: Content


class Transfer(Payload):
    ticket_id: UUID
    agent_id: UUID


class Resolve(Payload):
    ticket_id: UUID
    resolution: Annotated[str, Field(max_length=4000), Storable] | None = None
    handback: Literal["ai", "close"]


def _service(core: Core) -> TicketService:
    """The agents' actions are the concrete service's own (the `Escalations` port on Core
    is what the tutor uses)."""
    service = core.tickets
    if not isinstance(service, TicketService):
        raise ApiError("unavailable", "Tickets are not available on this server.")
    return service


async def on_create(core: Core, actor: Actor, p: CreateTicket) -> dict:
    ticket = await _service(core).escalate(
        core, conversation_id=p.conversation_id, reason=p.reason, escalated_by=actor, source="staff",
        category=p.category, priority=p.priority,
    )
    return {"ticket": ticket}


async def on_claim(core: Core, actor: Actor, p: TicketRef) -> dict:
    return await _service(core).claim(core, actor, p.ticket_id)


async def on_note(core: Core, actor: Actor, p: Note) -> dict:
    return await _service(core).add_note(core, actor, p.ticket_id, p.content)


async def on_transfer(core: Core, actor: Actor, p: Transfer) -> dict:
    return await _service(core).transfer(core, actor, p.ticket_id, p.agent_id)


async def on_resolve(core: Core, actor: Actor, p: Resolve) -> dict:
    resolution = p.resolution.strip() if p.resolution and p.resolution.strip() else None
    return await _service(core).resolve(core, actor, p.ticket_id, resolution=resolution, handback=p.handback)


EVENTS = [
    EventSpec("ticket:create", on_create, CreateTicket, roles=STAFF),
    EventSpec("ticket:claim", on_claim, TicketRef, roles=STAFF),
    EventSpec("ticket:note", on_note, Note, roles=STAFF),
    EventSpec("ticket:transfer", on_transfer, Transfer, roles=STAFF),
    EventSpec("ticket:resolve", on_resolve, Resolve, roles=STAFF),
]


async def list_tickets(request: web.Request) -> web.Response:
    actor = await require_actor(request, roles=STAFF_ROLES)
    limit = query_int(request, "limit", 100, lo=1, hi=500)
    assert limit is not None
    result = await tickets_queue.list_queue(
        core_of(request), actor, status=request.query.get("status"), assigned=request.query.get("assigned"), limit=limit
    )
    return json_response(result)


async def get_ticket(request: web.Request) -> web.Response:
    await require_actor(request, roles=STAFF_ROLES)
    ticket_id = path_uuid(request, "id", "ticket")
    return json_response(await tickets_queue.detail(core_of(request), ticket_id))


async def list_priorities(request: web.Request) -> web.Response:
    await require_actor(request, roles=STAFF_ROLES)
    return json_response(await tickets_queue.priorities(core_of(request)))


def setup(app: web.Application) -> None:
    """Add routes; called by the app factory before startup."""
    app.router.add_get("/api/tickets", list_tickets)
    app.router.add_get("/api/ticket-priorities", list_priorities)
    app.router.add_get("/api/tickets/{id}", get_ticket)
