"""Where the app's services are built and wired: one place, in one visible order.

`assemble` runs once the core exists (server/app.py). In order:

1. The services. Each lands on a typed field of Core whose type is a port
   (handlers/core.py); a feature reaches another only through those fields.
2. What plugs in: the pipeline's before-commit hooks, after-commit hooks and kind policies
   in one list; the gateway's events, connect hooks and disconnect hooks. Hooks run in
   the order listed here, and are registered nowhere else.
3. The loops: every long-running background loop of every feature, started together by
   `Assembly.start` once the instance is registered, and cancelled together by
   `Assembly.stop` at shutdown, before the database pool closes (handlers/background.py).

Command-line tools build a smaller Core (server/cli.py): no gateway, no loops.
docs/architecture.md, "Services and ports", explains the whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from handlers import identity as identity_handlers
from handlers import knowledge, presence
from handlers.background import Loop, Loops, repeat
from handlers.core import Core, Registry
from handlers.pipeline import AfterCommitHook, BeforeCommitHook, KindPolicyFor, new_pipeline, register
from handlers.rooms import live as rooms_live
from handlers.tickets import queue as tickets_queue
from handlers.tickets.service import TicketService
from handlers.tutor import service as tutor
from handlers.tutor.limits import TutorGate
from handlers.webhooks import listener
from handlers.webhooks.delivery import Dispatcher
from handlers.webhooks.outbox import MessageOutbox, Subscriptions
from handlers.webhooks.pacing import PipelineLoad
from rag.retrieval import KnowledgeBase
from server import factories, identity, rooms, session_refresh, threads, tickets, webhooks
from server import tutor as tutor_transport
from server.gateway import Gateway
from server.grouprooms import GroupRoomCheck
from server.housekeeping import guest_sweeper, housekeeping
from server.keys import METRICS, SIO
from server.realtime import watch_redis
from server.revocation import Revocation, install_notices
from storage.connections import SocketRow

log = logging.getLogger(__name__)

TUTOR = frozenset({"tutor"})


@dataclass
class Assembly:
    """What the app holds beyond Core: the concrete services whose lifecycle it runs."""

    kb: KnowledgeBase
    tutor: tutor.TutorService
    tickets: TicketService
    revocation: Revocation
    jwks: identity_handlers.JwksCache
    webhooks: Subscriptions
    dispatcher: Dispatcher
    loops: Loops

    async def start(self) -> None:
        """After the instance is registered: check the vector index, load which webhook
        events are subscribed to, start every loop."""
        await knowledge.check_index(self.kb)
        try:
            await self.webhooks.refresh()
        except Exception as exc:  # the listener and the periodic reload retry
            log.warning("webhook subscriptions not loaded: %r", exc)
        self.loops.start()

    async def stop(self) -> None:
        """At shutdown, before the pool closes: every loop, then the tutor's workers,
        advisory-lock connection and model client, the JWKS cache's HTTP client and the
        webhook dispatcher's."""
        await self.loops.stop()
        await self.tutor.close()
        await self.jwks.close()
        await self.dispatcher.close()


