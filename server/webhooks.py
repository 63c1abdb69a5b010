"""HTTP for webhooks (handlers/webhooks/, docs/webhooks.md). Their loops (delivery, the
database listener in handlers/webhooks/listener.py, the subscriptions' reload) are built
and registered with the other loops in server/assembly.py.

Admins:
- `POST /api/webhooks/endpoints` `{app_id, url, events, description?}` → 201 `{endpoint, secret}`
- `GET /api/webhooks/endpoints[?app_id=]`, `GET /api/webhooks/endpoints/{id}`
- `DELETE /api/webhooks/endpoints/{id}` → 204
- `POST /api/webhooks/endpoints/{id}/enable`, `POST /api/webhooks/endpoints/{id}/disable`
- `GET /api/webhooks/endpoints/{id}/deliveries[?status=&limit=]`
- `POST /api/webhooks/deliveries/{id}/redeliver`
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from aiohttp import web
from prometheus_client import Gauge
from pydantic import Field

from handlers.webhooks import endpoints
from handlers.webhooks.delivery import Dispatcher
from server import schemas as out
from server.apidoc import Handler, QueryInt, QueryText, QueryUuid, api
from server.http import client_ip, core_of, path_uuid, read_json, require_actor
from server.jsonutil import json_response
from server.metrics import Metrics
from server.validation import Payload, Storable

DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("webhook_dispatcher")


def install_metrics(metrics: Metrics, dispatcher: Dispatcher) -> None:
    """The outbox lag and whether delivery is yielding, read at each scrape (docs/webhooks.md)."""
    Gauge("studyhall_webhook_outbox_lag_seconds",
          "How long the oldest delivery of this instance's last claim had been due (0: none was)",
          registry=metrics.registry).set_function(lambda: dispatcher.lag_seconds)
    Gauge("studyhall_webhook_yielding",
          "1 while the message pipeline is saturated and delivery runs at its floor rate",
          registry=metrics.registry).set_function(lambda: float(dispatcher.yielding))


class NewEndpointBody(Payload):
    """An endpoint, from `POST /api/webhooks/endpoints` or `studyhall webhook create`."""

    app_id: UUID
    url: Annotated[str, Field(min_length=1, max_length=2048), Storable]
    events: Annotated[list[Annotated[str, Field(max_length=40)]], Field(min_length=1, max_length=20)]
    description: Annotated[str, Field(max_length=300), Storable] = ""


APP_ID = QueryUuid("app_id", "only this app's endpoints")
DELIVERY_STATUS = QueryText("status", "pending, succeeded or failed")
DELIVERY_LIMIT = QueryInt("limit", 50, lo=1, hi=500)


@api("Add a webhook endpoint to an app (admins); its secret is shown once", body=NewEndpointBody,
     ok=(201, out.WebhookEndpointCreated), auth="session", tag="webhooks")
async def create_endpoint(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    body = await read_json(request, NewEndpointBody)
    result = await endpoints.create(core_of(request), actor, app_id=body.app_id, url=body.url, events=body.events,
                                    description=body.description, ip=client_ip(request))
    return json_response(result, status=201)


@api("Webhook endpoints, of one app or all (admins)", ok=out.WebhookEndpointList, auth="session", tag="webhooks",
     query=(APP_ID,))
async def list_endpoints(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await endpoints.list_endpoints(core_of(request), actor, APP_ID.read(request)))


@api("A webhook endpoint (admins)", ok=out.WebhookEndpointResult, auth="session", tag="webhooks")
async def get_endpoint(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await endpoints.get(core_of(request), actor, path_uuid(request, "id", "endpoint")))


@api("Delete a webhook endpoint and its deliveries (admins)", ok=(204, None), auth="session", tag="webhooks")
async def delete_endpoint(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    await endpoints.delete(core_of(request), actor, path_uuid(request, "id", "endpoint"), ip=client_ip(request))
    return web.Response(status=204)


def _switch_route(enabled: bool) -> Handler:
    async def route(request: web.Request) -> web.Response:
        actor = await require_actor(request, ("admin",))
        return json_response(await endpoints.set_enabled(core_of(request), actor, path_uuid(request, "id", "endpoint"),
                                                         enabled, ip=client_ip(request)))

    route.__name__ = "enable_endpoint" if enabled else "disable_endpoint"
    summary = "Enable a webhook endpoint (admins)" if enabled else "Disable a webhook endpoint (admins)"
    return api(summary, ok=out.WebhookEndpointResult, auth="session", tag="webhooks")(route)


enable_endpoint, disable_endpoint = _switch_route(True), _switch_route(False)


@api("An endpoint's recent deliveries: status, response code, latency, attempts (admins)",
     ok=out.WebhookDeliveryList, auth="session", tag="webhooks", query=(DELIVERY_STATUS, DELIVERY_LIMIT))
async def list_deliveries(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    limit = DELIVERY_LIMIT.read(request) or 50
    return json_response(await endpoints.deliveries(
        core_of(request), actor, path_uuid(request, "id", "endpoint"), status=DELIVERY_STATUS.read(request), limit=limit,
    ))


@api("Send a delivery again under the same webhook-id (admins)", ok=out.WebhookDeliveryResult, auth="session",
     tag="webhooks", errors=(409,))
async def redeliver(request: web.Request) -> web.Response:
    actor = await require_actor(request, ("admin",))
    return json_response(await endpoints.redeliver(core_of(request), actor, path_uuid(request, "id", "delivery"),
                                                   ip=client_ip(request)))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/webhooks/endpoints", create_endpoint)
    app.router.add_get("/api/webhooks/endpoints", list_endpoints)
    app.router.add_get("/api/webhooks/endpoints/{id}", get_endpoint)
    app.router.add_delete("/api/webhooks/endpoints/{id}", delete_endpoint)
    app.router.add_post("/api/webhooks/endpoints/{id}/enable", enable_endpoint)
    app.router.add_post("/api/webhooks/endpoints/{id}/disable", disable_endpoint)
    app.router.add_get("/api/webhooks/endpoints/{id}/deliveries", list_deliveries)
    app.router.add_post("/api/webhooks/deliveries/{id}/redeliver", redeliver)
