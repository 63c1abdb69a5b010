"""HTTP plumbing shared by every route module: errors, auth, bodies, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from handlers import auth
from handlers.core import Actor, Core
from handlers.errors import ApiError
from server.client_address import trusted_proxies
from server.jsonutil import json_response
from server.keys import CORE, METRICS, SETTINGS
from server.validation import validation_message

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def error_response(code: str, message: str, status: int) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


def api_error_response(err: ApiError) -> web.Response:
    """The error body for an ApiError, with `Retry-After` when it says when to retry."""
    response = json_response({"error": err.to_dict()}, status=err.http_status)
    if err.retry_after_header is not None:
        response.headers["Retry-After"] = err.retry_after_header
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every error leaves as `{error: {code, message}}` with the protocol's status code."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as err:
        status = err.http_status
        metrics.event_errors.labels(err.code, "http").inc()
        return api_error_response(err)
    except web.HTTPRequestEntityTooLarge:
        status = 413
        metrics.event_errors.labels("too_large", "http").inc()
        return error_response("too_large", "The request body is too large.", 413)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status == 404:
            return error_response("not_found", "No such endpoint.", 404)
        if exc.status == 405:
            return error_response("bad_request", "Method not allowed here.", 405)
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        metrics.event_errors.labels("internal", "http").inc()
        return error_response("internal", "Something went wrong on the server.", 500)
    finally:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        metrics.http_latency.labels(request.method, route, str(status)).observe(time.perf_counter() - started)


def core_of(request: web.Request) -> Core:
    return request.app[CORE]


def client_ip(request: web.Request) -> str | None:
    """The client's address: the peer, or X-Forwarded-For's when the peer is a trusted proxy."""
    trusted = trusted_proxies(request.app[SETTINGS].trusted_proxies)
    return trusted.client_address(request.remote, request.headers.getall("X-Forwarded-For", []))


async def require_actor(request: web.Request, roles: tuple[str, ...] | None = None) -> Actor:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    actor = await auth.authenticate(core_of(request), token)
    if roles is not None and actor.role not in roles:
        raise ApiError("forbidden", "Your role may not do this.")
    return actor


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, at most `max_http_body_bytes` long."""
    limit = core_of(request).settings.max_http_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("too_large", f"The body is over {limit} bytes.")
    # One read() may return only part of the body: read until EOF, stopping past the limit.
    buffer = bytearray()
    while chunk := await request.content.read(64 * 1024):
        buffer.extend(chunk)
        if len(buffer) > limit:
            raise ApiError("too_large", f"The body is over {limit} bytes.")
    raw = bytes(buffer)
    try:
        data: Any = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise ApiError("bad_request", "The body is not valid JSON.") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError("bad_request", validation_message(exc)) from None


def path_uuid(request: web.Request, key: str, what: str) -> UUID:
    """A UUID from the URL path; a malformed one is `not_found`, like an unknown one."""
    try:
        return UUID(request.match_info[key])
    except ValueError:
        raise ApiError("not_found", f"No such {what}.") from None


def query_uuid(request: web.Request, name: str) -> UUID | None:
    """An optional UUID from the query string; a malformed one is `bad_request`."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return UUID(raw)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be a UUID.") from None


def query_int(request: web.Request, name: str, default: int | None, *, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be a whole number.") from None
    if not lo <= value <= hi:
        raise ApiError("bad_request", f"{name} must be between {lo} and {hi}.")
    return value
