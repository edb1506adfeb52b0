"""Read side of the request log: usage summaries and the log tail.

Both dialects run the same SQL except for what SQLite lacks: percentiles
(PostgreSQL's percentile_cont; computed in Python on SQLite) and the day
bucket expression. Times go in and come out as aware UTC datetimes.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Text,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)

from claude_proxy.store.columns import TOKEN_COLUMNS
from claude_proxy.store.schema import DatabaseNow, Money, request_logs

By = Literal["key", "model", "day", "user", "group"]

_TIMINGS = ("latency_ms", "ttft_ms")
_PERCENTILES = ((50, 0.5), (95, 0.95))

t = request_logs.c


def usage_summary(
    engine: Engine, by: By, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]]:
    """One dict per bucket (key id, model, UTC day 'YYYY-MM-DD', user id, or the id of the
    group charged), ordered by bucket; requests of no user or group are the None bucket.

    Each has: bucket, requests, errors, every token bucket summed, cost_usd (sum
    of the known costs), unpriced (requests with no known cost), and
    latency_ms_p50/p95 and ttft_ms_p50/p95 (None when no request has the value).
    """
    is_pg = engine.dialect.name == "postgresql"
    bucket = _bucket(by, is_pg)
    where = _window(since, until)
    cols: list[ColumnElement[Any]] = [
        bucket.label("bucket"),
        func.count().label("requests"),
        func.count(case((_is_error(), 1))).label("errors"),
        *(func.coalesce(func.sum(t[c]), 0).label(c) for c in TOKEN_COLUMNS),
        type_coerce(func.coalesce(func.sum(t.cost_usd), 0), Money()).label("cost_usd"),
        func.count(case((t.cost_usd.is_(None), 1))).label("unpriced"),
    ]
    if is_pg:
        for name in _TIMINGS:
            for pct, frac in _PERCENTILES:
                cols.append(
                    func.percentile_cont(frac).within_group(t[name]).label(f"{name}_p{pct}")
                )
    stmt = select(*cols).where(where).group_by(bucket)
    with engine.connect() as conn:
        out = [_summary_row(dict(r._mapping)) for r in conn.execute(stmt)]
        if not is_pg:
            timings = select(bucket, t.latency_ms, t.ttft_ms).where(where)
            _add_percentiles(conn.execute(timings), out)
    out.sort(key=lambda r: (r["bucket"] is None, r["bucket"] or ""))
    return out


def recent_logs(
    engine: Engine,
    *,
    after: tuple[datetime, str] | None = None,
    key_id: str | None = None,
    model: str | None = None,
    limit: int = 100,
    status_code: int | None = None,
    error_type: str | None = None,
    refusal: str | None = None,
    errors_only: bool = False,
    user_id: str | None = None,
    group_id: str | None = None,
) -> list[dict[str, Any]]:
    """Rows ordered by (created_at, id), oldest first.

    With `after` (the created_at and id of the last row seen): the next `limit`
    rows after it. Without: the latest `limit` rows. For `--follow`, use
    `LogFollower`: a request appears only when it ends, often after rows that
    started later, so a created_at cursor alone would skip long streams.
    `errors_only` keeps the rows `usage_summary` counts as errors (status >= 400
    or an error type, e.g. a client that went away mid-stream). `user_id` and
    `group_id` keep a person's requests, or those charged to a group.
    """
    filters = _filters(
        key_id,
        model,
        status_code=status_code,
        error_type=error_type,
        refusal=refusal,
        errors_only=errors_only,
        user_id=user_id,
        group_id=group_id,
    )
    stmt = select(request_logs).where(*filters)
    if after is not None:
        at, rid = after
        stmt = stmt.where(or_(t.created_at > at, and_(t.created_at == at, t.id > rid))).order_by(
            t.created_at, t.id
        )
        return _fetch(engine, stmt.limit(limit))
    rows = _fetch(engine, stmt.order_by(t.created_at.desc(), t.id.desc()).limit(limit))
    rows.reverse()
    return rows


class LogFollower:
    """`logs tail --follow`: each `poll()` returns the rows that reached the database since.

    It pages on `logged_at` (the database clock when the row was inserted), looks
    back `lookback` to catch transactions that committed after later ones started,
    and remembers the ids it returned inside that window so none repeats. It
    starts at `start` (default: the database's clock now, not this machine's).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        key_id: str | None = None,
        model: str | None = None,
        lookback: timedelta = timedelta(seconds=15),
        start: datetime | None = None,
        page: int = 1000,
    ) -> None:
        self.engine = engine
        self._filters = _filters(key_id, model)
        self._lookback = lookback
        self._page = page
        self._start = start or _database_now(engine)
        self._watermark = self._start
        self._seen: dict[str, datetime] = {}
        # Rows already there at the start instant (SQLite's clock has milliseconds only):
        # seen, so the first poll does not show rows from before the follower began.
        with engine.connect() as conn:
            existing = conn.execute(
                select(t.id, t.logged_at).where(t.logged_at >= self._start)
            ).all()
        self._seen.update({rid: at for rid, at in existing})

    def poll(self) -> list[dict[str, Any]]:
        """New rows in arrival order (logged_at, id); empty when nothing arrived."""
        floor = max(self._start, self._watermark - self._lookback)
        cursor: tuple[datetime, str] | None = None
        new: list[dict[str, Any]] = []
        while True:
            stmt = select(request_logs).where(*self._filters, t.logged_at >= floor)
            if cursor is not None:
                at, rid = cursor
                stmt = stmt.where(or_(t.logged_at > at, and_(t.logged_at == at, t.id > rid)))
            rows = _fetch(self.engine, stmt.order_by(t.logged_at, t.id).limit(self._page))
            for row in rows:
                if row["id"] not in self._seen:
                    self._seen[row["id"]] = row["logged_at"]
                    new.append(row)
            if len(rows) < self._page:
                break
            cursor = (rows[-1]["logged_at"], rows[-1]["id"])
        if new:
            self._watermark = max(self._watermark, max(r["logged_at"] for r in new))
        floor = self._watermark - self._lookback
        self._seen = {k: v for k, v in self._seen.items() if v >= floor}
        return new


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: the same as PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    pos = fraction * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _database_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(select(DatabaseNow())).scalar_one()
        return now


