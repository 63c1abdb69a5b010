"""One attempt at one delivery: the request, signed, to the endpoint's URL.

What can be done once is done once, because the loop sends one request per event and the
message path shares the CPU with it (docs/performance.md#webhooks):

- the body is built from the payload's bytes as PostgreSQL returned them (`Claimed.data`),
  never parsed and encoded again; the same bytes on every attempt;
- each endpoint's HMAC key is decoded once (the `standardwebhooks` library's `Webhook`,
  which signs), and its URL checked once, for as
  long as its URL and secret stay the same (an endpoint's are never edited, only replaced);
- connections are kept alive and reused, at most `connections_per_endpoint` to one
  endpoint (aiohttp's `limit_per_host`), `concurrency` in all; a new connection resolves
  its host through `GuardedResolver`, which caches the checked answer for a few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import aiohttp
import orjson
from standardwebhooks import Webhook

from handlers.webhooks.settings import WebhookSettings
from handlers.webhooks.targets import GuardedResolver, RefusedAddress, TargetRefused, check_url
from storage.webhooks import Claimed

USER_AGENT = "Studyhall-Webhooks/1"
MAX_ERROR_CHARS = 500
MAX_CACHED_ENDPOINTS = 1000


def webhook_id(delivery_id: UUID) -> str:
    return f"msg_{delivery_id.hex}"


def body_of(c: Claimed) -> bytes:
    """The request body, `{"type", "timestamp", "data"}`: the same bytes on every attempt,
    since `data` is the stored payload's own text."""
    return b'{"type":%b,"timestamp":%b,"data":%b}' % (orjson.dumps(c.event_type), orjson.dumps(c.created_at), c.data)


def signed_headers(signer: Webhook, msg_id: str, now: int, body: bytes) -> dict[str, str]:
    """The request's headers: the Standard Webhooks ones, signed by the specification's own
    library (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`), so what receivers verify
    with that library is exactly what it signs."""
    return {
        "webhook-id": msg_id, "webhook-timestamp": str(now),
        "webhook-signature": signer.sign(msg_id, datetime.fromtimestamp(now, UTC), body.decode()),
        "Content-Type": "application/json",
    }


@dataclass(frozen=True)
class _Target:
    url: str
    secret: str
    signer: Webhook  # the endpoint's secret, decoded once
    refused: str | None  # why the URL itself cannot be a target (a literal private IP, a bad URL)


class Sender:
    """Sends attempts; holds the HTTP session and what it keeps per endpoint."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[UUID, _Target] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=s.allow_private_targets, cache_seconds=s.dns_cache_seconds),
                limit=max(1, s.concurrency), limit_per_host=max(1, s.connections_per_endpoint),
                ttl_dns_cache=None, use_dns_cache=False,  # the guarded resolver caches what it checked
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=s.timeout_seconds),
                headers={"User-Agent": USER_AGENT}, trust_env=False, skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def target(self, c: Claimed) -> _Target:
        t = self._targets.get(c.endpoint_id)
        if t is None or t.url != c.url or t.secret != c.secret:
            if len(self._targets) >= MAX_CACHED_ENDPOINTS:
                self._targets.clear()
            try:
                check_url(c.url, allow_private=self.settings.allow_private_targets)
                refused = None
            except TargetRefused as exc:
                refused = str(exc)
            t = self._targets[c.endpoint_id] = _Target(c.url, c.secret, Webhook(c.secret), refused)
        return t

    async def attempt(self, c: Claimed) -> tuple[int | None, str, float]:
        """One attempt: (status code or None, error, latency ms)."""
        status: int | None = None
        error = ""
        started = time.perf_counter()
        try:
            t = self.target(c)
            if t.refused is not None:
                raise TargetRefused(t.refused)
            body = body_of(c)
            msg_id = webhook_id(c.id)
            now = int(time.time())
            headers = signed_headers(t.signer, msg_id, now, body)
            async with self.session().post(c.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if 200 <= resp.status < 300:
                    await resp.read()
                else:
                    error = f"HTTP {resp.status}: {(await resp.content.read(200)).decode(errors='replace')}".strip()
        except TargetRefused as exc:
            error = f"refused target: {exc}"
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            refused = exc if isinstance(exc, RefusedAddress) else exc.__cause__
            error = f"refused target: {refused}" if isinstance(refused, RefusedAddress) else f"{type(exc).__name__}: {exc}"
        return status, error[:MAX_ERROR_CHARS], (time.perf_counter() - started) * 1000
