"""RequestRecord: what one request leaves behind, and where it is handed over.

The relay fills a record as the request moves along and hands it to a
`RecordSink` exactly once, when the response has ended however it ended.
The sink must not block: the request log pipeline plugs its writer in here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson

from claude_proxy.sse import Usage

log = logging.getLogger("claude_proxy.access")


def new_request_id() -> str:
    """A time-ordered id (48-bit ms clock + 80 random bits) so database inserts stay local."""
    return f"cpr_{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class RequestRecord:
    id: str
    created_at: float
    method: str
    endpoint: str
    key_id: str | None = None
    model: str | None = None
    stream: bool = False
    status_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    stop_reason: str | None = None
    message_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    upstream_request_id: str | None = None
    client_disconnected: bool = False
    upstream_attempts: int = 0
    client_ip: str | None = None
    user_agent: str | None = None
    anthropic_beta: str | None = None
    metadata_user_id: str | None = None
    claude_code_session_id: str | None = None
    # Set when the proxy itself refused the request: why (limits.Refusal.reason).
    refusal: str | None = None
    # Only with CLAUDE_PROXY_LOG_BODIES=true, capped; never headers (credentials).
    request_body: str | None = None
    response_body: str | None = None


def encode_record(record: RequestRecord) -> bytes:
    """One JSON line: how records travel to the writer process (orjson, ~2 µs)."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def decode_record(line: bytes) -> RequestRecord:
    d: dict[str, Any] = orjson.loads(line)
    d["usage"] = Usage(**d["usage"])
    return RequestRecord(**d)


class RecordSink(Protocol):
    """Takes finished records. `submit` is called on the event loop and must return at once."""

    def submit(self, record: RequestRecord) -> None: ...


def log_access(record: RequestRecord, cost_usd: Decimal | None) -> None:
    """One access line per request. Called by the log writer's thread, off the event loop."""
    if not log.isEnabledFor(logging.INFO):
        return
    u = record.usage
    log.info(
        "request id=%s key=%s %s %s model=%s stream=%s status=%s error=%s refusal=%s stop=%s "
        "in=%s out=%s cache_write=%s cache_read=%s cost_usd=%s latency_ms=%.1f ttft_ms=%s "
        "upstream_request_id=%s disconnected=%s",
        record.id,
        record.key_id,
        record.method,
        record.endpoint,
        record.model,
        record.stream,
        record.status_code,
        record.error_type,
        record.refusal,
        record.stop_reason,
        u.input_tokens,
        u.output_tokens,
        u.cache_creation_input_tokens,
        u.cache_read_input_tokens,
        cost_usd,
        record.latency_ms or 0.0,
        None if record.ttft_ms is None else round(record.ttft_ms, 1),
        record.upstream_request_id,
        record.client_disconnected,
    )
