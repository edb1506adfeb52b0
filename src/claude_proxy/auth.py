"""Client key checks.

Presented keys are hashed (SHA-256) and looked up by digest. The work done
does not depend on how much of a key matches, so comparison is constant-time
with respect to the secret; the dict lookup only ever sees digests, which leak
nothing useful about any key. The database-backed keys later use the same digests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def key_digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def key_id_for(digest: bytes) -> str:
    """A stable, non-secret id for logs and records: never the key itself."""
    return "static-" + digest.hex()[:12]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str


class KeyStore:
    """The keys a proxy accepts. Today: the static `CLAUDE_PROXY_API_KEYS` set."""

    def __init__(self, static_keys: list[str]) -> None:
        self._by_digest: dict[bytes, KeyInfo] = {}
        for k in static_keys:
            d = key_digest(k)
            self._by_digest[d] = KeyInfo(key_id=key_id_for(d))

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, credential: bytes) -> KeyInfo | None:
        return self._by_digest.get(key_digest(credential))
