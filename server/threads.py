"""Transport for message threads: Socket.IO events and HTTP routes."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field

from handlers import threads
from handlers.core import Actor, Core
from server import schemas as out
from server.apidoc import QueryInt, api
from server.gateway import EventSpec
from server.http import core_of, path_uuid, require_actor
from server.jsonutil import json_response
from server.validation import ClientId, Content, Payload, Title


class CreateConversation(Payload):
    kind: Literal["direct", "group"]
    member_ids: Annotated[list[UUID], Field(min_length=1, max_length=threads.MAX_GROUP_MEMBERS)]
    title: Title | None = None


class SendMessage(Payload):
    conversation_id: UUID
    content: Content
    client_id: ClientId


class EditMessage(Payload):
    message_id: UUID
    content: Content


class MessageRef(Payload):
    message_id: UUID


class Typing(Payload):
    conversation_id: UUID
    typing: bool


class Read(Payload):
    conversation_id: UUID
    seq: Annotated[int, Field(ge=0)]


class History(Payload):
    conversation_id: UUID
    before_seq: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class Sync(Payload):
    since: Annotated[dict[UUID, Annotated[int, Field(ge=0)]], Field(max_length=500)]


async def on_create(core: Core, actor: Actor, p: CreateConversation) -> dict:
    return await threads.create(core, actor, kind=p.kind, member_ids=p.member_ids, title=p.title)


async def on_send(core: Core, actor: Actor, p: SendMessage) -> dict:
    return await threads.send(core, actor, conversation_id=p.conversation_id, content=p.content, client_id=p.client_id)


async def on_edit(core: Core, actor: Actor, p: EditMessage) -> dict:
    return await threads.edit(core, actor, message_id=p.message_id, content=p.content)


async def on_delete(core: Core, actor: Actor, p: MessageRef) -> dict:
    return await threads.delete(core, actor, message_id=p.message_id)


async def on_typing(core: Core, actor: Actor, p: Typing) -> dict:
    return await threads.typing(core, actor, conversation_id=p.conversation_id, is_typing=p.typing)


async def on_read(core: Core, actor: Actor, p: Read) -> dict:
    return await threads.read(core, actor, conversation_id=p.conversation_id, seq=p.seq)


async def on_history(core: Core, actor: Actor, p: History) -> dict:
    return await threads.history(core, actor, conversation_id=p.conversation_id, before_seq=p.before_seq, limit=p.limit)


async def on_sync(core: Core, actor: Actor, p: Sync) -> dict:
    return await threads.sync(core, actor, since=p.since)


EVENTS = [
    EventSpec("conversation:create", on_create, CreateConversation),
    EventSpec("message:send", on_send, SendMessage, ordered_until_queued=True),
    EventSpec("message:edit", on_edit, EditMessage),
    EventSpec("message:delete", on_delete, MessageRef),
    EventSpec("typing", on_typing, Typing),
    EventSpec("read", on_read, Read),
    EventSpec("history", on_history, History),
    EventSpec("sync", on_sync, Sync),
]


BEFORE_SEQ = QueryInt("before_seq", None, lo=1, hi=2**62, description="Messages before this seq (newest first page without it).")
LIMIT = QueryInt("limit", 50, lo=1, hi=100)


@api("Your conversations", ok=out.ConversationList, auth="session", tag="threads")
async def list_conversations(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    return json_response(await threads.list_mine(core_of(request), actor))


@api("A page of a conversation's messages", ok=out.MessagePage, query=(BEFORE_SEQ, LIMIT), auth="session", tag="threads")
async def list_messages(request: web.Request) -> web.Response:
    actor = await require_actor(request)
    conversation_id = path_uuid(request, "id", "conversation")
    before_seq = BEFORE_SEQ.read(request)
    limit = LIMIT.read(request)
    assert limit is not None
    return json_response(await threads.history(core_of(request), actor, conversation_id=conversation_id, before_seq=before_seq, limit=limit))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_get("/api/conversations/{id}/messages", list_messages)
