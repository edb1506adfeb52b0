"""The `api_keys` table: create, read, change, revoke and rotate proxy keys.

Used by `claude-proxy keys ...`, the admin API and the proxy's key cache. The
secret itself is never stored: only its SHA-256 (key_hash below) and a short
prefix for people to tell keys apart. Every change stamps `updated_at` with the
database's clock, which is how other replicas' caches notice it, and writes an audit
row (store/audit.py) in the same transaction, naming the `actor` that made it.

A key may belong to a user (a personal key) or a group (a service key); with neither it
is "unowned", as keys made before people existed are.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, RowMapping, insert, select, update

from claude_proxy.store.audit import record
from claude_proxy.store.columns import COST_PLACES, current_period
from claude_proxy.store.schema import DatabaseNow, api_keys, groups, key_spend, users

BUDGET_PERIODS = ("day", "week", "month", "total")
# Recognisable in a config file, a log scan or a secret scanner's rules.
KEY_PREFIX = "sk-proxy-"
_SHOWN_RANDOM_CHARS = 6  # 36 of the key's 256 random bits: enough to tell keys apart
# What the columns hold: rpm is INTEGER, tpm BIGINT, budgets NUMERIC(18, 8).
RPM_MAX = 2**31 - 1
TPM_MAX = 2**63 - 1
BUDGET_MAX = Decimal("9999999999.99999999")  # NUMERIC(18, 8)
# A model allowlist: a few dozen patterns at most, each a model id or a shell pattern.
MODELS_MAX = 100
MODEL_PATTERN_MAX = 200
NAME_MAX = 200


def key_hash(secret: str | bytes) -> str:
    """What is stored and looked up: SHA-256, hex."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a key that may be shown: its prefix and a few random characters."""
    return secret[: len(KEY_PREFIX) + _SHOWN_RANDOM_CHARS]


def check_money(label: str, value: Decimal) -> None:
    """An amount the NUMERIC(18, 8) columns hold exactly: 0 to BUDGET_MAX, 8 places."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{label} must be a decimal amount in USD")
    if not 0 <= value <= BUDGET_MAX:
        raise ValueError(f"{label} must be between 0 and {BUDGET_MAX}")
    if value != value.quantize(COST_PLACES):
        raise ValueError(f"{label} has at most 8 decimal places")


def check_limits(
    models: tuple[str, ...] | None,
    rpm: int | None,
    tpm: int | None,
    budget_usd: Decimal | None,
    budget_period: str | None,
) -> None:
    """The checks every level's policy shares (key, user, group, org): bounds, a known
    period, and a budget that says its period. Whether a period may stand without an
    amount is the level's to say (a group's may, for its per-member budget)."""
    for label, value, top in (("rpm", rpm, RPM_MAX), ("tpm", tpm, TPM_MAX)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top
        ):
            raise ValueError(f"{label} must be between 1 and {top}")
    if budget_period is not None and budget_period not in BUDGET_PERIODS:
        raise ValueError("budget period must be day, week, month or total")
    if budget_usd is not None:
        check_money("a budget", budget_usd)
        if budget_period is None:
            raise ValueError(
                "a budget needs both an amount and a period (day, week, month or total)"
            )
    if models is not None:
        if not models or not all(isinstance(m, str) and m.strip() for m in models):
            raise ValueError("a model allowlist needs at least one non-empty pattern")
        if len(models) > MODELS_MAX:
            raise ValueError(f"a model allowlist has at most {MODELS_MAX} patterns")
        if any(len(m) > MODEL_PATTERN_MAX or "\x00" in m for m in models):
            raise ValueError(
                f"a model pattern is at most {MODEL_PATTERN_MAX} characters, with no NUL"
            )


def drop_orphan_period(
    changes: dict[str, Any],
    budget_usd: Decimal | None = None,
    member_budget_usd: Decimal | None = None,
) -> None:
    """A change (`changes`, by field) that removes a level's last budget removes its
    period too, unless it sets the period itself. `budget_usd` and `member_budget_usd`
    are the level's budgets before the change (a group's or the organisation's per-member
    budget shares the period with its pool; a key has the one budget, and removing it
    takes the period whatever it was)."""
    if "budget_period" in changes:
        return
    removing = any(f in changes and changes[f] is None for f in ("budget_usd", "member_budget_usd"))
    left_pool = changes.get("budget_usd", budget_usd)
    left_member = changes.get("member_budget_usd", member_budget_usd)
    if removing and left_pool is None and left_member is None:
        changes["budget_period"] = None


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
        if len(self.name.strip()) > NAME_MAX or "\x00" in self.name:
            raise ValueError(f"a key name is at most {NAME_MAX} characters, with no NUL")
        if self.budget_period is not None and self.budget_usd is None:
            raise ValueError(
                "a budget needs both an amount and a period (day, week, month or total)"
            )
        check_limits(self.models, self.rpm, self.tpm, self.budget_usd, self.budget_period)
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
    # The owner: a user (personal key) or a group (service key); both None: unowned.
    user_id: str | None = None
    group_id: str | None = None
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
            "user_id": self.user_id,
            "group_id": self.group_id,
        }

    def audited(self) -> dict[str, Any]:
        """What the audit log keeps of a key: the public fields but the moving ones."""
        out = self.public()
        for moving in ("spend_usd", "updated_at"):
            del out[moving]
        return out


def new_secret() -> str:
    """A new key: the recognisable prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    engine: Engine,
    spec: KeySpec,
    *,
    actor: str,
    user_id: str | None = None,
    group_id: str | None = None,
) -> tuple[KeyRow, str]:
    """Store a new key; returns it and its secret, which is shown once and never again.

    `user_id` makes it a personal key, `group_id` a group's service key (not both). The
    owner must exist, and a user must be active: a disabled user gets no new key. A
    ValueError says what is wrong; nothing is written then.
    """
    if user_id is not None and group_id is not None:
        raise ValueError("a key belongs to a user or to a group, not both")
    secret = new_secret()
    key_id = "key_" + secrets.token_hex(8)
    with engine.begin() as conn:
        _check_owner(conn, user_id, group_id)
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                prefix=display_prefix(secret),
                key_hash=key_hash(secret),
                user_id=user_id,
                group_id=group_id,
                **_spec_values(spec),
            )
        )
        row = _get(conn, key_id)
        assert row is not None
        record(conn, actor, "key.create", key_id, None, row)
    return row, secret


