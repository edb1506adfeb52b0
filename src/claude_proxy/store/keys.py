"""The `api_keys` table: create, read, change, revoke and rotate proxy keys.

Used by `claude-proxy keys ...`, the admin API and the proxy's key cache. The
secret itself is never stored: only its SHA-256 (key_hash below) and a short
prefix for people to tell keys apart. Every change stamps `updated_at` with the
database's clock, which is how other replicas' caches notice it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine, RowMapping, insert, select, update

from claude_proxy.store.columns import current_period
from claude_proxy.store.schema import DatabaseNow, api_keys, key_spend

BUDGET_PERIODS = ("day", "month", "total")
# Recognisable in a config file, a log scan or a secret scanner's rules.
KEY_PREFIX = "sk-proxy-"
_SHOWN_RANDOM_CHARS = 6
# What the columns hold: rpm is INTEGER, tpm BIGINT, budgets NUMERIC(18, 8).
RPM_MAX = 2**31 - 1
TPM_MAX = 2**63 - 1
BUDGET_MAX = Decimal(
    "9999999999.99999999"
)  # NUMERIC(18, 8)  # 36 of the key's 256 random bits: enough to tell keys apart


def key_hash(secret: str | bytes) -> str:
    """What is stored and looked up: SHA-256, hex."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a key that may be shown: its prefix and a few random characters."""
    return secret[: len(KEY_PREFIX) + _SHOWN_RANDOM_CHARS]


@dataclass(frozen=True)
class KeySpec:
    """What a key may do; every limit is optional (None = unlimited)."""

    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a key needs a name")
        for label, value, top in (("rpm", self.rpm, RPM_MAX), ("tpm", self.tpm, TPM_MAX)):
            if value is not None and not 1 <= value <= top:
                raise ValueError(f"{label} must be between 1 and {top}")
        if (self.budget_usd is None) != (self.budget_period is None):
            raise ValueError("a budget needs both an amount and a period (day, month or total)")
        if self.budget_period is not None and self.budget_period not in BUDGET_PERIODS:
            raise ValueError("budget period must be day, month or total")
        if self.budget_usd is not None and not 0 <= self.budget_usd <= BUDGET_MAX:
            raise ValueError(f"a budget must be between 0 and {BUDGET_MAX}")
        if self.models is not None and (not self.models or not all(m.strip() for m in self.models)):
            raise ValueError("a model allowlist needs at least one non-empty pattern")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")


@dataclass(frozen=True)
class KeyRow:
    """One key as stored (the hash included; `public()` leaves it out)."""

    id: str
    name: str
    prefix: str
    key_hash: str
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    budget_usd: Decimal | None
    budget_period: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    # Spend in the current budget period; filled by the callers that show it.
    spend_usd: Decimal | None = field(default=None, compare=False)

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """What may be shown to an operator: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status,
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget_usd,
            "budget_period": self.budget_period,
            "spend_usd": self.spend_usd,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def new_secret() -> str:
    """A new key: the recognisable prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(engine: Engine, spec: KeySpec) -> tuple[KeyRow, str]:
    """Store a new key; returns it and its secret, which is shown once and never again."""
    secret = new_secret()
    key_id = "key_" + secrets.token_hex(8)
    with engine.begin() as conn:
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                prefix=display_prefix(secret),
                key_hash=key_hash(secret),
                **_spec_values(spec),
            )
        )
    row = get_key(engine, key_id)
    assert row is not None
    return row, secret


def get_key(engine: Engine, key_id: str) -> KeyRow | None:
    with engine.connect() as conn:
        found = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    return _row(found) if found is not None else None


def key_by_hash(engine: Engine, digest_hex: str) -> KeyRow | None:
    """The proxy's lookup for a key its cache has not seen yet (rate-limited by the caller)."""
    with engine.connect() as conn:
        found = (
            conn.execute(select(api_keys).where(api_keys.c.key_hash == digest_hex))
            .mappings()
            .first()
        )
    return _row(found) if found is not None else None


