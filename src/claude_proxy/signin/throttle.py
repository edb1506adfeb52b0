"""Per-address limits on the unauthenticated sign-in endpoints (a sliding window).

Kept in each process's memory: with N replicas behind a load balancer an address gets
up to N times the limit, which still bounds code guessing and grant flooding. The table
of addresses is bounded too: past `max_addresses` the least recently seen is dropped.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class IpWindow:
    """At most `limit` events per address in any `window` seconds."""

    def __init__(self, *, limit: int, window: float, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._max = max_addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str, now: float) -> bool:
        """Count one event for `address`; False (not counted) when it is over the limit."""
        if self.over(address, now):
            return False
        self.count(address, now)
        return True

    def over(self, address: str, now: float) -> bool:
        """True when `address` has had `limit` events in the last `window` seconds."""
        times = self._seen.get(address)
        if times is None:
            return False
        cut = now - self.window
        while times and times[0] <= cut:
            times.popleft()
        return len(times) >= self.limit

    def count(self, address: str, now: float) -> None:
        times = self._seen.get(address)
        if times is None:
            times = self._seen[address] = deque()
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(address)
        times.append(now)
