"""Shared payload types and the wording of validation errors."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, ValidationError
from pydantic_core import PydanticCustomError

MAX_CONTENT_BYTES = 16 * 1024


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def _content(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise PydanticCustomError("too_large", "content is over {limit} bytes", {"limit": MAX_CONTENT_BYTES})
    if not value.strip():
        raise PydanticCustomError("empty", "content must not be empty")
    return value


Content = Annotated[str, AfterValidator(_content)]
Name = Annotated[str, Field(min_length=1, max_length=100)]
Title = Annotated[str, Field(min_length=1, max_length=200)]
ClientId = Annotated[str, Field(min_length=1, max_length=100)]


class Payload(BaseModel):
    """Base for event and body schemas: unknown keys are ignored, types are strict-ish."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


Password = Annotated[str, Field(min_length=8, max_length=256)]


class NewAccount(Payload):
    """What every new account must satisfy, whether it comes from the registration form or
    from `studyhall createuser` (one rule, so an admin made at the command line cannot
    have a password or address the server would refuse)."""

    email: EmailStr
    password: Password
    name: Name
