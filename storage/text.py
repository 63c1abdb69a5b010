"""What a PostgreSQL text value can hold: no NUL character, and valid UTF-8 (so no lone
UTF-16 surrogate in a Python str). Checked before a value reaches a statement, so one
such value is refused on its own instead of failing the statement it would share."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_reason(value: str) -> str | None:
    """None when `value` can be stored as text, else what is wrong with it."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\x00" else "an unpaired UTF-16 surrogate"
