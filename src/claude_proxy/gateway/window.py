"""Two counts per second over a sliding window of whole seconds, with running totals.

Three parts of the proxy count this way, each with its own pair and window: the
limiter (requests and tokens per key, 60 s), the circuit breaker (attempts and
failures, 30 s) and the retry budget (requests and retries, 10 s). On the request
path, so the totals are kept up to date as buckets come and go, never summed.
"""

from __future__ import annotations

from collections import deque


class SlidingCounts:
    """`add()` counts in the current second; `expire()` drops seconds that left the
    window. `totals` is the pair summed over what is left; `buckets` holds
    [second, first count, second count], oldest first."""

    __slots__ = ("buckets", "seconds", "totals")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.buckets: deque[list[int]] = deque()
        self.totals = [0, 0]

    def expire(self, now_s: int) -> None:
        cut = now_s - self.seconds
        buckets, totals = self.buckets, self.totals
        while buckets and buckets[0][0] <= cut:
            _, a, b = buckets.popleft()
            totals[0] -= a
            totals[1] -= b

    def add(self, now_s: int, a: int = 0, b: int = 0) -> None:
        buckets = self.buckets
        if buckets and buckets[-1][0] == now_s:
            bucket = buckets[-1]
            bucket[1] += a
            bucket[2] += b
        else:
            buckets.append([now_s, a, b])
        self.totals[0] += a
        self.totals[1] += b

    def clear(self) -> None:
        self.buckets.clear()
        self.totals = [0, 0]