def assemble(app: web.Application, core: Core, gateway: Gateway) -> Assembly:
    settings, sio, metrics = core.settings, app[SIO], app[METRICS]

    # 1. Services, each on its Core field (typed by its port).
    core.pipeline = pipeline = new_pipeline(core.db)
    core.registry = Registry(local_sockets=lambda: _socket_rows(gateway))
    core.kb = kb = factories.knowledge_base(settings, core.db)
    metrics.count_elsewhere("studyhall_search_text_over_budget",
                            "Hybrid searches whose full-text query passed its time budget (ranked by vectors alone)",
                            lambda: kb.text_over_budget)
    core.tutor_limits = TutorGate(core.limiter, factories.tutor_limits(settings.tutor))
    core.tutor = tutor_service = tutor.TutorService(core, kb, factories.chat_model(settings.tutor))
    core.tickets = ticket_service = TicketService()
    core.rooms = rooms.room_service(sio, gateway)
    install_notices(core, gateway, sio, metrics)
    revocation = Revocation(core, gateway, sio)
    app[identity.IDENTITY] = jwks = identity_handlers.JwksCache(settings.identity)
    core.webhooks = subscriptions = Subscriptions(core.db)
    pipeline.writer.outbox = MessageOutbox(subscriptions)  # a batch commits with its message.created rows
    # Delivery yields to the message path while its writer is saturated (handlers/webhooks/pacing.py).
    load = PipelineLoad(pipeline.writer.batcher, saturated_batch_size=settings.webhooks.saturated_batch_size)
    app[webhooks.DISPATCHER] = dispatcher = Dispatcher(core.db, settings.webhooks, core.instance_id, load)
    webhooks.install_metrics(metrics, dispatcher)

    # 2. The pipeline's one list of hooks and policies; hooks run in this order, each only
    # for the kinds it names (a kind no hook acts on may skip the send's look-up: rooms).
    register(pipeline, [
        # a question over the tutor's limit: refused, nothing stored
        BeforeCommitHook(tutor.check_question, kinds=TUTOR),
        # a student's message in an AI conversation is queued
        AfterCommitHook(tutor.on_message_committed, kinds=TUTOR),
        # writing in a closed one reopens a ticket
        AfterCommitHook(ticket_service.reopen_after_close, kinds=TUTOR),
        KindPolicyFor("room", rooms_live.RoomPolicy()),  # every other kind: MemberPolicy
    ])
    gateway.add_events([*threads.EVENTS, *tutor_transport.EVENTS, *rooms.EVENTS, *tickets.EVENTS,
                        *session_refresh.events(gateway, revocation)])
    gateway.identity_connect = identity.connect_with_identity(app)  # auth: {identity}
    gateway.on_connect += [
        presence.socket_connected,
        rooms_live.socket_connected,
        tickets_queue.agent_connected,
        revocation.socket_connected,
    ]
    gateway.on_disconnect += [
        presence.socket_disconnected,
        rooms_live.socket_disconnected,
        revocation.socket_disconnected,
    ]

    # 3. Every long-running loop.
    loops = [
        Loop("housekeeping", lambda: housekeeping(core, gateway)),
        Loop("guest-sweep", lambda: guest_sweeper(core)),
        Loop("room-sweeper", lambda: rooms_live.sweep_forever(core)),
        Loop("revocation-sweep", lambda: repeat(revocation.sweep_once, every=settings.auth.revocation_sweep_seconds,
                                                what="revocation sweep")),
        Loop("group-room-check", lambda: repeat(GroupRoomCheck(core, gateway, sio).check_once,
                                                every=settings.auth.revocation_sweep_seconds, what="group room check")),
        Loop("tutor-recovery", tutor_service.recovery_loop),
        Loop("tutor-sweep", tutor_service.sweep_loop),
        Loop("ticket-watch", lambda: tickets_queue.watch(core)),
        Loop("identity-jti-sweep", lambda: identity.jti_sweeper(core)),
        Loop("webhook-delivery", dispatcher.run),
        Loop("webhook-listen", lambda: listener.listen_forever(core, subscriptions, dispatcher)),
        Loop("webhook-subscriptions", lambda: repeat(subscriptions.refresh, what="webhook subscriptions",
                                                     every=settings.webhooks.subscriptions_refresh_seconds)),
    ]
    if settings.cluster.redis_url:
        loops.append(Loop("redis-watch", lambda: watch_redis(settings, sio, metrics)))
    return Assembly(kb=kb, tutor=tutor_service, tickets=ticket_service, revocation=revocation, jwks=jwks,
                    webhooks=subscriptions, dispatcher=dispatcher, loops=Loops(loops))


def _socket_rows(gateway: Gateway) -> list[SocketRow]:
    return [SocketRow(sid, s.actor.user_id, s.actor.token_id) for sid, s in list(gateway.sockets.items())]
