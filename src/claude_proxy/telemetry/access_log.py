"""The access log: one line per request, written by the log writer process."""

from __future__ import annotations

import logging
from decimal import Decimal

from claude_proxy.store.records import (
    MAX_ENDPOINT_CHARS,
    MAX_MODEL_CHARS,
    MAX_SHORT_TEXT_CHARS,
    RequestRecord,
    bounded,
)
from claude_proxy.telemetry.logs import FIELDS

log = logging.getLogger("claude_proxy.access")


def log_access(record: RequestRecord, cost_usd: Decimal | None) -> None:
    """One access line per request. Called by the log writer's thread, off the event loop.

    Never the key itself: `key_id` is the key's id (docs/observability.md lists the fields).
    Texts a client or the upstream chose are capped: one request must not make a line of
    megabytes.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    u = record.usage
    fields = {
        "request_id": bounded(record.id, MAX_SHORT_TEXT_CHARS),
        "upstream_request_id": bounded(record.upstream_request_id, MAX_SHORT_TEXT_CHARS),
        "key_id": bounded(record.key_id, MAX_SHORT_TEXT_CHARS),
        "method": bounded(record.method, MAX_SHORT_TEXT_CHARS),
        "endpoint": bounded(record.endpoint, MAX_ENDPOINT_CHARS),
        "model": bounded(record.model, MAX_MODEL_CHARS),
        "stream": record.stream,
        "status": record.status_code,
        "error_type": bounded(record.error_type, MAX_SHORT_TEXT_CHARS),
        "refusal": bounded(record.refusal, MAX_SHORT_TEXT_CHARS),
        "stop_reason": bounded(record.stop_reason, MAX_SHORT_TEXT_CHARS),
        "latency_ms": None if record.latency_ms is None else round(record.latency_ms, 1),
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 1),
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_5m_input_tokens": u.cache_creation_5m_input_tokens,
        "cache_creation_1h_input_tokens": u.cache_creation_1h_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cost_usd": None if cost_usd is None else float(cost_usd),
        "client_disconnected": record.client_disconnected,
        "upstream_attempts": record.upstream_attempts,
    }
    log.info("request", extra={FIELDS: fields})
