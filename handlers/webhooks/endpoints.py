"""Admin actions on webhook endpoints and their deliveries (HTTP in server/webhooks.py,
CLI in server/webhooks_cli.py). `actor` None is the command line."""

from __future__ import annotations

import base64
import secrets
from dataclasses import asdict
from typing import Any
from uuid import UUID

from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.webhooks import EVENTS
from handlers.webhooks.sender import webhook_id
from handlers.webhooks.targets import TargetRefused, check_host
from storage import apps, audit
from storage import webhooks as store
from storage.webhooks import EndpointRecord

DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def new_secret() -> str:
    """`whsec_` + base64 of 24 random bytes: the Standard Webhooks secret format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def endpoint_out(e: EndpointRecord) -> dict[str, Any]:
    out = asdict(e)
    out.pop("secret")
    out["events"] = list(e.events)
    return out


def delivery_out(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "webhook_id": webhook_id(d["id"])}


def _admin(actor: Actor | None) -> None:
    if actor is not None and actor.role != "admin":
        raise ApiError("forbidden", "Only an admin can manage webhooks.")


async def _refresh(core: Core) -> None:
    """This instance sees the change at once; the others on the database's notification."""
    if core.webhooks is not None:
        await core.webhooks.refresh()


async def create(
    core: Core, actor: Actor | None, *, app_id: UUID, url: str, events: list[str], description: str = "",
    ip: str | None = None,
) -> dict[str, Any]:
    """`{endpoint, secret}`: the secret is shown only now."""
    _admin(actor)
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ApiError("bad_request", f"events must be some of {', '.join(EVENTS)}"
                       + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    try:
        await check_host(url, allow_private=core.settings.webhooks.allow_private_targets)
    except TargetRefused as exc:
        raise ApiError("bad_request", f"url refused: {exc}") from None
    secret = new_secret()
    async with core.db.transaction() as conn:
        if await apps.get(conn, app_id) is None:
            raise ApiError("not_found", "No such app.")
        record = await store.insert_endpoint(
            conn, app_id=app_id, url=url, description=description, events=sorted(set(events)), secret=secret,
            created_by=actor.user_id if actor else None,
        )
        await audit.record(conn, "webhook.create", actor_id=actor.user_id if actor else None,
                           target_type="webhook_endpoint", target_id=record.id, ip=ip,
                           details={"app_id": str(app_id), "url": url, "events": list(record.events)})
    await _refresh(core)
    return {"endpoint": endpoint_out(record), "secret": secret}


async def list_endpoints(core: Core, actor: Actor | None, app_id: UUID | None = None) -> dict[str, Any]:
    _admin(actor)
    async with core.db.connection() as conn:
        return {"endpoints": [endpoint_out(e) for e in await store.list_endpoints(conn, app_id)]}


async def get(core: Core, actor: Actor | None, endpoint_id: UUID) -> dict[str, Any]:
    _admin(actor)
    async with core.db.connection() as conn:
        record = await store.get_endpoint(conn, endpoint_id)
    if record is None:
        raise ApiError("not_found", "No such webhook endpoint.")
    return {"endpoint": endpoint_out(record)}


async def delete(core: Core, actor: Actor | None, endpoint_id: UUID, *, ip: str | None = None) -> None:
    _admin(actor)
    async with core.db.transaction() as conn:
        if not await store.delete_endpoint(conn, endpoint_id):
            raise ApiError("not_found", "No such webhook endpoint.")
        await audit.record(conn, "webhook.delete", actor_id=actor.user_id if actor else None,
                           target_type="webhook_endpoint", target_id=endpoint_id, ip=ip)
    await _refresh(core)


async def set_enabled(
    core: Core, actor: Actor | None, endpoint_id: UUID, enabled: bool, *, ip: str | None = None
) -> dict[str, Any]:
    """Enable (pending deliveries go out again) or disable by hand."""
    _admin(actor)
    async with core.db.transaction() as conn:
        reason = None if enabled else "disabled by an admin" if actor else "disabled from the command line"
        if not await store.set_enabled(conn, endpoint_id, enabled, reason):
            raise ApiError("not_found", "No such webhook endpoint.")
        await audit.record(conn, "webhook.enable" if enabled else "webhook.disable",
                           actor_id=actor.user_id if actor else None, target_type="webhook_endpoint",
                           target_id=endpoint_id, ip=ip)
        record = await store.get_endpoint(conn, endpoint_id)
    assert record is not None
    await _refresh(core)
    return {"endpoint": endpoint_out(record)}


async def deliveries(
    core: Core, actor: Actor | None, endpoint_id: UUID, *, status: str | None = None, limit: int = 50
) -> dict[str, Any]:
    _admin(actor)
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError("bad_request", f"status must be one of {', '.join(DELIVERY_STATUSES)}.")
    async with core.db.connection() as conn:
        if await store.get_endpoint(conn, endpoint_id) is None:
            raise ApiError("not_found", "No such webhook endpoint.")
        rows = await store.list_deliveries(conn, endpoint_id, status=status, limit=max(1, min(limit, 500)))
    return {"deliveries": [delivery_out(d) for d in rows]}


async def redeliver(core: Core, actor: Actor | None, delivery_id: UUID, *, ip: str | None = None) -> dict[str, Any]:
    """Send a delivery again under the same webhook-id (its endpoint must be enabled)."""
    _admin(actor)
    async with core.db.transaction() as conn:
        row = await store.redeliver(conn, delivery_id)
        if row is None:
            if await store.get_delivery(conn, delivery_id) is None:
                raise ApiError("not_found", "No such delivery.")
            raise ApiError("conflict", "This delivery is being sent right now.")
        await audit.record(conn, "webhook.redeliver", actor_id=actor.user_id if actor else None,
                           target_type="webhook_delivery", target_id=delivery_id, ip=ip)
    return {"delivery": delivery_out(row)}
