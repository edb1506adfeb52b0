"""The tables: `request_logs` (one row per proxied request), access control's
`api_keys`, `key_spend`, `rate_usage` and `proxy_instances`, and people's `users`,
`groups`, `user_groups`, `org_policy`, `audit_log`, `device_grants` and `budget_alerts`.

The raw token buckets are stored next to `cost_usd` so cost can be recomputed
when prices change. The indexes serve the usage queries: by time, by key and
time, by model and time. Migrations (store/migrations) create the same shape;
this module is what the writer and the queries bind to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from claude_proxy.store.columns import COST_PLACES


class UTCDateTime(TypeDecorator[datetime]):
    """timestamptz on PostgreSQL; on SQLite (no time zones) naive UTC text, read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # an aggregate over the column on SQLite
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """NUMERIC(18, 8) as Decimal on both dialects.

    SQLite has no decimal type: values are stored as REAL and read back as
    floats, which we turn into Decimals ourselves (SQLAlchemy would warn).
    """

    impl = Numeric(18, 8)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Numeric(18, 8, asdecimal=False))
        return dialect.type_descriptor(Numeric(18, 8))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return float(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(COST_PLACES)


class DatabaseNow(FunctionElement[datetime]):
    """The database's current time, in the format the column type reads back."""

    type = UTCDateTime()
    name = "database_now"
    inherit_cache = True


@compiles(DatabaseNow, "postgresql")
def _now_pg(element: DatabaseNow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(DatabaseNow, "sqlite")
def _now_sqlite(element: DatabaseNow, compiler: SQLCompiler, **kw: Any) -> str:
    # CURRENT_TIMESTAMP has whole seconds only, and text that compares wrongly
    # against the 'YYYY-MM-DD HH:MM:SS.ffffff' SQLAlchemy writes.
    return SQLITE_NOW


SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"

metadata = MetaData()

request_logs = Table(
    "request_logs",
    metadata,
    # The proxy's request id (time-ordered), so replays are idempotent inserts.
    Column("id", Text, primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("key_id", Text),
    Column("endpoint", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("model", Text),
    Column("stream", Boolean, nullable=False, server_default=false()),
    Column("status_code", Integer),
    Column("error_type", Text),
    Column("error_message", Text),
    Column("stop_reason", Text),
    Column("message_id", Text),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("cache_creation_input_tokens", BigInteger),
    Column("cache_creation_5m_input_tokens", BigInteger),
    Column("cache_creation_1h_input_tokens", BigInteger),
    Column("cache_read_input_tokens", BigInteger),
    # NULL when the model has no known price: never guess a cost.
    Column("cost_usd", Money()),
    Column("latency_ms", Float),
    Column("ttft_ms", Float),
    Column("upstream_request_id", Text),
    Column("client_disconnected", Boolean, nullable=False, server_default=false()),
    Column("upstream_attempts", Integer, nullable=False, server_default=text("0")),
    Column("client_ip", Text),
    Column("user_agent", Text),
    Column("anthropic_beta", Text),
    Column("metadata_user_id", Text),
    Column("claude_code_session_id", Text),
    # Who the request was made as (users.id) and the group it was charged to (groups.id);
    # NULL for unowned keys.
    Column("user_id", Text),
    Column("group_id", Text),
    # Why the proxy itself refused the request (gateway/errors.py: ProxyError.reason);
    # NULL otherwise.
    Column("refusal", Text),
    # Opt-in body capture (CLAUDE_PROXY_LOG_BODIES); NULL by default.
    Column("request_body", Text),
    Column("response_body", Text),
    # When the row reached the database (the database's clock, not a replica's).
    # `logs tail --follow` pages on it: created_at is when a request *started*, so
    # a long stream lands long after rows created later than it were already shown.
    Column("logged_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Index("ix_request_logs_created_at", "created_at"),
    Index("ix_request_logs_key_id_created_at", "key_id", "created_at"),
    Index("ix_request_logs_model_created_at", "model", "created_at"),
    Index("ix_request_logs_logged_at", "logged_at"),
    Index("ix_request_logs_user_id_created_at", "user_id", "created_at"),
    Index("ix_request_logs_group_id_created_at", "group_id", "created_at"),
)

COLUMNS: tuple[str, ...] = tuple(str(c.name) for c in request_logs.columns)  # not quoted_name

# --- access control (migration 0002) ---------------------------------------------------

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),  # "key_" + hex: shown in logs, never secret
    Column("name", Text, nullable=False),
    # The first characters of the key, so a person can tell keys apart; never enough to use.
    Column("prefix", Text, nullable=False),
    # SHA-256 of the key, hex. Keys are 256-bit random, so a fast hash is enough.
    Column("key_hash", Text, nullable=False, unique=True),
    Column("models", Text),  # JSON array of allowed model patterns; NULL = any model
    Column("rpm", Integer),
    Column("tpm", BigInteger),
    Column("budget_usd", Money()),
    Column("budget_period", Text),  # day | month | total
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    # The database's clock at the last change: replicas refresh their caches by it.
    Column("updated_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Column("expires_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
    # The owner (migration 0003): a user's personal key, or a group's service key;
    # both NULL for an unowned key.
    Column("user_id", Text),
    Column("group_id", Text),
    Index("ix_api_keys_updated_at", "updated_at"),
    Index("ix_api_keys_user_id", "user_id"),
    Index("ix_api_keys_group_id", "group_id"),
)

# Spend per key and period ("day:2026-11-27", "month:2026-11", "total"), added by the
# log writer in the same transaction as the rows it inserts, from the new rows only.
key_spend = Table(
    "key_spend",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("cost_usd", Money(), nullable=False, server_default=text("0")),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    Index("ix_key_spend_period", "period"),
)

# Each proxy process's own request and token counts per key and second, for the
# sliding-minute RPM/TPM limits that hold across replicas (gateway/limits.py, SQL in
# store/limits.py).
rate_usage = Table(
    "rate_usage",
    metadata,
    Column("instance_id", Text, primary_key=True),
    Column("key_id", Text, primary_key=True),
    Column("bucket", BigInteger, primary_key=True),  # unix second
    Column("requests", Integer, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Index("ix_rate_usage_bucket", "bucket"),
)

# One row per live proxy process: how many share the limits (gateway/limits.py).
proxy_instances = Table(
    "proxy_instances",
    metadata,
    Column("instance_id", Text, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
)

# --- people (migration 0003) -------------------------------------------------------------


def _limit_columns() -> list[Column[Any]]:
    """The policy every level has: model allowlist, RPM, TPM, a budget and its period."""
    return [
        Column("models", Text),  # JSON array of allowed model patterns; NULL = any model
        Column("rpm", Integer),
        Column("tpm", BigInteger),
        Column("budget_usd", Money()),
        Column("budget_period", Text),  # day | week | month | total
    ]


users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True),  # "usr_" + hex
    Column("email", Text, nullable=False, unique=True),  # lower-cased
    Column("name", Text),
    Column("subject", Text, unique=True),  # the IdP's `sub`; NULL until the first sign-in
    Column("status", Text, nullable=False, server_default="active"),  # active | disabled
    Column("status_reason", Text),
    Column("source", Text, nullable=False, server_default="local"),  # local | oidc
    # The IdP's group names at the last sign-in or refresh (JSON array): the user is a
    # member of every proxy group of the same name, besides the local memberships.
    Column("idp_groups", Text),
    *_limit_columns(),  # the user's own policy; budget_usd: the user's own per-person cap
    # Tokens the proxy minted before this instant are refused (sign-out everywhere).
    Column("tokens_valid_after", UTCDateTime()),
    Column("last_login_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Index("ix_users_updated_at", "updated_at"),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Text, primary_key=True),  # "grp_" + hex
    Column("name", Text, nullable=False, unique=True),  # matched exactly to IdP group names
    Column("description", Text),
    # A person in several groups is governed by the first by priority (lowest), then name.
    Column("priority", Integer, nullable=False, server_default=text("100")),
    *_limit_columns(),  # budget_usd: the pool the members spend together
    # The per-member default cap (same period as budget_period).
    Column("member_budget_usd", Money()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
)

# Memberships made in the proxy (CLI, admin API); IdP memberships come from users.idp_groups.
user_groups = Table(
    "user_groups",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("group_id", Text, primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Index("ix_user_groups_group_id", "group_id"),
)

# The organisation's default policy: one row, id "org".
org_policy = Table(
    "org_policy",
    metadata,
    Column("id", Text, primary_key=True),
    *_limit_columns(),  # budget_usd: the whole organisation's cap
    Column("member_budget_usd", Money()),  # the per-person default
    Column("updated_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
)

# Every change made through the CLI, the admin API or the console; append-only.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Text, primary_key=True),  # "aud_" + time-ordered
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Column("actor", Text, nullable=False),  # "cli:<os user>@<host>", "admin-key", "oidc:<sub>"
    Column("action", Text, nullable=False),  # "user.create", "group.update", "budget.alert"
    Column("target_type", Text, nullable=False),  # user | group | key | org | budget
    Column("target_id", Text),
    Column("before", Text),  # JSON
    Column("after", Text),  # JSON
    Column("reason", Text),
    Index("ix_audit_log_created_at", "created_at"),
    Index("ix_audit_log_target", "target_type", "target_id"),
)

# RFC 8628 device authorizations in flight, shared by every replica (the poll, the
# verification page and the IdP's callback may each reach a different one).
device_grants = Table(
    "device_grants",
    metadata,
    Column("device_code_hash", Text, primary_key=True),  # SHA-256 of the device code, hex
    Column("user_code", Text, nullable=False, unique=True),
    Column("status", Text, nullable=False, server_default="pending"),  # pending|approved|denied
    Column("created_at", UTCDateTime(), nullable=False, server_default=DatabaseNow()),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("last_poll_at", UTCDateTime()),
    Column("user_id", Text),
    # The IdP's refresh token between the callback and the first poll, encrypted with a
    # key derived from the session secret; cleared when the poll takes it.
    Column("sealed_refresh", Text),
    Index("ix_device_grants_expires_at", "expires_at"),
)

# One row per (level, period, threshold) crossed: the replica whose insert wins sends
# the webhook, so an alert goes out once however many replicas see the crossing.
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("level_id", Text, primary_key=True),  # key_..., usr_..., grp_..., "org"
    Column("period", Text, primary_key=True),  # key_spend's period name
    Column("threshold", Integer, primary_key=True),  # 50, 80, 100
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("claimed_by", Text, nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
)
