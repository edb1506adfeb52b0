"""The SQL behind limits shared across processes: each process's per-second counts, who
is alive, and the spend of the current budget periods (gateway/limits.py decides)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from claude_proxy.store.columns import current_period
from claude_proxy.store.schema import DatabaseNow, key_spend, proxy_instances, rate_usage

# A process not heard from for this long is not counted among those sharing the limits.
LIVE = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class SharedCounts:
    """What one sync read: the other processes' buckets per key (oldest first), how many
    processes are alive, and the spend per (key, period)."""

    others: dict[str, list[tuple[int, int, int]]]
    instances: int
    spend: dict[tuple[str, str], float]


def sync_counts(
    engine: Engine,
    *,
    instance_id: str,
    started_at: datetime,
    dirty: Iterable[tuple[str, int, int, int]],
    budget_keys: Mapping[str, str],
    now: datetime,
    window: int,
    prune: bool,
) -> SharedCounts:
    """One write transaction (this process's heartbeat and changed buckets, old rows pruned
    when `prune`), then the reads. Runs in a thread."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    now_s = int(now.timestamp())
    with engine.begin() as conn:
        db_now: datetime = conn.execute(select(DatabaseNow())).scalar_one()
        beat = insert(proxy_instances).values(
            instance_id=instance_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=started_at,
            last_seen=db_now,
        )
        conn.execute(
            beat.on_conflict_do_update(
                index_elements=["instance_id"], set_={"last_seen": beat.excluded.last_seen}
            )
        )
        rows = [
            {"instance_id": instance_id, "key_id": k, "bucket": s, "requests": r, "tokens": t}
            for k, s, r, t in sorted(dirty)
        ]
        if rows:
            up = insert(rate_usage)
            conn.execute(
                up.on_conflict_do_update(
                    index_elements=["instance_id", "key_id", "bucket"],
                    set_={"requests": up.excluded.requests, "tokens": up.excluded.tokens},
                ),
                rows,
            )
        if prune:
            conn.execute(delete(rate_usage).where(rate_usage.c.bucket <= now_s - 2 * window))
            conn.execute(
                delete(proxy_instances).where(
                    proxy_instances.c.last_seen < db_now - timedelta(hours=1)
                )
            )
    with engine.connect() as conn:
        others: dict[str, list[tuple[int, int, int]]] = {}
        stmt = (
            select(
                rate_usage.c.key_id,
                rate_usage.c.bucket,
                func.sum(rate_usage.c.requests),
                func.sum(rate_usage.c.tokens),
            )
            .where(rate_usage.c.bucket > now_s - window, rate_usage.c.instance_id != instance_id)
            .group_by(rate_usage.c.key_id, rate_usage.c.bucket)
            .order_by(rate_usage.c.key_id, rate_usage.c.bucket)
        )
        for key_id, bucket, req, tok in conn.execute(stmt):
            others.setdefault(key_id, []).append((int(bucket), int(req), int(tok)))
        instances = conn.execute(
            select(func.count())
            .select_from(proxy_instances)
            .where(proxy_instances.c.last_seen > db_now - LIVE)
        ).scalar_one()
        spend: dict[tuple[str, str], float] = {}
        if budget_keys:
            periods = {current_period(p, now) for p in budget_keys.values()}
            found = conn.execute(
                select(key_spend.c.key_id, key_spend.c.period, key_spend.c.cost_usd).where(
                    key_spend.c.period.in_(sorted(periods)),
                    key_spend.c.key_id.in_(sorted(budget_keys)),
                )
            )
            spend = {(k, p): float(c) for k, p, c in found}
    return SharedCounts(others, int(instances), spend)


def leave(engine: Engine, instance_id: str) -> None:
    """This process stops counting: its heartbeat row goes."""
    with engine.begin() as conn:
        conn.execute(delete(proxy_instances).where(proxy_instances.c.instance_id == instance_id))
