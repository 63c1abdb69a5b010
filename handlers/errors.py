"""The protocol's error: a code from a fixed list and a message a person can read."""

from __future__ import annotations

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
    """Raised by handlers; the transport turns it into an ack or an HTTP error body."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]
