"""The `device_grants` table: RFC 8628 device authorizations in flight.

Shared by every replica: the client's poll, the verification page and the identity
provider's callback may each reach a different one. The device code itself is never
stored, only its SHA-256; the IdP's refresh token waits here sealed (encrypted by the
caller) between the callback and the poll that takes it, and the row goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from claude_proxy.store.schema import device_grants

PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"


class UserCodeTaken(Exception):
    """The random user code is already in use: the caller draws another."""


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    device_code_hash: str
    user_code: str
    status: str
    expires_at: datetime
    user_id: str | None


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of the token endpoint found.

    `outcome`: "unknown" (no such grant), "expired", "slow_down", "pending", "denied",
    "approved" (taken: the row is gone, `user_id` and `sealed_refresh` are this poll's
    alone) or "taken" (approved, but a concurrent poll took it first)."""

    outcome: str
    user_id: str | None = None
    sealed_refresh: str | None = None


def create_grant(
    engine: Engine, *, device_code_hash: str, user_code: str, expires_at: datetime
) -> None:
    """A new pending grant; UserCodeTaken if the user code collides with a live one."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(device_grants).values(
                    device_code_hash=device_code_hash,
                    user_code=user_code,
                    status=PENDING,
                    expires_at=expires_at,
                )
            )
    except IntegrityError as exc:
        raise UserCodeTaken from exc


def grant_by_user_code(engine: Engine, user_code: str) -> DeviceGrant | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(device_grants).where(device_grants.c.user_code == user_code)
        ).first()
    if row is None:
        return None
    return DeviceGrant(
        device_code_hash=row.device_code_hash,
        user_code=row.user_code,
        status=row.status,
        expires_at=row.expires_at,
        user_id=row.user_id,
    )


def _pending(device_code_hash: str, now: datetime | None = None) -> list[ColumnElement[bool]]:
    """The grant, while it is pending (and, given `now`, unexpired)."""
    where = [
        device_grants.c.device_code_hash == device_code_hash,
        device_grants.c.status == PENDING,
    ]
    if now is not None:
        where.append(device_grants.c.expires_at > now)
    return where


def _decide(engine: Engine, where: list[ColumnElement[bool]], **values: Any) -> bool:
    """Set `values` on the grant if it still matches `where`; False if it did not."""
    with engine.begin() as conn:
        return bool(conn.execute(update(device_grants).where(*where).values(**values)).rowcount)


def grant_pending(engine: Engine, device_code_hash: str, now: datetime) -> bool:
    """True while the grant waits for the browser (pending and unexpired)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(device_grants.c.device_code_hash).where(*_pending(device_code_hash, now))
        ).first()
    return found is not None


def approve_grant(
    engine: Engine,
    device_code_hash: str,
    *,
    user_id: str,
    sealed_refresh: str | None,
    now: datetime,
) -> bool:
    """Pending → approved, once; False if the grant is gone, expired or already decided."""
    return _decide(
        engine,
        _pending(device_code_hash, now),
        status=APPROVED,
        user_id=user_id,
        sealed_refresh=sealed_refresh,
    )


def deny_grant(engine: Engine, device_code_hash: str) -> bool:
    """Pending → denied (the poll then answers access_denied); False if not pending."""
    return _decide(engine, _pending(device_code_hash), status=DENIED, sealed_refresh=None)


def poll_grant(
    engine: Engine, device_code_hash: str, *, now: datetime, min_interval: float
) -> PollResult:
    """One poll, atomically: too soon after the last one → slow_down; an approved grant
    is deleted as it is read (single use: of two concurrent polls, one gets it)."""
    table = device_grants
    with engine.begin() as conn:
        row = conn.execute(
            select(
                table.c.status, table.c.expires_at, table.c.user_id, table.c.sealed_refresh
            ).where(table.c.device_code_hash == device_code_hash)
        ).first()
        if row is None:
            return PollResult("unknown")
        if row.expires_at <= now:
            conn.execute(delete(table).where(table.c.device_code_hash == device_code_hash))
            return PollResult("expired")
        # The stamp moves only when the poll is on time, so one UPDATE both checks the
        # interval and records the poll, whichever replica the polls reach.
        on_time = conn.execute(
            update(table)
            .where(
                table.c.device_code_hash == device_code_hash,
                or_(
                    table.c.last_poll_at.is_(None),
                    table.c.last_poll_at <= now - timedelta(seconds=min_interval),
                ),
            )
            .values(last_poll_at=now)
        ).rowcount
        if not on_time:
            return PollResult("slow_down")
        if row.status == PENDING:
            return PollResult("pending")
        taken = conn.execute(
            delete(table).where(
                table.c.device_code_hash == device_code_hash, table.c.status == row.status
            )
        ).rowcount
        if row.status == DENIED:
            return PollResult("denied")
        if not taken:
            return PollResult("taken")
        return PollResult("approved", user_id=row.user_id, sealed_refresh=row.sealed_refresh)


def prune_grants(engine: Engine, now: datetime) -> int:
    """Delete grants that expired; returns how many."""
    with engine.begin() as conn:
        return int(
            conn.execute(delete(device_grants).where(device_grants.c.expires_at <= now)).rowcount
        )
