"""The official Python SDK (2.x) through the proxy to the emulator, over real sockets."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Emulator, Proxy

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def client(proxy: Proxy) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0) as c:
        yield c


def fault(spec: str) -> dict[str, str]:
    return {"x-emulator-fault": spec}


@contextmanager
def raw_stream(proxy: Proxy, spec: str) -> Iterator[httpx2.Response]:
    """A streaming /v1/messages request over plain HTTP, with an emulator fault spec."""
    with (
        httpx2.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{proxy.url}/v1/messages",
            headers={"x-api-key": proxy.key, "anthropic-version": "2023-06-01", **fault(spec)},
            json={"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True},
        ) as r,
    ):
        yield r


def access_line(proxy: Proxy, request_id: str) -> dict[str, Any]:
    """The request's JSON access line (CLAUDE_PROXY_LOG_FORMAT=json, the default)."""
    m = proxy.process.wait_for(
        rf'^{{.*"message":"request".*"request_id":"{re.escape(request_id)}".*$'
    )
    line: dict[str, Any] = orjson.loads(m.group(0))
    return line


def test_non_streaming_create_relays_body_and_headers(
    client: anthropic.Anthropic, proxy: Proxy
) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason == "end_turn"
    # Upstream headers pass through: the API's request id and the rate-limit set.
    assert raw.headers["request-id"].startswith("req_")
    assert "anthropic-organization-id" in raw.headers
    assert "anthropic-ratelimit-requests-remaining" in raw.headers
    assert "anthropic-ratelimit-tokens-reset" in raw.headers
    proxy_rid = raw.headers["x-claude-proxy-request-id"]
    line = access_line(proxy, proxy_rid)
    assert (line["input_tokens"], line["output_tokens"]) == (
        msg.usage.input_tokens,
        msg.usage.output_tokens,
    )
    assert line["upstream_request_id"] == raw.headers["request-id"]
    assert line["model"] == msg.model and line["status"] == 200
    assert line["key_id"].startswith("static-") and line["cost_usd"] > 0


def test_stream_with_thinking_text_and_tool_use(client: anthropic.Anthropic, proxy: Proxy) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "any"},
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
        proxy_rid = stream.response.headers["x-claude-proxy-request-id"]
    kinds = [b.type for b in final.content]
    assert kinds[0] == "thinking" and "text" in kinds and kinds[-1] == "tool_use"
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.signature
    tool = final.content[-1]
    assert tool.type == "tool_use" and tool.name == "get_weather" and isinstance(tool.input, dict)
    assert final.stop_reason == "tool_use"
    assert "".join(texts) == "".join(b.text for b in final.content if b.type == "text")
    # The observer saw the same cumulative usage the SDK assembled.
    line = access_line(proxy, proxy_rid)
    assert (line["input_tokens"], line["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert line["stop_reason"] == "tool_use" and line["stream"] is True


def test_cache_tokens_are_observed_on_streams(client: anthropic.Anthropic, proxy: Proxy) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a careful assistant. " * 200 + str(time.time_ns()),
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    seen = []
    for _ in range(2):
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            system=system,
            messages=HELLO,  # type: ignore[arg-type]
        ) as stream:
            final = stream.get_final_message()
            seen.append((final.usage, stream.response.headers["x-claude-proxy-request-id"]))
    (first, rid1), (second, rid2) = seen
    assert first.cache_creation_input_tokens and first.cache_creation_input_tokens > 0
    assert first.cache_creation and first.cache_creation.ephemeral_1h_input_tokens > 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    first_line = access_line(proxy, rid1)
    assert first_line["cache_read_input_tokens"] == 0
    assert (
        first_line["cache_creation_5m_input_tokens"] + first_line["cache_creation_1h_input_tokens"]
        == first.cache_creation_input_tokens
    )
    assert access_line(proxy, rid2)["cache_read_input_tokens"] == second.cache_read_input_tokens


def test_count_tokens_and_models(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert counted.input_tokens > 0
    first_page = client.models.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more
    all_ids = [m.id for m in client.models.list(limit=3)]  # auto-pagination crosses pages
    assert len(all_ids) > 3 and len(set(all_ids)) == len(all_ids)
    model = client.models.retrieve(all_ids[0])
    assert model.id == all_ids[0] and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")


def test_beta_query_and_headers_reach_upstream_unchanged(
    client: anthropic.Anthropic, emulator: Emulator
) -> None:
    marker = f"marker-{time.time_ns()}"
    client.beta.messages.create(
        model=MODEL,
        max_tokens=32,
        messages=HELLO,
        betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
        extra_headers={
            "x-claude-code-session-id": marker,
            "anthropic-workspace-id": "wrkspc_test",
            "x-custom-thing": "Some Value",
        },
        extra_query={"beta": "true"},
    )
    (seen,) = [
        r for r in emulator.requests() if ["x-claude-code-session-id", marker] in r["headers"]
    ]
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/v1/messages" and "beta=true" in seen["query"]
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert headers["anthropic-workspace-id"] == "wrkspc_test"
    assert headers["x-custom-thing"] == "Some Value"
    assert headers["user-agent"].startswith("Anthropic/Python")
    assert headers["x-stainless-lang"] == "python"
    assert headers["anthropic-version"]
    # The client's credential never crosses; the real key is injected.
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in headers
    assert PROXY_KEY not in str(seen)


def test_wrong_or_missing_key_is_401_and_nothing_goes_upstream(
    proxy: Proxy, emulator: Emulator
) -> None:
    marker = f"never-{time.time_ns()}"
    with anthropic.Anthropic(base_url=proxy.url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            bad.messages.create(
                model=MODEL, max_tokens=8, messages=HELLO, extra_headers={"x-marker": marker}
            )
    assert exc.value.type == "authentication_error"
    assert exc.value.request_id and exc.value.request_id.startswith("cpr_")
    r = httpx2.post(f"{proxy.url}/v1/messages", json={}, headers={"x-marker": marker})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["request-id"] == r.json()["request_id"]
    assert not [x for x in emulator.requests() if ["x-marker", marker] in x["headers"]]


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_upstream_error_statuses_pass_through(
    client: anthropic.Anthropic, status: int, exc_type: type[Exception], error_type: str
) -> None:
    with pytest.raises(exc_type) as exc:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault(f"status={status}")
        )
    err = exc.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == status and err.type == error_type
    # The upstream's own body and request id, not a proxy rewrite.
    assert err.request_id and err.request_id.startswith("req_")
    assert isinstance(err.body, dict) and err.body["request_id"] == err.request_id


def test_429_retry_after_is_passed_and_honoured(proxy: Proxy) -> None:
    key = f"k{time.time_ns()}"
    with anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=0) as c:
        with pytest.raises(anthropic.RateLimitError) as exc:
            c.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=HELLO,
                extra_headers=fault("status=429 retry-after=1"),
            )
        assert exc.value.response.headers["retry-after"] == "1"
    # With retries on, the SDK waits the upstream's retry-after, then succeeds.
    with anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=2) as c:
        t0 = time.monotonic()
        msg = c.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault(f"status=429 retry-after=1 times=1 key={key}"),
        )
        assert msg.content
        assert time.monotonic() - t0 >= 0.95


