"""What the browser pages need beyond `static/`: the vendored npm bundles, CORS for the
embeddable widget, and a presence snapshot.

Why each exists:
- `/vendor/…` serves the npm packages' own prebuilt bundles (and source maps), vendored
  unchanged in `server/vendor/<package>/` and shipped in the package, so the pages work
  right after `pip install` (no npm): `socket.io-client` (the pages speak the protocol
  through the official client), `markdown-it` and `dompurify` (Markdown in tutor and agent
  messages, static/js/markdown.js). `server/vendor/update.py` refreshes them from npm and
  records each version and sha256 in its `VENDORED.json`. markdown-it ships only a UMD
  build: it is served as an ES module by wrapping it in two lines here (`module.exports`
  becomes the default export, so nothing lands on the host page's `window`), and the
  file on disk stays byte for byte npm's. It lives outside `/static/` so it does not
  depend on route order with the static route.
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

import functools
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from handlers import presence, threads
from handlers.errors import ApiError
from server import headers
from server import schemas as out
from server.apidoc import api
from server.http import core_of, require_actor
from server.jsonutil import json_response
from server.keys import SETTINGS

VENDOR_ROOT = Path(__file__).resolve().parent / "vendor"


@dataclass(frozen=True)
class Vendored:
    """One served file: its package folder under VENDOR_ROOT, the file there, its type, and
    whether a UMD build is wrapped as an ES module."""

    package: str
    file: str
    content_type: str
    wrap_umd: bool = False


JS, MAP = "text/javascript", "application/json"
VENDOR_FILES = {
    "socket.io.esm.min.js": Vendored("socket.io-client", "socket.io.esm.min.js", JS),
    "socket.io.esm.min.js.map": Vendored("socket.io-client", "socket.io.esm.min.js.map", MAP),
    "markdown-it.esm.js": Vendored("markdown-it", "markdown-it.min.js", JS, wrap_umd=True),
    "markdown-it.min.js.map": Vendored("markdown-it", "markdown-it.min.js.map", MAP),
    "purify.es.mjs": Vendored("dompurify", "purify.es.mjs", JS),
    "purify.es.mjs.map": Vendored("dompurify", "purify.es.mjs.map", MAP),
}
# The UMD prologue takes the CommonJS branch; on the licence-comment line, so the source
# map's lines still match.
UMD_HEAD = b"const module = { exports: {} }, exports = module.exports;"
UMD_TAIL = b"\nexport default module.exports;\n"
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
    served = VENDOR_FILES.get(name)
    if served is None:
        raise ApiError("not_found", "No such file.")
    path = VENDOR_ROOT / served.package / served.file
    if not path.is_file():
        raise ApiError("not_found", f"{name} is missing from the Studyhall package ({path.parent}); "
                       "reinstall Studyhall or run `python3 server/vendor/update.py` in a checkout.")
    headers = {"Content-Type": served.content_type, "Cache-Control": "public, max-age=3600"}
    if served.wrap_umd:
        return web.Response(body=_wrapped(path), headers=headers)
    return web.FileResponse(path, headers=headers)


@functools.cache
def _wrapped(path: Path) -> bytes:
    """A UMD bundle as an ES module, built once: the file does not change while the server
    runs, and reading it per request would block the event loop."""
    return UMD_HEAD + path.read_bytes() + UMD_TAIL


@api("Who is online among the people you share a conversation with", ok=out.Presence, auth="session", tag="threads")
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
