"""HTTP: the platform's explicit guest link (handlers/identity/carryover.py).

`POST /api/platform/users/{sub}/link-guest` `{guest_token}` with an API key holding
`users:write` → `{sub, user_id, moved}`: the guest's conversations move to the app's user.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from handlers.identity import carryover
from server import schemas as out
from server.apidoc import api
from server.http import client_ip, core_of, read_json
from server.jsonutil import json_response
from server.platform_api import SUB, path_sub, require_app
from server.validation import Payload, Storable


class LinkGuestBody(Payload):
    guest_token: Annotated[str, Field(min_length=1, max_length=200), Storable]


@api("Move a guest's conversations to the app's user", body=LinkGuestBody, ok=out.GuestLinked, auth="api_key",
     tag="platform", path=SUB)
async def link_guest(request: web.Request) -> web.Response:
    app = await require_app(request)
    body = await read_json(request, LinkGuestBody)
    return json_response(await carryover.link_guest(core_of(request), app, path_sub(request), body.guest_token,
                                                    ip=client_ip(request)))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/platform/users/{sub}/link-guest", link_guest)
