"""The browser pages in static/ and the socket.io-client bundle installed from npm."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.keys import SETTINGS

REPO_ROOT = Path(__file__).resolve().parent.parent


def static_dir(app: web.Application) -> Path:
    return app[SETTINGS].static_dir or REPO_ROOT / "static"


async def index(request: web.Request) -> web.StreamResponse:
    page = static_dir(request.app) / "index.html"
    if page.exists():
        return web.FileResponse(page)
    return web.Response(text="Studyhall is running. See /api/health.", content_type="text/plain")


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    directory = static_dir(app)
    if directory.is_dir():
        app.router.add_static("/static/", directory, show_index=False, follow_symlinks=False)
