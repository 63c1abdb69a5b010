"""Who may read /metrics: a configured bearer token, or a client address on the allow list.

The metrics name every route, error code and latency of the deployment, so they are not
public. Anyone else gets `not_found`, the answer of a path that does not exist, so the
endpoint is not advertised. The address is `server.http.client_ip` (the socket's peer
unless a trusted proxy says otherwise).
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from aiohttp import web

from server.http import bearer_token, client_ip
from server.keys import SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def parse_networks(setting: str) -> tuple[Network, ...]:
    """`STUDYHALL_METRICS_ALLOW` as networks (validated at start by handlers/settings.py)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in setting.split(",") if item.strip())


def address_allowed(address: str | None, setting: str) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in parse_networks(setting))


def token_matches(request: web.Request, expected: str | None) -> bool:
    if not expected:
        return False
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def may_read_metrics(request: web.Request) -> bool:
    settings = request.app[SETTINGS]
    return token_matches(request, settings.http.metrics_token) or address_allowed(client_ip(request), settings.http.metrics_allow)
