"""Who is calling: presented keys resolved to a cached KeyInfo, with no database read
per request.

Presented keys are hashed (SHA-256) and looked up by digest. The work done does
not depend on how much of a key matches, so the check is constant-time with
respect to the secret; the dict lookup only ever sees digests, which leak
nothing useful about any key.

Keys come from two places: the static `CLAUDE_PROXY_API_KEYS` set, and the
`api_keys` table, which a background task re-reads every `refresh_interval`
seconds (only the rows changed since the last read). A key the cache has not
seen yet (created a moment ago on another replica) costs one database lookup,
rate-limited so that a flood of bad keys cannot turn into a flood of queries. Concurrent
first requests with the same key share that one lookup, and a lookup over the rate waits
for its turn instead of calling a key that may well exist unknown.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Engine

from claude_proxy.gateway.levels import Level
from claude_proxy.store.keys import KeyRow, key_by_hash, keys_changed_since

log = logging.getLogger("claude_proxy.auth")

# A refresh reads rows stamped since the last read minus this margin, so a change
# committed by a transaction that took this long is still seen.
_REFRESH_OVERLAP = timedelta(seconds=10)
_NEGATIVE_TTL = 30.0  # seconds a digest the database did not know is not asked again
_NEGATIVE_MAX = 10_000
# How long a lookup may wait for its turn under the lookup rate. Past it (a queue of
# rate * this many distinct unknown keys) the answer is "try again" (503), never a 401.
_MISS_MAX_WAIT = 5.0


def key_digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def key_id_for(digest: bytes) -> str:
    """A stable, non-secret id for a static key: never the key itself."""
    return "static-" + digest.hex()[:12]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the request path needs to know about a key: who it is, whether it may be used,
    its owner, and its own level of policy (None limits there mean unlimited)."""

    key_id: str
    level: Level
    expires_at: float | None = None  # unix time
    revoked: bool = False
    # The owner: a user's personal key, or a group's service key (both None: unowned).
    user_id: str | None = None
    group_id: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @classmethod
    def unlimited(cls, key_id: str) -> KeyInfo:
        """A static key: no limits of its own."""
        return cls(key_id=key_id, level=Level(id=key_id, kind="key", name=key_id))

    @classmethod
    def from_row(cls, row: KeyRow) -> KeyInfo:
        level = Level(
            id=row.id,
            kind="key",
            name=row.name or row.id,
            models=row.models,
            rpm=row.rpm,
            tpm=row.tpm,
            budget_usd=float(row.budget_usd) if row.budget_usd is not None else None,
            budget_period=row.budget_period,
        )
        return cls(
            key_id=row.id,
            level=level,
            expires_at=row.expires_at.timestamp() if row.expires_at is not None else None,
            revoked=row.revoked_at is not None,
            user_id=row.user_id,
            group_id=row.group_id,
        )


class KeyStoreUnavailable(Exception):
    """The key is not cached and the database cannot be asked (it is unreachable, or the
    lookup queue is full; the message says which): a retryable refusal."""


