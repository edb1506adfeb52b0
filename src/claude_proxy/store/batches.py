"""Message batches created through the proxy, as the request log knows them.

A batch's submission row (POST /v1/messages/batches, answered 200) carries the batch id in
`message_id` and its reservation in `cost_usd`; once settled, a second row with the id
`SETTLEMENT_PREFIX + batch id` carries the real tokens and the difference. So the log
itself is the list of batches to settle: no table of its own, and a settlement that two
replicas both make is still one row (the insert is idempotent on the id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine, exists, literal, select

from claude_proxy.store.schema import request_logs

SETTLEMENT_PREFIX = "cpr_batch_"
SUBMISSION_ENDPOINT = "/v1/messages/batches"


@dataclass(frozen=True, slots=True)
class Submission:
    """What settling a batch needs to know of its submission."""

    batch_id: str
    key_id: str | None
    created_at: float  # unix seconds: the settlement row counts in the same budget period
    reserved_usd: Decimal
    model: str | None
    # Who submitted it and the group charged: the settlement counts at the same levels.
    user_id: str | None = None
    group_id: str | None = None


def unsettled_batches(
    engine: Engine, since: datetime, batch_id: str | None = None, limit: int = 1000
) -> list[Submission]:
    """Submissions since `since` without a settlement row, oldest first (or the one batch)."""
    s = request_logs.alias("s")
    t = request_logs.alias("t")
    settled = exists().where(t.c.id == literal(SETTLEMENT_PREFIX) + s.c.message_id)
    stmt = (
        select(
            s.c.message_id,
            s.c.key_id,
            s.c.created_at,
            s.c.cost_usd,
            s.c.model,
            s.c.user_id,
            s.c.group_id,
        )
        .where(
            s.c.endpoint == SUBMISSION_ENDPOINT,
            s.c.method == "POST",
            s.c.status_code == 200,
            s.c.message_id.is_not(None),
            s.c.created_at >= since,
            ~settled,
        )
        .order_by(s.c.created_at)
        .limit(limit)
    )
    if batch_id is not None:
        stmt = stmt.where(s.c.message_id == batch_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        Submission(
            batch_id=r.message_id,
            key_id=r.key_id,
            created_at=r.created_at.timestamp(),
            reserved_usd=r.cost_usd if r.cost_usd is not None else Decimal(0),
            model=r.model,
            user_id=r.user_id,
            group_id=r.group_id,
        )
        for r in rows
    ]