def test_should_retry_false_is_respected(proxy: Proxy, emulator: Emulator) -> None:
    key = f"nr{time.time_ns()}"
    with anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key, max_retries=2) as c:
        with pytest.raises(anthropic.InternalServerError):
            c.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=HELLO,
                extra_headers=fault(f"status=500 should-retry=false key={key}"),
            )
    tries = [r for r in emulator.requests() if key in str(r["headers"])]
    assert len(tries) == 1


def test_midstream_error_event_passes_through(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=HELLO,
            extra_headers=fault("midstream=error after=3"),
        ) as stream:
            stream.get_final_message()
    assert exc.value.status_code == 200
    assert exc.value.type == "overloaded_error"


@pytest.mark.parametrize("mode", ["reset", "eof"])
def test_upstream_dying_midstream_becomes_streaming_error(
    client: anthropic.Anthropic, proxy: Proxy, mode: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=HELLO,
            extra_headers=fault(f"midstream={mode} after=4"),
        ) as stream:
            rid = stream.response.headers["x-claude-proxy-request-id"]
            stream.get_final_message()
    assert exc.value.type == "api_error"
    assert str(exc.value.message).startswith("Streaming error") or "Streaming error" in str(
        exc.value.body
    )
    proxy.process.wait_for(rf"Streaming error.*request_id={rid}")
    assert access_line(proxy, rid)["error_type"] == "api_error"


def test_client_disconnect_closes_upstream_within_a_second(
    proxy: Proxy, emulator: Emulator
) -> None:
    with raw_stream(proxy, "midstream=stall after=2") as r:
        upstream_rid = r.headers["request-id"]
        proxy_rid = r.headers["x-claude-proxy-request-id"]
        it = r.iter_bytes()
        assert b"message_start" in next(it)
        closed_at = time.monotonic()
    rec = emulator.wait_request(upstream_rid, "client_closed", timeout=1.0)
    assert rec["state"] == "client_closed"
    assert time.monotonic() - closed_at < 1.0
    assert access_line(proxy, proxy_rid)["client_disconnected"] is True


def test_events_are_relayed_as_they_arrive(proxy: Proxy) -> None:
    """With a 150 ms gap per event, each event must reach the client on its own."""
    arrivals: list[float] = []
    with raw_stream(proxy, "event-ms=150 events=4") as r:
        for line in r.iter_lines():
            if line.startswith("event: content_block_delta"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    # 3 gaps of 150 ms upstream: buffered and flushed together, the span would be ~0.
    assert arrivals[-1] - arrivals[0] > 0.3


def test_slow_first_byte_is_waited_for(client: anthropic.Anthropic) -> None:
    t0 = time.monotonic()
    msg = client.messages.create(
        model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("first-byte-ms=400")
    )
    assert msg.content and time.monotonic() - t0 >= 0.4


def test_connection_closed_before_headers_is_a_502(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("close-before-headers")
        )
    assert exc.value.status_code == 502 and exc.value.type == "api_error"
    assert exc.value.request_id and exc.value.request_id.startswith("cpr_")
