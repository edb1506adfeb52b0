"""Usage summaries and the log tail return the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert

from claude_proxy.store.queries import LogFollower, percentile, recent_logs, usage_summary
from claude_proxy.store.records import Usage
from claude_proxy.store.rows import record_to_row
from claude_proxy.store.schema import request_logs
from tests.store.conftest import Backend, make_record

DAY1 = datetime(2025, 3, 10, 23, 59, 0, tzinfo=UTC)
DAY2 = datetime(2025, 3, 11, 0, 0, 30, tzinfo=UTC)
SINCE = datetime(2025, 3, 5, tzinfo=UTC)


def add(db: Backend, *rows: dict[str, Any]) -> None:
    with db.engine().begin() as conn:
        conn.execute(insert(request_logs), list(rows))


def row(
    i: int,
    at: datetime,
    key: str,
    model: str,
    latency: float | None,
    ttft: float | None,
    cost: str | None,
    **kw: Any,
) -> dict[str, Any]:
    rec = make_record(
        i,
        id=f"cpr_q_{i:04d}",
        created_at=at.timestamp(),
        key_id=key,
        model=model,
        latency_ms=latency,
        ttft_ms=ttft,
        usage=Usage(
            input_tokens=100,
            output_tokens=10 * i,
            cache_creation_input_tokens=3,
            cache_creation_5m_input_tokens=1,
            cache_creation_1h_input_tokens=2,
            cache_read_input_tokens=1000,
        ),
        **kw,
    )
    return record_to_row(rec, None if cost is None else Decimal(cost))


@pytest.fixture
def sample(db: Backend) -> Backend:
    add(
        db,
        row(1, DAY1, "key-a", "m1", 100.0, 10.0, "0.1"),
        row(2, DAY1, "key-a", "m1", 200.0, 20.0, "0.2"),
        row(3, DAY2, "key-a", "m1", 300.0, 30.0, "0.3", status_code=529, error_type="overloaded"),
        row(4, DAY2, "key-a", "m1", 400.0, None, None),  # unknown price: NULL cost
        row(5, DAY2, "key-b", "m2", 50.0, 5.0, "1.00000001"),
        row(6, DAY2, "key-b", "m2", 150.0, 15.0, "2"),
        row(7, datetime(2025, 3, 1, tzinfo=UTC), "key-a", "m1", 9999.0, 9999.0, "100"),  # old
    )
    return db


def test_usage_by_key(sample: Backend) -> None:
    a, b = usage_summary(sample.engine(), "key", SINCE)
    assert a["bucket"] == "key-a" and b["bucket"] == "key-b"
    assert (a["requests"], a["errors"], a["unpriced"]) == (4, 1, 1)
    assert a["input_tokens"] == 400 and a["output_tokens"] == 10 + 20 + 30 + 40
    assert a["cache_creation_5m_input_tokens"] == 4 and a["cache_creation_1h_input_tokens"] == 8
    assert a["cache_creation_input_tokens"] == 12 and a["cache_read_input_tokens"] == 4000
    assert a["cost_usd"] == Decimal("0.6") and isinstance(a["cost_usd"], Decimal)
    assert b["cost_usd"] == Decimal("3.00000001")  # exact to the 8th place on both dialects
    # percentile_cont semantics (linear interpolation), computed alike on both dialects.
    assert a["latency_ms_p50"] == pytest.approx(250.0)
    assert a["latency_ms_p95"] == pytest.approx(385.0)
    assert a["ttft_ms_p50"] == pytest.approx(20.0)  # NULLs ignored
    assert a["ttft_ms_p95"] == pytest.approx(29.0)
    assert b["latency_ms_p50"] == pytest.approx(100.0)
    assert b["latency_ms_p95"] == pytest.approx(145.0)


def test_usage_by_model_and_window(sample: Backend) -> None:
    engine = sample.engine()
    m1, m2 = usage_summary(engine, "model", SINCE)
    assert (m1["bucket"], m1["requests"], m2["bucket"], m2["requests"]) == ("m1", 4, "m2", 2)
    everything = usage_summary(engine, "model", datetime(2025, 1, 1, tzinfo=UTC))
    assert everything[0]["requests"] == 5 and everything[0]["cost_usd"] == Decimal("100.6")
    only_day1 = usage_summary(engine, "model", SINCE, until=datetime(2025, 3, 11, tzinfo=UTC))
    assert [(r["bucket"], r["requests"]) for r in only_day1] == [("m1", 2)]
    assert usage_summary(engine, "key", datetime(2030, 1, 1, tzinfo=UTC)) == []


def test_usage_by_utc_day(sample: Backend) -> None:
    d1, d2 = usage_summary(sample.engine(), "day", SINCE)
    assert (d1["bucket"], d1["requests"], d1["cost_usd"]) == ("2025-03-10", 2, Decimal("0.3"))
    assert (d2["bucket"], d2["requests"], d2["cost_usd"]) == (
        "2025-03-11",
        4,
        Decimal("3.30000001"),
    )
    assert d2["latency_ms_p95"] == pytest.approx(percentile([300.0, 400.0, 50.0, 150.0], 0.95))


def test_usage_accepts_any_time_zone(sample: Backend) -> None:
    since = SINCE.astimezone(timezone(timedelta(hours=-5)))  # the same instant, written in EST
    assert [r["requests"] for r in usage_summary(sample.engine(), "key", since)] == [4, 2]
    with pytest.raises(Exception, match="naive"):
        usage_summary(sample.engine(), "key", datetime(2025, 3, 5))


def test_percentile_matches_postgres_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5


def test_recent_logs_order_cursor_and_filters(sample: Backend) -> None:
    engine = sample.engine()
    latest = recent_logs(engine, limit=3)
    assert [r["id"] for r in latest] == ["cpr_q_0004", "cpr_q_0005", "cpr_q_0006"]
    assert latest[0]["created_at"] == DAY2 and latest[0]["cost_usd"] is None

    everything = recent_logs(engine, limit=100)
    assert [r["id"] for r in everything] == [f"cpr_q_{i:04d}" for i in (7, 1, 2, 3, 4, 5, 6)]
    cursor = (everything[2]["created_at"], everything[2]["id"])  # row 2; row 1 has the same time
    page = recent_logs(engine, after=cursor, limit=2)
    assert [r["id"] for r in page] == ["cpr_q_0003", "cpr_q_0004"]

    assert [r["id"] for r in recent_logs(engine, key_id="key-b")] == ["cpr_q_0005", "cpr_q_0006"]
    assert [r["id"] for r in recent_logs(engine, model="m1", after=cursor)] == [
        "cpr_q_0003",
        "cpr_q_0004",
    ]
    row3 = next(r for r in everything if r["id"] == "cpr_q_0003")
    assert (row3["status_code"], row3["error_type"], row3["stream"]) == (529, "overloaded", False)


def test_follow_shows_each_row_once_even_a_long_request_that_ends_late(db: Backend) -> None:
    engine = db.engine()
    now = datetime.now(UTC)
    add(db, row(1, now, "key-a", "m1", 1.0, 1.0, None))
    follower = LogFollower(engine, key_id="key-a")
    assert follower.poll() == []  # rows from before it started are not repeated
    # A stream that began an hour ago finishes now: created_at is old, but it just arrived.
    add(db, row(2, now - timedelta(hours=1), "key-a", "m1", 3.6e6, 5.0, None))
    add(db, row(3, now, "key-b", "m1", 1.0, 1.0, None))  # another key: filtered out
    assert [r["id"] for r in follower.poll()] == ["cpr_q_0002"]
    assert follower.poll() == []
    add(db, row(4, now, "key-a", "m1", 1.0, 1.0, None), row(5, now, "key-a", "m1", 1.0, 1.0, None))
    assert [r["id"] for r in follower.poll()] == ["cpr_q_0004", "cpr_q_0005"]
    assert follower.poll() == []


def test_follow_pages_through_bursts(db: Backend) -> None:
    engine = db.engine()
    follower = LogFollower(engine, page=10)
    now = datetime.now(UTC)
    add(db, *(row(i, now, "key-a", "m1", 1.0, 1.0, None) for i in range(35)))
    got = follower.poll()
    assert sorted(r["id"] for r in got) == [f"cpr_q_{i:04d}" for i in range(35)]
    assert follower.poll() == []
