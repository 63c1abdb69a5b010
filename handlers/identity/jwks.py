"""JWKS: an app's public keys fetched from its URL with aiohttp (never a blocking client).

A fetched set is used for `jwks_cache_seconds`. A token whose `kid` is not in the set (the
platform rotated its keys) fetches it again, but at most once per `jwks_refresh_seconds`
per URL, so tokens with made-up `kid`s cannot make this server hammer the platform. One
fetch at a time per URL; concurrent sign-ins wait for it. When a refetch fails the old set
stays in use; with no set at all the sign-in is answered `unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from handlers.errors import ApiError
from handlers.identity import keys
from handlers.settings import IdentitySettings

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024


@dataclass
class _Entry:
    jwks: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float | None = None  # monotonic time of the last good fetch
    attempted_at: float = -1e18  # monotonic time of the last attempt, good or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksCache:
    """The key sets of every app with a JWKS URL, for this instance."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self._entries: dict[str, _Entry] = {}
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # how many fetches were made (tests, metrics)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def key_for(self, url: str, kid: str | None, alg: str) -> Any:
        """The public key for a token (its `kid` and `alg`), or None when the set has none."""
        entry = self._entries.setdefault(url, _Entry())
        now = time.monotonic()
        if entry.fetched_at is None or now - entry.fetched_at > self.settings.jwks_cache_seconds:
            await self._refresh(url, entry, seen=entry.attempted_at)
        found = _find(entry.jwks, kid, alg)
        if found is None and entry.fetched_at is not None:
            await self._refresh(url, entry, seen=entry.attempted_at)
            found = _find(entry.jwks, kid, alg)
        if found is None and entry.fetched_at is None:
            raise ApiError("unavailable", "The platform's signing keys could not be fetched; try again shortly.",
                           retry_after_ms=int(self.settings.jwks_refresh_seconds * 1000) or 1000)
        return found

    async def _refresh(self, url: str, entry: _Entry, *, seen: float) -> None:
        async with entry.lock:
            if entry.attempted_at != seen:
                return  # another sign-in fetched (or tried) while this one waited
            if time.monotonic() - entry.attempted_at < self.settings.jwks_refresh_seconds:
                return  # fetched too recently: an unknown kid does not fetch again yet
            entry.attempted_at = time.monotonic()
            try:
                entry.jwks = await self._fetch(url)
                entry.fetched_at = time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("JWKS fetch failed", extra={"url": url, "error": repr(exc)})

    async def _fetch(self, url: str) -> list[dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.fetches += 1
        timeout = aiohttp.ClientTimeout(total=self.settings.jwks_timeout_seconds)
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"status {resp.status}")
            body = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS too large")
        data = orjson.loads(body)
        found = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(found, list):
            raise ValueError("no keys list")
        return [k for k in found if isinstance(k, dict)]


def _find(jwks: list[dict[str, Any]], kid: str | None, alg: str) -> Any:
    """The key with this `kid` that fits `alg`; with no `kid`, the only key that fits."""
    fitting = [k for k in jwks if keys.jwk_fits(k, alg) and (kid is None or k.get("kid") == kid)]
    if len(fitting) != 1:
        return None
    try:
        key = PyJWK(fitting[0], algorithm=alg).key
    except (PyJWKError, ValueError, TypeError):
        return None
    if alg in keys.RSA_ALGORITHMS and key.key_size < keys.MIN_RSA_BITS:
        return None
    return key
