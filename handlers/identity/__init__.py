"""Signed identity: platforms that embed Studyhall sign a short-lived JWT for their user,
and Studyhall maps it to one Studyhall user (docs/integration.md).

- apps.py: the apps (platforms) and their keys, validated when created.
- jwks.py: JWKS fetched with aiohttp, cached, refreshed on an unknown `kid` (rate-limited).
- verify.py: checking a token against its app only (alg allowlist, keys, iss, aud, life).
- signin.py: a verified token → the mapped user and a Studyhall session token.
"""

from handlers.identity.jwks import JwksCache
from handlers.identity.signin import sign_in, sweep_jtis

__all__ = ["JwksCache", "sign_in", "sweep_jtis"]
