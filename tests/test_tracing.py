"""OpenTelemetry tracing: OtelTracing on hand-made records, then through the real app.

Spans go to an in-memory exporter (SimpleSpanProcessor: exported as each span ends). The
in-process app test talks to a real emulator over a real socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import claude_proxy.telemetry.tracing
from claude_proxy import __version__
from claude_proxy.app import ProxyApp
from claude_proxy.settings import Settings
from claude_proxy.store.records import RequestRecord, Usage, new_request_id
from claude_proxy.telemetry.tracing import OtelTracing, build_tracing
from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Emulator

MODEL = "claude-sonnet-4-6"
CLIENT_SECRET = "sk-proxy-tracing-secret-do-not-export"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# ------------------------------------------------------------------ helpers


def make_tracing(
    exporter: SpanExporter, upstream_url: str = "https://api.anthropic.com"
) -> OtelTracing:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "claude-proxy-test"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider, upstream_url=upstream_url)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[OtelTracing]:
    t = make_tracing(exporter)
    yield t
    t.shutdown()


def new_record(
    method: str = "POST", endpoint: str = "/v1/messages", ago: float = 0.25
) -> RequestRecord:
    return RequestRecord(
        id=new_request_id(),
        created_at=time.time() - ago,
        method=method,
        endpoint=endpoint,
        client_ip="10.1.2.3",
    )


def client_headers(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-api-key", CLIENT_SECRET.encode()),
        (b"authorization", b"Bearer " + CLIENT_SECRET.encode()),
        (b"content-type", b"application/json"),
        *extra,
    ]


@dataclass
class Trace:
    request: ReadableSpan
    attempts: list[ReadableSpan]


def one_trace(spans: Sequence[ReadableSpan]) -> Trace:
    """The one request span and its attempt spans (oldest first), checking the links."""
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    request = servers[0]
    attempts = [s for s in spans if s is not request]
    assert request.context is not None
    for a in attempts:
        assert a.kind is SpanKind.CLIENT
        assert a.name == "upstream attempt"
        assert a.parent is not None and a.context is not None
        assert a.parent.span_id == request.context.span_id
        assert a.context.trace_id == request.context.trace_id
    attempts.sort(key=lambda s: int(attrs(s)["claude_proxy.attempt"]))
    return Trace(request, attempts)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def assert_no_secret(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    for span in spans:
        text = f"{span.name} {span.attributes} {span.status.description} {span.events}"
        for secret in secrets:
            assert secret not in text, f"a key reached span {span.name!r}"


# ------------------------------------------------------------------ OtelTracing directly


def test_success_with_usage(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record()
    span = tracing.start_request(record, client_headers())
    attempt = tracing.start_attempt(span, 1)
    tracing.finish_attempt(attempt, 200, None)
    record.key_id = "static-0123456789ab"
    record.model = MODEL
    record.status_code = 200
    record.stop_reason = "end_turn"
    record.message_id = "msg_01XFDUDYJgAACzvnptvVoYEL"
    record.upstream_request_id = "req_011CTestUpstream"
    record.upstream_attempts = 1
    record.user_agent = "Anthropic/Python 0.70.0"
    record.ttft_ms = 812.3456
    record.latency_ms = 1500.0
    record.usage = Usage(
        input_tokens=12,
        output_tokens=345,
        cache_creation_input_tokens=1000,
        cache_creation_5m_input_tokens=600,
        cache_creation_1h_input_tokens=400,
        cache_read_input_tokens=2000,
    )
    tracing.finish_request(span, record)

    spans = exporter.get_finished_spans()
    t = one_trace(spans)
    assert len(t.attempts) == 1
    req = t.request
    assert req.name == "POST /v1/messages"
    assert req.parent is None  # a new trace: the client sent no traceparent
    assert req.status.status_code is StatusCode.UNSET
    # Started when the record was made, not when the span object happened to be created.
    assert req.start_time == int(record.created_at * 1e9)
    assert req.end_time is not None and req.end_time - req.start_time >= 200_000_000
    assert attrs(req) == {
        "http.request.method": "POST",
        "http.route": "/v1/messages",
        "url.path": "/v1/messages",
        "http.response.status_code": 200,
        "client.address": "10.1.2.3",
        "user_agent.original": "Anthropic/Python 0.70.0",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "gen_ai.response.finish_reasons": ("end_turn",),
        # The convention's input count includes cache reads and writes (12 + 2000 + 1000).
        "gen_ai.usage.input_tokens": 3012,
        "gen_ai.usage.output_tokens": 345,
        "gen_ai.usage.cache_read.input_tokens": 2000,
        "gen_ai.usage.cache_creation.input_tokens": 1000,
        "claude_proxy.request_id": record.id,
        "claude_proxy.key_id": "static-0123456789ab",
        "claude_proxy.upstream_request_id": "req_011CTestUpstream",
        "claude_proxy.stream": False,
        "claude_proxy.upstream_attempts": 1,
        "claude_proxy.client_disconnected": False,
        "claude_proxy.ttft_ms": 812.346,
        "claude_proxy.usage.input_tokens": 12,
        "claude_proxy.usage.cache_creation_5m_input_tokens": 600,
        "claude_proxy.usage.cache_creation_1h_input_tokens": 400,
    }
    att = t.attempts[0]
    assert attrs(att) == {
        "claude_proxy.attempt": 1,
        "http.request.method": "POST",
        "server.address": "api.anthropic.com",
        "server.port": 443,
        "http.response.status_code": 200,
    }
    assert att.status.status_code is StatusCode.UNSET
    assert req.start_time <= att.start_time  # type: ignore[operator]
    assert att.end_time <= req.end_time  # type: ignore[operator]
    assert req.resource.attributes["service.name"] == "claude-proxy-test"
    assert req.instrumentation_scope is not None
    assert req.instrumentation_scope.name == "claude_proxy"
    assert req.instrumentation_scope.version == __version__
    assert_no_secret(spans, CLIENT_SECRET)


def test_cache_writes_without_a_total_are_summed(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    record = new_record()
    span = tracing.start_request(record, [])
    record.status_code = 200
    record.usage = Usage(input_tokens=5, output_tokens=1, cache_creation_1h_input_tokens=70)
    tracing.finish_request(span, record)
    a = attrs(one_trace(exporter.get_finished_spans()).request)
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 70
    assert a["gen_ai.usage.input_tokens"] == 75
    assert "gen_ai.usage.cache_read.input_tokens" not in a
    assert "claude_proxy.usage.cache_creation_5m_input_tokens" not in a


def test_stream_broken_midway_is_an_error(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    record = new_record()
    span = tracing.start_request(record, client_headers())
    tracing.finish_attempt(tracing.start_attempt(span, 1), 200, None)
    record.key_id = "static-0123456789ab"
    record.model = MODEL
    record.stream = True
    record.status_code = 200  # the headers had gone out: the break is an SSE error event
    record.upstream_attempts = 1
    record.message_id = "msg_01Broken"
    record.usage = Usage(input_tokens=20, output_tokens=7)
    record.error_type = "api_error"
    record.error_message = "Streaming error: upstream closed the stream before message_stop"
    tracing.finish_request(span, record)

    t = one_trace(exporter.get_finished_spans())
    req = t.request
    assert req.status.status_code is StatusCode.ERROR
    assert req.status.description == record.error_message
    a = attrs(req)
    assert a["http.response.status_code"] == 200
    assert a["error.type"] == "api_error"
    assert a["claude_proxy.error_type"] == "api_error"
    assert a["claude_proxy.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == 7  # what was seen before the break counts
    assert "gen_ai.response.finish_reasons" not in a  # no stop_reason: it never finished
    # The attempt itself succeeded (the response started): only the request span failed.
    assert t.attempts[0].status.status_code is StatusCode.UNSET


def test_client_gone_midstream_is_not_an_error(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    record = new_record()
    span = tracing.start_request(record, [])
    tracing.finish_attempt(tracing.start_attempt(span, 1), None, "cancelled")
    record.stream = True
    record.status_code = 200
    record.client_disconnected = True
    record.error_type = "client_disconnected"
    record.upstream_attempts = 1
    tracing.finish_request(span, record)

    t = one_trace(exporter.get_finished_spans())
    assert t.request.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(t.request)
    assert attrs(t.request)["claude_proxy.client_disconnected"] is True
    assert attrs(t.request)["claude_proxy.error_type"] == "client_disconnected"
    att = t.attempts[0]
    assert att.status.status_code is StatusCode.UNSET
    assert attrs(att)["claude_proxy.cancelled"] is True
    assert "error.type" not in attrs(att)


def test_529_retried_twice(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record()
    span = tracing.start_request(record, client_headers())
    for n in (1, 2, 3):
        tracing.finish_attempt(tracing.start_attempt(span, n), 529, None)
    record.key_id = "static-0123456789ab"
    record.model = MODEL
    record.status_code = 529
    record.upstream_attempts = 3
    record.error_type = "overloaded_error"
    record.error_message = "Overloaded"
    tracing.finish_request(span, record)

    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    t = one_trace(spans)
    assert [attrs(a)["claude_proxy.attempt"] for a in t.attempts] == [1, 2, 3]
    for a in t.attempts:
        assert a.status.status_code is StatusCode.ERROR  # a 4xx/5xx answer fails a CLIENT span
        assert attrs(a)["http.response.status_code"] == 529
        assert attrs(a)["error.type"] == "529"
    # Attempts follow one another.
    ends = [a.end_time or 0 for a in t.attempts]
    starts = [a.start_time or 0 for a in t.attempts]
    assert starts[1] >= ends[0] and starts[2] >= ends[1]
    req = t.request
    assert req.status.status_code is StatusCode.ERROR
    assert req.status.description == "Overloaded"
    assert attrs(req)["error.type"] == "overloaded_error"
    assert attrs(req)["http.response.status_code"] == 529
    assert attrs(req)["claude_proxy.upstream_attempts"] == 3


def test_connect_errors_on_attempts(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record()
    span = tracing.start_request(record, [])
    timeout = "Timeout (connect): no connection to the upstream API within 10s"
    refused = "cannot connect to the upstream API: Connection refused"
    tracing.finish_attempt(tracing.start_attempt(span, 1), None, timeout)
    tracing.finish_attempt(tracing.start_attempt(span, 2), None, refused)
    record.status_code = 502
    record.upstream_attempts = 2
    record.error_type = "api_error"
    record.error_message = f"Upstream error: {refused}"
    tracing.finish_request(span, record)

    t = one_trace(exporter.get_finished_spans())
    first, second = t.attempts
    assert attrs(first)["error.type"] == "timeout"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == timeout
    assert attrs(second)["error.type"] == "connect_error"
    assert second.status.description == refused
    for a in t.attempts:
        assert "http.response.status_code" not in attrs(a)
    assert t.request.status.status_code is StatusCode.ERROR
    assert attrs(t.request)["http.response.status_code"] == 502


def test_refusal_4xx_is_the_clients(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record()
    span = tracing.start_request(record, client_headers())
    record.status_code = 401
    record.refusal = "invalid_key"
    record.error_type = "authentication_error"
    record.error_message = "invalid x-api-key"
    tracing.finish_request(span, record)

    spans = exporter.get_finished_spans()
    t = one_trace(spans)
    assert t.attempts == []  # nothing went upstream
    assert t.request.status.status_code is StatusCode.UNSET
    a = attrs(t.request)
    assert a["http.response.status_code"] == 401
    assert a["claude_proxy.refusal"] == "invalid_key"
    assert a["claude_proxy.upstream_attempts"] == 0
    assert "error.type" not in a and "claude_proxy.key_id" not in a
    assert_no_secret(spans, CLIENT_SECRET)


def test_traceparent_is_continued(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record(method="GET", endpoint="/v1/models/{id}")
    headers = client_headers(
        (b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"congo=t61rcWkgMzE")
    )
    span = tracing.start_request(record, headers)
    tracing.finish_attempt(tracing.start_attempt(span, 1), 200, None)
    record.status_code = 200
    tracing.finish_request(span, record)

    t = one_trace(exporter.get_finished_spans())
    req = t.request
    assert req.name == "GET /v1/models/{id}"
    assert req.context is not None and req.parent is not None
    assert req.context.trace_id == int(TRACE_ID, 16)
    assert req.parent.span_id == int(PARENT_ID, 16)
    assert req.parent.is_remote
    assert req.context.trace_state.get("congo") == "t61rcWkgMzE"
    assert t.attempts[0].context is not None
    assert t.attempts[0].context.trace_id == int(TRACE_ID, 16)
    assert attrs(t.attempts[0])["http.request.method"] == "GET"


@pytest.mark.parametrize(
    "traceparent",
    [
        b"garbage",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        b"00-" + TRACE_ID.encode() + b"-" + PARENT_ID.encode(),  # no flags
    ],
)
def test_invalid_traceparent_starts_a_new_trace(
    tracing: OtelTracing, exporter: InMemorySpanExporter, traceparent: bytes
) -> None:
    record = new_record()
    span = tracing.start_request(record, [(b"traceparent", traceparent)])
    record.status_code = 200
    tracing.finish_request(span, record)
    req = one_trace(exporter.get_finished_spans()).request
    assert req.parent is None
    assert req.context is not None and req.context.trace_id != int(TRACE_ID, 16)


def test_unsampled_parent_records_nothing(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    record = new_record()
    span = tracing.start_request(
        record, [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00".encode())]
    )
    tracing.finish_attempt(tracing.start_attempt(span, 1), 200, None)
    record.status_code = 200
    tracing.finish_request(span, record)
    assert exporter.get_finished_spans() == ()


def test_unknown_method_is_other(tracing: OtelTracing, exporter: InMemorySpanExporter) -> None:
    record = new_record(method="BREW", endpoint="/v1/coffee")
    span = tracing.start_request(record, [])
    record.status_code = 404
    tracing.finish_request(span, record)
    req = one_trace(exporter.get_finished_spans()).request
    assert req.name == "_OTHER /v1/coffee"
    assert attrs(req)["http.request.method"] == "_OTHER"
    assert attrs(req)["http.request.method_original"] == "BREW"


def test_shutdown_exports_what_is_queued() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    # A long schedule: nothing would be exported before shutdown.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracing = OtelTracing(provider)
    record = new_record()
    span = tracing.start_request(record, [])
    record.status_code = 200
    tracing.finish_request(span, record)
    assert exporter.get_finished_spans() == ()
    tracing.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /v1/messages"]
    tracing.shutdown()  # twice is harmless


class StuckExporter(SpanExporter):
    """A collector that never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.FAILURE


