"""The LISTEN loop: new deliveries wake the dispatcher at once, a changed endpoint reloads
the subscriptions. While its connection is down the dispatcher's poll and the periodic
reload cover, so a lost connection delays, never loses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from handlers.core import Core
from handlers.webhooks.delivery import Dispatcher
from handlers.webhooks.outbox import Subscriptions
from storage import webhooks as store

log = logging.getLogger(__name__)

LISTEN_RETRY_SECONDS = 2.0


async def listen_forever(core: Core, subs: Subscriptions, dispatcher: Dispatcher) -> None:
    """Until cancelled: LISTEN on a connection of its own, reconnecting when it drops."""

    def on_endpoints(*_: Any) -> None:
        core.spawn(subs.refresh(), name="webhook-subscriptions")

    while True:
        conn: asyncpg.Connection | None = None
        closed = asyncio.Event()
        try:
            conn = await store.listen(
                core.db.url, timeout=core.settings.database.connect_timeout_seconds,
                on_deliveries=lambda *_: dispatcher.notify(), on_endpoints=on_endpoints,
                on_closed=lambda *_, done=closed: done.set(),
            )
            await subs.refresh()  # whatever changed while not listening
            dispatcher.notify()
            await closed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("webhook listener: %r", exc)
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close(timeout=1)
        await asyncio.sleep(LISTEN_RETRY_SECONDS)
