"""Shared payload types and the wording of validation errors.

Every string a client sends that can reach the database is a `Text` (or a type built on
it: `Content`, `Name`, `Title`, `ClientId`): PostgreSQL's text cannot hold
a NUL character, nor can UTF-8 hold a lone surrogate, so such a string is refused here
as `bad_request` instead of failing in the database as `internal` (and, for messages,
failing a whole group-commit batch on its way).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, ValidationError
from pydantic_core import PydanticCustomError

from storage.text import unstorable_reason

MAX_CONTENT_BYTES = 16 * 1024


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def _storable(value: str) -> str:
    what = unstorable_reason(value)
    if what is not None:
        raise PydanticCustomError("unstorable_text", "text must not contain {what}", {"what": what})
    return value


# A string that can be stored: no NUL, no lone surrogate. Every string field of a payload
# is a Text, or when bounded `Annotated[str, Field(max_length=...), Storable]`: the length
# constraints come first, so pydantic words them for strings ("at least 8 characters").
Storable = AfterValidator(_storable)
Text = Annotated[str, Storable]


def _content(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
        raise PydanticCustomError("too_large", "content is over {limit} bytes", {"limit": MAX_CONTENT_BYTES})
    if not value.strip():
        raise PydanticCustomError("empty", "content must not be empty")
    return _storable(value)


# The JSON Schema (the OpenAPI description) says what `_content` checks, as far as a schema can.
Content = Annotated[str, AfterValidator(_content), Field(json_schema_extra={
    "minLength": 1, "description": f"Not only whitespace; at most {MAX_CONTENT_BYTES} bytes of UTF-8."})]
Name = Annotated[str, Field(min_length=1, max_length=100), Storable]
Title = Annotated[str, Field(min_length=1, max_length=200), Storable]
ClientId = Annotated[str, Field(min_length=1, max_length=100), Storable]


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError("iso_time", "must be an ISO-8601 time as a string")
    return value


# A time as the protocol writes it: an ISO-8601 string. pydantic alone would also take a
# number as seconds since 1970 (`1.1` is 1970-01-01T00:00:01.1Z), a client's mistake.
IsoTime = Annotated[datetime, BeforeValidator(_iso_text)]


class Payload(BaseModel):
    """Base for event and body schemas: unknown keys are ignored, types are strict-ish."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


Password = Annotated[str, Field(min_length=8, max_length=256), Storable]


class NewAccount(Payload):
    """What every new account must satisfy, whether it comes from the registration form or
    from `studyhall createuser` (one rule, so an admin made at the command line cannot
    have a password or address the server would refuse)."""

    email: EmailStr
    password: Password
    name: Name
