"""Typed keys for what the aiohttp app holds (aiohttp's recommended pattern; no globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import socketio

    from handlers.core import Core
    from handlers.settings import Settings
    from server.gateway import Gateway
    from server.metrics import Metrics

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
CORE: web.AppKey[Core] = web.AppKey("core")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio")
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
