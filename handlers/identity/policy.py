"""Which app a browser request belongs to, and that app's rules for it.

A request is tied to an app by the `app_id` it passes (the widget's `data-app-id`) and
by its `Origin` header: every app whose `allowed_origins` lists that origin. Browsers set
`Origin` themselves, so a page cannot pass for another site; server-to-server calls send
none and are tied to an app only by `app_id`.

- `require_identity`: a guest or password sign-up tied to such an app is `forbidden`.
- `allowed_origins`: an identity sign-in from a browser whose Origin the app does not list
  is `forbidden`. An app with no origins listed accepts any (as before); a request without
  an Origin (a server) is accepted.
"""

from __future__ import annotations

from uuid import UUID

from handlers.core import Core
from handlers.errors import ApiError
from storage import apps
from storage.apps import AppRecord

IDENTITY_REQUIRED = "This site signs its users in itself: guests and new accounts are not available here."
ORIGIN_REFUSED = "This app does not allow identity sign-in from this site."


def normal_origin(origin: str | None) -> str | None:
    """The Origin header as apps store theirs (scheme://host[:port], no trailing slash);
    None for none at all or the opaque "null" of sandboxed frames and files."""
    if not origin or origin == "null":
        return None
    return origin.strip().rstrip("/").lower()


def origin_allowed(app: AppRecord, origin: str | None) -> bool:
    seen = normal_origin(origin)
    if seen is None or not app.allowed_origins:
        return True
    return seen in (o.lower() for o in app.allowed_origins)


async def apps_for(core: Core, *, app_id: UUID | None, origin: str | None) -> list[AppRecord]:
    """The apps a request is tied to (see the module's docstring)."""
    found: dict[UUID, AppRecord] = {}
    seen = normal_origin(origin)
    async with core.db.connection() as conn:
        if app_id is not None:
            record = await apps.get(conn, app_id)
            if record is None:
                raise ApiError("bad_request", "app_id names no app.")
            found[record.id] = record
        if seen is not None:
            for record in await apps.by_origin(conn, seen):
                found.setdefault(record.id, record)
    return list(found.values())


async def check_unverified_sign_up(core: Core, *, app_id: UUID | None, origin: str | None) -> None:
    """Guests and password sign-ups: `forbidden` when the request is tied to an app that
    requires verified identity."""
    if any(a.require_identity for a in await apps_for(core, app_id=app_id, origin=origin)):
        raise ApiError("forbidden", IDENTITY_REQUIRED)
