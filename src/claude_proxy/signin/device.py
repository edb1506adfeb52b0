"""RFC 8628 device authorization grants, as Claude Code's `/login` and `claude-proxy
login` use them.

A grant lives in `device_grants` (store/signin.py), so the client's polls, the
verification page and the IdP's callback may each reach a different replica. The device
code (256 random bits) is stored only as its SHA-256; the user code is 8 letters from an
alphabet without vowels or look-alikes (`BCDF-GHJK`), 20^8 ≈ 2.6e10 codes, guessed at no
more than 10 tries per address per 10 minutes on the verification page. The IdP's refresh
token is sealed while it waits for the poll that takes it; the grant is single use.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from claude_proxy.signin.seal import Sealer
from claude_proxy.store.signin import (
    DeviceGrant,
    UserCodeTaken,
    approve_grant,
    create_grant,
    deny_grant,
    grant_by_user_code,
    grant_pending,
    poll_grant,
    prune_grants,
)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKMNPQRSTVWXYZ"
USER_CODE_LENGTH = 8
EXPIRES_IN = 600  # seconds a grant waits for the browser
INTERVAL = 5  # seconds between polls the client is told
MIN_POLL_SECONDS = 4.0  # polled faster than this: slow_down
MAX_DEVICE_CODE_CHARS = 128
_PRUNE_EVERY = 60.0
_CODE_ATTEMPTS = 5


def device_code_hash(device_code: str) -> str:
    return hashlib.sha256(device_code.encode("utf-8", "surrogatepass")).hexdigest()


def new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def display_code(user_code: str) -> str:
    """How people see and type it: XXXX-XXXX."""
    return f"{user_code[:4]}-{user_code[4:]}"


def normalise_user_code(raw: str) -> str | None:
    """What a person typed (any case, with dashes or spaces) as the stored code; None if
    it cannot be one."""
    if len(raw) > 32:
        return None
    code = "".join(ch for ch in raw.upper() if ch.isascii() and ch.isalnum())
    if len(code) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in code):
        return None
    return code


@dataclass(frozen=True, slots=True)
class NewGrant:
    device_code: str
    user_code: str  # without the dash
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll's answer: an OAuth error code, or the approved user (and the IdP's
    refresh token, unsealed, when there was one)."""

    error: str | None
    user_id: str | None = None
    refresh_token: str | None = None


class DeviceFlow:
    """The grants' life: start, find by user code, approve or deny, poll."""

    def __init__(self, *, engine: Engine, secret: str) -> None:
        self._engine = engine
        self._sealer = Sealer(secret, "device-refresh-token")
        self._pruned_at = 0.0

    async def start(self) -> NewGrant:
        now = _utc_now()
        await self._maybe_prune(now)
        device_code = secrets.token_urlsafe(32)  # 256 bits
        digest = device_code_hash(device_code)
        for attempt in range(_CODE_ATTEMPTS):
            user_code = new_user_code()
            try:
                await asyncio.to_thread(
                    create_grant,
                    self._engine,
                    device_code_hash=digest,
                    user_code=user_code,
                    expires_at=now + timedelta(seconds=EXPIRES_IN),
                )
                return NewGrant(device_code, user_code, EXPIRES_IN, INTERVAL)
            except UserCodeTaken:
                if attempt == _CODE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def find(self, user_code: str) -> DeviceGrant | None:
        """The pending, unexpired grant with this (normalised) user code."""
        grant = await asyncio.to_thread(grant_by_user_code, self._engine, user_code)
        if grant is None or grant.status != "pending" or grant.expires_at <= _utc_now():
            return None
        return grant

    async def pending(self, digest: str) -> bool:
        return await asyncio.to_thread(grant_pending, self._engine, digest, _utc_now())

    async def approve(self, digest: str, *, user_id: str, refresh_token: str | None) -> bool:
        sealed = (
            self._sealer.seal(refresh_token.encode(), _aad(digest))
            if refresh_token is not None
            else None
        )
        return await asyncio.to_thread(
            approve_grant,
            self._engine,
            digest,
            user_id=user_id,
            sealed_refresh=sealed,
            now=_utc_now(),
        )

    async def deny(self, digest: str) -> None:
        await asyncio.to_thread(deny_grant, self._engine, digest)

    async def poll(self, device_code: str) -> Poll:
        if len(device_code) > MAX_DEVICE_CODE_CHARS:
            return Poll("expired_token")
        digest = device_code_hash(device_code)
        found = await asyncio.to_thread(
            poll_grant, self._engine, digest, now=_utc_now(), min_interval=MIN_POLL_SECONDS
        )
        outcome = found.outcome
        if outcome == "approved":
            refresh = None
            if found.sealed_refresh is not None:
                plain = self._sealer.open(found.sealed_refresh, _aad(digest), max_chars=1 << 20)
                refresh = plain.decode() if plain is not None else None
            return Poll(None, user_id=found.user_id, refresh_token=refresh)
        return Poll(
            {
                "pending": "authorization_pending",
                "slow_down": "slow_down",
                "denied": "access_denied",
            }.get(outcome, "expired_token")
        )

    async def _maybe_prune(self, now: datetime) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        # An hour's grace: a client polling just after expiry still hears expired_token.
        await asyncio.to_thread(prune_grants, self._engine, now - timedelta(hours=1))


def _aad(digest: str) -> bytes:
    return b"device-grant:" + digest.encode()


def _utc_now() -> datetime:
    return datetime.now(UTC)
