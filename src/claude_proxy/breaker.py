"""A circuit breaker on the upstream: stop sending requests to an API that is failing.

Closed: every attempt goes through; outcomes are counted in 1-second buckets over a
sliding window. When at least `failure_ratio` of at least `min_requests` attempts in
the window failed, it opens: requests are answered at once with 529
`overloaded_error` and a `retry-after`, for `open_seconds`. Then it is half-open: up
to `probes` requests go through; if they all succeed it closes, and one failure opens
it again. Every transition is logged. Each proxy process has its own breaker.

Failures are what says the API itself is unwell: connection errors, timeouts, 5xx
and 529. A 429 (the organisation's own rate limit) or a 4xx is the API working.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("claude_proxy.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def is_failure_status(status: int) -> bool:
    return status >= 500  # 500, 502, 503, 504, 529 ...


@dataclass(frozen=True)
class BreakerConfig:
    failure_ratio: float = 0.5
    min_requests: int = 20
    window_seconds: float = 30.0
    open_seconds: float = 15.0
    probes: int = 3


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._now = clock
        self.state = CLOSED
        self._buckets: deque[list[int]] = deque()  # [second, attempts, failures]
        self._attempts = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        self.transitions = 0

    # -------------------------------------------------------------- request path

    def allow(self) -> bool:
        """May an attempt go upstream now? In half-open, only the probes may."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._now() - self._opened_at < self.config.open_seconds:
                return False
            self._move(HALF_OPEN, "the open period is over; probing")
        if self._probes_out >= self.config.probes:
            return False
        self._probes_out += 1
        return True

    def retry_after(self) -> int:
        """Whole seconds until probes are let through again (at least 1)."""
        left = self.config.open_seconds - (self._now() - self._opened_at)
        return max(1, math.ceil(left))

    def record(self, ok: bool) -> None:
        """The outcome of an attempt that `allow` let through."""
        if self.state == HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if not ok:
                self._open("a probe failed")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.config.probes:
                self._move(CLOSED, f"{self._probes_ok} probes succeeded")
            return
        if self.state == OPEN:
            return  # a late outcome of an attempt made before it opened
        now_s = int(self._now())
        self._expire(now_s)
        b = self._buckets
        if b and b[-1][0] == now_s:
            bucket = b[-1]
        else:
            bucket = [now_s, 0, 0]
            b.append(bucket)
        bucket[1] += 1
        self._attempts += 1
        if not ok:
            bucket[2] += 1
            self._failures += 1
            if (
                self._attempts >= self.config.min_requests
                and self._failures >= self.config.failure_ratio * self._attempts
            ):
                self._open(
                    f"{self._failures} of {self._attempts} attempts failed in the last "
                    f"{self.config.window_seconds:g}s"
                )

    def forget(self) -> None:
        """An attempt `allow` let through ended without an outcome (the client left)."""
        if self.state == HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)

    def stats(self) -> dict[str, object]:
        self._expire(int(self._now()))
        return {
            "state": self.state,
            "window_attempts": self._attempts,
            "window_failures": self._failures,
            "transitions": self.transitions,
        }

    # ------------------------------------------------------------------ helpers

    def _expire(self, now_s: int) -> None:
        cut = now_s - self.config.window_seconds
        b = self._buckets
        while b and b[0][0] <= cut:
            _, attempts, failures = b.popleft()
            self._attempts -= attempts
            self._failures -= failures

    def _open(self, why: str) -> None:
        self._opened_at = self._now()
        self._move(OPEN, why)

    def _move(self, state: str, why: str) -> None:
        log.warning(
            "circuit breaker: %s -> %s (%s)%s",
            self.state,
            state,
            why,
            f"; answering 529 for {self.config.open_seconds:g}s" if state == OPEN else "",
        )
        self.state = state
        self.transitions += 1
        self._probes_out = 0
        self._probes_ok = 0
        if state != HALF_OPEN:
            self._buckets.clear()
            self._attempts = self._failures = 0
