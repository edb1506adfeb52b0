"""RequestRecord <-> database row <-> one JSON line of the spill file.

The spill file stores rows (cost already computed), so replaying it needs no
price table and yields exactly what would have been inserted. Every value is
also cleaned of what PostgreSQL would reject (NUL characters, lone surrogates,
integers past their column's range) and every text a client or the upstream
chose is capped (records.bounded): one bad field must never make a batch fail
forever. The caps are applied here, in the writer, whatever the sender did, and
again to rows read back from spill files written before they existed.

When the database still refuses a row, `reduced_row` is the smallest form that
keeps what accounting needs (id, key, tokens, cost, status, timings).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from claude_proxy.store.columns import COST_PLACES, ROW_COLUMNS, TOKEN_COLUMNS
from claude_proxy.store.records import (
    MAX_BETA_CHARS,
    MAX_ENDPOINT_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_METADATA_USER_ID_CHARS,
    MAX_MODEL_CHARS,
    MAX_SESSION_ID_CHARS,
    MAX_SHORT_TEXT_CHARS,
    MAX_USER_AGENT_CHARS,
    RequestRecord,
    Usage,
    bounded,
)

Row = dict[str, Any]

SPILL_FORMAT = 1
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestRecord))
# Optional attributes a record may grow (opt-in body capture) that map to columns.
_OPTIONAL_FIELDS = ("request_body", "response_body")
_BIGINT_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1  # status_code, upstream_attempts: integer columns
_MAX_COST = Decimal("9999999999.99999999")  # NUMERIC(18, 8)

# The cap of each text column a client or the upstream fills. `id` and `key_id` are the
# proxy's own and are kept whole: changing them would break idempotence and spend.
TEXT_CAPS: dict[str, int] = {
    "endpoint": MAX_ENDPOINT_CHARS,
    "method": MAX_SHORT_TEXT_CHARS,
    "model": MAX_MODEL_CHARS,
    "error_type": MAX_SHORT_TEXT_CHARS,
    "error_message": MAX_ERROR_MESSAGE_CHARS,
    "stop_reason": MAX_SHORT_TEXT_CHARS,
    "message_id": MAX_SHORT_TEXT_CHARS,
    "upstream_request_id": MAX_SHORT_TEXT_CHARS,
    "client_ip": MAX_SHORT_TEXT_CHARS,
    "user_agent": MAX_USER_AGENT_CHARS,
    "anthropic_beta": MAX_BETA_CHARS,
    "metadata_user_id": MAX_METADATA_USER_ID_CHARS,
    "claude_code_session_id": MAX_SESSION_ID_CHARS,
    "refusal": MAX_SHORT_TEXT_CHARS,
}
_NOT_NULL_TEXT = ("endpoint", "method")
# Kept in a reduced row (labels that usage, spend and refusals are read by), as short
# printable ASCII; every other text a client chose is dropped (NULL), and so are bodies.
REDUCED_TEXT_CHARS = 64
REDUCED_KEPT = (
    "endpoint",
    "method",
    "model",
    "error_type",
    "stop_reason",
    "refusal",
    "message_id",
    "upstream_request_id",
    "client_ip",
)
REDUCED_DROPPED = (
    "error_message",
    "user_agent",
    "anthropic_beta",
    "metadata_user_id",
    "claude_code_session_id",
    "request_body",
    "response_body",
)
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def record_to_row(record: RequestRecord, cost_usd: Decimal | None) -> Row:
    """The `request_logs` row for a record; runs on the writer thread, not the event loop."""
    u = record.usage
    caps = TEXT_CAPS
    row: Row = {
        "id": record.id,
        "created_at": datetime.fromtimestamp(record.created_at, tz=UTC),
        "key_id": _text(record.key_id),
        "endpoint": _text(record.endpoint, caps["endpoint"]) or "",
        "method": _text(record.method, caps["method"]) or "",
        "model": _text(record.model, caps["model"]),
        "stream": bool(record.stream),
        "status_code": _int(record.status_code, _INT_MAX),
        "error_type": _text(record.error_type, caps["error_type"]),
        "error_message": _text(record.error_message, caps["error_message"]),
        "stop_reason": _text(record.stop_reason, caps["stop_reason"]),
        "message_id": _text(record.message_id, caps["message_id"]),
        "cost_usd": _cost(cost_usd),
        "latency_ms": _float(record.latency_ms),
        "ttft_ms": _float(record.ttft_ms),
        "upstream_request_id": _text(record.upstream_request_id, caps["upstream_request_id"]),
        "client_disconnected": bool(record.client_disconnected),
        "upstream_attempts": _int(record.upstream_attempts, _INT_MAX) or 0,
        "client_ip": _text(record.client_ip, caps["client_ip"]),
        "user_agent": _text(record.user_agent, caps["user_agent"]),
        "anthropic_beta": _text(record.anthropic_beta, caps["anthropic_beta"]),
        "metadata_user_id": _text(record.metadata_user_id, caps["metadata_user_id"]),
        "claude_code_session_id": _text(
            record.claude_code_session_id, caps["claude_code_session_id"]
        ),
        "refusal": _text(record.refusal, caps["refusal"]),
        "user_id": _text(record.user_id),
        "group_id": _text(record.group_id),
    }
    for name in TOKEN_COLUMNS:
        row[name] = _int(getattr(u, name))
    for name in _OPTIONAL_FIELDS:
        row[name] = _text(getattr(record, name, None))
    return row


def row_to_record(row: Row) -> RequestRecord:
    """The inverse of `record_to_row` (cost and body columns are not record fields)."""
    created: datetime = row["created_at"]
    kwargs = {
        k: v
        for k, v in row.items()
        if k in _RECORD_FIELDS
        and k not in ("created_at", "usage", "cost_usd")
        and k not in TOKEN_COLUMNS
    }
    return RequestRecord(
        created_at=created.timestamp(),
        usage=Usage(**{name: row.get(name) for name in TOKEN_COLUMNS}),
        **kwargs,
    )


def dump_row(row: Row, extra: dict[str, Any] | None = None) -> bytes:
    """One spill line (newline-terminated JSON): datetimes as ISO, Decimals as strings.
    `extra` adds "_"-prefixed keys (why a row was quarantined); `load_row` ignores them."""
    doc = dict(row)
    doc["created_at"] = row["created_at"].isoformat()
    cost = row.get("cost_usd")
    doc["cost_usd"] = None if cost is None else str(cost)
    doc["_v"] = SPILL_FORMAT
    if extra:
        doc.update(extra)
    return orjson.dumps(doc) + b"\n"


def load_row(line: bytes) -> Row:
    """Parse one spill line back into a row; ValueError if it is torn or not ours."""
    try:
        doc = orjson.loads(line)
        if not isinstance(doc, dict) or doc.get("_v") != SPILL_FORMAT:
            raise ValueError("not a spill row")
        if not isinstance(doc.get("id"), str):
            raise ValueError("spill row without an id")
        row: Row = {name: doc.get(name) for name in ROW_COLUMNS}
        row["created_at"] = datetime.fromisoformat(doc["created_at"])
        if row["cost_usd"] is not None:
            row["cost_usd"] = Decimal(row["cost_usd"])
    except (KeyError, TypeError, InvalidOperation) as exc:
        raise ValueError(f"bad spill row: {exc}") from exc
    # A file written before the caps existed (or by hand) is capped and cleaned like a
    # new row, so it cannot fail its replay forever.
    for name, cap in TEXT_CAPS.items():
        row[name] = _text(row[name], cap)
    for name in _NOT_NULL_TEXT:
        row[name] = row[name] or ""
    return row


def reduced_row(row: Row) -> Row:
    """The row with only what accounting needs, for a database that refused it whole:
    id, key, timestamps, status, tokens, cost and timings as they are; the labels usage
    is read by as at most REDUCED_TEXT_CHARS of printable ASCII; every other text a
    client or the upstream chose, and the bodies, NULL."""
    out = dict(row)
    for name in REDUCED_KEPT:
        value = _text(row.get(name), REDUCED_TEXT_CHARS)
        out[name] = None if value is None else _NOT_PRINTABLE_ASCII.sub("?", value)
    for name in _NOT_NULL_TEXT:
        out[name] = out[name] or ""
    for name in REDUCED_DROPPED:
        out[name] = None
    return out


def _text(value: object, cap: int | None = None) -> str | None:
    """Text PostgreSQL and SQLite accept, at most `cap` characters (records.bounded)."""
    if value is None:
        return None
    s = value if type(value) is str else str(value)
    if cap is not None and len(s) > cap:
        s = bounded(s, cap)
    if s.isascii() and "\x00" not in s:
        # The common case, tested in C: nothing to clean (cheap: 17 columns a row).
        return s
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _int(value: object, limit: int = _BIGINT_MAX) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -limit <= value <= limit else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if f == f and abs(f) != float("inf") else None


def _cost(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    try:
        d = Decimal(value).quantize(COST_PLACES)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return d if d.is_finite() and abs(d) <= _MAX_COST else None