def test_shutdown_is_bounded() -> None:
    stuck = StuckExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(stuck, schedule_delay_millis=60_000))
    tracing = OtelTracing(provider, shutdown_timeout=0.3)
    record = new_record()
    span = tracing.start_request(record, [])
    record.status_code = 200
    tracing.finish_request(span, record)
    started = time.monotonic()
    try:
        tracing.shutdown()
        assert time.monotonic() - started < 2.0
    finally:
        stuck.release.set()


def test_build_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing there
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    settings = Settings(service_name="proxy-under-test", tracing=True)
    tracing = build_tracing(service_name=settings.service_name, upstream_url="http://upstream")
    assert isinstance(tracing, OtelTracing)
    resource = tracing.provider.resource.attributes
    assert resource["service.name"] == "proxy-under-test"
    assert resource["service.version"] == __version__
    tracing.shutdown()  # no spans: returns at once

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert build_tracing(service_name="proxy-under-test", upstream_url="http://upstream") is None


def test_nothing_from_opentelemetry_is_loaded_when_off() -> None:
    code = (
        "import sys\n"
        "import claude_proxy.http.runner, claude_proxy.app, claude_proxy.formats.anthropic.relay\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
        "assert 'claude_proxy.telemetry.tracing' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ through the app


@dataclass
class Traced:
    client: httpx2.AsyncClient
    exporter: InMemorySpanExporter


@pytest.fixture
async def traced(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Traced]:
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_PROXY_", "OTEL_")):
            monkeypatch.delenv(name)
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": emulator.url,
        "CLAUDE_PROXY_API_KEYS": PROXY_KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'proxy.db'}",
        "CLAUDE_PROXY_SPILL_DIR": str(tmp_path / "spill"),
        "CLAUDE_PROXY_LOG_REQUESTS": "false",
        "CLAUDE_PROXY_PRE_STOP_SECONDS": "0",
        "CLAUDE_PROXY_RETRY_BACKOFF_INITIAL_SECONDS": "0.01",
        "CLAUDE_PROXY_TRACING": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    built: list[OtelTracing] = []

    def fake_build(*, service_name: str, upstream_url: str) -> OtelTracing:
        built.append(make_tracing(exporter, upstream_url))
        return built[-1]

    # What wiring.py calls when tracing is on.
    monkeypatch.setattr(claude_proxy.telemetry.tracing, "build_tracing", fake_build)
    app = ProxyApp(Settings())
    await app.startup()
    try:
        assert len(built) == 1, "the app did not build its tracing"
        headers = {"x-api-key": PROXY_KEY, "anthropic-version": "2023-06-01"}
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://proxy", headers=headers, timeout=30
        ) as client:
            yield Traced(client, exporter)
    finally:
        await app.shutdown()
    # The app shut its tracing down: a span that ends now is not exported any more.
    seen = len(exporter.get_finished_spans())
    late = new_record()
    built[0].finish_request(built[0].start_request(late, []), late)
    assert len(exporter.get_finished_spans()) == seen