class KeyCache:
    """Static keys plus the `api_keys` table, held in memory and refreshed in the background."""

    def __init__(
        self,
        *,
        static_keys: list[str],
        engine: Engine | None = None,
        refresh_interval: float = 2.0,
        miss_lookups_per_second: float = 20.0,
        miss_max_wait: float = _MISS_MAX_WAIT,
    ) -> None:
        self._by_digest: dict[bytes, KeyInfo] = {}
        self._static = len(set(static_keys))
        for k in static_keys:
            d = key_digest(k)
            self._by_digest[d] = KeyInfo.unlimited(key_id_for(d))
        self._engine = engine
        self._refresh_interval = refresh_interval
        self._digest_of: dict[str, bytes] = {}  # key id -> digest, to drop a rotated secret
        self._budgets: dict[str, KeyInfo] = {}  # key id -> the key, for usable keys with a budget
        self._since: datetime | None = None
        self._loaded = False
        self._healthy_at = float("-inf")  # monotonic time of the last good refresh
        self._misses = _TokenBucket(capacity=miss_lookups_per_second, rate=miss_lookups_per_second)
        self._miss_max_wait = miss_max_wait
        self._unknown: OrderedDict[bytes, float] = OrderedDict()
        # One database lookup per digest at a time; every concurrent request awaits it.
        self._inflight: dict[bytes, asyncio.Task[KeyInfo | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def static_count(self) -> int:
        return self._static

    # ------------------------------------------------------------ request path

    def cached(self, credential: bytes) -> KeyInfo | None:
        """The hot path: a dict lookup by digest."""
        return self._by_digest.get(key_digest(credential))

    async def lookup(self, credential: bytes) -> KeyInfo | None:
        """A key the cache does not hold: ask the database (rarely), or say it is unknown.

        None only when the database said so (now, or in the last 30 s): a key that exists
        is never called unknown. Concurrent lookups of one key share one database read.
        Raises KeyStoreUnavailable when the answer cannot be known: the database is
        unreachable, or too many lookups are queued under the lookup rate.
        """
        digest = key_digest(credential)
        info = self._by_digest.get(digest)
        if info is not None or self._engine is None:
            return info
        now = time.monotonic()
        seen = self._unknown.get(digest)
        if seen is not None and now - seen < _NEGATIVE_TTL and self._fresh(now):
            return None
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._resolve(digest))
            self._inflight[digest] = task
            task.add_done_callback(partial(self._resolved, digest))
        # Shielded: a client that leaves must not cancel the read the others wait for.
        return await asyncio.shield(task)

    async def _resolve(self, digest: bytes) -> KeyInfo | None:
        """The one database read for `digest`, in its turn under the lookup rate."""
        assert self._engine is not None
        wait = self._misses.reserve(time.monotonic(), self._miss_max_wait)
        if wait is None:  # the queue is full: "retry", not "unknown"
            raise KeyStoreUnavailable("too many unknown keys are being looked up at once")
        if wait > 0:
            await asyncio.sleep(wait)
            info = self._by_digest.get(digest)
            if info is not None:
                return info  # a refresh or the admin API brought it meanwhile
        try:
            row = await asyncio.to_thread(key_by_hash, self._engine, digest.hex())
        except Exception as exc:
            log.warning("key lookup failed (%s): database unreachable", type(exc).__name__)
            raise KeyStoreUnavailable("the key database is unreachable") from exc
        if row is None:
            self._remember_unknown(digest, time.monotonic())
            return None
        self.apply(row)
        return self._by_digest.get(digest)

    def _resolved(self, digest: bytes, task: asyncio.Task[KeyInfo | None]) -> None:
        if self._inflight.get(digest) is task:
            del self._inflight[digest]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter had gone

    # -------------------------------------------------------------- updates

    def apply(self, row: KeyRow) -> None:
        """Take one key's current state (from a refresh, or at once from the admin API)."""
        digest = bytes.fromhex(row.key_hash)
        old = self._digest_of.get(row.id)
        if old is not None and old != digest:
            self._by_digest.pop(old, None)  # rotated: the old secret stops working
        self._digest_of[row.id] = digest
        info = self._by_digest[digest] = KeyInfo.from_row(row)
        self._unknown.pop(digest, None)
        if info.level.budget_usd is not None and not info.revoked:
            self._budgets[row.id] = info
        else:
            self._budgets.pop(row.id, None)

    def budgets(self) -> dict[str, str]:
        """{key id: budget period} of the usable keys with a budget: whose spend to read."""
        return {k: info.level.budget_period or "total" for k, info in self._budgets.items()}

    def budgeted(self) -> list[Level]:
        """The levels of the usable keys with a budget (for budget alerts)."""
        return [info.level for info in self._budgets.values()]

    def refresh(self) -> int:
        """Read the keys changed since the last refresh (all, the first time); blocking."""
        assert self._engine is not None
        rows, db_now = keys_changed_since(self._engine, self._since)
        for row in rows:
            self.apply(row)
        self._since = db_now - _REFRESH_OVERLAP
        self._healthy_at = time.monotonic()
        if not self._loaded:
            self._loaded = True
            log.info("key cache loaded: %d database keys, %d static", len(rows), self._static)
        return len(rows)

    async def start(self) -> None:
        """Load once (a database that is down does not stop the start), then keep refreshing."""
        if self._engine is None:
            return
        await self._refresh_logged()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [*self._inflight.values(), *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._task = None

    def healthy(self) -> bool:
        return self._engine is None or self._fresh(time.monotonic())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        was_healthy, was_loaded = self.healthy(), self._loaded
        try:
            await asyncio.to_thread(self.refresh)
        except Exception as exc:
            if was_healthy or not was_loaded:
                log.warning(
                    "key cache refresh failed (%s); known keys keep working from the cache",
                    type(exc).__name__,
                )
            return
        if not was_healthy and was_loaded:
            log.info("key cache refreshed again: database reachable")

    def _fresh(self, now: float) -> bool:
        return now - self._healthy_at < 3 * self._refresh_interval + 1.0

    def _remember_unknown(self, digest: bytes, now: float) -> None:
        self._unknown[digest] = now
        self._unknown.move_to_end(digest)
        while len(self._unknown) > _NEGATIVE_MAX:
            self._unknown.popitem(last=False)


class BadKeyThrottle:
    """Slows down guessing: each client address may fail authentication `burst` times,
    then once per `1/rate` seconds. Only requests whose key is not already known pass
    through here, so good keys from the same address are never slowed."""

    def __init__(
        self, *, burst: float = 20.0, per_minute: float = 20.0, max_clients: int = 10_000
    ) -> None:
        self._burst = burst
        self._rate = per_minute / 60.0
        self._max = max_clients
        self._buckets: OrderedDict[str, _TokenBucket] = OrderedDict()

    def retry_after(self, client: str | None, now: float) -> int | None:
        """Seconds until this address may try another unknown key; None if it may now."""
        bucket = self._buckets.get(client or "")
        if bucket is None:
            return None
        return bucket.wait_seconds(now)

    def failed(self, client: str | None, now: float) -> None:
        key = client or ""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _TokenBucket(
                capacity=self._burst, rate=self._rate, now=now
            )
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        bucket.take(now)


class _TokenBucket:
    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, *, capacity: float, rate: float, now: float | None = None) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = time.monotonic() if now is None else now

    def _fill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def reserve(self, now: float, max_wait: float) -> float | None:
        """Book the next free slot: seconds to wait for it (0: now), or None if that is
        over `max_wait`. Booked slots are owed (tokens below zero), so waiters queue."""
        self._fill(now)
        wait = max(0.0, (1.0 - self.tokens) / self.rate)
        if wait > max_wait:
            return None
        self.tokens -= 1.0
        return wait

    def wait_seconds(self, now: float) -> int | None:
        self._fill(now)
        if self.tokens >= 1.0:
            return None
        return max(1, int((1.0 - self.tokens) / self.rate + 0.999))
