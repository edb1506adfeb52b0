"""Encrypted, expiring values made with keys derived from the session secret.

The OAuth `state` travels through the browser and the IdP and carries the PKCE verifier
and the nonce, so it is encrypted, not only signed (AES-GCM; any replica can open it,
none needs to store it). The IdP's refresh token waits in `device_grants` between the
callback and the client's poll: it is sealed the same way, bound to its grant, so a
database read alone never yields a usable token. Each purpose has its own key.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
MAX_SEALED_CHARS = 4096  # what `open` accepts from a client (a state is ~400 characters)


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit key for one purpose, from the session secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(secret.encode())


class Sealer:
    """AES-GCM with a key for one purpose; `aad` binds a value to its context."""

    def __init__(self, secret: str, purpose: str) -> None:
        self._aead = AESGCM(derive_key(secret, f"claude-proxy/{purpose}"))

    def seal(self, plain: bytes, aad: bytes = b"") -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, aad)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(
        self, sealed: str, aad: bytes = b"", *, max_chars: int = MAX_SEALED_CHARS
    ) -> bytes | None:
        """The plain bytes, or None for anything forged, altered, truncated or too long."""
        if len(sealed) > max_chars:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (binascii.Error, ValueError, InvalidTag):
            return None

    def open_object(
        self, sealed: str, aad: bytes = b"", *, max_chars: int = MAX_SEALED_CHARS
    ) -> dict[str, Any] | None:
        """The sealed JSON object, or None where `open` gives None or the plain bytes are
        not one."""
        plain = self.open(sealed, aad, max_chars=max_chars)
        if plain is None:
            return None
        try:
            found = orjson.loads(plain)
        except orjson.JSONDecodeError:
            return None
        return found if isinstance(found, dict) else None


class StateCodec:
    """The OAuth `state`: a sealed JSON object with an expiry (5 minutes by default)."""

    def __init__(self, secret: str, *, ttl: float = 300.0) -> None:
        self._sealer = Sealer(secret, "oauth-state")
        self.ttl = ttl

    def encode(self, payload: dict[str, Any], now: float | None = None) -> str:
        now = time.time() if now is None else now
        return self._sealer.seal(orjson.dumps({**payload, "exp": int(now + self.ttl)}), b"state")

    def decode(self, state: str, now: float | None = None) -> dict[str, Any] | None:
        """The payload of a genuine, unexpired state; None otherwise."""
        payload = self._sealer.open_object(state, b"state")
        now = time.time() if now is None else now
        if payload is None or not isinstance(payload.get("exp"), int):
            return None
        if payload["exp"] <= now:
            return None
        return payload


class RefreshTokens:
    """The refresh token a client holds: the IdP's own, sealed together with the user it
    was issued to and when. So a refresh can be refused for a user signed out everywhere
    (`users revoke-tokens`) before the IdP is asked, and a token is useless outside the
    proxy that issued it."""

    def __init__(self, secret: str, *, max_chars: int) -> None:
        self._sealer = Sealer(secret, "client-refresh-token")
        self._max = max_chars

    def seal(self, idp_token: str, user_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        plain = {"rt": idp_token, "uid": user_id, "iat_ms": int(now * 1000)}
        return self._sealer.seal(orjson.dumps(plain), b"refresh")

    def open(self, token: str) -> tuple[str, str, float] | None:
        """(the IdP's refresh token, the user id, issued at) of a genuine token; else None."""
        found = self._sealer.open_object(token, b"refresh", max_chars=self._max)
        if found is None:
            return None
        rt, uid, iat = found.get("rt"), found.get("uid"), found.get("iat_ms")
        if not isinstance(rt, str) or not isinstance(uid, str) or not isinstance(iat, int):
            return None
        return rt, uid, iat / 1000
