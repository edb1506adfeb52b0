"""Limiter: sliding-minute RPM/TPM, budgets and model allowlists, shared by processes
through a real database (SQLite, PostgreSQL, PostgreSQL behind pgbouncer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.gateway.levels import Level
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import Caller
from claude_proxy.store.columns import current_period
from claude_proxy.store.records import RequestRecord, Usage
from claude_proxy.store.schema import key_spend, proxy_instances, rate_usage
from tests.helpers import wait_until
from tests.store.conftest import Backend

PRICES = PriceTable.load()
T0 = 1_800_000_000.0  # a fixed "now" (whole second) for the window arithmetic


def key(**kw: object) -> Level:
    return Level(id=f"key_{uuid.uuid4().hex[:10]}", kind="key", name="test", **kw)  # type: ignore[arg-type]


def alone(level: Level) -> Caller:
    """A request made with this key and no other level."""
    return Caller(level.id, None, None, (level,))


@pytest.fixture
def limiters(db: Backend) -> Iterator[list[Limiter]]:
    with db.engine().begin() as conn:
        conn.execute(proxy_instances.delete())
    made: list[Limiter] = []
    yield made


def new_limiter(made: list[Limiter], db: Backend, interval: float = 1.0) -> Limiter:
    lim = Limiter(
        engine=db.engine(), prices=PRICES, sync_interval=interval, instance_id=uuid.uuid4().hex
    )
    made.append(lim)
    return lim


def attempt(lim: Limiter, k: Level, now: float, model: str = "claude-sonnet-4-6") -> bool:
    if lim.check_models(alone(k), [model]) is not None or lim.check(k, now) is not None:
        return False
    lim.admit(k, now)
    return True


async def test_a_sliding_minute_with_retry_after_in_whole_seconds(
    db: Backend, limiters: list[Limiter]
) -> None:
    lim = new_limiter(limiters, db)
    assert await lim.sync()
    k = key(rpm=5)
    assert [attempt(lim, k, T0 + i * 0.1) for i in range(5)] == [True] * 5
    assert [attempt(lim, k, T0 + 1), attempt(lim, k, T0 + 1.5)] == [False, False]
    refusal = lim.check(k, T0 + 30.5)
    assert refusal is not None and refusal.reason == "rpm" and refusal.status == 429
    assert refusal.error_type == "rate_limit_error"
    assert dict(refusal.headers)[b"retry-after"] == b"30"  # the first admission leaves at T0+60
    assert "5 requests per minute" in refusal.message
    # At T0+60 the second T0 has left the window (refusals are not counted).
    assert [attempt(lim, k, T0 + 60 + i * 0.1) for i in range(6)] == [True] * 5 + [False]


async def test_two_processes_admit_the_limit_once_not_twice_in_a_burst(
    db: Backend, limiters: list[Limiter]
) -> None:
    a, b = new_limiter(limiters, db), new_limiter(limiters, db)
    for lim in (a, b, a):
        assert await lim.sync()
    assert a.stats()["instances"] == b.stats()["instances"] == 2
    k = key(rpm=60)
    accepted = sum(attempt(a if i % 2 else b, k, T0) for i in range(200))
    assert accepted == 60  # each process took its share, ceil(60 / 2)
    # b reads before a has written: b sees only its own 30 and may take half of the
    # rest. This staleness is the stated overshoot, at most (N - 1) * ceil(limit / N).
    for lim in (b, a):
        assert await lim.sync()
    late = sum(attempt(a if i % 2 else b, k, T0 + 1) for i in range(50))
    assert 0 < late <= 30
    for lim in (a, b):
        assert await lim.sync()
    assert sum(attempt(a if i % 2 else b, k, T0 + 2) for i in range(50)) == 0
    with db.engine().connect() as conn:
        stored = conn.execute(
            select(func.sum(rate_usage.c.requests)).where(rate_usage.c.key_id == k.id)
        ).scalar_one()
    assert stored == 60 + late


async def test_tokens_per_minute_count_what_finished_requests_used(
    db: Backend, limiters: list[Limiter]
) -> None:
    lim = new_limiter(limiters, db)
    k = key(tpm=1000)
    assert attempt(lim, k, T0)
    usage = Usage(input_tokens=400, output_tokens=500, cache_creation_input_tokens=100,
                  cache_read_input_tokens=50_000)  # fmt: skip
    lim.finish(k, RequestRecord("r1", T0, "POST", "/v1/messages", usage=usage), T0 + 1)
    refusal = lim.check(k, T0 + 2)
    assert refusal is not None and refusal.reason == "tpm"  # 1,000: cache reads do not count
    assert dict(refusal.headers)[b"retry-after"] == b"59"


async def test_budgets_refuse_without_retry_and_survive_a_restart(
    db: Backend, limiters: list[Limiter]
) -> None:
    k = key(budget_usd=0.05, budget_period="day")
    lim = new_limiter(limiters, db)
    assert attempt(lim, k, T0)
    big = Usage(input_tokens=10_000, output_tokens=2_000)  # $0.06 on Sonnet 4.6
    record = RequestRecord("r1", T0, "POST", "/v1/messages", model="claude-sonnet-4-6", usage=big)
    lim.finish(k, record, datetime.now(UTC).timestamp())
    now = datetime.now(UTC).timestamp()
    refusal = lim.check(k, now)
    assert refusal is not None and refusal.reason == "budget" and refusal.status == 429
    assert dict(refusal.headers) == {b"x-should-retry": b"false"}
    assert "Budget exhausted" in refusal.message and "$0.06 of $0.05" in refusal.message
    assert "resets at" in refusal.message and "T00:00:00Z" in refusal.message

    # A new process (a restart) knows nothing locally: the spend comes from key_spend,
    # which the log writer maintains.
    with db.engine().begin() as conn:
        conn.execute(
            key_spend.insert().values(
                key_id=k.id, period=current_period("day"), cost_usd=Decimal("0.06"), requests=1
            )
        )
    fresh = new_limiter(limiters, db)
    fresh.admit(k, now)  # registers the key as one with a budget
    assert await fresh.sync()
    again = fresh.check(k, now)
    assert again is not None and again.reason == "budget"


async def test_model_allowlist_names_the_model(db: Backend, limiters: list[Limiter]) -> None:
    lim = new_limiter(limiters, db)
    k = key(models=("claude-haiku-*", "claude-sonnet-4-6"))
    assert lim.check_models(alone(k), ["claude-haiku-4-5-20251001"]) is None
    assert lim.check_models(alone(k), ["claude-sonnet-4-6"]) is None
    refusal = lim.check_models(alone(k), ["claude-opus-4-1"])
    assert refusal is not None and refusal.status == 403
    assert refusal.error_type == "permission_error" and "'claude-opus-4-1'" in refusal.message


async def test_during_an_outage_each_process_keeps_to_its_share_then_reconciles(
    db: Backend, limiters: list[Limiter]
) -> None:
    a, b = new_limiter(limiters, db, 0.02), new_limiter(limiters, db, 0.02)
    for lim in (a, b, a):
        assert await lim.sync()
    k = key(rpm=10)
    with db.outage():
        assert not await a.sync()
        wait_until(a.local_only, what="the limiter to notice the outage")
        assert sum(attempt(a, k, T0) for _ in range(20)) == 5  # ceil(10 / 2)
    assert await a.sync()
    with db.engine().connect() as conn:
        stored = conn.execute(
            select(func.sum(rate_usage.c.requests)).where(rate_usage.c.key_id == k.id)
        ).scalar_one()
    assert stored == 5  # the counts made during the outage reached the database


async def test_a_batch_reservation_counts_against_budget_and_tpm_until_given_back(
    db: Backend, limiters: list[Limiter]
) -> None:
    lim = new_limiter(limiters, db)
    k = key(budget_usd=1.0, budget_period="total", tpm=10_000)
    now = datetime.now(UTC).timestamp()
    refusal = lim.check_reservation(k, 1.5, now)
    assert refusal is not None and refusal.reason == "budget" and refusal.status == 429
    assert "$1.50" in refusal.message and dict(refusal.headers)[b"x-should-retry"] == b"false"
    assert lim.check_reservation(k, 0.6, now) is None
    lim.reserve(k, 0.6, 8_000, now)
    # What is reserved is spent, for the next batch and for every other request.
    again = lim.check_reservation(k, 0.6, now)
    assert again is not None and "$0.40" in again.message
    assert lim.check(k, now) is None  # $0.60 of $1.00: still under the budget
    lim.reserve(k, 0.0, 3_000, now)
    tpm = lim.check(k, now)
    assert tpm is not None and tpm.reason == "tpm"  # 11,000 tokens of 10,000
    # A batch the upstream did not accept gives its reservation back.
    lim.reserve(k, -0.6, 0, now)
    assert lim.check_reservation(k, 0.9, now) is None