def message(stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "A prompt that must never reach a span"}],
    }


async def test_app_request_makes_a_request_span_and_an_attempt_span(traced: Traced) -> None:
    r = await traced.client.post(
        "/v1/messages", json=message(), headers={"traceparent": TRACEPARENT}
    )
    assert r.status_code == 200, r.text
    body = r.json()

    spans = traced.exporter.get_finished_spans()
    assert len(spans) == 2, [s.name for s in spans]
    t = one_trace(spans)
    req, att = t.request, t.attempts[0]
    assert req.name == "POST /v1/messages"
    assert req.context is not None and req.context.trace_id == int(TRACE_ID, 16)
    assert req.status.status_code is StatusCode.UNSET
    a = attrs(req)
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.response.id"] == body["id"]
    assert a["gen_ai.response.finish_reasons"] == (body["stop_reason"],)
    assert str(a["claude_proxy.key_id"]).startswith("static-")
    assert a["claude_proxy.request_id"] == r.headers["x-claude-proxy-request-id"]
    assert a["claude_proxy.upstream_request_id"] == r.headers["request-id"]
    usage = body["usage"]
    assert a["claude_proxy.usage.input_tokens"] == usage["input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == usage["output_tokens"] > 0
    assert a["gen_ai.usage.input_tokens"] >= usage["input_tokens"]
    assert a["claude_proxy.upstream_attempts"] == 1
    assert a["claude_proxy.stream"] is False
    assert attrs(att)["http.response.status_code"] == 200
    assert attrs(att)["claude_proxy.attempt"] == 1
    assert attrs(att)["server.address"] == "127.0.0.1"
    assert_no_secret(spans, PROXY_KEY, UPSTREAM_KEY, "must never reach a span")


async def test_app_retried_529_makes_three_attempt_spans(traced: Traced) -> None:
    fault = f"status=529 times=2 key={uuid.uuid4().hex}"
    r = await traced.client.post(
        "/v1/messages", json=message(), headers={"x-emulator-fault": fault}
    )
    assert r.status_code == 200, r.text

    t = one_trace(traced.exporter.get_finished_spans())
    assert [attrs(a)["http.response.status_code"] for a in t.attempts] == [529, 529, 200]
    assert [a.status.status_code for a in t.attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert attrs(t.request)["claude_proxy.upstream_attempts"] == 3
    assert attrs(t.request)["http.response.status_code"] == 200
    assert t.request.status.status_code is StatusCode.UNSET


async def test_app_stream_broken_midway(traced: Traced) -> None:
    r = await traced.client.post(
        "/v1/messages",
        json=message(stream=True),
        headers={"x-emulator-fault": "midstream=error after=3"},
    )
    assert r.status_code == 200
    assert "event: error" in r.text

    t = one_trace(traced.exporter.get_finished_spans())
    a = attrs(t.request)
    assert t.request.status.status_code is StatusCode.ERROR
    assert a["claude_proxy.stream"] is True
    assert a["http.response.status_code"] == 200
    assert a["error.type"] == a["claude_proxy.error_type"]
    assert a["gen_ai.request.model"] == MODEL
    assert t.attempts[0].status.status_code is StatusCode.UNSET
