"""`GET /api/openapi.json`: an OpenAPI 3.1 description of every HTTP route, built from the
routes themselves; `GET /api/docs`: a page that renders it (static/api-docs.html).

Each route handler carries a `Doc` (server/apidoc.py): its body model (the one it
validates with), its query parameters (the objects it reads them through), its success
status and response model (server/schemas.py) and the extra statuses it can answer. This
module walks `app.router.routes()`: a route that neither declares a Doc nor is listed in
`EXCLUDED` (with the reason) is an error, so the description cannot miss a route.

Statuses every operation can answer are added here, from what the shared plumbing does
(server/http.py): 400 (a query string that is not UTF-8, a value the database refuses),
404 (an over-long path segment; unknown or malformed ids in the path), 500 and 503 (the
database is down). A body adds 400 and 413; a session adds 401 and 403 (roles);
an API key adds 401, 403 (scopes) and 429 (its rate limit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from handlers.errors import ApiError
from server.apidoc import Doc, api, doc_of
from server.jsonutil import json_response
from server.routes_static import static_dir
from server.schemas import ErrorBody, OpenApiDescription

TITLE = "Studyhall HTTP API"
VERSION = "1"

# Routes the description leaves out, by path prefix, and why.
EXCLUDED: dict[str, str] = {
    "/socket.io/": "the Socket.IO endpoint: its events are the client protocol (docs/protocol.md), not HTTP operations",
    "/static/": "static files of the browser pages",
    "/vendor/": "the vendored socket.io-client bundle the pages load",
}
EXCLUDED_EXACT: dict[tuple[str, str], str] = {
    ("GET", "/"): "the home page (static/index.html)",
    ("OPTIONS", "/api/{tail}"): "CORS preflight for every /api/ path (server/pages.py)",
}
# aiohttp answers HEAD for every GET route (same headers, no body): not listed twice.
IMPLIED_METHODS = frozenset({"HEAD"})

ERROR_TEXT = {
    400: "bad_request: the body, a query or path parameter is invalid",
    401: "unauthorized: no valid token or API key",
    403: "forbidden: your role (or the key's scopes) may not do this",
    404: "not_found: no such object or endpoint",
    409: "conflict (or not_live / room_full): the object's state does not allow this",
    413: "too_large: the body is over the limit",
    429: "rate_limited: wait `retry_after_ms` (a Retry-After header says the same in seconds)",
    500: "internal: a bug on the server",
    503: "unavailable: the database (or a model) is unavailable; retry later",
}
SECURITY_SCHEMES = {
    "session": {
        "type": "http", "scheme": "bearer",
        "description": "A session token from /api/auth/login, /api/auth/register, /api/auth/guest or "
                       "/api/auth/identity: `Authorization: Bearer <token>`.",
    },
    "apiKey": {
        "type": "http", "scheme": "bearer", "bearerFormat": "sh_live_…",
        "description": "An app's API key (`studyhall app key create` or POST /api/apps/{id}/keys): "
                       "`Authorization: Bearer sh_live_…`. Only the /api/platform/ routes take it.",
    },
    "metricsToken": {
        "type": "http", "scheme": "bearer",
        "description": "STUDYHALL_METRICS_TOKEN (or a client address in STUDYHALL_METRICS_ALLOW).",
    },
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {"none": [], "session": [{"session": []}], "api_key": [{"apiKey": []}],
             "metrics": [{"metricsToken": []}, {}]}
Refs = Mapping[tuple[Any, JsonSchemaMode], Mapping[str, Any]]
_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


class UndocumentedRoute(RuntimeError):
    """A route with no Doc that EXCLUDED does not list."""


@dataclass
class _Cache:
    description: dict[str, Any] | None = None


CACHE: web.AppKey[_Cache] = web.AppKey("openapi_cache", _Cache)


def excluded_reason(method: str, path: str) -> str | None:
    if method in IMPLIED_METHODS:
        return "aiohttp answers HEAD for every GET route"
    if (method, path) in EXCLUDED_EXACT:
        return EXCLUDED_EXACT[(method, path)]
    for prefix, reason in EXCLUDED.items():
        if path.startswith(prefix):
            return reason
    return None


def _route_path(route: web.AbstractRoute) -> str:
    """The path template without regexes (`/static/{path:.+}` → `/static/{path}`)."""
    return route.resource.canonical if route.resource is not None else ""


def documented_routes(app: web.Application) -> list[tuple[str, str, Doc]]:
    """(method, path, Doc) for every route the description covers; raises on one it misses."""
    out = []
    missing = []
    for route in app.router.routes():
        method, path = route.method.upper(), _route_path(route)
        doc = doc_of(route.handler)
        if method in IMPLIED_METHODS:
            continue
        if doc is not None:
            out.append((method, path, doc))
        elif excluded_reason(method, path) is None:
            missing.append(f"{method} {path} ({getattr(route.handler, '__qualname__', route.handler)})")
    if missing:
        raise UndocumentedRoute("routes with no @api declaration (server/apidoc.py): " + ", ".join(missing))
    return out


def _statuses(doc: Doc) -> set[int]:
    statuses = {400, 404, 500, 503, *doc.errors}
    if doc.body is not None or doc.multipart is not None:
        statuses |= {400, 413}
    if doc.auth == "session":
        statuses |= {401, 403}
    if doc.auth == "api_key":
        statuses |= {401, 403, 429}
    return statuses - {doc.ok[0], *doc.also}


def _schema_ref(refs: Refs, model: type[BaseModel],
                mode: JsonSchemaMode) -> dict[str, Any]:
    return dict(refs[(model, mode)])


def _multipart_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The form fields of `model` (each optional, text) plus the required `file`."""
    schema = model.model_json_schema(mode="validation")
    properties: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        properties[name] = {**branches[0], **({"title": prop["title"]} if "title" in prop else {})}
    properties["file"] = {"type": "string", "format": "binary", "description": "The file; its extension tells the type."}
    return {"type": "object", "properties": properties, "required": ["file"]}


