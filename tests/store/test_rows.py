"""Record <-> row <-> spill line: lossless, and clean enough that PostgreSQL never refuses it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from claude_proxy.store.columns import ROW_COLUMNS, TOKEN_COLUMNS
from claude_proxy.store.records import (
    MAX_ERROR_MESSAGE_CHARS,
    RequestRecord,
    Usage,
    bounded,
    decode_record,
    encode_record,
)
from claude_proxy.store.rows import (
    REDUCED_DROPPED,
    REDUCED_KEPT,
    REDUCED_TEXT_CHARS,
    TEXT_CAPS,
    dump_row,
    load_row,
    record_to_row,
    reduced_row,
    row_to_record,
)
from claude_proxy.store.schema import COLUMNS
from tests.store.conftest import make_record


def test_the_token_columns_are_the_usage_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Usage)) == TOKEN_COLUMNS


def test_the_writers_columns_are_the_tables_but_logged_at() -> None:
    # columns.py spells out what schema.py's Table defines (the writer must not import
    # SQLAlchemy): the same names, in the same order.
    assert tuple(c for c in COLUMNS if c != "logged_at") == ROW_COLUMNS


def test_row_has_every_column_the_writer_supplies() -> None:
    row = record_to_row(make_record(1), Decimal("0.0123"))
    assert set(row) == set(ROW_COLUMNS)
    assert row["created_at"].tzinfo is UTC
    assert row["cost_usd"] == Decimal("0.01230000")
    assert row["cache_creation_1h_input_tokens"] == 2


@pytest.mark.parametrize("cost", [None, Decimal("0"), Decimal("1.23456789"), Decimal("12345.6")])
def test_round_trip_through_the_spill_format(cost: Decimal | None) -> None:
    record = make_record(
        7,
        created_at=1764000000.123456,
        stream=True,
        client_disconnected=True,
        status_code=None,
        error_type="overloaded_error",
        error_message='quote " and newline\n and unicode é ☃',
        ttft_ms=None,
        usage=Usage(input_tokens=0, output_tokens=None),
        metadata_user_id="user_123",
        claude_code_session_id="4b9c0a52-0000-4000-8000-000000000000",
    )
    row = record_to_row(record, cost)
    line = dump_row(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = load_row(line)
    assert back == row
    assert type(back["cost_usd"]) is type(row["cost_usd"])
    assert back["stream"] is True and back["ttft_ms"] is None and back["input_tokens"] == 0
    # The row also turns back into the very same record.
    assert row_to_record(back) == record
    assert record_to_row(row_to_record(back), cost) == row


def test_values_postgres_would_refuse_are_cleaned() -> None:
    record = make_record(
        1,
        metadata_user_id="nul\x00inside",
        user_agent="lone \ud800 surrogate",
        latency_ms=float("nan"),
        usage=Usage(input_tokens=2**70, output_tokens=True),  # bool is an int to mypy
        error_message="x" * 100_000,
    )
    row = record_to_row(record, Decimal("1e20"))
    assert row["metadata_user_id"] == "nul\ufffdinside"
    row["user_agent"].encode("utf-8")
    assert row["latency_ms"] is None
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["cost_usd"] is None  # beyond NUMERIC(18, 8): NULL, never a failing batch
    assert row["error_message"] == bounded("x" * 100_000, MAX_ERROR_MESSAGE_CHARS)
    assert load_row(dump_row(row)) == row


def test_every_text_a_client_or_the_upstream_chose_is_capped() -> None:
    """Whatever the sender did: the caps hold in the writer (the record may arrive uncapped).
    A capped value keeps its head and a hash of the whole, so different values stay apart."""
    long = {name: f"{name}:" + "\u00e9\x00" * 6000 for name in TEXT_CAPS}
    record = make_record(1, **long, status_code=2**40, upstream_attempts=2**33)
    row = record_to_row(record, None)
    for name, cap in TEXT_CAPS.items():
        assert len(row[name]) == cap, name
        assert row[name].startswith(f"{name}:\u00e9\ufffd"), name  # cleaned, then capped
        assert "...sha256:" in row[name]
    other = record_to_row(make_record(1, model=long["model"] + "!"), None)
    assert other["model"] != row["model"]
    assert row["status_code"] is None and row["upstream_attempts"] == 0  # integer columns
    assert row["id"] == record.id and row["key_id"] == record.key_id  # the proxy's own: whole


def test_a_spill_line_from_before_the_caps_is_capped_when_read() -> None:
    row = record_to_row(make_record(1), None)
    row["model"] = "m" * 3200
    row["user_agent"] = "nul\x00" * 1000
    row["endpoint"] = None
    back = load_row(dump_row(row))
    assert back["model"] == bounded("m" * 3200, TEXT_CAPS["model"])
    assert len(back["user_agent"]) == TEXT_CAPS["user_agent"] and "\x00" not in back["user_agent"]
    assert back["endpoint"] == ""


def test_the_reduced_row_keeps_accounting_and_drops_client_texts() -> None:
    record = make_record(
        3,
        model="claude-\u2603-" + "x" * 200,
        user_agent="agent",
        metadata_user_id="user",
        claude_code_session_id="session",
        anthropic_beta="beta",
        error_message="message",
        request_body="{}",
        response_body="{}",
    )
    row = record_to_row(record, Decimal("0.5"))
    reduced = reduced_row(row)
    for name in REDUCED_DROPPED:
        assert reduced[name] is None, name
    for name in REDUCED_KEPT:
        value = reduced[name]
        assert value is None or (len(value) <= REDUCED_TEXT_CHARS and value.isprintable())
        assert value is None or value.isascii(), name
    assert reduced["model"].startswith("claude-?-xxx") and "...sha256:" in reduced["model"]
    assert reduced["client_ip"] == "10.0.0.1" and reduced["endpoint"] == "/v1/messages"
    unchanged = set(ROW_COLUMNS) - set(REDUCED_KEPT) - set(REDUCED_DROPPED)
    assert {name: reduced[name] for name in unchanged} == {name: row[name] for name in unchanged}
    assert {"id", "key_id", "cost_usd", "status_code", "latency_ms", *TOKEN_COLUMNS} <= unchanged


@pytest.mark.parametrize(
    "line",
    [
        b'{"_v": 1, "id": "cpr_1", "created_at": "2025-01-0',  # torn mid-write
        b"",
        b"[]",
        b'{"_v": 2, "id": "x", "created_at": "2025-01-01T00:00:00+00:00"}',
        b'{"_v": 1, "created_at": "2025-01-01T00:00:00+00:00"}',
        b'{"_v": 1, "id": "x"}',
        b'{"_v": 1, "id": "x", "created_at": "2025-01-01T00:00:00+00:00", "cost_usd": "abc"}',
    ],
)
def test_bad_lines_raise_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        load_row(line)


def test_created_at_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        row = record_to_row(make_record(1, created_at=0.5), None)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert row["created_at"] == datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)


def test_future_body_fields_are_carried_when_records_have_them() -> None:
    class WithBodies:
        """Stands in for a record once body capture lands (CLAUDE_PROXY_LOG_BODIES)."""

        def __init__(self, record: RequestRecord) -> None:
            self._r = record
            self.request_body = '{"model": "x"}'
            self.response_body = None

        def __getattr__(self, name: str) -> object:
            return getattr(self._r, name)

    row = record_to_row(WithBodies(make_record(1)), None)  # type: ignore[arg-type]
    assert row["request_body"] == '{"model": "x"}' and row["response_body"] is None


def test_a_loaded_row_dumps_again() -> None:
    # Column names are str subclasses in SQLAlchemy; orjson wants plain str keys.
    row = load_row(dump_row(record_to_row(make_record(1), None)))
    assert all(type(k) is str for k in row)
    assert load_row(dump_row(row)) == row


@pytest.mark.parametrize(
    "record",
    [
        make_record(5, request_body="caf\u00e9 \x00", error_message="boom", refusal="rpm"),
        RequestRecord(id="cpr_min", created_at=1.5, method="GET", endpoint="/v1/models"),
    ],
)
def test_a_record_reaches_the_writer_process_unchanged(record: RequestRecord) -> None:
    line = encode_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one line per record
    assert decode_record(line) == record
