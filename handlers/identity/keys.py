"""Algorithms and key types: which algorithm may be used with which key.

An app's allowlist holds algorithms of one family only, the family its key belongs to, so
a token's `alg` header can never make a public key act as an HMAC secret (the classic
algorithm-confusion attack) nor pick an algorithm the platform does not use.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
EDDSA_ALGORITHMS = ("EdDSA",)
PUBLIC_KEY_ALGORITHMS = (*RSA_ALGORITHMS, *EC_ALGORITHMS, *EDDSA_ALGORITHMS)
SUPPORTED = (*HMAC_ALGORITHMS, *PUBLIC_KEY_ALGORITHMS)
MIN_RSA_BITS = 2048
MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash


class UnusableKey(ValueError):
    """A key that cannot be used; the message says why, for the administrator."""


def load_public_key(pem: str) -> Any:
    """A PEM public key (RSA of 2048 bits or more, EC P-256/384/521, Ed25519/Ed448)."""
    if "PRIVATE KEY" in pem:
        raise UnusableKey("this is a private key: give the app's public key (the private key stays with the platform)")
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise UnusableKey("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise UnusableKey(f"an RSA key must have at least {MIN_RSA_BITS} bits")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise UnusableKey("unsupported key type: use RSA, EC (P-256, P-384, P-521) or Ed25519")
    return key


def algorithms_for_key(key: Any) -> tuple[str, ...]:
    """Every algorithm that may be used with this public key."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return tuple(alg for alg, curve in EC_ALGORITHMS.items() if curve == key.curve.name)
    return EDDSA_ALGORITHMS


def default_algorithm_for_key(key: Any) -> str:
    return algorithms_for_key(key)[0]


def jwk_fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a JWKS entry may verify a token of algorithm `alg` (never an `oct` key)."""
    kty = jwk.get("kty")
    if jwk.get("use") not in (None, "sig") or jwk.get("alg") not in (None, alg):
        return False
    if alg in RSA_ALGORITHMS:
        return kty == "RSA"
    if alg in EC_ALGORITHMS:
        return kty == "EC" and {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg] == jwk.get("crv")
    if alg in EDDSA_ALGORITHMS:
        return kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448")
    return False
