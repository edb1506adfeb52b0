"""RequestRecord <-> database row <-> one JSON line of the spill file.

The spill file stores rows (cost already computed), so replaying it needs no
price table and yields exactly what would have been inserted. Every value is
also cleaned of what PostgreSQL would reject (NUL characters, lone surrogates,
integers past BIGINT): one bad field must never make a batch fail forever.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from claude_proxy.records import RequestRecord
from claude_proxy.sse import Usage
from claude_proxy.store.columns import COST_PLACES, ROW_COLUMNS, TOKEN_COLUMNS

Row = dict[str, Any]

SPILL_FORMAT = 1
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestRecord))
# Optional attributes a record may grow (opt-in body capture) that map to columns.
_OPTIONAL_FIELDS = ("request_body", "response_body")
_BIGINT_MAX = 2**63 - 1
_MAX_COST = Decimal("9999999999.99999999")  # NUMERIC(18, 8)
_MAX_ERROR_MESSAGE = 8192


def record_to_row(record: RequestRecord, cost_usd: Decimal | None) -> Row:
    """The `request_logs` row for a record; runs on the writer thread, not the event loop."""
    u = record.usage
    row: Row = {
        "id": record.id,
        "created_at": datetime.fromtimestamp(record.created_at, tz=UTC),
        "key_id": _text(record.key_id),
        "endpoint": _text(record.endpoint) or "",
        "method": _text(record.method) or "",
        "model": _text(record.model),
        "stream": bool(record.stream),
        "status_code": _int(record.status_code),
        "error_type": _text(record.error_type),
        "error_message": _text(record.error_message, _MAX_ERROR_MESSAGE),
        "stop_reason": _text(record.stop_reason),
        "message_id": _text(record.message_id),
        "cost_usd": _cost(cost_usd),
        "latency_ms": _float(record.latency_ms),
        "ttft_ms": _float(record.ttft_ms),
        "upstream_request_id": _text(record.upstream_request_id),
        "client_disconnected": bool(record.client_disconnected),
        "upstream_attempts": _int(record.upstream_attempts) or 0,
        "client_ip": _text(record.client_ip),
        "user_agent": _text(record.user_agent),
        "anthropic_beta": _text(record.anthropic_beta),
        "metadata_user_id": _text(record.metadata_user_id),
        "claude_code_session_id": _text(record.claude_code_session_id),
        "refusal": _text(record.refusal),
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
        if k in _RECORD_FIELDS and k not in ("created_at", "usage") and k not in TOKEN_COLUMNS
    }
    return RequestRecord(
        created_at=created.timestamp(),
        usage=Usage(**{name: row.get(name) for name in TOKEN_COLUMNS}),
        **kwargs,
    )


def dump_row(row: Row) -> bytes:
    """One spill line (newline-terminated JSON): datetimes as ISO, Decimals as strings."""
    doc = dict(row)
    doc["created_at"] = row["created_at"].isoformat()
    cost = row.get("cost_usd")
    doc["cost_usd"] = None if cost is None else str(cost)
    doc["_v"] = SPILL_FORMAT
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
    return row


def _text(value: object, limit: int | None = None) -> str | None:
    if value is None:
        return None
    if type(value) is str and value.isascii() and "\x00" not in value:
        # The common case, tested in C: nothing to clean (cheap: 17 columns a row).
        return value if limit is None or len(value) <= limit else value[:limit]
    s = value if isinstance(value, str) else str(value)
    if limit is not None and len(s) > limit:
        s = s[:limit]
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -_BIGINT_MAX <= value <= _BIGINT_MAX else None


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
