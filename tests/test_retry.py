"""RetryPolicy: what is retried, how long it waits, and the budget that stops the proxy
from multiplying an outage."""

from __future__ import annotations

from claude_proxy.gateway.retry import RetryConfig, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def headers(**h: str):  # type: ignore[no-untyped-def]
    raw = {k.replace("_", "-").encode(): v.encode() for k, v in h.items()}
    return raw.get


def policy(**kw: object) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**kw), Clock())  # type: ignore[arg-type]


def test_connect_errors_are_retried_only_when_the_request_never_left() -> None:
    p = policy()
    p.note_request()
    delay = p.after_connect_error(1, sent=False)
    assert delay is not None and 0.25 <= delay <= 0.5  # equal jitter around 0.5 s
    assert p.after_connect_error(1, sent=True) is None  # the API may have run it
    second = p.after_connect_error(2, sent=False)
    assert second is not None and 0.5 <= second <= 1.0  # doubled
    assert p.after_connect_error(3, sent=False) is None  # 3 attempts in all


def test_statuses_honour_the_upstreams_advice() -> None:
    p = policy()
    for _ in range(10):
        p.note_request()
    assert p.after_status(1, 529, headers(retry_after_ms="1500")) == 1.5
    assert p.after_status(1, 529, headers(retry_after="2")) == 2.0
    assert p.after_status(1, 529, headers(retry_after="30")) is None  # > max: the SDK waits
    assert p.after_status(1, 529, headers(x_should_retry="false")) is None
    assert p.after_status(1, 500, headers()) is None  # not in the list
    assert p.after_status(1, 429, headers(retry_after="1")) is None
    assert policy(statuses=frozenset({500})).after_status(1, 500, headers()) is not None


def test_the_budget_caps_retries_at_a_share_of_requests() -> None:
    p = policy(ratio=0.2, min_per_second=0.1)  # at least 1 retry per 10 s
    for _ in range(100):
        p.note_request()
    taken = sum(p.after_connect_error(1, sent=False) is not None for _ in range(50))
    assert taken == 20  # 20 % of 100 requests
    assert p.stats() == {"retried": 20, "denied_by_budget": 30}
