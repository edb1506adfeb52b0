"""The `request_logs` columns the writer fills, and how money is written, as plain Python.

The writer process imports this instead of store/schema.py: SQLAlchemy would cost it
~25 MB of memory for statements it writes by hand anyway. schema.py defines the same
columns as a Table; a test keeps the two in step.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

COST_PLACES = Decimal("0.00000001")

# The usage buckets, as the API names them (records.Usage's fields).
TOKEN_COLUMNS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
)

# Every column but `logged_at`, which the database fills in, in table order.
ROW_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "key_id",
    "endpoint",
    "method",
    "model",
    "stream",
    "status_code",
    "error_type",
    "error_message",
    "stop_reason",
    "message_id",
    *TOKEN_COLUMNS,
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "upstream_request_id",
    "client_disconnected",
    "upstream_attempts",
    "client_ip",
    "user_agent",
    "anthropic_beta",
    "metadata_user_id",
    "claude_code_session_id",
    "user_id",
    "group_id",
    "refusal",
    "request_body",
    "response_body",
)

# Each row column's PostgreSQL type, for COPY (store/inserts.py); text unless named here.
# A test checks them against the migrated table.
_PG_TYPES = {
    "created_at": "timestamptz",
    "stream": "bool",
    "status_code": "int4",
    **dict.fromkeys(TOKEN_COLUMNS, "int8"),
    "cost_usd": "numeric",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "client_disconnected": "bool",
    "upstream_attempts": "int4",
}
COPY_TYPES: tuple[str, ...] = tuple(_PG_TYPES.get(name, "text") for name in ROW_COLUMNS)


def money_text(value: Decimal) -> str:
    """Money as exact text with 8 places, never exponent notation ("0E-8")."""
    return format(value.quantize(COST_PLACES), "f")


# How `key_spend.period` names a UTC day, ISO week and month ("total" is the fourth).
_DAY_PERIOD = "day:%Y-%m-%d"
_WEEK_PERIOD = "week:%G-W%V"
_MONTH_PERIOD = "month:%Y-%m"
# The spend of the whole organisation, beside keys' (key_...), users' (usr_...) and
# groups' (grp_...) in key_spend.
ORG_LEVEL = "org"


def spend_periods(day: date) -> tuple[str, str, str, str]:
    """The `key_spend` periods a request made on this UTC day adds to: day, ISO week,
    month, total."""
    return (
        day.strftime(_DAY_PERIOD),
        day.strftime(_WEEK_PERIOD),
        day.strftime(_MONTH_PERIOD),
        "total",
    )


def current_period(period: str, now: datetime | None = None) -> str:
    """The `key_spend.period` that a budget of this kind counts now (UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if period == "day":
        return now.strftime(_DAY_PERIOD)
    if period == "week":
        return now.strftime(_WEEK_PERIOD)
    if period == "month":
        return now.strftime(_MONTH_PERIOD)
    return "total"
