"""key_spend: the log writer adds each new row's cost to its key, user, group and the
organisation, per day, week, month and in total, in the same transaction as the insert, so
spend always equals the sum over the log."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from claude_proxy.store.columns import current_period
from claude_proxy.store.rows import dump_row, record_to_row
from claude_proxy.store.schema import key_spend
from claude_proxy.store.writer import LogWriter
from tests.helpers import wait_until
from tests.store.conftest import Backend, make_record
from tests.store.test_writer import FAST

PRICE = Decimal("0.01250000")


def spend_of(db: Backend, key_id: str) -> dict[str, tuple[Decimal, int]]:
    stmt = select(key_spend.c.period, key_spend.c.cost_usd, key_spend.c.requests).where(
        key_spend.c.key_id == key_id
    )
    with db.engine().connect() as conn:
        return {p: (Decimal(c).quantize(PRICE), int(n)) for p, c, n in conn.execute(stmt)}


def test_spend_counts_each_row_once_through_replays(
    db: Backend, writers: list[LogWriter], spill_dir: Path
) -> None:
    key = f"key_{uuid.uuid4().hex[:8]}"
    recs = [make_record(i, key_id=key) for i in range(7)]
    recs.append(make_record(99, key_id=None))  # a refused request without a key: no spend
    w = LogWriter(db.writer_db(), spill_dir, cost_fn=lambda r: PRICE, **FAST)
    writers.append(w)
    w.start()
    for r in recs:
        w.submit(r)
    w.close_sync(10)
    created = record_to_row(recs[0], None)["created_at"]
    day, month = current_period("day", created), current_period("month", created)
    week = current_period("week", created)
    expected = (PRICE * 7, 7)
    assert spend_of(db, key) == {day: expected, week: expected, month: expected, "total": expected}

    # The same rows again (a spill file written after a commit whose reply was lost),
    # plus two new ones: only the new ones add.
    new = [make_record(i, key_id=key) for i in range(200, 202)]
    spill_dir.mkdir(parents=True, exist_ok=True)
    (spill_dir / "spill-9-dead-1.jsonl").write_bytes(
        b"".join(dump_row(record_to_row(r, PRICE)) for r in [*recs[:7], *new])
    )
    w2 = LogWriter(db.writer_db(), spill_dir, cost_fn=lambda r: PRICE, **FAST)
    writers.append(w2)
    w2.start()
    wait_until(lambda: w2.stats()["replayed_files"] == 1, what="the replay")
    w2.close_sync(10)
    assert spend_of(db, key)["total"] == (PRICE * 9, 9)
    assert spend_of(db, key)[day] == (PRICE * 9, 9)


def test_unpriced_requests_count_as_requests_not_spend(
    db: Backend, writers: list[LogWriter], spill_dir: Path
) -> None:
    key = f"key_{uuid.uuid4().hex[:8]}"
    w = LogWriter(db.writer_db(), spill_dir, cost_fn=lambda r: None, **FAST)
    writers.append(w)
    w.start()
    for i in range(3):
        w.submit(make_record(i, key_id=key, model="claude-unknown-9"))
    w.close_sync(10)
    assert spend_of(db, key)["total"] == (Decimal(0).quantize(PRICE), 3)


def test_spend_counts_at_every_level_a_row_names(
    db: Backend, writers: list[LogWriter], spill_dir: Path
) -> None:
    """A personal key's row adds to the key, its user, its group and the organisation; a
    token's row (no key) to the user, the group and the organisation."""
    tag = uuid.uuid4().hex[:8]
    key, user, group = f"key_{tag}", f"usr_{tag}", f"grp_{tag}"
    org_before = spend_of(db, "org").get("total", (Decimal(0), 0))
    recs = [make_record(i, key_id=key, user_id=user, group_id=group) for i in range(3)]
    recs.append(make_record(3, key_id=None, user_id=user, group_id=group))  # a token
    w = LogWriter(db.writer_db(), spill_dir, cost_fn=lambda r: PRICE, **FAST)
    writers.append(w)
    w.start()
    for r in recs:
        w.submit(r)
    w.close_sync(10)
    assert spend_of(db, key)["total"] == (PRICE * 3, 3)
    assert spend_of(db, user)["total"] == (PRICE * 4, 4)
    assert spend_of(db, group)["total"] == (PRICE * 4, 4)
    org = spend_of(db, "org")["total"]
    assert (org[0] - org_before[0], org[1] - org_before[1]) == (PRICE * 4, 4)