def _bucket(by: By, is_pg: bool) -> ColumnElement[Any]:
    if by == "key":
        return t.key_id
    if by == "model":
        return t.model
    if by == "user":
        return t.user_id
    if by == "group":
        return t.group_id
    if by == "day":
        if is_pg:
            # Literals, not bound parameters: the expression must be identical in
            # SELECT and GROUP BY, and server-side binding numbers each parameter.
            utc: ColumnElement[str] = literal_column("'UTC'")
            fmt: ColumnElement[str] = literal_column("'YYYY-MM-DD'")
            return func.to_char(func.timezone(utc, t.created_at), fmt)
        # SQLite stores created_at as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        return func.substr(type_coerce(t.created_at, Text()), 1, 10)
    raise ValueError(f"usage: by must be key, model, day, user or group, not {by!r}")


def _window(since: datetime, until: datetime | None) -> ColumnElement[bool]:
    cond = t.created_at >= since
    return and_(cond, t.created_at < until) if until is not None else cond


def _is_error() -> ColumnElement[bool]:
    """What counts as an error: an HTTP error status, or an error type (mid-stream
    `error` event, client gone) on a response that began with 200."""
    return or_(t.status_code >= 400, t.error_type.is_not(None))


def _filters(
    key_id: str | None,
    model: str | None,
    *,
    status_code: int | None = None,
    error_type: str | None = None,
    refusal: str | None = None,
    errors_only: bool = False,
    user_id: str | None = None,
    group_id: str | None = None,
) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if key_id is not None:
        out.append(t.key_id == key_id)
    if model is not None:
        out.append(t.model == model)
    if status_code is not None:
        out.append(t.status_code == status_code)
    if error_type is not None:
        out.append(t.error_type == error_type)
    if refusal is not None:
        out.append(t.refusal == refusal)
    if errors_only:
        out.append(_is_error())
    if user_id is not None:
        out.append(t.user_id == user_id)
    if group_id is not None:
        out.append(t.group_id == group_id)
    return out


def _fetch(engine: Engine, stmt: Select[Any]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def _summary_row(row: dict[str, Any]) -> dict[str, Any]:
    for c in TOKEN_COLUMNS:
        row[c] = int(row[c])  # PostgreSQL sums BIGINT as NUMERIC
    for name in _TIMINGS:
        for pct, _ in _PERCENTILES:
            key = f"{name}_p{pct}"
            row[key] = None if row.get(key) is None else float(row[key])
    if not isinstance(row["cost_usd"], Decimal):
        row["cost_usd"] = Decimal(str(row["cost_usd"]))
    return row


def _add_percentiles(rows: Any, summary: list[dict[str, Any]]) -> None:
    values: dict[Any, dict[str, list[float]]] = defaultdict(lambda: {n: [] for n in _TIMINGS})
    for bucket, latency, ttft in rows:
        if latency is not None:
            values[bucket]["latency_ms"].append(latency)
        if ttft is not None:
            values[bucket]["ttft_ms"].append(ttft)
    for row in summary:
        v = values[row["bucket"]]
        for name in _TIMINGS:
            for pct, frac in _PERCENTILES:
                row[f"{name}_p{pct}"] = percentile(v[name], frac)


_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# Durations past this are refused (a date that far away cannot be written anyway).
_MAX_DURATION = timedelta(days=365 * 100)


def parse_duration(text: str) -> timedelta | None:
    """`7d`, `12h`, `30m`, `45s`, `2w` as a timedelta; None if the text is not one."""
    m = _SINCE.match(text.strip()[:32])
    if m is None:
        return None
    try:
        d = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    except OverflowError:
        d = _MAX_DURATION * 2
    if d > _MAX_DURATION:
        raise ValueError(f"{text[:32]} is longer than 100 years")
    return d
