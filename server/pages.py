"""What the browser pages need beyond `static/`: the socket.io-client bundle, CORS for
the embeddable widget, and a presence snapshot.

Why each exists:
- `/vendor/…` serves `socket.io-client`'s own prebuilt ESM bundle (and its source map),
  vendored unchanged in `server/vendor/socket.io-client/` and shipped in the package, so
  the pages work right after `pip install` (no npm) and speak the protocol through the
  official client. `server/vendor/update.py` refreshes it from npm and records the version
  and sha256 in `VENDORED.json`. It lives outside `/static/` so it does not depend on
  route order with the static route.
- The widget is embedded in other sites: its HTTP calls (guest token, conversation list)
  and its ES module imports are cross-origin, so `/api/*`, `/static/*` and `/vendor/*`
  answer CORS (origins from `STUDYHALL_CORS_ORIGINS`, the same setting Socket.IO uses).
  Auth is a bearer header, never a cookie, so no credentials are allowed cross-origin.
- Security headers (Content-Security-Policy with frame-ancestors from the same CORS
  setting, nosniff, Referrer-Policy) come from `server/headers.py`.
- `GET /api/presence` tells a page who is online *now* among the people who share a
  conversation with the caller; `presence` events only report changes.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from handlers import presence, threads
from handlers.errors import ApiError
from server import headers
from server.http import core_of, require_actor
from server.jsonutil import json_response
from server.keys import SETTINGS

VENDOR_DIR = Path(__file__).resolve().parent / "vendor" / "socket.io-client"
VENDOR_FILES = {
    "socket.io.esm.min.js": "text/javascript",
    "socket.io.esm.min.js.map": "application/json",
}
CORS_PREFIXES = ("/api/", "/static/", "/vendor/")
ALLOWED_HEADERS = "Authorization, Content-Type"
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"


def allowed_origin(setting: str, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for a request's Origin, or None to send none."""
    if not origin:
        return None
    if setting.strip() == "*":
        return "*"
    allowed = {o.strip().rstrip("/") for o in setting.split(",") if o.strip()}
    return origin if origin.rstrip("/") in allowed else None


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith(CORS_PREFIXES):
        return
    value = allowed_origin(request.app[SETTINGS].http.cors_origins, request.headers.get("Origin"))
    if value is None:
        return
    response.headers["Access-Control-Allow-Origin"] = value
    if value != "*":
        response.headers["Vary"] = "Origin"


async def preflight(request: web.Request) -> web.Response:
    """Answer CORS preflights for the API (the headers themselves are added by `_add_cors`)."""
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
    })


async def vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = VENDOR_FILES.get(name)
    path = VENDOR_DIR / name
    if content_type is None:
        raise ApiError("not_found", "No such file.")
    if not path.is_file():
        raise ApiError("not_found", f"{name} is missing from the Studyhall package ({VENDOR_DIR}); "
                       "reinstall Studyhall or run `python3 server/vendor/update.py` in a checkout.")
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "public, max-age=3600"})


async def presence_snapshot(request: web.Request) -> web.Response:
    """`{online: [user_id]}`: who is online among the members of the caller's conversations."""
    actor = await require_actor(request)
    core = core_of(request)
    mine = await threads.list_mine(core, actor)
    people = {m["id"] for conv in mine["conversations"] for m in conv["members"]} - {actor.user_id}
    online = await presence.online_among(core, list(people)) if people else set()
    return json_response({"online": sorted(str(u) for u in online)})


def setup(app: web.Application) -> None:
    app.router.add_get("/vendor/{name}", vendor)
    app.router.add_get("/api/presence", presence_snapshot)
    app.router.add_route("OPTIONS", "/api/{tail:.*}", preflight)
    app.on_response_prepare.append(_add_cors)
    headers.install(app)  # CSP, nosniff, Referrer-Policy, frame-ancestors (server/headers.py)
