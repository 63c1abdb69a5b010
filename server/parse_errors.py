"""The protocol's error body for requests aiohttp's HTTP parser refuses.

A request whose line or headers HTTP does not allow (a header over 8190 bytes, a control
character or NUL in a header value, a malformed request line) never reaches the app and
its middleware: aiohttp answers it itself, as `text/plain` that echoes the offending bytes
back, and logs an ERROR with a traceback for each one. The protocol promises
`{error: {code, message}}` for every HTTP error (an `Idempotency-Key` of 10 kB or with a
control character got the plain text), and a hostile client should not be able to fill
the error log. aiohttp has no setting for this answer: its `RequestHandler.handle_error`
builds it, and `install()` wraps that method once, for parser refusals only (a 4xx with an
`HttpProcessingError`); everything else (500s, a response already started) goes to
aiohttp's own. The status stays aiohttp's (400), the body says what kind of input it was
without repeating it, and the log gets one INFO line.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from server.http import error_response

log = logging.getLogger(__name__)

MALFORMED = "The request line or a header is malformed: HTTP allows no control characters or NUL in them."
TOO_LONG = "The request line or a header is too long."


def install() -> None:
    """Answer parser refusals with the protocol's body (idempotent; called by create_app)."""
    handler_class = web_protocol.RequestHandler
    original = handler_class.handle_error
    if getattr(original, "studyhall_protocol_errors", False):
        return

    def handle_error(self: Any, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web_protocol.StreamResponse:
        if not (400 <= status < 500 and isinstance(exc, HttpProcessingError)) or request.writer.output_size > 0:
            return original(self, request, status, exc, message)
        log.info("request refused by the HTTP parser", extra={"kind": type(exc).__name__})
        response = error_response("bad_request", TOO_LONG if isinstance(exc, LineTooLong) else MALFORMED, status)
        response.force_close()  # as aiohttp does: the connection's stream is not trusted any more
        return response

    handle_error.studyhall_protocol_errors = True  # type: ignore[attr-defined]
    handler_class.handle_error = handle_error  # type: ignore[method-assign]
