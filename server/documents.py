"""Transport for the knowledge base: document upload, listing, deletion, and search. The
knowledge base itself is built, and its index checked at startup, in server/assembly.py."""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import Field, ValidationError

from handlers import knowledge
from handlers.errors import ApiError
from server import schemas as out
from server.apidoc import QueryInt, QueryText, api
from server.http import check_text, client_ip, core_of, path_uuid, require_actor
from server.jsonutil import json_response
from server.validation import Payload, Storable, Title, validation_message

log = logging.getLogger(__name__)

Short = Annotated[str, Field(min_length=1, max_length=200), Storable]


class NewDocument(Payload):
    title: Title | None = None
    content: Annotated[str, Field(min_length=1), Storable]
    source: Annotated[str, Field(max_length=1000), Storable] | None = None
    language: Annotated[str, Field(max_length=20), Storable] | None = None
    course: Short | None = None


class FileFields(Payload):
    title: Title | None = None
    source: Annotated[str, Field(max_length=1000), Storable] | None = None
    language: Annotated[str, Field(max_length=20), Storable] | None = None
    course: Short | None = None


def _too_large(limit: int) -> ApiError:
    return ApiError("too_large", f"The document is over {limit} bytes.")


async def _read_limited(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise _too_large(limit)
    return bytes(data)


MAX_FILE_NAME = 255


def _file_name(part: BodyPartReader) -> str:
    """The part's file name: present (its extension tells the type), at most 255
    characters, and text that can be stored (no NUL, no undecodable bytes)."""
    name = part.filename
    if not name:
        raise ApiError("bad_request", "The file part needs a file name (its extension tells the type).")
    if len(name) > MAX_FILE_NAME or not name.isprintable():
        raise ApiError("bad_request", f"The file name must be printable text of at most {MAX_FILE_NAME} characters.")
    return check_text(name, "The file name")


def _field_text(raw: bytes, name: str) -> str:
    try:
        return check_text(raw.decode("utf-8"), name)
    except UnicodeDecodeError:
        raise ApiError("bad_request", f"{name} must be UTF-8 text.") from None


async def _from_multipart(request: web.Request, limit: int) -> tuple[FileFields, bytes, str]:
    """The upload's fields and file. A malformed body (no boundary, a missing or broken
    delimiter, a body cut short, a part header with a NUL) is `bad_request`: aiohttp's
    reader raises ValueError or its own HttpProcessingError for these."""
    boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get("boundary", "")
    if not boundary.strip('"') or not boundary.isascii() or not boundary.isprintable() or len(boundary) > 70:
        raise ApiError("bad_request", "multipart/form-data needs a boundary parameter (1 to 70 ASCII characters).")
    fields: dict[str, str] = {}
    file: tuple[bytes, str] | None = None
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                filename = _file_name(part)
                file = (await _read_limited(part, limit), filename)
            elif part.name in FileFields.model_fields:
                fields[part.name] = _field_text(await _read_limited(part, 10_000), part.name)
    except (ValueError, HttpProcessingError) as exc:  # ValueError includes UnicodeError; ApiError is neither
        detail = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise ApiError("bad_request", f"The multipart body is malformed: {detail}"[:300]) from None
    if file is None:
        raise ApiError("bad_request", "Send a multipart field named file.")
    try:
        meta = FileFields.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        raise ApiError("bad_request", validation_message(exc)) from None
    return meta, file[0], file[1]


async def read_document_json(request: web.Request) -> NewDocument:
    """A document sent as JSON (staff's `POST /api/documents`, an app's `POST /api/platform/documents`).

    Not `read_json`: a document may be far larger than other bodies."""
    # request.read() reads the whole body (StreamReader.read(n) may return only part of
    # it) and stops at the app's client_max_size, which is settings.knowledge.max_upload_bytes.
    raw = await request.read()
    try:
        return NewDocument.model_validate(orjson.loads(raw or b"{}"))
    except orjson.JSONDecodeError:
        raise ApiError("bad_request", "The body is not valid JSON.") from None
    except ValidationError as exc:
        raise ApiError("bad_request", validation_message(exc)) from None


@api("Add a document to the knowledge base", body=NewDocument, multipart=FileFields, ok=(201, out.DocumentCreated),
     also={200: out.DocumentCreated}, auth="session", tag="documents",
     description="JSON text, or a file as multipart/form-data (field `file`). 200 when the same content was already there.")
async def create_document(request: web.Request) -> web.Response:
    actor = await require_actor(request, knowledge.EDITOR_ROLES)
    core = core_of(request)
    limit = core.settings.knowledge.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    if request.content_type == "application/x-www-form-urlencoded":
        raise ApiError("bad_request", "Upload a file as multipart/form-data (field file), or send JSON.")
    if request.content_type.startswith("multipart/"):
        meta, data, filename = await _from_multipart(request, limit)
        document, created = await knowledge.add_document(
            core, actor.user_id, title=meta.title, file=data, filename=filename, source=meta.source,
            language=meta.language, course=meta.course, ip=client_ip(request),
        )
    else:
        body = await read_document_json(request)
        document, created = await knowledge.add_document(
            core, actor.user_id, title=body.title, content=body.content, source=body.source,
            language=body.language, course=body.course, ip=client_ip(request),
        )
    return json_response({"document": document, "created": created}, status=201 if created else 200)


LIMIT = QueryInt("limit", 100, lo=1, hi=500)
OFFSET = QueryInt("offset", 0, lo=0, hi=10**9)
COURSE = QueryText("course", "Only this course's documents.")
Q = QueryText("q", "The search text.", default="")
K = QueryInt("k", 5, lo=1, hi=knowledge.MAX_K, description="How many passages.")


@api("List the knowledge base's documents", ok=out.DocumentList, query=(LIMIT, OFFSET, COURSE), auth="session", tag="documents")
async def list_documents(request: web.Request) -> web.Response:
    await require_actor(request, knowledge.EDITOR_ROLES)
    limit = LIMIT.read(request)
    offset = OFFSET.read(request)
    course = COURSE.read(request)
    documents = await knowledge.list_documents(core_of(request), course=course, limit=limit or 100, offset=offset or 0)
    return json_response({"documents": documents})


def _document_id(request: web.Request) -> UUID:
    return path_uuid(request, "id", "document")


@api("A document", ok=out.DocumentResult, auth="session", tag="documents")
async def get_document(request: web.Request) -> web.Response:
    await require_actor(request, knowledge.EDITOR_ROLES)
    return json_response({"document": await knowledge.get_document(core_of(request), _document_id(request))})


@api("Delete a document", ok=out.DocumentDeleted, auth="session", tag="documents")
async def delete_document(request: web.Request) -> web.Response:
    actor = await require_actor(request, knowledge.EDITOR_ROLES)
    document = await knowledge.delete_document(core_of(request), actor.user_id, _document_id(request), ip=client_ip(request))
    return json_response({"document": document, "deleted": True})


@api("Search the knowledge base", ok=out.SearchResults, query=(Q, K, COURSE), auth="session", tag="documents")
async def search(request: web.Request) -> web.Response:
    await require_actor(request)
    k = K.read(request)
    results = await knowledge.search(core_of(request), Q.read(request) or "", k=k or 5, course=COURSE.read(request))
    return json_response({"results": [r.as_dict() for r in results]})


def setup(app: web.Application) -> None:
    """Add routes; called by the app factory before startup."""
    app.router.add_post("/api/documents", create_document)
    app.router.add_get("/api/documents", list_documents)
    app.router.add_get("/api/documents/{id}", get_document)
    app.router.add_delete("/api/documents/{id}", delete_document)
    app.router.add_get("/api/search", search)
