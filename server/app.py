"""The app factory: one aiohttp app with its Socket.IO server, built from Settings.

Pools, clients and background tasks open and close in `cleanup_ctx`, in order: database
(embedded PostgreSQL when no DATABASE_URL), migrations, core services, instance
housekeeping. Features plug in through `setup(app)` (routes, before startup) and
`bind(app, core, gateway)` (events and services, once the core exists).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from handlers import presence
from handlers.core import Core
from server import documents as documents_feature
from server import pages, revocation, routes_accounts, routes_static, threads
from server import rooms as rooms_feature
from server import tickets as tickets_feature
from server import tutor as tutor_feature
from server.config import Settings
from server.gateway import Gateway
from server.http import error_middleware
from server.keys import CORE, GATEWAY, METRICS, SETTINGS, SIO
from server.metrics import Metrics
from server.realtime import SocketEvents, create_sio, watch_redis
from storage import connections
from storage.db import Database
from storage.embedded import EmbeddedPostgres
from storage.migrate import migrate

log = logging.getLogger(__name__)

FEATURES = (
    routes_accounts, threads, documents_feature, tutor_feature, rooms_feature, tickets_feature, pages, routes_static,
    revocation,
)
HEARTBEAT_SECONDS = 10.0
DEAD_AFTER_SECONDS = 45.0


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=max(settings.max_upload_bytes, settings.max_http_body_bytes),
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    sio = create_sio(settings)
    sio.attach(app)
    app[SIO] = sio
    app.on_shutdown.append(_mark_closing)
    app.cleanup_ctx.append(_core_ctx)
    app.cleanup_ctx.append(_housekeeping_ctx)
    for feature in FEATURES:
        feature.setup(app)
    return app


async def _mark_closing(app: web.Application) -> None:
    """Shutdown begins (before websockets close): disconnect hooks then start no timers."""
    core = app.get(CORE)
    if core is not None:
        core.closing = True


async def _core_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedPostgres | None = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(Path(settings.data_dir), shared_buffers=settings.pg_shared_buffers)
        url = await asyncio.to_thread(embedded.start)
        log.info("using the embedded PostgreSQL", extra={"data_dir": str(settings.data_dir)})
    try:
        await migrate(url)
        db = await Database.connect(url)
        sio = app[SIO]
        core = Core(settings=settings, db=db, events=SocketEvents(sio, db, app[METRICS]), instance_id=uuid.uuid4())
        app[CORE] = core
        gateway = Gateway(sio, core, app[METRICS])
        gateway.on_connect.append(presence.socket_connected)
        gateway.on_disconnect.append(presence.socket_disconnected)
        app[GATEWAY] = gateway
        for feature in FEATURES:
            bind = getattr(feature, "bind", None)
            if bind is not None:
                bind(app, core, gateway)
        async with db.connection() as conn:
            await connections.register_instance(conn, core.instance_id)
        yield
        core.closing = True
        for sid in gateway.local_sids():
            await sio.disconnect(sid, ignore_queue=True)
        await core.cancel_background()
        async with db.connection() as conn:
            await connections.remove_instance(conn, core.instance_id)
        await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE]
    tasks = [asyncio.create_task(_housekeeping(app))]
    if core.settings.redis_url:
        tasks.append(asyncio.create_task(watch_redis(core.settings, app[SIO], app[METRICS])))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _housekeeping(app: web.Application) -> None:
    """Heartbeat; forget crashed instances; close sockets whose token expired or was revoked."""
    core, gateway = app[CORE], app[GATEWAY]
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        try:
            async with core.db.connection() as conn:
                await connections.heartbeat(conn, core.instance_id)
                orphaned = await connections.reap_dead_instances(conn, DEAD_AFTER_SECONDS)
                dead_sids = await connections.sids_with_dead_tokens(conn, core.instance_id)
            if orphaned:
                await presence.announce_offline(core, orphaned)
            await core.events.disconnect_sids(sid for sid in dead_sids if sid in gateway.sockets)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("housekeeping failed")
