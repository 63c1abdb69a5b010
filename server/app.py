"""The app factory: one aiohttp app with its Socket.IO server, built from Settings.

Pools, clients and background tasks open and close in `cleanup_ctx`, in order: database
(embedded PostgreSQL when no DATABASE_URL), migrations, the core and its services (built
and wired in one place, server/assembly.py), then every background loop. Features add
their routes through `setup(app)`, before startup.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from handlers.core import Core
from handlers.ratelimit import RateLimiter
from handlers.settings import Settings
from server import documents as documents_feature
from server import evaluation as evaluation_feature
from server import identity as identity_feature
from server import openapi, pages, routes_accounts, routes_static, threads
from server import platform_api as platform_feature
from server import platform_link as platform_link_feature
from server import rooms as rooms_feature
from server import tickets as tickets_feature
from server import tutor as tutor_feature
from server import webhooks as webhooks_feature
from server.assembly import Assembly, assemble
from server.client_address import trusted_proxies
from server.gateway import Gateway
from server.http import error_middleware
from server.keys import CORE, GATEWAY, METRICS, SETTINGS, SIO
from server.lifecycle import LIFECYCLE, Lifecycle, close_transports, watch_embedded
from server.metrics import Metrics
from server.parse_errors import install as install_parse_errors
from server.realtime import SocketEvents, create_sio
from server.unavailable import bind_metrics
from storage import connections
from storage.db import Database
from storage.embedded import EmbeddedPostgres
from storage.migrate import migrate

log = logging.getLogger(__name__)

# The app's services beyond Core (here, not in server/keys.py: the assembly imports the features,
# and they import server/keys.py).
ASSEMBLY: web.AppKey[Assembly] = web.AppKey("assembly")

# Their routes, added before startup; everything else is wired in server/assembly.py.
FEATURES = (
    routes_accounts, threads, documents_feature, tutor_feature, rooms_feature, tickets_feature, pages, routes_static,
    identity_feature,
    platform_feature,  # API keys and the platform API
    platform_link_feature,  # guest carry-over by API key
    webhooks_feature,  # webhook endpoints and deliveries (admins)
    evaluation_feature,  # retrieval evaluation (staff)
    openapi,  # last: describes every route above (server/openapi.py)
)


def create_app(settings: Settings) -> web.Application:
    try:
        trusted_proxies(settings.http.trusted_proxies)
    except ValueError as exc:
        raise SystemExit(f"STUDYHALL_TRUSTED_PROXIES: {exc}") from None
    install_parse_errors()  # parser refusals get the protocol's error body too
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=max(settings.knowledge.max_upload_bytes, settings.http.max_body_bytes),
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle()
    sio = create_sio(settings)
    sio.attach(app)
    app[SIO] = sio
    app.on_shutdown.append(_close_clients)
    app.cleanup_ctx.append(_core_ctx)
    app.cleanup_ctx.append(_loops_ctx)
    for feature in FEATURES:
        feature.setup(app)
    return app


async def _close_clients(app: web.Application) -> None:
    """Shutdown begins (the sites no longer accept): disconnect hooks start no timers from
    now on, and every client's transport is closed so it reconnects, to another instance.
    Without this aiohttp waited for each websocket handler, about 40 s (server/lifecycle.py)."""
    core = app.get(CORE)
    if core is not None:
        core.closing = True
    settings = app[SETTINGS]
    sio = app[SIO]
    log.info("shutdown: closing %d client connections (clients reconnect)", len(sio.eio.sockets))
    try:
        await close_transports(sio, settings.http.shutdown_seconds)
    except TimeoutError:
        log.warning("shutdown: clients still closing after %.1f s; going on", settings.http.shutdown_seconds)


async def _core_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedPostgres | None = None
    url = settings.database.url
    if url is None:
        embedded = EmbeddedPostgres(Path(settings.database.data_dir), shared_buffers=settings.database.pg_shared_buffers)
        url = await asyncio.to_thread(embedded.start)
        log.info("using the embedded PostgreSQL", extra={"data_dir": str(settings.database.data_dir)})
    watchdog: asyncio.Task[None] | None = None
    try:
        await migrate(url)
        db = await Database.connect(
            url,
            connect_timeout=settings.database.connect_timeout_seconds,
            command_timeout=settings.database.command_timeout_seconds,
        )
        bind_metrics(app[METRICS], db.outage)
        sio = app[SIO]
        core = Core(
            settings=settings, db=db, events=SocketEvents(sio, db, app[METRICS]), instance_id=uuid.uuid4(),
            limiter=RateLimiter(settings.cluster.redis_url, prefix=settings.cluster.redis_channel),
        )
        app[CORE] = core
        gateway = Gateway(sio, core, app[METRICS])
        app[GATEWAY] = gateway
        app[ASSEMBLY] = assemble(app, core, gateway)
        async with db.connection() as conn:
            await connections.register_instance(conn, core.instance_id)
        if embedded is not None:
            watchdog = asyncio.create_task(
                watch_embedded(embedded, app[LIFECYCLE], settings.database.pg_watch_seconds, settings.database.pg_restart_seconds)
            )
        yield
        core.closing = True
        for sid in gateway.local_sids():
            await sio.disconnect(sid, ignore_queue=True)
        log.info("shutdown: stopping background tasks")
        await core.cancel_background()
        try:
            async with db.connection() as conn:
                await connections.remove_instance(conn, core.instance_id)
        except Exception as exc:  # the database is gone: others reap this instance after its heartbeat stops
            log.warning("shutdown: could not deregister this instance: %r", exc)
        await core.limiter.close()
        log.info("shutdown: closing the database pool")
        try:
            await asyncio.wait_for(db.close(), settings.http.shutdown_seconds)
        except TimeoutError:
            log.warning("shutdown: database connections still busy after %.1f s; closing them", settings.http.shutdown_seconds)
            db.terminate()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        if embedded is not None and await asyncio.to_thread(embedded.stop):
            log.info("shutdown: stopped the embedded PostgreSQL")


async def _loops_ctx(app: web.Application) -> AsyncIterator[None]:
    """Once the core exists and the instance is registered: every loop (server/assembly.py).
    At shutdown they stop, and the tutor closes, before the core's context closes the pool."""
    assembly = app[ASSEMBLY]
    await assembly.start()
    yield
    await assembly.stop()