def _check_owner(conn: Connection, user_id: str | None, group_id: str | None) -> None:
    if user_id is not None:
        status = conn.execute(select(users.c.status).where(users.c.id == user_id)).scalar()
        if status is None:
            raise ValueError(f"no user with id {user_id!r}")
        if status != "active":
            raise ValueError(f"user {user_id} is disabled: a disabled user gets no new key")
    if group_id is not None:
        found = conn.execute(select(groups.c.id).where(groups.c.id == group_id)).scalar()
        if found is None:
            raise ValueError(f"no group with id {group_id!r}")


def get_key(engine: Engine, key_id: str) -> KeyRow | None:
    with engine.connect() as conn:
        return _get(conn, key_id)


def _get(conn: Connection, key_id: str, *, for_update: bool = False) -> KeyRow | None:
    stmt = select(api_keys).where(api_keys.c.id == key_id)
    if for_update:  # PostgreSQL: concurrent changes of one key queue (SQLite ignores it)
        stmt = stmt.with_for_update()
    found = conn.execute(stmt).mappings().first()
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


def list_keys(
    engine: Engine,
    *,
    include_revoked: bool = True,
    user_id: str | None = None,
    group_id: str | None = None,
) -> list[KeyRow]:
    """Keys, oldest first; only those of a user or group when given."""
    stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if not include_revoked:
        stmt = stmt.where(api_keys.c.revoked_at.is_(None))
    if user_id is not None:
        stmt = stmt.where(api_keys.c.user_id == user_id)
    if group_id is not None:
        stmt = stmt.where(api_keys.c.group_id == group_id)
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


def update_key(engine: Engine, key_id: str, *, actor: str, **changes: Any) -> KeyRow | None:
    """Change a key's name or limits (KeySpec fields); None if there is no such key.

    The owner is not a limit: a key does not change hands (revoke it and make another).
    A ValueError (a bad combination) is raised before anything is written.
    """
    with engine.begin() as conn:
        current = _get(conn, key_id, for_update=True)
        if current is None:
            return None
        spec = replace(_spec_of(current), **changes)  # validates the combination
        conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(**_spec_values(spec), updated_at=DatabaseNow())
        )
        row = _get(conn, key_id)
        assert row is not None
        record(conn, actor, "key.update", key_id, current, row)
    return row


def revoke_key(
    engine: Engine, key_id: str, *, actor: str, reason: str | None = None
) -> KeyRow | None:
    """Revoke at once (idempotent: a second revoke keeps the first time, and writes no
    audit row, as nothing changed)."""
    with engine.begin() as conn:
        revoke_in(conn, key_id, actor=actor, reason=reason)
        return _get(conn, key_id)


def revoke_in(conn: Connection, key_id: str, *, actor: str, reason: str | None = None) -> bool:
    """Revoke in the caller's transaction (a group's deletion revokes its service keys);
    True if the key was live and is now revoked."""
    revoked = _change_live(
        conn, key_id, actor=actor, action="key.revoke", reason=reason, revoked_at=DatabaseNow()
    )
    return revoked is not None


def rotate_key(engine: Engine, key_id: str, *, actor: str) -> tuple[KeyRow, str] | None:
    """A new secret for the same key: limits, spend and history stay; the old secret
    stops working at once. A revoked key cannot be rotated back to life."""
    secret = new_secret()
    with engine.begin() as conn:
        row = _change_live(
            conn,
            key_id,
            actor=actor,
            action="key.rotate",
            prefix=display_prefix(secret),
            key_hash=key_hash(secret),
        )
    return None if row is None else (row, secret)


def _change_live(
    conn: Connection,
    key_id: str,
    *,
    actor: str,
    action: str,
    reason: str | None = None,
    **values: Any,
) -> KeyRow | None:
    """Set `values` on a live (unrevoked) key in the caller's transaction, and audit it as
    `action`: the key as changed, None if there is no such key or it is revoked."""
    current = _get(conn, key_id, for_update=True)
    if current is None or current.revoked_at is not None:
        return None
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(**values, updated_at=DatabaseNow())
    )
    row = _get(conn, key_id)
    assert row is not None
    record(conn, actor, action, key_id, current, row, reason)
    return row


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
        user_id=r["user_id"],
        group_id=r["group_id"],
    )
