"""Prompt-cache emulation: which part of a request's input is written to, or read from, the cache.

Rules, as the real API documents them:
- Content up to a `cache_control` breakpoint (order tools → system → messages) is a cacheable
  prefix, if it is at least MIN_CACHEABLE_TOKENS long (shorter prefixes are silently not cached).
- A request reads the longest prefix that is still cached, looking back from each breakpoint over
  up to LOOKBACK_BLOCKS earlier block boundaries.
- Everything after that hit, up to the last breakpoint, is written: `cache_creation_input_tokens`,
  split into 5m / 1h by the TTL of the breakpoint that closes each segment.
- `input_tokens` is the uncached remainder after the last breakpoint.
- Each sighting refreshes the TTL of the entries it touches.
Entries are per model, per emulator instance, in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from claude_proxy.emulator.tokens import InputShape, tokens_for

MIN_CACHEABLE_TOKENS = 1024
LOOKBACK_BLOCKS = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_PRUNE_AT = 100_000


@dataclass(slots=True)
class InputUsage:
    input_tokens: int
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    cache_read: int = 0

    @property
    def cache_creation(self) -> int:
        return self.cache_creation_5m + self.cache_creation_1h

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_creation + self.cache_read


class PromptCache:
    __slots__ = ("_clock", "_entries")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, bytes], tuple[float, float]] = {}

    def clear(self) -> None:
        self._entries.clear()

    def account(self, model: str, shape: InputShape) -> InputUsage:
        """Split the input of one request into uncached / written / read tokens, and record it."""
        total = shape.tokens
        bounds = shape.boundaries
        points = [
            i
            for i, b in enumerate(bounds)
            if b.ttl is not None and tokens_for(b.chars) >= MIN_CACHEABLE_TOKENS
        ]
        if not points:
            return InputUsage(input_tokens=total)
        now = self._clock()
        entries = self._entries
        hit = -1
        for p in reversed(points):
            for j in range(p, max(-1, p - LOOKBACK_BLOCKS - 1), -1):
                if j <= hit:
                    break
                entry = entries.get((model, bounds[j].digest))
                if entry is not None and entry[0] > now:
                    hit = j
                    break
            if hit >= 0:
                break
        read = tokens_for(bounds[hit].chars) if hit >= 0 else 0
        created = {"5m": 0, "1h": 0}
        prev = read
        for p in points:
            b = bounds[p]
            assert b.ttl is not None
            upto = tokens_for(b.chars)
            if p > hit:
                created[b.ttl] += upto - prev
                prev = upto
            ttl = TTL_SECONDS[b.ttl]
            entries[(model, b.digest)] = (now + ttl, ttl)
        if hit >= 0:
            key = (model, bounds[hit].digest)
            ttl = entries[key][1]
            entries[key] = (max(entries[key][0], now + ttl), ttl)
        cached = tokens_for(bounds[points[-1]].chars)
        if len(entries) > _PRUNE_AT:
            self._prune(now)
        return InputUsage(
            input_tokens=max(0, total - max(cached, read)),
            cache_creation_5m=created["5m"],
            cache_creation_1h=created["1h"],
            cache_read=read,
        )

    def _prune(self, now: float) -> None:
        for key in [k for k, (exp, _) in self._entries.items() if exp <= now]:
            del self._entries[key]
