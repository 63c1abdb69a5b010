"""Transport for message threads."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add routes; called by the app factory before startup."""
