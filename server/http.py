"""HTTP plumbing shared by every route module: errors, auth, bodies, metrics.

Hostile input is stopped here, before any route sees it: a query string that is not
UTF-8 or holds a NUL, an over-long path segment, a token that is not printable ASCII.
What slips past a route's own checks and is refused by the database or by Python's
encoders (a NUL or a lone surrogate in text, a date or number out of range) is the
client's input, so it is answered `bad_request`, never 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes
from uuid import UUID

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from handlers import auth
from handlers.core import Actor, Core
from handlers.errors import ApiError
from server.client_address import trusted_proxies
from server.jsonutil import json_response
from server.keys import CORE, METRICS, SETTINGS
from server.unavailable import unavailable_error
from server.validation import validation_message

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def error_response(code: str, message: str, status: int) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


# Status of an aiohttp HTTPException (static files, routing) -> the protocol's code.
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "bad_request", 413: "too_large"}
_HTTP_TEXTS = {403: "Not allowed here.", 404: "No such endpoint.", 405: "Method not allowed here.", 413: "The request body is too large."}
MAX_PATH_SEGMENT_BYTES = 255  # longer is no file and no id; the file system would refuse it


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
        check_request_edges(request)
        response = await handler(request)
        status = response.status
        return response
    except ApiError as err:
        status = err.http_status
        metrics.event_errors.labels(err.code, "http").inc()
        return api_error_response(err)
    except web.HTTPException as exc:
        status = exc.status
        if 400 <= exc.status < 500:
            code = _HTTP_CODES.get(exc.status, "bad_request")
            metrics.event_errors.labels(code, "http").inc()
            response = error_response(code, _HTTP_TEXTS.get(exc.status, exc.reason), exc.status)
            if "Allow" in exc.headers:  # 405 must say which methods the path has (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except (asyncpg.DataError, UnicodeEncodeError, OverflowError):
        # Input no check caught that cannot be stored or computed with: the client's error.
        # Logged with its traceback so that a check can be added where it belongs.
        status = 400
        log.warning("request refused: a value cannot be stored", exc_info=True, extra={"path": request.path})
        metrics.event_errors.labels("bad_request", "http").inc()
        return error_response("bad_request", "A value in the request is out of range or holds characters that cannot be stored.", 400)
    except Exception as exc:
        core = request.app.get(CORE)
        if (down := unavailable_error(exc, core.db.outage if core else None)) is not None:
            status = down.http_status
            metrics.event_errors.labels(down.code, "http").inc()
            return api_error_response(down)
        log.exception("request failed", extra={"path": request.path})
        metrics.event_errors.labels("internal", "http").inc()
        return error_response("internal", "Something went wrong on the server.", 500)
    finally:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        metrics.http_latency.labels(request.method, route, str(status)).observe(time.perf_counter() - started)


def unstorable(text: str) -> bool:
    """True when text holds a NUL (PostgreSQL text cannot) or a lone surrogate (no UTF-8
    encoding exists; aiohttp decodes bytes that are not UTF-8 in headers this way)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(text: str, what: str) -> str:
    """`text` unless it cannot be stored: then `bad_request` naming `what`."""
    if unstorable(text):
        raise ApiError("bad_request", f"{what} must be UTF-8 text without NUL characters.")
    return text


def check_request_edges(request: web.Request) -> None:
    """Refuse what no route can use: a query string that is not UTF-8 or holds a NUL
    (yarl would quietly turn bad bytes into U+FFFD and keep the NUL), and an over-long
    path segment (no id or file name is that long; the file system raises on it)."""
    raw_query = request.rel_url.raw_query_string
    if raw_query:
        for pair in raw_query.split("&"):
            for piece in pair.split("=", 1):
                try:
                    decoded = unquote_to_bytes(piece.replace("+", " ")).decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiError("bad_request", "The query string must be UTF-8.") from None
                if "\x00" in decoded:
                    raise ApiError("bad_request", "The query string must not contain NUL characters.")
    if any(len(segment.encode("utf-8", "surrogateescape")) > MAX_PATH_SEGMENT_BYTES for segment in request.path.split("/")):
        raise ApiError("not_found", "No such endpoint.")


def header_ascii(request: web.Request, name: str) -> str | None:
    """A header's value if it is printable ASCII, else None (a value with other bytes is
    no token, address or secret we issued, and would fail later when encoded)."""
    value = request.headers.get(name)
    if value is None or not value.isascii() or not value.isprintable():
        return None
    return value


def core_of(request: web.Request) -> Core:
    return request.app[CORE]


def client_ip(request: web.Request) -> str | None:
    """The client's address: the peer, or X-Forwarded-For's when the peer is a trusted proxy."""
    trusted = trusted_proxies(request.app[SETTINGS].http.trusted_proxies)
    return trusted.client_address(request.remote, request.headers.getall("X-Forwarded-For", []))


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110); None
    without one, or when the header is not printable ASCII. Session tokens, API keys and
    the /metrics token all come this way."""
    header = header_ascii(request, "Authorization") or ""
    return header[7:].strip() if header[:7].lower() == "bearer " else None


async def require_actor(request: web.Request, roles: tuple[str, ...] | None = None) -> Actor:
    actor = await auth.authenticate(core_of(request), bearer_token(request))
    if roles is not None and actor.role not in roles:
        raise ApiError("forbidden", "Your role may not do this.")
    return actor


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, at most `settings.http.max_body_bytes` long."""
    limit = core_of(request).settings.http.max_body_bytes
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
