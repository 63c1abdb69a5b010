"""Socket.IO transport: connect/disconnect, and one entry point for every client event.

Every event goes through `_dispatch`: rate limit (per socket and per user, see
server/event_limits.py), schema validation, role check, the handler, and the ack
`{ok: true, ...}` or `{ok: false, error: {code, message}}`. A bad event never
disconnects the client. Frames that never become an event (undecodable, reserved
names; see server/guarded_sio.py) are answered through `refuse_frame`, which counts
them against the same limits. Events from one socket are handled in the order
sent: python-socketio runs each event as its own task, so each socket has a FIFO lock
(asyncio.Lock wakes waiters in order, and tasks start in the order events arrived). A
`message:send` holds it only until the writer has queued its message (`EventSpec.
ordered_until_queued`): from there the writer keeps the order (seq order is queue order),
so one client's sends share group commits instead of waiting out each other's commit.

At connect a socket enters its user's room, the staff room (agents, admins) and the room of
every group its user is a member of (handlers/grouprooms.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import socketio
from pydantic import BaseModel, ValidationError

from handlers import auth, grouprooms, writer
from handlers.core import Actor, Core
from handlers.errors import ApiError
from handlers.events import STAFF_ROOM, user_room
from handlers.tokenbucket import TokenBucket
from server.event_limits import EventLimits
from server.guarded_sio import GuardedServer
from server.metrics import Metrics
from server.unavailable import unavailable_error
from server.validation import validation_message

log = logging.getLogger(__name__)

Handler = Callable[[Core, Actor, Any], Awaitable[dict[str, Any] | None]]
ConnectionHook = Callable[[Core, Actor], Awaitable[None]]


@dataclass(frozen=True)
class EventSpec:
    """One client event: its payload schema, who may send it, and its handler."""

    name: str
    handler: Handler
    schema: type[BaseModel] | None = None
    roles: frozenset[str] | None = None  # None: any signed-in user
    # The socket's next event may start once this one's message is queued by the writer
    # (in order), rather than when this one is answered: one client's sends pipeline.
    ordered_until_queued: bool = False


@dataclass
class SocketState:
    actor: Actor
    bucket: TokenBucket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def error_ack(code: str, message: str, retry_after_ms: int | None = None) -> dict[str, Any]:
    return {"ok": False, "error": ApiError(code, message, retry_after_ms=retry_after_ms).to_dict()}


def closing_ack() -> dict[str, Any]:
    """The ack for an event from a socket whose disconnect has begun.

    python-socketio runs only events of connected sockets (a socket still in its connect
    handler is not one), but it starts each event as a task: one accepted just before the
    socket began to close runs after `_disconnect` dropped the socket's state, while the
    disconnect hooks still hold the transport open, so its ack reaches the client. A drain
    does exactly that to every in-flight send. Nothing was done, so the answer is the one
    clients retry (`unavailable`): send it again once reconnected, with the same
    `client_id`. It was `unauthorized`, which the JavaScript client took as final."""
    return error_ack("unavailable", "This connection is closing; send again once reconnected.")


class Gateway:
    """Binds a Core to a Socket.IO server."""

    def __init__(self, sio: socketio.AsyncServer, core: Core, metrics: Metrics) -> None:
        self.sio = sio
        self.core = core
        self.metrics = metrics
        self.specs: dict[str, EventSpec] = {}
        self.sockets: dict[str, SocketState] = {}
        self.on_connect: list[ConnectionHook] = []
        self.on_disconnect: list[ConnectionHook] = []
        # Sign-in for `auth: {identity}` (signed identity, set by server/identity.py).
        self.identity_connect: Callable[[dict[str, Any], dict[str, Any], str], Awaitable[Actor]] | None = None
        s = core.settings.gateway
        self.limits = EventLimits(
            socket_rate=s.rate_limit_per_second, socket_burst=s.rate_limit_burst,
            user_rate=s.user_rate_limit_per_second, user_burst=s.user_rate_limit_burst,
            max_sockets_per_user=s.max_sockets_per_user,
        )
        if isinstance(sio, GuardedServer):
            sio.refuse_frame = self.refuse_frame
        sio.on("connect", self._connect)
        sio.on("disconnect", self._disconnect)
        sio.on("*", self._dispatch)

    def add_events(self, specs: Iterable[EventSpec]) -> None:
        for spec in specs:
            if spec.name in self.specs:
                raise RuntimeError(f"event {spec.name!r} registered twice")
            self.specs[spec.name] = spec

    def actor(self, sid: str) -> Actor | None:
        state = self.sockets.get(sid)
        return state.actor if state else None

    def local_sids(self) -> list[str]:
        return list(self.sockets)

    async def _connect(self, sid: str, environ: dict[str, Any], auth_data: Any = None) -> None:
        token = auth_data.get("token") if isinstance(auth_data, dict) else None
        try:
            if isinstance(auth_data, dict) and auth_data.get("identity") is not None and self.identity_connect:
                actor = await self.identity_connect(auth_data, environ, sid)
            else:
                actor = await auth.authenticate(self.core, token, sid=sid)
            # The groups whose rooms this socket enters (handlers/grouprooms.py): read before
            # it is admitted, so an outage refuses the connection rather than leaving it deaf.
            groups = await grouprooms.rooms_for_user(self.core, actor.user_id, actor.role)
        except ApiError as err:
            self.metrics.event_errors.labels(err.code, "connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(err.message, err.to_dict()) from None
        except Exception as exc:
            if (down := unavailable_error(exc, self.core.db.outage)) is None:
                raise
            self.metrics.event_errors.labels(down.code, "connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(down.message, down.to_dict()) from None
        if not self.limits.admit(actor.user_id, sid):
            self.metrics.event_errors.labels("rate_limited", "connect").inc()
            refused = ApiError("rate_limited", f"Too many open connections for this account (at most "
                                               f"{self.limits.max_sockets_per_user}); close one first.")
            raise socketio.exceptions.ConnectionRefusedError(refused.message, refused.to_dict())
        self.sockets[sid] = SocketState(actor, self.limits.new_socket_bucket())
        await self.sio.enter_room(sid, user_room(actor.user_id))
        if actor.is_staff:
            await self.sio.enter_room(sid, STAFF_ROOM)
        if groups:
            # Together: the room channels are subscribed in one batch, and each entry returns
            # once its channel is (server/roomchannels.py), so nothing sent after is missed.
            await asyncio.gather(*(self.sio.enter_room(sid, room) for room in groups))
        self.metrics.connections.inc()
        for hook in self.on_connect:
            try:
                await hook(self.core, actor)
            except Exception as exc:
                if unavailable_error(exc, self.core.db.outage) is None:  # an outage is logged once, not per hook
                    log.exception("connect hook failed", extra={"hook": getattr(hook, "__qualname__", str(hook))})

    async def _disconnect(self, sid: str, *_reason: Any) -> None:
        state = self.sockets.pop(sid, None)
        if state is None:
            return
        self.limits.release(state.actor.user_id, sid)
        self.metrics.connections.dec()
        for hook in self.on_disconnect:
            try:
                await hook(self.core, state.actor)
            except Exception as exc:
                if unavailable_error(exc, self.core.db.outage) is None:  # an outage is logged once, not per hook
                    log.exception("disconnect hook failed", extra={"hook": getattr(hook, "__qualname__", str(hook))})

    async def _dispatch(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        state = self.sockets.get(sid)
        if state is None:
            return closing_ack()
        refusal = self.limits.take(state.bucket, state.actor.user_id)
        if refusal is not None:
            self.metrics.event_errors.labels("rate_limited", "socket").inc()
            return error_ack("rate_limited", refusal.message, refusal.retry_after_ms)
        spec = self.specs.get(event)
        if spec is None:
            self.metrics.event_errors.labels("bad_request", "socket").inc()
            return error_ack("bad_request", f"Unknown event {event!r}.")
        await state.lock.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                state.lock.release()

        # A send's order is fixed once the writer has queued it: the socket's next event
        # may start then, while this one commits (handlers/writer.py `QUEUED`).
        token = writer.QUEUED.set(release if spec.ordered_until_queued else None)
        try:
            return await self._run(spec, state, args)
        finally:
            writer.QUEUED.reset(token)
            release()

    def refuse_frame(self, sid: str | None, code: str, message: str, *, count: bool = True) -> dict[str, Any]:
        """The ack for a frame that is not run as an event (undecodable, a reserved name,
        past a poll's packet limit). With `count` it takes a token from the socket's and
        user's buckets like any event, so refusals cannot be sent faster than events."""
        state = self.sockets.get(sid) if sid is not None else None
        if state is None:
            return closing_ack()
        wait: int | None = None
        refusal = self.limits.take(state.bucket, state.actor.user_id) if count else None
        if refusal is not None:
            code, message, wait = "rate_limited", refusal.message, refusal.retry_after_ms
        elif code == "rate_limited":
            wait = state.bucket.wait_ms() or 1
        self.metrics.event_errors.labels(code, "socket").inc()
        return error_ack(code, message, wait)

    async def _run(self, spec: EventSpec, state: SocketState, args: tuple[Any, ...]) -> dict[str, Any]:
        started = time.perf_counter()
        self.metrics.events.labels(spec.name).inc()
        actor = state.actor
        try:
            if spec.roles is not None and actor.role not in spec.roles:
                raise ApiError("forbidden", f"{spec.name} is not allowed for role {actor.role}.")
            payload: Any = args[0] if args else {}
            if spec.schema is not None:
                try:
                    payload = spec.schema.model_validate(payload if payload is not None else {})
                except ValidationError as exc:
                    too_large = any(e.get("type") == "too_large" for e in exc.errors())
                    raise ApiError("too_large" if too_large else "bad_request", validation_message(exc)) from None
            result = await spec.handler(self.core, actor, payload)
            return {"ok": True, **(result or {})}
        except ApiError as err:
            self.metrics.event_errors.labels(err.code, "socket").inc()
            return {"ok": False, "error": err.to_dict()}
        except Exception as exc:
            if (down := unavailable_error(exc, self.core.db.outage)) is not None:
                self.metrics.event_errors.labels(down.code, "socket").inc()
                return {"ok": False, "error": down.to_dict()}
            log.exception("event handler failed", extra={"event": spec.name})
            self.metrics.event_errors.labels("internal", "socket").inc()
            return error_ack("internal", "Something went wrong on the server.")
        finally:
            self.metrics.event_latency.labels(spec.name).observe(time.perf_counter() - started)
