"""orjson, shaped for python-socketio and aiohttp.

python-socketio's `json=` option wants a module whose `dumps` returns str; orjson returns
bytes, so it is wrapped here. UUIDs and datetimes serialise natively (times as ISO-8601 UTC
with a Z).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from aiohttp import web

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    # asyncpg returns its own UUID subclass, which orjson does not take as a UUID.
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_bytes(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def dumps(value: Any, **_ignored: Any) -> str:
    """str-returning dumps; keyword arguments (separators=...) are ignored: orjson is compact."""
    return orjson.dumps(value, default=_default, option=_OPTIONS).decode()


def loads(value: str | bytes, **_ignored: Any) -> Any:
    return orjson.loads(value)


def to_jsonable(value: Any) -> Any:
    """Round-trip through orjson: turns UUIDs and datetimes into strings for ack payloads."""
    return orjson.loads(dumps_bytes(value))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps_bytes(data), status=status, content_type="application/json")


class OrjsonModule:
    """The module-like object python-socketio expects for `json=`."""

    dumps = staticmethod(dumps)
    loads = staticmethod(loads)
