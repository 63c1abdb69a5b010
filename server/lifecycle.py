"""Running `studyhall serve`: bind, start, announce, watch, shut down.

aiohttp's `web.run_app` prints nothing useful and binds the port only after the app's
startup (the database, migrations), so a port in use was found after the embedded
PostgreSQL started, and a bad DATABASE_URL ended in a traceback. Here the port is bound
first, the database is tried before anything else, each failure is one line naming the
setting to change, and "Studyhall on …" is printed once the site really listens.

Shutdown (SIGTERM, SIGINT) was about 40 s with clients connected: aiohttp waited (up to
its 60 s shutdown_timeout) for every websocket handler, and python-engineio's handler
returns only when the client sends something or after ping_interval + ping_timeout
(40 s). Now the sites stop, every Engine.IO transport is closed (its websocket gets a
close frame, with no Engine.IO CLOSE packet, so socket.io clients, the JavaScript one
and python-socketio's, treat it as a lost connection and reconnect, to another instance
behind a load balancer), what is left gets STUDYHALL_SHUTDOWN_SECONDS, and each step is
logged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

if TYPE_CHECKING:
    import socketio

    from handlers.settings import Settings
    from storage.embedded import EmbeddedPostgres

log = logging.getLogger("studyhall.lifecycle")


class StartupError(Exception):
    """A start that cannot succeed as configured; the message is one line for the operator."""


@dataclass
class Lifecycle:
    """How the running server is asked to stop, and with what exit status."""

    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int = 0
    reason: str = ""

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            self.reason = reason
            self.stop_requested.set()

    def fail(self, message: str) -> None:
        """Stop with exit status 1; `message` is printed as the process's last word."""
        log.error(message)
        self.exit_code = 1
        self.request_stop(message)


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle")


def redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def check_database_url(url: str, timeout: float = 10.0) -> None:
    """Connect once to DATABASE_URL; a failure becomes a StartupError naming the setting."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except Exception as exc:  # any failure here is the URL's: host, port, credentials, syntax
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StartupError(f"DATABASE_URL ({redacted(url)}) does not work: {type(exc).__name__}: {reason}") from exc
    await conn.close()


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for host:port, as asyncio's create_server would
    make them; binding before the database starts makes a port in use the first error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"STUDYHALL_HOST {host!r} is not an address this machine has: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(
            f"STUDYHALL_PORT {port} on {host} cannot be used: {exc.strerror or exc}"
            " (another process listens there? set STUDYHALL_PORT or --port)"
        ) from exc
    return sockets


async def close_transports(sio: socketio.AsyncServer, timeout: float) -> int:
    """Close every client's Engine.IO transport so the client reconnects (elsewhere).

    Each session is closed without an Engine.IO CLOSE packet (with one, python-socketio's
    client treats it as final and does not reconnect) and its writer is told to end, which
    closes the websocket with a close frame; polling clients get an empty answer and then
    an unknown session, and reconnect. Socket.IO's disconnect handlers run as for any
    disconnect. Returns how many were closed."""
    sessions = list(sio.eio.sockets.values())

    async def close(session: Any) -> None:
        await session.close(wait=False, abort=True, reason=sio.eio.reason.SERVER_DISCONNECT)
        await session.queue.put(None)

    if sessions:
        results = await asyncio.wait_for(asyncio.gather(*(close(s) for s in sessions), return_exceptions=True), timeout)
        for result in results:
            if isinstance(result, Exception):
                log.warning("shutdown: closing a client failed: %r", result)
    return len(sessions)


async def watch_embedded(
    embedded: EmbeddedPostgres, lifecycle: Lifecycle, interval: float, restart_seconds: float
) -> None:
    """Notice the embedded PostgreSQL going away (stopped by hand, killed, crashed) and
    start it again; after `restart_seconds` of failed attempts, stop the server with
    one line saying why rather than answer 503 for ever. (This process is one of the
    server's users, and users may start it: storage/embedded.py.)"""
    while True:
        await asyncio.sleep(interval)
        if embedded.is_running():
            continue
        log.warning("embedded PostgreSQL is not running; starting it again", extra={"pgdata": str(embedded.pgdata)})
        deadline = time.monotonic() + restart_seconds
        while True:
            try:
                await asyncio.to_thread(embedded.ensure_running)
                log.info("embedded PostgreSQL is running again")
                break
            except Exception as exc:
                # Right after a crash its old processes may still hold shared memory: retry.
                if time.monotonic() > deadline:
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    lifecycle.fail(
                        f"the embedded PostgreSQL in {embedded.pgdata} stopped and could not be started again: "
                        f"{first_line} (see {embedded.data_dir / 'postgres.log'})"
                    )
                    return
                await asyncio.sleep(1.0)


async def serve(app: web.Application, settings: Settings) -> int:
    """Run the app until SIGTERM/SIGINT (or a fatal error); returns the exit status."""
    lifecycle = app[LIFECYCLE]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lifecycle.request_stop, sig.name)
    sockets = bind_sockets(settings.http.host, settings.http.port)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.http.shutdown_seconds)
    cleaned_up = False
    try:
        if settings.database.url:
            await check_database_url(settings.database.url)
        await runner.setup()
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        url = f"http://{settings.http.host}:{settings.http.port}"
        log.info("Studyhall listening", extra={"url": url})
        print(f"Studyhall on {url}", file=sys.stderr, flush=True)
        await lifecycle.stop_requested.wait()
        started = time.monotonic()
        log.info("shutdown: %s", f"{lifecycle.reason} received" if lifecycle.exit_code == 0 else "after a fatal error")
        for site in list(runner.sites):
            await site.stop()
        log.info("shutdown: stopped accepting connections")
        cleaned_up = True
        try:
            await runner.cleanup()  # on_shutdown closes clients; cleanup_ctx closes pools, the database
        except Exception:
            log.exception("shutdown: a step failed")
            lifecycle.exit_code = lifecycle.exit_code or 1
        log.info("shutdown: done in %.1f s", time.monotonic() - started)
    finally:
        for sock in sockets:
            sock.close()
        if not cleaned_up:
            await runner.cleanup()  # after a failed start, undo what did start
    if lifecycle.exit_code and lifecycle.reason:
        print(f"studyhall: {lifecycle.reason}", file=sys.stderr, flush=True)
    return lifecycle.exit_code
