"""The app factory: one aiohttp app with its Socket.IO server, built from Settings.

Pools, clients and background tasks open and close in `cleanup_ctx`, in order: database
(embedded PostgreSQL when no DATABASE_URL), migrations, core services, instance
housekeeping. Features plug in through `setup(app)` (routes, before startup) and
`bind(app, core, gateway)` (events and services, once the core exists).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from handlers import guests, presence, registry
from handlers.background import repeat
from handlers.core import Core
from handlers.ratelimit import RateLimiter
from handlers.settings import Settings
from server import documents as documents_feature
from server import identity as identity_feature
from server import pages, revocation, routes_accounts, routes_static, threads
from server import rooms as rooms_feature
from server import tickets as tickets_feature
from server import tutor as tutor_feature
from server import webhooks as webhooks_feature
from server.client_address import trusted_proxies
from server.gateway import Gateway
from server.http import error_middleware
from server.keys import CORE, GATEWAY, METRICS, SETTINGS, SIO
from server.lifecycle import LIFECYCLE, Lifecycle, close_transports, watch_embedded
from server.metrics import Metrics
from server.realtime import SocketEvents, create_sio, watch_redis
from server.unavailable import bind_metrics
from storage import connections
from storage.connections import SocketRow
from storage.db import Database
from storage.embedded import EmbeddedPostgres
from storage.migrate import migrate

log = logging.getLogger(__name__)

FEATURES = (
    routes_accounts, threads, documents_feature, tutor_feature, rooms_feature, tickets_feature, pages, routes_static,
    revocation, identity_feature,
    webhooks_feature,  # last: its bind wraps the message writer the threads feature installed
)
DEAD_AFTER_SECONDS = 45.0  # at least; never under 4.5 heartbeats (settings.instance_heartbeat_seconds)
GUEST_SWEEP_SECONDS = 3600.0  # idle guests are counted in days: hourly is plenty


def create_app(settings: Settings) -> web.Application:
    try:
        trusted_proxies(settings.trusted_proxies)
    except ValueError as exc:
        raise SystemExit(f"STUDYHALL_TRUSTED_PROXIES: {exc}") from None
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=max(settings.max_upload_bytes, settings.max_http_body_bytes),
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle()
    sio = create_sio(settings)
    sio.attach(app)
    app[SIO] = sio
    app.on_shutdown.append(_close_clients)
    app.cleanup_ctx.append(_core_ctx)
    app.cleanup_ctx.append(_housekeeping_ctx)
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
        await close_transports(sio, settings.shutdown_seconds)
    except TimeoutError:
        log.warning("shutdown: clients still closing after %.1f s; going on", settings.shutdown_seconds)


async def _core_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedPostgres | None = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(Path(settings.data_dir), shared_buffers=settings.pg_shared_buffers)
        url = await asyncio.to_thread(embedded.start)
        log.info("using the embedded PostgreSQL", extra={"data_dir": str(settings.data_dir)})
    watchdog: asyncio.Task[None] | None = None
    try:
        await migrate(url)
        db = await Database.connect(
            url,
            connect_timeout=settings.db_connect_timeout_seconds,
            command_timeout=settings.db_command_timeout_seconds,
        )
        bind_metrics(app[METRICS], db.outage)
        sio = app[SIO]
        core = Core(
            settings=settings, db=db, events=SocketEvents(sio, db, app[METRICS]), instance_id=uuid.uuid4(),
            limiter=RateLimiter(settings.redis_url, prefix=settings.redis_channel),
        )
        app[CORE] = core
        gateway = Gateway(sio, core, app[METRICS])
        gateway.on_connect.append(presence.socket_connected)
        gateway.on_disconnect.append(presence.socket_disconnected)
        app[GATEWAY] = gateway
        core.services["registry"] = registry.Registry(local_sockets=lambda: _socket_rows(gateway))
        for feature in FEATURES:
            bind = getattr(feature, "bind", None)
            if bind is not None:
                bind(app, core, gateway)
        async with db.connection() as conn:
            await connections.register_instance(conn, core.instance_id)
        if embedded is not None:
            watchdog = asyncio.create_task(
                watch_embedded(embedded, app[LIFECYCLE], settings.pg_watch_seconds, settings.pg_restart_seconds)
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
            await asyncio.wait_for(db.close(), settings.shutdown_seconds)
        except TimeoutError:
            log.warning("shutdown: database connections still busy after %.1f s; closing them", settings.shutdown_seconds)
            db.pool.terminate()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        if embedded is not None and await asyncio.to_thread(embedded.stop):
            log.info("shutdown: stopped the embedded PostgreSQL")


async def _housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE]
    tasks = [asyncio.create_task(_housekeeping(app)), asyncio.create_task(_guest_sweeper(app))]
    if core.settings.redis_url:
        tasks.append(asyncio.create_task(watch_redis(core.settings, app[SIO], app[METRICS])))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _socket_rows(gateway: Gateway) -> list[SocketRow]:
    return [SocketRow(sid, s.actor.user_id, s.actor.token_id) for sid, s in list(gateway.sockets.items())]


async def _housekeeping(app: web.Application) -> None:
    """Heartbeat (re-registering after a registry reset, handlers/registry.py); forget
    crashed instances; close sockets whose token expired or was revoked."""
    core, gateway = app[CORE], app[GATEWAY]
    interval = core.settings.instance_heartbeat_seconds
    dead_after = max(DEAD_AFTER_SECONDS, 4.5 * interval)

    async def one_pass() -> None:
        gone = await registry.heartbeat(core)
        async with core.db.connection() as conn:
            orphaned = await connections.reap_dead_instances(conn, dead_after)
            dead_sids = await connections.sids_with_dead_tokens(conn, core.instance_id)
        if gone or orphaned:  # waits for a settled registry: not in this loop
            core.spawn(presence.announce_offline(core, list({*gone, *orphaned})), name="presence-offline")
        await core.events.disconnect_sids(sid for sid in dead_sids if sid in gateway.sockets)

    await repeat(one_pass, every=interval, what="housekeeping")


async def _guest_sweeper(app: web.Application) -> None:
    """Delete idle guests and old login failures, hourly (handlers/guests.py), after a
    random first delay so instances started together do not sweep in step."""
    core = app[CORE]
    await repeat(lambda: guests.sweep(core), every=GUEST_SWEEP_SECONDS, what="guest sweep",
                 first_delay=random.uniform(60.0, 300.0))
