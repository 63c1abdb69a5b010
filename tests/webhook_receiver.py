"""A webhook receiver for the tests: a small aiohttp app that verifies every request with
the `standardwebhooks` library (not Studyhall's code) and records what it got."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from storage.embedded import free_port


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    at: float
    status: int


@dataclass
class Receiver:
    """`mode`: "ok" answers 204, "fail" answers 500, "hang" never answers (until closed)."""

    secret: str | None = None
    mode: str = "ok"
    attempts: list[Received] = field(default_factory=list)  # every verified request
    refused: list[str] = field(default_factory=list)  # requests that failed verification
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        """Requests answered with a 2xx."""
        return [a for a in self.attempts if 200 <= a.status < 300]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert self.secret is not None, "the test sets the secret once the endpoint exists"
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            response = web.Response(status=400)
            response.force_close()
            return response
        mode = self.mode
        status = {"ok": 204, "fail": 500}.get(mode, 204)
        self.attempts.append(Received(request.headers["webhook-id"], payload, time.time(), status))
        self.arrived.set()
        if mode == "hang":
            await asyncio.sleep(3600)
        response = web.Response(status=status)
        response.force_close()  # a new connection per request: `down` then refuses the next one
        return response

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    async def down(self) -> None:
        """Stop listening: connections are refused until `up`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(self.attempts)} requests")
            await asyncio.sleep(0.05)
