"""The browser pages in static/ and the socket.io-client bundle installed from npm."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from handlers.errors import ApiError
from server.keys import SETTINGS

REPO_ROOT = Path(__file__).resolve().parent.parent


def static_dir(app: web.Application) -> Path:
    return app[SETTINGS].http.static_dir or REPO_ROOT / "static"


async def index(request: web.Request) -> web.StreamResponse:
    page = static_dir(request.app) / "index.html"
    if page.exists():
        return web.FileResponse(page)
    return web.Response(text="Studyhall is running. See /api/health.", content_type="text/plain")


def _static_handler(directory: Path):  # type: ignore[no-untyped-def]
    """Files under `directory` only (no listing, nothing outside it after resolving links);
    anything else is the protocol's `not_found` (aiohttp's own static route answers an
    empty 404 or a plain-text 403)."""
    root = directory.resolve()

    async def static_file(request: web.Request) -> web.StreamResponse:
        try:
            path = (root / request.match_info["path"]).resolve(strict=True)
        except (OSError, ValueError, RuntimeError):
            raise ApiError("not_found", "No such file.") from None
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError("not_found", "No such file.")
        return web.FileResponse(path)

    return static_file


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    directory = static_dir(app)
    if directory.is_dir():
        app.router.add_get("/static/{path:.+}", _static_handler(directory))