def _json_content(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 description of `app`'s routes."""
    routes = documented_routes(app)
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for _method, _path, doc in routes:
        if doc.body is not None:
            wanted.append((doc.body, "validation"))
        for model in (doc.ok[1], *doc.also.values()):
            if model is not None:
                wanted.append((model, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}")
    error_ref = _schema_ref(refs, ErrorBody, "serialization")

    paths: dict[str, dict[str, Any]] = {}
    for method, path, doc in sorted(routes, key=lambda r: (r[1], r[0])):
        operation: dict[str, Any] = {
            "operationId": _operation_id(method, path),
            "summary": doc.summary,
            "tags": [doc.tag],
            "security": _SECURITY[doc.auth],
        }
        if doc.description:
            operation["description"] = doc.description
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": doc.path.get(name, {"type": "string", "format": "uuid"})}
            for name in _PARAM.findall(path)
        ]
        parameters += [
            # Every query helper takes an empty value (`?limit=`) as absent: allowEmptyValue.
            {"name": q.name, "in": "query", "required": False, "allowEmptyValue": True, "schema": q.schema(),
             **({"description": q.description} if q.description else {})}
            for q in doc.query
        ]
        parameters += [
            {"name": name, "in": "header", "required": False, "description": text,
             "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
            for name, text in doc.headers.items()
        ]
        if parameters:
            operation["parameters"] = parameters
        content: dict[str, Any] = {}
        if doc.body is not None:
            content.update(_json_content(_schema_ref(refs, doc.body, "validation")))
        if doc.multipart is not None:
            content["multipart/form-data"] = {"schema": _multipart_schema(doc.multipart)}
        if content:
            operation["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        for status, model in {doc.ok[0]: doc.ok[1], **doc.also}.items():
            responses[str(status)] = _response(status, model, refs, doc.content_type)
        for status in sorted(_statuses(doc)):
            responses[str(status)] = {"description": ERROR_TEXT[status], "content": _json_content(error_ref)}
        operation["responses"] = dict(sorted(responses.items()))
        paths.setdefault(_openapi_path(path), {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE, "version": VERSION,
            "description": "Every HTTP route of this Studyhall server, generated from the models that validate "
                           "its requests (docs/openapi.md). The realtime protocol (Socket.IO) is in "
                           "docs/protocol.md. Every error is `{error: {code, message}}`.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
        "x-excluded-routes": [
            *({"path": f"{p}…", "reason": r} for p, r in EXCLUDED.items()),
            *({"method": m, "path": p, "reason": r} for (m, p), r in EXCLUDED_EXACT.items()),
        ],
    }


def _response(status: int, model: type[BaseModel] | None, refs: Refs,
              content_type: str) -> dict[str, Any]:
    if model is None and content_type == "application/json":
        return {"description": "Done; no body."}
    if model is None:
        return {"description": "OK", "content": {content_type: {"schema": {"type": "string"}}}}
    return {"description": "OK", "content": _json_content(_schema_ref(refs, model, "serialization"))}


def _openapi_path(path: str) -> str:
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", _openapi_path(path).lower()).strip("_")
    return f"{method.lower()}_{words}"


async def openapi_json(request: web.Request) -> web.Response:
    cache = request.app[CACHE]
    if cache.description is None:
        cache.description = build(request.app)
    return json_response(cache.description)


async def docs_page(request: web.Request) -> web.StreamResponse:
    page = static_dir(request.app) / "api-docs.html"
    if not page.is_file():
        raise ApiError("not_found", "static/api-docs.html is missing; the description is at /api/openapi.json.")
    return web.FileResponse(page)


def setup(app: web.Application) -> None:
    app[CACHE] = _Cache()
    app.router.add_get("/api/openapi.json", api("This description (OpenAPI 3.1)", ok=OpenApiDescription,
                                                auth="none", tag="docs")(openapi_json))
    app.router.add_get("/api/docs", api("A page that renders this description", ok=(200, None), auth="none",
                                        tag="docs", content_type="text/html")(docs_page))
