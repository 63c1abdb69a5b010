"""What each HTTP route declares about itself, for the OpenAPI description (server/openapi.py).

A route says, next to its handler, what it reads and answers:

    @api("Create a live session", body=CreateSession, ok=(201, LiveSessionResult), auth="session")
    async def create_session(request): ... await read_json(request, CreateSession) ...

The body model is the one the handler validates with, and a query parameter is an object
the handler reads through (`LIMIT.read(request)`): the description and the checks come
from one declaration, never a second copy. `server/openapi.py` walks `app.router.routes()`
and fails on a route that declares nothing (tests/test_openapi.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from handlers.errors import ApiError
from server.http import query_int, query_uuid

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
Auth = Literal["none", "session", "api_key", "metrics"]
DOC_ATTR = "__openapi__"


@dataclass(frozen=True)
class QueryInt:
    """A whole number in [lo, hi] (`query_int`: anything else is `bad_request`)."""

    name: str
    default: int | None
    lo: int
    hi: int
    description: str = ""

    def read(self, request: web.Request) -> int | None:
        return query_int(request, self.name, self.default, lo=self.lo, hi=self.hi)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class QueryUuid:
    """An optional UUID (`query_uuid`: a malformed one is `bad_request`)."""

    name: str
    description: str = ""

    def read(self, request: web.Request) -> UUID | None:
        return query_uuid(request, self.name)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uuid"}


@dataclass(frozen=True)
class QueryText:
    """Optional free text; empty is the same as absent (None), unless `default` is given."""

    name: str
    description: str = ""
    default: str | None = None

    def read(self, request: web.Request) -> str | None:
        return request.query.get(self.name) or self.default

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


@dataclass(frozen=True)
class QueryTime:
    """An optional ISO-8601 time (a trailing Z is UTC); anything else is `bad_request`."""

    name: str
    description: str = ""

    def read(self, request: web.Request) -> datetime | None:
        raw = request.query.get(self.name)
        if not raw:
            return None
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError("bad_request", f"{self.name} must be an ISO-8601 time.") from None

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


QueryParam = QueryInt | QueryUuid | QueryText | QueryTime


@dataclass(frozen=True)
class Doc:
    """One operation's declaration. `ok` is the success status and body model (None: no
    body); `errors` adds statuses beyond those every route of its kind can answer (see
    server/openapi.py); `path` overrides the schema of a path parameter (default: a UUID)."""

    summary: str
    ok: tuple[int, type[BaseModel] | None]
    auth: Auth
    tag: str
    body: type[BaseModel] | None = None
    multipart: type[BaseModel] | None = None
    query: tuple[QueryParam, ...] = ()
    path: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    also: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    content_type: str = "application/json"
    description: str = ""
    # Optional request headers the handler reads (name -> description).
    headers: Mapping[str, str] = field(default_factory=dict)


def api(
    summary: str, *, ok: tuple[int, type[BaseModel] | None] | type[BaseModel], auth: Auth, tag: str,
    body: type[BaseModel] | None = None, multipart: type[BaseModel] | None = None,
    query: tuple[QueryParam, ...] = (), path: Mapping[str, dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (), also: Mapping[int, type[BaseModel] | None] | None = None,
    content_type: str = "application/json", description: str = "", headers: Mapping[str, str] | None = None,
) -> Callable[[H], H]:
    """Attach a `Doc` to a route handler (read back by `doc_of`)."""
    doc = Doc(summary=summary, ok=ok if isinstance(ok, tuple) else (200, ok), auth=auth, tag=tag, body=body,
              multipart=multipart, query=query, path=dict(path or {}), errors=errors, also=dict(also or {}),
              content_type=content_type, description=description, headers=dict(headers or {}))

    def attach(handler: H) -> H:
        setattr(handler, DOC_ATTR, doc)
        return handler

    return attach


def doc_of(handler: object) -> Doc | None:
    doc = getattr(handler, DOC_ATTR, None)
    return doc if isinstance(doc, Doc) else None
