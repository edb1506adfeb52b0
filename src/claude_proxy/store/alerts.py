"""The SQL behind budget alerts: one row per (level, period, threshold) crossed.

Whichever replica inserts the row first owns the alert: it writes the audit row in the
same transaction and sends the webhook. A sent alert is stamped; one whose owner died
before sending is claimed again after `reclaim_after`, so an alert is lost to neither
a crash nor a webhook outage (gateway/alerts.py decides when to claim).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from claude_proxy.store.audit import record_change
from claude_proxy.store.schema import DatabaseNow, budget_alerts


@dataclass(frozen=True, slots=True)
class Alert:
    """A budget threshold crossed in one period, at one level."""

    level_id: str
    period: str  # key_spend's period name, e.g. "month:2026-12"
    threshold: int  # percent: 50, 80 or 100


def claim(engine: Engine, alert: Alert, *, instance: str, details: dict[str, Any]) -> bool:
    """Take an alert if nobody has: True for the one caller whose insert wins, who then
    sends it. The audit row is written in the same transaction, so it exists exactly once."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with engine.begin() as conn:
        won = conn.execute(
            insert(budget_alerts)
            .values(
                level_id=alert.level_id,
                period=alert.period,
                threshold=alert.threshold,
                claimed_at=DatabaseNow(),
                claimed_by=instance,
            )
            .on_conflict_do_nothing(index_elements=["level_id", "period", "threshold"])
            .returning(budget_alerts.c.threshold)  # rowcount is not reliable here
        ).first()
        if won is not None:
            record_change(
                conn,
                actor="system",
                action="budget.alert",
                target_type="budget",
                target_id=alert.level_id,
                before=None,
                after={"period": alert.period, "threshold": alert.threshold, **details},
            )
    return won is not None


def mark_sent(engine: Engine, alert: Alert) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(budget_alerts)
            .where(*_is(alert))
            .values(sent_at=DatabaseNow(), attempts=budget_alerts.c.attempts + 1)
        )


def reclaim(engine: Engine, *, instance: str, reclaim_after: timedelta) -> list[Alert]:
    """Alerts claimed but not sent for `reclaim_after` (the owner died, or the webhook was
    down): taken over by this instance, each by exactly one claimant."""
    taken: list[Alert] = []
    with engine.begin() as conn:
        now = conn.execute(select(DatabaseNow())).scalar_one()
        stale = conn.execute(
            select(budget_alerts.c.level_id, budget_alerts.c.period, budget_alerts.c.threshold)
            .where(
                budget_alerts.c.sent_at.is_(None), budget_alerts.c.claimed_at < now - reclaim_after
            )
            .limit(100)
        ).all()
        for level_id, period, threshold in stale:
            alert = Alert(level_id, period, threshold)
            moved = conn.execute(
                update(budget_alerts)
                .where(
                    *_is(alert),
                    budget_alerts.c.sent_at.is_(None),
                    budget_alerts.c.claimed_at < now - reclaim_after,
                )
                .values(claimed_at=now, claimed_by=instance, attempts=budget_alerts.c.attempts + 1)
            ).rowcount
            if moved:
                taken.append(alert)
    return taken


def claimed(engine: Engine, periods: list[str]) -> set[Alert]:
    """The alerts already claimed for these periods (a restarted replica skips them)."""
    if not periods:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                budget_alerts.c.level_id, budget_alerts.c.period, budget_alerts.c.threshold
            ).where(budget_alerts.c.period.in_(sorted(set(periods))))
        ).all()
    return {Alert(*r) for r in rows}


def _is(alert: Alert) -> tuple[Any, ...]:
    return (
        budget_alerts.c.level_id == alert.level_id,
        budget_alerts.c.period == alert.period,
        budget_alerts.c.threshold == alert.threshold,
    )
