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
from collections.abc import Callable
from dataclasses import dataclass

from claude_proxy.gateway.window import SlidingCounts

log = logging.getLogger("claude_proxy.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def is_failure_status(status: int) -> bool:
    return status >= 500  # 500, 502, 503, 504, 529 ...


@dataclass(frozen=True, kw_only=True)
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
        self._window = SlidingCounts(config.window_seconds)  # attempts, failures
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
        self._window.expire(now_s)
        self._window.add(now_s, 1, 0 if ok else 1)
        if not ok:
            attempts, failures = self._window.totals
            if (
                attempts >= self.config.min_requests
                and failures >= self.config.failure_ratio * attempts
            ):
                self._open(
                    f"{failures} of {attempts} attempts failed in the last "
                    f"{self.config.window_seconds:g}s"
                )

    def forget(self) -> None:
        """An attempt `allow` let through ended without an outcome (the client left)."""
        if self.state == HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)

    def stats(self) -> dict[str, object]:
        self._window.expire(int(self._now()))
        attempts, failures = self._window.totals
        return {
            "state": self.state,
            "window_attempts": attempts,
            "window_failures": failures,
            "transitions": self.transitions,
        }

    # ------------------------------------------------------------------ helpers

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
            self._window.clear()
