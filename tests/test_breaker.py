"""CircuitBreaker: opens on a failure rate over a minimum volume, answers at once while
open, and closes again after successful half-open probes; every transition is logged."""

from __future__ import annotations

import logging

import pytest

from claude_proxy.gateway.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    cfg = BreakerConfig(
        **{"failure_ratio": 0.5, "min_requests": 10, "window_seconds": 30, "open_seconds": 15,
           "probes": 2, **kw}  # type: ignore[arg-type]
    )  # fmt: skip
    return CircuitBreaker(cfg, clock)


def test_needs_the_minimum_volume_before_opening() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(9):
        assert b.allow()
        b.record(False)
    assert b.state == CLOSED  # 9 of 9 failed, but 9 < min_requests
    b.record(False)
    assert b.state == OPEN


def test_opens_on_the_failure_ratio_and_refuses_until_the_open_period_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="claude_proxy.breaker")
    clock = Clock()
    b = breaker(clock)
    for i in range(20):
        b.record(i % 3 == 0)  # 2 of 3 fail
        if b.state == OPEN:
            break
    assert b.state == OPEN
    assert "circuit breaker: closed -> open" in caplog.text
    assert not b.allow()
    clock.t += 10
    assert b.retry_after() == 5
    assert not b.allow()
    clock.t += 5
    assert b.allow() and b.state == HALF_OPEN  # the first probe
    assert b.allow()  # the second
    assert not b.allow()  # only `probes` at a time
    b.record(True)
    b.record(True)
    assert b.state == CLOSED
    assert "half_open -> closed" in caplog.text


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    b = breaker(clock, min_requests=2)
    b.record(False)
    b.record(False)
    clock.t += 15
    assert b.allow()
    b.record(False)
    assert b.state == OPEN and not b.allow()


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(9):
        b.record(False)
    clock.t += 31
    b.record(False)  # the 9 old failures no longer count
    assert b.state == CLOSED
    assert b.stats()["window_attempts"] == 1


def test_a_probe_whose_client_left_frees_its_slot() -> None:
    clock = Clock()
    b = breaker(clock, min_requests=1, probes=1)
    b.record(False)
    clock.t += 15
    assert b.allow()
    b.forget()
    assert b.allow()
