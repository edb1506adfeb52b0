"""The `audit_log` table: who changed what, when, from what to what.

Every change to users, groups, memberships, the organisation's policy and keys writes
one row, in the same transaction as the change (`record_change` takes the caller's
connection), so a change is never without its row and a row never without its change.
Rows are only ever inserted: nothing here updates or deletes them, and no API offers to.

Ids are "aud_" + the writer's clock in nanoseconds (16 hex digits) + random, so ordering
by id is ordering by time, and paging by id is stable.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, Engine, RowMapping, insert, select

from claude_proxy.store.columns import money_text
from claude_proxy.store.schema import audit_log

# Bounds on what a row holds: an actor is an OS user and host, or an IdP subject and
# email; a reason is a sentence.
ACTOR_MAX = 300
REASON_MAX = 500
AUDIT_PAGE_MAX = 1000


@dataclass(frozen=True)
class AuditRow:
    """One audit entry; `before` and `after` are the public fields (None: created/deleted)."""

    id: str
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }


def new_audit_id() -> str:
    """Time-ordered: the clock in ns (16 hex digits, good past the year 2500), then random."""
    return f"aud_{time.time_ns():016x}{secrets.token_hex(4)}"


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return money_text(value)  # money as an exact string, as the APIs show it
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(value: dict[str, Any] | None) -> str | None:
    """A before/after snapshot as stored: JSON, money as strings, times as UTC ISO."""
    if value is None:
        return None
    return orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z).decode()


def record_change(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None = None,
) -> str:
    """Write one audit row in the caller's transaction; returns its id.

    The actor and reason are cut to their bounds rather than refused: the change they
    describe has already been validated, and must not fail for its description.
    """
    if not actor:
        raise ValueError("an audited change needs an actor")
    audit_id = new_audit_id()
    conn.execute(
        insert(audit_log).values(
            id=audit_id,
            actor=_clean(actor)[:ACTOR_MAX],
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=to_json(before),
            after=to_json(after),
            reason=_clean(reason)[:REASON_MAX] if reason else None,
        )
    )
    return audit_id


class Audited(Protocol):
    """A row that says what of itself the audit log keeps (its public fields, less the
    clocks that move on every change)."""

    def audited(self) -> dict[str, Any]: ...


def record(
    conn: Connection,
    actor: str,
    action: str,
    target_id: str | None,
    before: Audited | dict[str, Any] | None,
    after: Audited | dict[str, Any] | None,
    reason: str | None = None,
) -> str:
    """`record_change` for a row: the target type is the action's first word
    ("user.update" -> "user"); before and after are rows (or ready dicts), None for a
    creation or a deletion."""
    return record_change(
        conn,
        actor=actor,
        action=action,
        target_type=action.partition(".")[0],
        target_id=target_id,
        before=_snapshot(before),
        after=_snapshot(after),
        reason=reason,
    )


def _snapshot(row: Audited | dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None or isinstance(row, dict):
        return row
    return row.audited()


def list_audit(
    engine: Engine,
    *,
    limit: int = 100,
    before_id: str | None = None,
    after_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    action: str | None = None,
) -> list[AuditRow]:
    """Audit rows, newest first; `before_id` pages back from a row seen.

    With `after_id` alone, the rows after it, OLDEST first, so a reader can page forward
    (follow) without skipping any. `limit` is 1 to 1000.
    """
    if not 1 <= limit <= AUDIT_PAGE_MAX:
        raise ValueError(f"limit must be between 1 and {AUDIT_PAGE_MAX}")
    c = audit_log.c
    stmt = select(audit_log)
    if before_id is not None:
        stmt = stmt.where(c.id < before_id)
    if after_id is not None:
        stmt = stmt.where(c.id > after_id)
    if target_type is not None:
        stmt = stmt.where(c.target_type == target_type)
    if target_id is not None:
        stmt = stmt.where(c.target_id == target_id)
    if action is not None:
        stmt = stmt.where(c.action == action)
    forward = after_id is not None and before_id is None
    stmt = stmt.order_by(c.id if forward else c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt).mappings()]


def _clean(text: str) -> str:
    """No NUL (PostgreSQL text cannot hold it) and no other control character but tab."""
    return "".join(ch for ch in text if ch == "\t" or (ch >= " " and ch != "\x7f"))


def _row(r: RowMapping) -> AuditRow:
    return AuditRow(
        id=r["id"],
        created_at=r["created_at"],
        actor=r["actor"],
        action=r["action"],
        target_type=r["target_type"],
        target_id=r["target_id"],
        before=orjson.loads(r["before"]) if r["before"] is not None else None,
        after=orjson.loads(r["after"]) if r["after"] is not None else None,
        reason=r["reason"],
    )
