"""The client's address, for rate limits and the audit log, behind reverse proxies or not.

X-Forwarded-For is written by whoever sends the request, so it is believed only when the
direct peer is one of our own proxies (STUDYHALL_TRUSTED_PROXIES). Then the client is the
right-most address in the header that is not a trusted proxy: each proxy appends the
address it saw, so everything left of that entry was written by the client and may be
forged. From any other peer the header is ignored, and the peer is the client.

One helper for both doors: HTTP (`server/http.py client_ip`) and Socket.IO connects
(`socket_client_ip`, from the WSGI-style environ python-socketio passes to `connect`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An IP address from a header or peer string (IPv4-mapped IPv6 folded to IPv4)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51234"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose X-Forwarded-For we believe."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """From addresses or CIDRs; raises ValueError naming a bad entry."""
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {entry!r}") from None
        return cls(tuple(networks))

    def trusts(self, addr: Address | None) -> bool:
        return addr is not None and any(addr in net for net in self.networks)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str | None:
        """The client's address given the direct peer and the X-Forwarded-For header(s)."""
        peer_addr = _address(peer) if peer else None
        if not self.networks or not self.trusts(peer_addr):
            return str(peer_addr) if peer_addr is not None else peer
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        nearest: Address = peer_addr  # type: ignore[assignment]  # trusted, so not None
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                # Garbage where a proxy should have written an address: believe no further.
                return str(nearest)
            if not self.trusts(addr):
                return str(addr)
            nearest = addr
        # Every hop is one of ours (or there is no header): the furthest proxy is the client.
        return str(nearest)


@functools.lru_cache(maxsize=8)
def trusted_proxies(entries: tuple[str, ...]) -> TrustedProxies:
    """`settings.http.trusted_proxies` parsed once (settings are frozen, so this is a cache)."""
    return TrustedProxies.parse(entries)


def socket_client_ip(entries: tuple[str, ...], environ: Mapping[str, Any]) -> str | None:
    """The client address of a Socket.IO connect, from the environ given to `connect`.

    Call with `core.settings.http.trusted_proxies` and the environ python-socketio passes."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    return trusted_proxies(entries).client_address(environ.get("REMOTE_ADDR"), [forwarded] if forwarded else [])
