"""When the proxy retries an upstream attempt itself, and how long it waits first.

Only before the first byte reached the client, and only what the client cannot see
or would retry badly: a request that never left (connection refused, connect
timeout, TLS failure) and, by default, 529 overloaded. The SDKs and Claude Code
retry on their own, so the proxy's retries are few and bounded:

- at most `max_attempts` attempts in all;
- exponential backoff with jitter, or the upstream's `retry-after-ms` /
  `retry-after` when it sends one; a wait longer than `max_backoff` is not taken:
  the response goes to the client, whose SDK honours it;
- never when the upstream says `x-should-retry: false`;
- a budget: retries may be at most `ratio` of the requests of the last 10 s (plus
  `min_per_second` at low volume), so a failing upstream does not get 3x the load.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from claude_proxy.gateway.window import SlidingCounts

_BUDGET_WINDOW = 10  # seconds


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    statuses: frozenset[int] = frozenset({529})
    connect_errors: bool = True
    max_attempts: int = 3
    backoff_initial: float = 0.5
    max_backoff: float = 8.0
    ratio: float = 0.2
    min_per_second: float = 1.0


class RetryPolicy:
    """Decides retries for one process; `note_request` is called once per client request."""

    def __init__(self, config: RetryConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._now = clock
        self._window = SlidingCounts(_BUDGET_WINDOW)  # requests, retries
        self.retried = 0  # retries taken, for stats
        self.denied_by_budget = 0

    def note_request(self) -> None:
        now_s = self._expire()
        self._window.add(now_s, 1, 0)

    def after_connect_error(self, attempt: int, sent: bool) -> float | None:
        """Seconds to wait before retrying a failed connection, or None: do not retry."""
        if sent or not self.config.connect_errors:
            return None
        return self._take(attempt, None)

    def after_status(
        self, attempt: int, status: int, headers: Callable[[bytes], bytes | None]
    ) -> float | None:
        """Seconds to wait before retrying this response, or None: pass it to the client."""
        if status not in self.config.statuses:
            return None
        should = headers(b"x-should-retry")
        if should is not None and should.strip().lower() == b"false":
            return None
        return self._take(attempt, _server_delay(headers))

    def stats(self) -> dict[str, int]:
        return {"retried": self.retried, "denied_by_budget": self.denied_by_budget}

    # ------------------------------------------------------------------ helpers

    def _take(self, attempt: int, server_delay: float | None) -> float | None:
        cfg = self.config
        if attempt >= cfg.max_attempts:
            return None
        if server_delay is not None:
            if server_delay > cfg.max_backoff:
                return None  # the client's SDK waits that long better than we hold a request
            delay = server_delay
        else:
            cap = min(cfg.max_backoff, cfg.backoff_initial * 2 ** (attempt - 1))
            delay = random.uniform(cap / 2, cap)  # "equal jitter": spread, never zero
        now_s = self._expire()
        requests, retries = self._window.totals
        allowed = max(cfg.min_per_second * _BUDGET_WINDOW, cfg.ratio * requests)
        if retries + 1 > allowed:
            self.denied_by_budget += 1
            return None
        self._window.add(now_s, 0, 1)
        self.retried += 1
        return delay

    def _expire(self) -> int:
        now_s = int(self._now())
        self._window.expire(now_s)
        return now_s


def _server_delay(headers: Callable[[bytes], bytes | None]) -> float | None:
    """The upstream's own advice: retry-after-ms, else retry-after (seconds)."""
    for name, scale in ((b"retry-after-ms", 0.001), (b"retry-after", 1.0)):
        raw = headers(name)
        if raw is None:
            continue
        try:
            value = float(raw.decode("latin-1").strip())
        except ValueError:
            continue  # an HTTP date: rare from the API; fall back to our own backoff
        if value >= 0:
            return value * scale
    return None
