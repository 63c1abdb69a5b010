"""The protocol's error: a code from a fixed list and a message a person can read."""

from __future__ import annotations

import math

ERROR_CODES = frozenset(
    {
        "bad_request", "unauthorized", "forbidden", "not_found", "conflict", "not_live",
        "room_full", "rate_limited", "too_large", "unavailable", "internal",
    }
)

HTTP_STATUS = {
    "bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404,
    "conflict": 409, "not_live": 409, "room_full": 409, "rate_limited": 429,
    "too_large": 413, "unavailable": 503, "internal": 500,
}


class ApiError(Exception):
    """Raised by handlers; the transport turns it into an ack or an HTTP error body.

    `retry_after_ms` (with `rate_limited`, or `unavailable` when the wait is known) tells
    the client when trying again can succeed: it is added to the error object of an ack
    (`error.retry_after_ms`) and becomes a `Retry-After` header (whole seconds) over HTTP.
    """

    def __init__(self, code: str, message: str, *, retry_after_ms: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

    def to_dict(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def retry_after_header(self) -> str | None:
        """The `Retry-After` value in whole seconds (at least 1), or None."""
        if self.retry_after_ms is None:
            return None
        return str(max(1, math.ceil(self.retry_after_ms / 1000)))