def list_keys(engine: Engine, *, include_revoked: bool = True) -> list[KeyRow]:
    stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if not include_revoked:
        stmt = stmt.where(api_keys.c.revoked_at.is_(None))
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt).mappings()]


def keys_changed_since(engine: Engine, since: datetime | None) -> tuple[list[KeyRow], datetime]:
    """Keys changed at or after `since` (all when None), and the database's clock now.

    The caller passes back that clock minus a margin: a transaction that stamped
    `updated_at` before this read but committed after it is picked up next time.
    """
    stmt = select(api_keys)
    if since is not None:
        stmt = stmt.where(api_keys.c.updated_at >= since)
    with engine.connect() as conn:
        now = conn.execute(select(DatabaseNow())).scalar_one()
        rows = [_row(r) for r in conn.execute(stmt).mappings()]
    return rows, now


def update_key(engine: Engine, key_id: str, **changes: Any) -> KeyRow | None:
    """Change a key's name or limits (KeySpec fields); None if there is no such key."""
    current = get_key(engine, key_id)
    if current is None:
        return None
    spec = replace(_spec_of(current), **changes)  # validates the combination
    with engine.begin() as conn:
        conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(**_spec_values(spec), updated_at=DatabaseNow())
        )
    return get_key(engine, key_id)


def revoke_key(engine: Engine, key_id: str) -> KeyRow | None:
    """Revoke at once (idempotent: a second revoke keeps the first time)."""
    with engine.begin() as conn:
        conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=DatabaseNow(), updated_at=DatabaseNow())
        )
    return get_key(engine, key_id)


def rotate_key(engine: Engine, key_id: str) -> tuple[KeyRow, str] | None:
    """A new secret for the same key: limits, spend and history stay; the old secret
    stops working at once. A revoked key cannot be rotated back to life."""
    secret = new_secret()
    with engine.begin() as conn:
        done = conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(
                prefix=display_prefix(secret), key_hash=key_hash(secret), updated_at=DatabaseNow()
            )
        ).rowcount
    if not done:
        return None
    row = get_key(engine, key_id)
    assert row is not None
    return row, secret


def spend_by_period(engine: Engine, periods: list[str]) -> dict[tuple[str, str], Decimal]:
    """{(key_id, period): cost} for the given periods."""
    stmt = select(key_spend.c.key_id, key_spend.c.period, key_spend.c.cost_usd).where(
        key_spend.c.period.in_(periods)
    )
    with engine.connect() as conn:
        return {(r.key_id, r.period): r.cost_usd for r in conn.execute(stmt)}


def with_spend(engine: Engine, rows: list[KeyRow]) -> list[KeyRow]:
    """The rows with `spend_usd` filled for each key's current budget period."""
    wanted = sorted({current_period(r.budget_period or "total") for r in rows})
    if not wanted:
        return rows
    spend = spend_by_period(engine, wanted)
    return [
        replace(
            r,
            spend_usd=spend.get((r.id, current_period(r.budget_period or "total")), Decimal(0)),
        )
        for r in rows
    ]


def _spec_values(spec: KeySpec) -> dict[str, Any]:
    return {
        "name": spec.name.strip(),
        "models": orjson.dumps(list(spec.models)).decode() if spec.models is not None else None,
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "budget_usd": spec.budget_usd,
        "budget_period": spec.budget_period,
        "expires_at": spec.expires_at,
    }


def _spec_of(row: KeyRow) -> KeySpec:
    return KeySpec(
        name=row.name,
        models=row.models,
        rpm=row.rpm,
        tpm=row.tpm,
        budget_usd=row.budget_usd,
        budget_period=row.budget_period,
        expires_at=row.expires_at,
    )


def _row(r: RowMapping) -> KeyRow:
    models = r["models"]
    return KeyRow(
        id=r["id"],
        name=r["name"],
        prefix=r["prefix"],
        key_hash=r["key_hash"],
        models=tuple(orjson.loads(models)) if models is not None else None,
        rpm=r["rpm"],
        tpm=r["tpm"],
        budget_usd=r["budget_usd"],
        budget_period=r["budget_period"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        expires_at=r["expires_at"],
        revoked_at=r["revoked_at"],
    )
