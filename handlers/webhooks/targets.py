"""The SSRF guard: webhook targets must be public addresses unless the deployment allows
private ones (`STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS`).

Checked when an endpoint is created (its host resolved now) and again at every new
connection: `GuardedResolver` is the delivery session's resolver, so the connection goes to
the very address that passed the check (a DNS answer that changes between check and
connect, DNS rebinding, cannot slip a private address in); it keeps checked answers for a
few seconds. aiohttp does not resolve a literal IP, so `check_url` is also applied to the
URL before sending (once per endpoint URL: sender.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_CACHED_NAMES = 1000


class TargetRefused(ValueError):
    """The URL is not one webhooks may be sent to."""


def refused_reason(address: str) -> str | None:
    """Why an IP address may not be a target (None: it may)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for flag in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, flag):
            return f"{ip} is a {flag[3:].replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def check_url(url: str, *, allow_private: bool) -> tuple[str, str | None]:
    """(host, literal IP or None) of an http(s) URL; TargetRefused when it cannot be a target.
    A literal IP is checked here; a name is checked by `check_host` / `GuardedResolver`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("the URL must not carry credentials")
    if port == 0:
        raise TargetRefused("the URL's port must not be 0")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host, None
    if not allow_private and (reason := refused_reason(host)):
        raise TargetRefused(f"private targets are not allowed: {reason}")
    return host, host


async def check_host(url: str, *, allow_private: bool) -> None:
    """check_url, and for a host name: every address it resolves to now must be allowed
    (an endpoint is refused at creation, not only at its first delivery)."""
    host, literal = check_url(url, allow_private=allow_private)
    if literal is not None or allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        if reason := refused_reason(str(info[4][0])):
            raise TargetRefused(f"private targets are not allowed: {host} resolves to {reason.split(' is ', 1)[0]} ({reason})")


class RefusedAddress(OSError):
    """Raised by GuardedResolver: every address the name resolved to is refused."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every refused address; a name
    with none left fails the connection. aiohttp connects to the addresses returned here.

    The checked answer is kept for `cache_seconds` (0: resolve every time), so endpoints
    that open connections often do not resolve and check each time. Only what passed the
    check is kept, and aiohttp connects only to what this returns, so the address connected
    to is always one that was checked; a name whose answer changes is seen within the TTL.
    A refusal is not cached: it is checked again at the next connection."""

    def __init__(self, *, allow_private: bool, cache_seconds: float = 0.0, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.cache_seconds = cache_seconds
        self._inner = inner or DefaultResolver()
        self._cache: dict[tuple[str, int, int], tuple[float, list[ResolveResult]]] = {}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        key = (host, port, int(family))
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        allowed = self._check(host, await self._inner.resolve(host, port, family))
        if self.cache_seconds > 0:
            if len(self._cache) >= MAX_CACHED_NAMES:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self.cache_seconds, allowed)
        return allowed

    def _check(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        if self.allow_private:
            return results
        allowed = [r for r in results if refused_reason(r["host"]) is None]
        if not allowed:
            reasons = "; ".join(filter(None, (refused_reason(r["host"]) for r in results)))
            raise RefusedAddress(f"{host} resolves only to refused addresses: {reasons or 'no address'}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
