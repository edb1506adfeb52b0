"""Optional OpenTelemetry tracing: one span per /v1 request, one per upstream attempt.

Off by default and free when off: wiring.py imports this module only with
CLAUDE_PROXY_TRACING=true, so a proxy without tracing loads nothing from OpenTelemetry,
and the relay and the dispatcher skip every call on a `None` check.

Export is OTLP over HTTP/protobuf, configured by the standard variables:
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (a full URL), or OTEL_EXPORTER_OTLP_ENDPOINT (a base URL
that /v1/traces is appended to), default http://localhost:4318: where an ADOT collector
sidecar listens. OTEL_EXPORTER_OTLP_HEADERS/_TIMEOUT/_COMPRESSION, OTEL_TRACES_SAMPLER(_ARG),
OTEL_BSP_* and OTEL_RESOURCE_ATTRIBUTES apply too; OTEL_SDK_DISABLED=true turns tracing off.

X-Ray: the collector sends the spans on (awsxray exporter, or OTLP to X-Ray's OTLP endpoint)
and converts the W3C trace ids (`1-<first 8 hex>-<other 24>`). X-Ray has accepted fully
random W3C ids since October 2023 (the awsxray exporter's timestamp check is off by default
since collector v0.84), so no X-Ray id generator is needed. SERVER spans become segments and
CLIENT spans subsegments; list attributes such as `claude_proxy.key_id` or
`gen_ai.request.model` in the exporter's `indexed_attributes` to search on them.

Spans. The request span (SERVER, "POST /v1/messages": method and endpoint label) continues
a W3C `traceparent` sent by the client; it starts at the record's `created_at` and gets its
attributes when the record is complete:

    http.request.method, http.route and url.path (the endpoint label, ids folded),
    http.response.status_code, client.address, user_agent.original, error.type;
    gen_ai.provider.name and gen_ai.system ("anthropic"), gen_ai.request.model,
    gen_ai.response.id, gen_ai.response.finish_reasons, gen_ai.usage.output_tokens,
    gen_ai.usage.input_tokens (all input tokens, cache reads and writes included, as the
    convention asks; Anthropic's own `input_tokens` excludes them),
    gen_ai.usage.cache_read.input_tokens, gen_ai.usage.cache_creation.input_tokens;
    claude_proxy.request_id, key_id, upstream_request_id, stream, upstream_attempts,
    client_disconnected, refusal, error_type, ttft_ms, and claude_proxy.usage.input_tokens
    (Anthropic's count) and cache_creation_5m/1h_input_tokens.

Its status is ERROR for a 5xx, or for a response that started well and then broke (a
stream cut or ended by an upstream `error` event); a 4xx is the client's and leaves it
unset, as the HTTP conventions say for SERVER spans. Never a key, a prompt or a body.

Each attempt span (CLIENT, "upstream attempt", child of the request span) carries
claude_proxy.attempt, the upstream's server.address/server.port, and either
http.response.status_code (ERROR from 400 up, as for HTTP CLIENT spans) or error.type
(connect_error or timeout) with the error message as the status description.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import cast
from urllib.parse import urlsplit

from claude_proxy import __version__
from claude_proxy.store.records import RequestRecord
from claude_proxy.telemetry.spans import Span as HookSpan

try:
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - the [tracing] extra is missing
    raise ImportError(
        "CLAUDE_PROXY_TRACING=true needs OpenTelemetry: pip install 'claude-proxy[tracing]'"
    ) from exc

log = logging.getLogger("claude_proxy.tracing")


# HTTP methods the conventions know; anything else is "_OTHER" (span names stay few).
_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_PROPAGATION_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_DESCRIPTION_MAX = 256
_METHOD = "http.request.method"
_STATUS = "http.response.status_code"
_ERROR_TYPE = "error.type"


class OtelTracing:
    """The `Tracing` hooks on an OpenTelemetry SDK `TracerProvider` (never the global one)."""

    def __init__(
        self,
        provider: TracerProvider,
        upstream_url: str | None = None,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("claude_proxy", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._shutdown_timeout = shutdown_timeout
        self._closed = False
        self._upstream: dict[str, AttributeValue] = {}
        if upstream_url:
            url = urlsplit(upstream_url)
            if url.hostname:
                self._upstream["server.address"] = url.hostname
                self._upstream["server.port"] = url.port or (443 if url.scheme == "https" else 80)

    def start_request(self, record: RequestRecord, headers: list[tuple[bytes, bytes]]) -> Span:
        carrier: dict[str, list[str]] | None = None
        for name, value in headers:
            key = _PROPAGATION_HEADERS.get(name)
            if key is not None:
                if carrier is None:
                    carrier = {}
                carrier.setdefault(key, []).append(value.decode("latin-1"))
        # A new trace unless the client sent a valid traceparent (never an ambient context).
        context = self._propagator.extract(carrier, Context()) if carrier else Context()
        method = record.method if record.method in _METHODS else "_OTHER"
        attributes: dict[str, AttributeValue] = {
            _METHOD: method,
            "http.route": record.endpoint,
            "url.path": record.endpoint,
            "claude_proxy.request_id": record.id,
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = record.method
        return self._tracer.start_span(
            f"{method} {record.endpoint}",
            context=context,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=int(record.created_at * 1e9),
        )

    def finish_request(self, hook_span: HookSpan, record: RequestRecord) -> None:
        span = cast(Span, hook_span)  # one this object started
        if not span.is_recording():  # not sampled: nothing to describe
            span.end()
            return
        u = record.usage
        cache_write = u.cache_creation_input_tokens
        if cache_write is None and (
            u.cache_creation_5m_input_tokens is not None
            or u.cache_creation_1h_input_tokens is not None
        ):
            cache_write = (u.cache_creation_5m_input_tokens or 0) + (
                u.cache_creation_1h_input_tokens or 0
            )
        all_input = None
        if u.input_tokens is not None:
            all_input = u.input_tokens + (u.cache_read_input_tokens or 0) + (cache_write or 0)
        status = record.status_code
        error = record.error_type
        failed = status is not None and (
            status >= 500 or (status < 400 and error is not None and not record.client_disconnected)
        )
        values: dict[str, AttributeValue | None] = {
            _STATUS: status,
            "client.address": record.client_ip,
            "user_agent.original": record.user_agent,
            "gen_ai.provider.name": "anthropic",
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": record.model,
            "gen_ai.response.id": record.message_id,
            "gen_ai.response.finish_reasons": (record.stop_reason,) if record.stop_reason else None,
            "gen_ai.usage.input_tokens": all_input,
            "gen_ai.usage.output_tokens": u.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": u.cache_read_input_tokens,
            "gen_ai.usage.cache_creation.input_tokens": cache_write,
            "claude_proxy.key_id": record.key_id,
            "claude_proxy.upstream_request_id": record.upstream_request_id,
            "claude_proxy.stream": record.stream,
            "claude_proxy.upstream_attempts": record.upstream_attempts,
            "claude_proxy.client_disconnected": record.client_disconnected,
            "claude_proxy.refusal": record.refusal,
            "claude_proxy.error_type": error,
            "claude_proxy.ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 3),
            "claude_proxy.usage.input_tokens": u.input_tokens,
            "claude_proxy.usage.cache_creation_5m_input_tokens": u.cache_creation_5m_input_tokens,
            "claude_proxy.usage.cache_creation_1h_input_tokens": u.cache_creation_1h_input_tokens,
        }
        if failed:
            values[_ERROR_TYPE] = error or str(status)
        span.set_attributes({k: v for k, v in values.items() if v is not None})
        if failed:
            span.set_status(StatusCode.ERROR, _clip(record.error_message))
        span.end()

    def start_attempt(self, hook_parent: HookSpan | None, attempt: int) -> Span:
        parent = cast(Span | None, hook_parent)
        attributes: dict[str, AttributeValue] = {"claude_proxy.attempt": attempt, **self._upstream}
        if isinstance(parent, ReadableSpan) and parent.attributes:
            method = parent.attributes.get(_METHOD)
            if method is not None:
                attributes[_METHOD] = method
        context = set_span_in_context(parent, Context()) if parent is not None else Context()
        return self._tracer.start_span(
            "upstream attempt", context=context, kind=SpanKind.CLIENT, attributes=attributes
        )

    def finish_attempt(self, hook_span: HookSpan, status: int | None, error: str | None) -> None:
        span = cast(Span, hook_span)
        if status is not None:
            span.set_attribute(_STATUS, status)
            if status >= 400:
                span.set_attribute(_ERROR_TYPE, str(status))
                span.set_status(StatusCode.ERROR)
        elif error == "cancelled":
            # The client went away: not the upstream's failure.
            span.set_attribute("claude_proxy.cancelled", True)
        elif error is not None:
            kind = "timeout" if error.startswith("Timeout") else "connect_error"
            span.set_attribute(_ERROR_TYPE, kind)
            span.set_status(StatusCode.ERROR, _clip(error))
        span.end()

    def shutdown(self) -> None:
        """Export what is queued and stop, waiting at most `shutdown_timeout` seconds.

        The provider's own shutdown can wait 30 s and more on a collector that is down;
        it runs in a daemon thread so a stopping task is never held up longer than this.
        """
        if self._closed:
            return
        self._closed = True
        worker = threading.Thread(
            target=self.provider.shutdown, name="claude-proxy-tracing-shutdown", daemon=True
        )
        worker.start()
        worker.join(self._shutdown_timeout)
        if worker.is_alive():
            log.warning(
                "tracing: spans not exported within %gs of shutdown are dropped",
                self._shutdown_timeout,
            )


def build_tracing(*, service_name: str, upstream_url: str) -> OtelTracing | None:
    """Tracing exported over OTLP/HTTP to the collector; None if OTEL_SDK_DISABLED=true."""
    if os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        log.warning("CLAUDE_PROXY_TRACING=true but OTEL_SDK_DISABLED=true: no traces")
        return None
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    # The proxy shuts the provider down itself (bounded); no atexit hook of its own.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OtelTracing(provider, upstream_url=upstream_url)


def _clip(text: str | None) -> str | None:
    return text[:_DESCRIPTION_MAX] if text else None
