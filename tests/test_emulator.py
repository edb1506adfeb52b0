"""The Anthropic API emulator, driven by the official SDK (and raw HTTP) over real sockets.

The emulator runs in-process on its own event loop thread (`start_in_thread`), so these tests do
not depend on the CLI. Waiting is always on events (the journal's long-poll), never on sleeps.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from claude_proxy.emulator import start, start_in_thread
from claude_proxy.emulator.cache import MIN_CACHEABLE_TOKENS
from claude_proxy.emulator.catalog import MODELS
from claude_proxy.emulator.messages import DEFAULT_EVENTS, DEFAULT_TEXT_BYTES, text_for
from claude_proxy.emulator.tokens import fast_tokens, measure

KEY = "sk-ant-api03-emulator-test-key"
MODEL = "claude-sonnet-4-6"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
V = {"anthropic-version": "2023-06-01"}
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["location", "unit"],
        },
    },
    {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
]


class Emu:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, orjson.loads(e.read())

    def requests(self) -> list[dict[str, Any]]:
        status, body = self.get("/_emulator/requests")
        assert status == 200
        data: list[dict[str, Any]] = body["data"]
        return data

    def wait(self, request_id: str, state: str, timeout: float = 5.0) -> tuple[int, Any]:
        return self.get(f"/_emulator/wait?request_id={request_id}&state={state}&timeout={timeout}")

    def tagged(self, tag: str) -> list[dict[str, Any]]:
        return [r for r in self.requests() if ["x-tag", tag] in r["headers"]]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emu]:
    url, stop = start_in_thread("127.0.0.1", 0, api_key=KEY)
    yield Emu(url)
    stop()


@pytest.fixture
def client(emu: Emu) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def http(emu: Emu) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=emu.url, headers={"x-api-key": KEY, **V}, timeout=10) as c:
        yield c


def fault(spec: str, **extra: str) -> dict[str, str]:
    return {"x-emulator-fault": spec, **extra}


def tag() -> str:
    return f"t{time.time_ns()}"


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body strictly: every event is exactly `event:` + `data:` + blank line."""
    assert b"\r" not in raw
    out = []
    assert raw.endswith(b"\n\n")
    for block in raw[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        assert len(lines) == 2, block
        assert lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block
        name = lines[0][7:].decode()
        data = orjson.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


# --------------------------------------------------------------------------- messages


def test_non_streaming_create(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=HELLO)
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.id.startswith("msg_011C") and len(msg.id) == 28
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].type == "text"
    assert msg.content[0].text == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES)
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    u = msg.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == 0
    assert u.service_tier == "standard" and u.inference_geo == "not_available"
    assert u.output_tokens_details is not None and u.output_tokens_details.thinking_tokens == 0
    # Headers: request id, organization, the full rate-limit set, JSON with a length.
    h = raw.headers
    assert h["request-id"].startswith("req_011C") and len(h["request-id"]) >= 28
    assert raw.request_id == h["request-id"]
    assert len(h["anthropic-organization-id"]) == 36
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert int(h[f"anthropic-ratelimit-{kind}-limit"]) > 0
        assert int(h[f"anthropic-ratelimit-{kind}-remaining"]) > 0
        assert h[f"anthropic-ratelimit-{kind}-reset"].endswith("Z")
    assert h["content-type"] == "application/json"
    assert int(h["content-length"]) == len(raw.http_response.content)
    # Key order as the real API: model first.
    assert list(json.loads(raw.http_response.content)) == [
        "model",
        "id",
        "type",
        "role",
        "content",
        "container",
        "stop_reason",
        "stop_sequence",
        "stop_details",
        "usage",
        "diagnostics",
        "context_management",
    ]


def test_stream_thinking_text_and_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=TOOLS,
        tool_choice={"type": "any"},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
        headers = stream.response.headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["transfer-encoding"] == "chunked"
    assert headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-remaining" in headers
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"thinking", "signature", "text", "input_json"} <= set(kinds)
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool = final.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and text.text == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES)
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.id.startswith("toolu_")
    assert tool.input == {"location": "San Francisco, CA", "unit": "c"}
    assert final.stop_reason == "tool_use"
    # Usage: final, cumulative values (not the message_start placeholder), input as counted.
    counted = client.messages.count_tokens(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
    )
    assert final.usage.input_tokens == counted.input_tokens
    assert final.usage.output_tokens > 1
    # The same request without streaming gives the same blocks and usage.
    same = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=TOOLS,
        tool_choice={"type": "any"},
    )
    assert [b.type for b in same.content] == ["thinking", "text", "tool_use"]
    assert same.usage.output_tokens == final.usage.output_tokens
    assert same.usage.input_tokens == final.usage.input_tokens
    assert same.content[2].type == "tool_use" and same.content[2].input == tool.input


def test_sse_wire_format_is_exact(http: httpx2.Client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 512,
        "stream": True,
        "messages": HELLO,
        "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "noop"},
        "thinking": {"type": "adaptive"},
    }
    with http.stream("POST", "/v1/messages?beta=true", json=body) as r:
        assert r.status_code == 200
        raw = r.read()
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw
    events = sse_events(raw)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names.count("ping") == 1 and names.count("message_delta") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert list(start)[:2] == ["model", "id"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1
    # Blocks: contiguous indexes, start ... deltas ... stop; the signature just before the stop.
    blocks: list[list[tuple[str, dict[str, Any]]]] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append([])
        if name.startswith("content_block"):
            assert data["index"] == len(blocks) - 1
            blocks[-1].append((name, data))
    assert [b[0][1]["content_block"]["type"] for b in blocks] == ["thinking", "text", "tool_use"]
    assert blocks[0][-2][1]["delta"]["type"] == "signature_delta"
    tool = blocks[2]
    assert tool[0][1]["content_block"]["caller"] == {"type": "direct"}
    assert tool[0][1]["content_block"]["name"] == "noop"
    assert tool[1][1]["delta"] == {"type": "input_json_delta", "partial_json": ""}
    partial = "".join(d["delta"]["partial_json"] for n, d in tool if n == "content_block_delta")
    assert json.loads(partial) == {}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]
    assert delta["usage"]["output_tokens"] > 1


def test_tool_only_when_forced(client: anthropic.Anthropic) -> None:
    auto = client.messages.create(
        model=MODEL, max_tokens=256, messages=HELLO, tools=TOOLS, tool_choice={"type": "auto"}
    )
    assert [b.type for b in auto.content] == ["text"] and auto.stop_reason == "end_turn"
    forced = client.messages.create(
        model=MODEL, max_tokens=256, messages=HELLO, extra_headers=fault("tool")
    )
    assert [b.type for b in forced.content] == ["text", "tool_use"]
    assert forced.content[1].type == "tool_use" and forced.content[1].name == "get_weather"
    assert forced.content[1].input == {"location": "San Francisco, CA"}
    assert forced.stop_reason == "tool_use"


def test_max_tokens_truncates(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL, max_tokens=5, messages=HELLO, tools=TOOLS, tool_choice={"type": "any"}
    )
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].type == "text" and len(msg.content[0].text) == 20
    with client.messages.stream(model=MODEL, max_tokens=5, messages=HELLO) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "max_tokens" and streamed.usage.output_tokens == 5
    assert [(b.type, getattr(b, "text", None)) for b in streamed.content] == [
        ("text", msg.content[0].text)
    ]


def test_events_and_text_bytes(http: httpx2.Client) -> None:
    body = {"model": MODEL, "max_tokens": 10_000, "stream": True, "messages": HELLO}
    r = http.post("/v1/messages", json=body, headers=fault("events=200 text-bytes=7"))
    deltas = [d for n, d in sse_events(r.content) if n == "content_block_delta"]
    assert len(deltas) == 200
    assert all(len(d["delta"]["text"]) == 7 for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == text_for(200, 7)
    # Beyond the cached size, deltas are generated lazily: same shape, thinking first.
    big = {**body, "max_tokens": 100_000, "thinking": {"type": "adaptive"}}
    r = http.post("/v1/messages", json=big, headers=fault("events=100 text-bytes=1000"))
    events = sse_events(r.content)
    text = [d for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert len(text) == 100 and "".join(d["delta"]["text"] for d in text) == text_for(100, 1000)


def test_repeated_body_gets_fresh_ids(http: httpx2.Client) -> None:
    """Identical bodies are answered from the replay cache: same content, new message ids."""
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": tag()}]}
    first, second = (http.post("/v1/messages", json=body).json() for _ in range(2))
    assert first["id"] != second["id"]
    assert {**first, "id": None} == {**second, "id": None}
    stream = {**body, "stream": True}
    a, b = (sse_events(http.post("/v1/messages", json=stream).content) for _ in range(2))
    assert a[0][1]["message"]["id"] != b[0][1]["message"]["id"]
    assert a[1:] == b[1:]
    assert a[0][1]["message"]["usage"]["input_tokens"] == first["usage"]["input_tokens"]
    assert a[-2][1]["usage"]["output_tokens"] == first["usage"]["output_tokens"]


def test_structured_output_is_json(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["title", "count"],
        "additionalProperties": False,
    }
    msg = client.messages.create(
        model=MODEL,
        max_tokens=256,
        messages=HELLO,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert msg.content[0].type == "text"
    assert json.loads(msg.content[0].text) == {"title": "example", "count": 1}
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        messages=HELLO,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    ) as stream:
        assert "".join(stream.text_stream) == msg.content[0].text


def test_malformed_http_is_400_and_closed(emu: Emu) -> None:
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in data and b"request-id: req_" in data


def test_validation_errors(http: httpx2.Client) -> None:
    def post(body: Any, content: bytes | None = None) -> tuple[int, dict[str, Any]]:
        r = http.post(
            "/v1/messages", content=content if content is not None else orjson.dumps(body)
        )
        data = r.json()
        assert data["request_id"] == r.headers["request-id"]
        assert list(data) == ["type", "error", "request_id"]
        assert list(data["error"]) == ["type", "message"]
        return r.status_code, data["error"]

    assert post(None, b"{not json") == (400, post(None, b"")[1])
    assert post({"model": MODEL, "messages": HELLO}) == (
        400,
        {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    )
    assert post({"model": MODEL, "max_tokens": 5})[1]["message"] == "messages: Field required"
    assert post({"max_tokens": 5, "messages": HELLO})[1]["message"] == "model: Field required"
    assert post({"model": MODEL, "max_tokens": "x", "messages": HELLO})[0] == 400
    assert post({"model": "gpt-4o", "max_tokens": 5, "messages": HELLO}) == (
        404,
        {"type": "not_found_error", "message": "model: gpt-4o"},
    )
    bad_role = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}
    assert post(bad_role)[0] == 400
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_count_tokens_matches_messages(client: anthropic.Anthropic) -> None:
    for kwargs in (
        {"messages": HELLO},
        {"messages": HELLO, "system": "Be brief."},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
        {"messages": HELLO, "tools": TOOLS},
    ):
        counted = client.messages.count_tokens(model=MODEL, **kwargs)
        msg = client.messages.create(model=MODEL, max_tokens=64, **kwargs)
        assert counted.input_tokens == msg.usage.input_tokens > 0
    # The fast path agrees with the full walk.
    params: dict[str, Any] = {"messages": HELLO * 3, "system": "x" * 33}
    assert fast_tokens(params) == measure(params, hashing=True).tokens


# --------------------------------------------------------------------------- models


def test_models_list_paginates_and_retrieves(client: anthropic.Anthropic) -> None:
    page = client.models.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    every = [m.id for m in client.models.list(limit=3)]  # auto-pagination across pages
    listed = [m.id for m in MODELS if m.lifecycle != "retired"]
    assert every == listed
    assert every[0] == "claude-fable-5-2"
    big = client.models.list(limit=1000)
    assert [m.id for m in big.data] == listed and not big.has_more
    back = client.models.list(limit=2, before_id=every[3])
    assert [m.id for m in back.data] == every[1:3] and back.has_more
    retired = client.models.list(extra_query={"lifecycle[]": "retired"})
    assert retired.data and all(m.lifecycle == "retired" for m in retired.data)
    model = client.models.retrieve("claude-opus-5-5")
    assert model.type == "model" and model.display_name == "Claude Opus 5.5"
    assert model.capabilities is not None and model.capabilities.thinking.types.adaptive.supported
    alias = client.models.retrieve("claude-sonnet-4-5")
    assert alias.id == "claude-sonnet-4-5-20250929" and alias.lifecycle == "deprecated"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope-1")
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(limit=1001)


# --------------------------------------------------------------------------- prompt caching


def test_cache_write_then_read(client: anthropic.Anthropic) -> None:
    system: list[Any] = [
        {
            "type": "text",
            "text": f"{time.time_ns()} You are a careful assistant. " * 200,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = client.messages.create(model=MODEL, max_tokens=64, system=system, messages=HELLO)
    c = first.usage
    assert c.cache_creation_input_tokens and c.cache_creation_input_tokens >= MIN_CACHEABLE_TOKENS
    assert c.cache_creation is not None
    assert c.cache_creation.ephemeral_1h_input_tokens == c.cache_creation_input_tokens
    assert c.cache_creation.ephemeral_5m_input_tokens == 0 and c.cache_read_input_tokens == 0
    with client.messages.stream(model=MODEL, max_tokens=64, system=system, messages=HELLO) as s:
        second = s.get_final_message()
    r = second.usage
    assert r.cache_read_input_tokens == c.cache_creation_input_tokens
    assert r.cache_creation_input_tokens == 0 and r.input_tokens == c.input_tokens
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=HELLO)
    assert counted.input_tokens == c.input_tokens + c.cache_creation_input_tokens
    # Another model has its own cache.
    other = client.messages.create(
        model="claude-opus-5", max_tokens=8, system=system, messages=HELLO
    )
    assert other.usage.cache_read_input_tokens == 0


def test_cache_follows_a_moving_breakpoint(client: anthropic.Anthropic) -> None:
    """Claude Code moves the breakpoint to the newest message each turn; the old prefix hits."""
    big = f"{time.time_ns()} " + "All work and no play. " * 300

    def turn(messages: list[Any]) -> anthropic.types.Usage:
        return client.messages.create(model=MODEL, max_tokens=8, messages=messages).usage

    cc = {"type": "ephemeral"}
    u1 = turn([{"role": "user", "content": [{"type": "text", "text": big, "cache_control": cc}]}])
    assert u1.cache_creation_input_tokens and u1.cache_creation is not None
    assert u1.cache_creation.ephemeral_5m_input_tokens == u1.cache_creation_input_tokens
    u2 = turn(
        [
            {"role": "user", "content": [{"type": "text", "text": big}]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": [{"type": "text", "text": "More", "cache_control": cc}]},
        ]
    )
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens
    assert u2.cache_creation_input_tokens and u2.cache_creation_input_tokens > 0
    # Below the minimum cacheable length nothing is cached.
    small = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cc}]}]
    assert turn(small).cache_creation_input_tokens == 0


# --------------------------------------------------------------------------- auth


def test_auth(emu: Emu, http: httpx2.Client) -> None:
    with anthropic.Anthropic(base_url=emu.url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            bad.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": exc.value.request_id,
    }
    body = {"model": MODEL, "max_tokens": 8, "messages": HELLO}
    r = httpx2.post(f"{emu.url}/v1/messages", json=body, headers=V)
    assert r.status_code == 401
    assert r.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    assert r.headers["request-id"].startswith("req_") and "anthropic-organization-id" in r.headers
    # Legacy x-api-key (SDK 0.x) and Bearer (SDK 2.x) both work.
    assert httpx2.post(f"{emu.url}/v1/messages", json=body, headers={"x-api-key": KEY, **V})
    bearer = {"authorization": f"Bearer {KEY}", **V}
    assert httpx2.post(f"{emu.url}/v1/messages", json=body, headers=bearer).status_code == 200
    r = httpx2.post(f"{emu.url}/v1/messages", json=body, headers={"x-api-key": KEY})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


async def test_any_key_when_unconfigured_and_async_sdk() -> None:
    emulator = await start("127.0.0.1", 0)
    try:
        async with anthropic.AsyncAnthropic(
            base_url=emulator.url, api_key="anything", max_retries=0
        ) as c:
            msg = await c.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
            assert msg.content[0].type == "text"
            async with c.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
                text = "".join([t async for t in s.text_stream])
            assert text == msg.content[0].text
        async with httpx2.AsyncClient(base_url=emulator.url) as http:
            body = {"model": MODEL, "max_tokens": 8, "messages": HELLO}
            r = await http.post("/v1/messages", json=body, headers={"x-api-key": "", **V})
            assert r.status_code == 401
    finally:
        await emulator.close()


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (500, anthropic.InternalServerError, "api_error"),
        (504, anthropic.InternalServerError, "timeout_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_status_faults(
    client: anthropic.Anthropic, status: int, exc_type: type[Exception], error_type: str
) -> None:
    with pytest.raises(exc_type) as exc:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault(f"status={status}")
        )
    err = exc.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == status and err.type == error_type
    assert isinstance(err.body, dict) and err.body["request_id"] == err.request_id
    if status == 529:
        assert err.body["error"]["message"] == "Overloaded"


def test_rate_limit_retry_after_then_success(emu: Emu, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault("status=429 retry-after=1"),
        )
    assert exc.value.response.headers["retry-after"] == "1"
    assert "anthropic-ratelimit-requests-limit" in exc.value.response.headers
    key = tag()
    with anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=3) as c:
        t0 = time.monotonic()
        msg = c.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault(f"status=429 retry-after=1 times=2 key={key}", **{"x-tag": key}),
        )
        elapsed = time.monotonic() - t0
    assert msg.content
    assert elapsed >= 1.9  # two honoured retry-after waits of 1 s
    tries = emu.tagged(key)
    assert [r["status"] for r in tries] == [429, 429, 200]
    retry_counts = [
        dict((k.lower(), v) for k, v in r["headers"])["x-stainless-retry-count"] for r in tries
    ]
    assert retry_counts == ["0", "1", "2"]


def test_retry_after_ms_and_times_per_key(emu: Emu) -> None:
    key = tag()
    with anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=2) as c:
        t0 = time.monotonic()
        c.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault(
                f"status=529 retry-after-ms=200 times=1 key={key}", **{"x-tag": key}
            ),
        )
        assert 0.2 <= time.monotonic() - t0 < 5
        # The same spec with the same key is used up; another key fails afresh.
        c.with_options(max_retries=0).messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault(f"status=529 retry-after-ms=200 times=1 key={key}"),
        )
        with pytest.raises(anthropic.OverloadedError):
            c.with_options(max_retries=0).messages.create(
                model=MODEL,
                max_tokens=8,
                messages=HELLO,
                extra_headers=fault(f"status=529 retry-after-ms=200 times=1 key={key}-other"),
            )
    assert [r["status"] for r in emu.tagged(key)] == [529, 200]


def test_should_retry_false_suppresses_retries(emu: Emu) -> None:
    key = tag()
    with anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=2) as c:
        with pytest.raises(anthropic.InternalServerError) as exc:
            c.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=HELLO,
                extra_headers=fault("status=500 should-retry=false", **{"x-tag": key}),
            )
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert len(emu.tagged(key)) == 1


def test_midstream_error_is_api_status_error_200(emu: Emu, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=HELLO,
            extra_headers=fault("midstream=error after=3"),
        ) as stream:
            rid = stream.response.headers["request-id"]
            stream.get_final_message()
    assert exc.value.status_code == 200 and exc.value.type == "overloaded_error"
    assert isinstance(exc.value.body, dict) and exc.value.body["request_id"] == rid
    assert emu.wait(rid, "completed")[0] == 200


def test_midstream_error_on_the_wire(http: httpx2.Client) -> None:
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": HELLO}
    r = http.post("/v1/messages", json=body, headers=fault("midstream=error after=4"))
    events = sse_events(r.content)
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": r.headers["request-id"],
    }


def test_midstream_eof_gives_a_partial_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=HELLO, extra_headers=fault("midstream=eof after=5")
    ) as stream:
        partial = stream.get_final_message()
    assert partial.stop_reason is None
    assert partial.usage.output_tokens == 1  # the message_start placeholder
    assert partial.content[0].type == "text"
    assert partial.content[0].text == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES)[:24]


RESET = (httpx2.RemoteProtocolError, httpx2.ReadError)  # what a reset connection raises


def test_midstream_reset_is_a_transport_error(emu: Emu, client: anthropic.Anthropic) -> None:
    """A reset after the headers ends the stream with an error, never with a (truncated)
    message. SDKs up to 2.16 let httpx2's error through; from 2.17 on, the SDK raises
    APIConnectionError from it, as for a reset before the headers."""
    with pytest.raises((*RESET, anthropic.APIConnectionError)) as exc:
        with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=HELLO,
            extra_headers=fault("midstream=reset after=4"),
        ) as stream:
            rid = stream.response.headers["request-id"]
            stream.get_final_message()
    error: BaseException | None = exc.value
    if isinstance(error, anthropic.APIConnectionError):
        assert not isinstance(error, anthropic.APITimeoutError), repr(error)
        error = error.__cause__
    assert isinstance(error, RESET), f"not a reset connection: {error!r}"
    assert emu.wait(rid, "aborted")[1]["state"] == "aborted"


def test_non_streaming_midstream_faults(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("midstream=error")
        )
    for mode in ("reset", "eof"):
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(
                model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault(f"midstream={mode}")
            )


def test_close_before_headers(emu: Emu, client: anthropic.Anthropic) -> None:
    key = tag()
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault("close-before-headers", **{"x-tag": key}),
        )
    (seen,) = emu.tagged(key)
    assert seen["state"] == "aborted" and seen["status"] is None
    # Retried by the SDK as a connection error: the second attempt succeeds.
    with anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=1) as c:
        msg = c.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
            extra_headers=fault(f"close-before-headers times=1 key={key}"),
        )
    assert msg.content


def test_marker_in_message_text(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "Hi <<emulator: status=529>> there"}],
        )
    blocks: list[Any] = [{"type": "text", "text": "<<emulator: tool events=2 text-bytes=3>>"}]
    msg = client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": blocks}]
    )
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[0].type == "text" and msg.content[0].text == text_for(2, 3)
    # A marker inside a tool result (e.g. a file Claude Code read) does not count.
    tool_result: list[Any] = [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "<<emulator: status=500>>"}
    ]
    history: list[Any] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "read", "input": {}}],
        },
        {"role": "user", "content": tool_result},
    ]
    assert client.messages.create(model=MODEL, max_tokens=8, messages=history).content


def test_bad_fault_spec_is_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("status=abc")
        )
    assert "status=abc" in str(exc.value)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("explode")
        )


def test_delays(http: httpx2.Client) -> None:
    t0 = time.monotonic()
    r = http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "messages": HELLO},
        headers=fault("first-byte-ms=300"),
    )
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.3
    arrivals = []
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": HELLO}
    with http.stream("POST", "/v1/messages", json=body, headers=fault("event-ms=50 events=3")) as s:
        for line in s.iter_lines():
            if line == "event: content_block_delta":
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    assert min(b - a for a, b in itertools.pairwise(arrivals)) > 0.04


def test_client_disconnect_is_recorded(emu: Emu, http: httpx2.Client) -> None:
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": HELLO}
    with http.stream(
        "POST", "/v1/messages", json=body, headers=fault("midstream=stall after=2")
    ) as r:
        rid = r.headers["request-id"]
        it = r.iter_raw()  # keep it: a dropped iterator closes the response
        assert b"message_start" in next(it)
        assert emu.wait(rid, "completed", timeout=0.2)[0] == 408  # still open: stalled
        closed_at = time.monotonic()
    status, rec = emu.wait(rid, "client_closed", timeout=2)
    assert status == 200 and rec["state"] == "client_closed"
    assert time.monotonic() - closed_at < 1.0
    assert rec["path"] == "/v1/messages" and rec["status"] == 200


def test_slow_reader_is_backpressured(emu: Emu) -> None:
    """A reader that stops reading holds the stream open; nothing is buffered without bound."""
    body = orjson.dumps({"model": MODEL, "max_tokens": 10**9, "stream": True, "messages": HELLO})
    host, port = emu.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %b\r\nanthropic-version: 1\r\n"
        b"x-emulator-fault: events=100000 text-bytes=500\r\ncontent-length: %d\r\n\r\n%b"
        % (KEY.encode(), len(body), body)
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    rid = head.split(b"request-id: ")[1].split(b"\r\n")[0].decode()
    # 50 MB would be written at once without backpressure; paused, it cannot complete.
    assert emu.wait(rid, "completed", timeout=0.3)[0] == 408
    sock.close()
    assert emu.wait(rid, "client_closed")[1]["state"] == "client_closed"


# --------------------------------------------------------------------------- batches


def test_batches(emu: Emu, client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(
        requests=[
            {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 64, "messages": HELLO}},
            {"custom_id": "b", "params": {"model": "gpt-x", "max_tokens": 64, "messages": HELLO}},
        ]
    )
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 1 and batch.request_counts.errored == 1
    assert batch.results_url == f"{emu.url}/v1/messages/batches/{batch.id}/results"
    assert client.messages.batches.retrieve(batch.id).id == batch.id
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    ok, bad = results["a"], results["b"]
    assert ok.type == "succeeded" and ok.message.usage.service_tier == "batch"
    assert ok.message.content[0].type == "text"
    assert bad.type == "errored" and bad.error.error.type == "not_found_error"
    listed = [b.id for b in client.messages.batches.list(limit=100)]
    assert listed[0] == batch.id
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


# --------------------------------------------------------------------------- echo, debug, HTTP


def test_echo(http: httpx2.Client) -> None:
    r = http.put(
        "/v1/emulator/echo/a%2Fb/c?x=1&y=a%20b",
        content=b"\x00\x01body",
        headers={"X-Mixed-Case": "Value"},
    )
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == "PUT" and echo["path"] == "/v1/emulator/echo/a%2Fb/c"
    assert echo["query"] == "x=1&y=a%20b"
    assert ["X-Mixed-Case", "Value"] in echo["headers"]
    assert echo["body_b64"] == "AAFib2R5"
    r = http.post("/v1/emulator/echo?status=418", content=b"{}")
    assert r.status_code == 418 and r.headers["x-echo"] == "yes" and r.json()["method"] == "POST"
    with http.stream("GET", "/v1/emulator/echo?chunks=50&chunk_size=1000") as s:
        assert s.headers["content-type"] == "application/octet-stream"
        assert s.headers["transfer-encoding"] == "chunked"
        assert s.read() == b"x" * 50_000


def test_debug_endpoints(emu: Emu, http: httpx2.Client) -> None:
    key = tag()
    r = http.post(
        "/v1/messages?beta=true",
        json={"model": MODEL, "max_tokens": 8, "messages": HELLO},
        headers={"x-tag": key},
    )
    (rec,) = emu.tagged(key)
    assert rec["request_id"] == r.headers["request-id"]
    assert rec["method"] == "POST" and rec["path"] == "/v1/messages" and rec["query"] == "beta=true"
    assert rec["body_len"] == len(r.request.content) and rec["state"] == "completed"
    assert emu.wait(rec["request_id"], "completed") == (200, rec)
    status, body = emu.wait("req_missing", "completed", timeout=0.05)
    assert status == 408 and body["error"]["type"] == "timeout_error"
    assert emu.wait(rec["request_id"], "client_closed", timeout=1)[0] == 409  # already final
    req = urllib.request.Request(f"{emu.url}/_emulator/requests", method="DELETE")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
    assert emu.requests() == []


def test_keep_alive_pipelining_and_head(emu: Emu) -> None:
    host, port = emu.url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO})
    one = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %b\r\nanthropic-version: 1\r\n"
        b"content-length: %d\r\n\r\n%b" % (KEY.encode(), len(body), body)
    )
    head = b"HEAD /api/hello HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            one + head + one + b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200", b"401"]
    last = orjson.loads(data.rsplit(b"\r\n\r\n", 1)[1])
    assert last["error"]["message"] == "x-api-key header is required"


def test_cli_emulator_prints_ready_line() -> None:
    """`python -m claude_proxy emulator` (what conftest's fixture runs) starts and stops."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "claude_proxy", "emulator", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("claude-proxy emulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        models = httpx2.get(f"{url}/v1/models", headers={"x-api-key": KEY, **V})
        assert models.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# --------------------------------------------------------------------------- chat completions


@pytest.fixture
def oai(emu: Emu) -> Iterator[openai.OpenAI]:
    """OpenAI's SDK, pointed at the emulator as at the API (`base_url=.../v1`)."""
    with openai.OpenAI(base_url=f"{emu.url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


CHAT: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "developer", "content": "Answer in English."},
]


def test_chat_completion_costs_what_messages_charge(
    emu: Emu, oai: openai.OpenAI, client: anthropic.Anthropic
) -> None:
    """Same content, tokens and output as `/v1/messages` for the prompt it stands for (system
    and developer messages hoisted and joined with a newline); no anthropic-version needed."""
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, user="u-1")
    done = raw.parse()
    msg = client.messages.create(
        model=MODEL, max_tokens=256, system="Be brief.\nAnswer in English.", messages=HELLO
    )
    assert done.object == "chat.completion" and done.model == MODEL
    assert done.id.startswith("msg_011C") and len(done.id) == 28
    assert len(done.choices) == 1 and done.choices[0].index == 0
    choice = done.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES)
    assert choice.message.tool_calls is None
    u = done.usage
    assert u is not None and u.prompt_tokens_details is None  # documented as always empty
    assert (u.prompt_tokens, u.completion_tokens) == (
        msg.usage.input_tokens,
        msg.usage.output_tokens,
    )
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert raw.headers["request-id"].startswith("req_011C")
    assert raw.headers["content-type"] == "application/json"
    sent = [r for r in emu.requests() if r["request_id"] == raw.headers["request-id"]]
    assert sent and not any(n == "anthropic-version" for n, _ in sent[0]["headers"])


def test_chat_stream_with_and_without_usage(oai: openai.OpenAI, http: httpx2.Client) -> None:
    whole = oai.chat.completions.create(model=MODEL, messages=CHAT)
    assert whole.usage is not None
    for include_usage in (False, True):
        options: Any = {"include_usage": True} if include_usage else openai.omit
        chunks = list(
            oai.chat.completions.create(
                model=MODEL, messages=CHAT, stream=True, stream_options=options
            )
        )
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("msg_")
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        with_choices = [c for c in chunks if c.choices]
        assert [c.choices[0].finish_reason for c in with_choices][-2:] == [None, "stop"]
        if include_usage:
            last = chunks[-1]
            assert last.choices == [] and last.usage == whole.usage
            assert all(c.usage is None for c in chunks[:-1])
        else:
            assert all(c.usage is None for c in chunks)
    # On the wire: `data:` events, one blank line each, `data: [DONE]` last; with usage
    # requested every other chunk says "usage":null.
    body = {
        "model": MODEL,
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.content.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
    assert all(b'"usage":null' in e for e in events[:-3])
    assert orjson.loads(events[-3][6:])["choices"] == []


def test_chat_tools_and_length(oai: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]
    done = oai.chat.completions.create(
        model=MODEL, messages=CHAT, tools=tools, tool_choice="required"
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "c"}
    streamed = list(
        oai.chat.completions.create(
            model=MODEL, messages=CHAT, tools=tools, tool_choice="required", stream=True
        )
    )
    args = "".join(
        t.function.arguments or ""
        for c in streamed
        for t in (c.choices[0].delta.tool_calls or [] if c.choices else [])
        if t.function is not None
    )
    assert json.loads(args) == json.loads(call.function.arguments)
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # The tool's result goes back as a tool message: the conversation goes on.
    follow: Any = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    again = oai.chat.completions.create(model=MODEL, messages=follow, tools=tools)
    assert again.choices[0].finish_reason == "stop"
    assert again.usage is not None and done.usage is not None
    assert again.usage.prompt_tokens > done.usage.prompt_tokens
    short = oai.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3


def test_chat_errors_are_openai_shaped(emu: Emu, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-4o", messages=CHAT)
    # The same error as /v1/messages gives (404 not_found_error "model: gpt-4o"), in the
    # shape this endpoint uses.
    assert missing.value.body == {
        "code": "not_found_error",
        "message": "model: gpt-4o",
        "type": "not_found_error",
        "param": None,
    }
    assert missing.value.type == "not_found_error"
    with openai.OpenAI(base_url=f"{emu.url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as unauth:
            bad.chat.completions.create(model=MODEL, messages=CHAT)
    assert unauth.value.type == "authentication_error"
    assert unauth.value.message.endswith("invalid x-api-key")
    for body, words in (
        ({"model": MODEL}, "messages: Field required"),
        ({"model": MODEL, "messages": CHAT, "n": 2}, "n: Must be exactly 1"),
        ({"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
    ):
        with pytest.raises(openai.BadRequestError) as bad_request:
            oai.post("/chat/completions", body=body, cast_to=object)
        assert words in bad_request.value.message
    r = httpx2.get(f"{emu.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_chat_faults(emu: Emu, oai: openai.OpenAI) -> None:
    """The fault specs work here too: statuses, mid-stream errors and cuts, markers."""
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(
            model=MODEL, messages=CHAT, extra_headers=fault("status=429 retry-after=7")
        )
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.type == "rate_limit_error"
    with pytest.raises(openai.InternalServerError) as overloaded:
        oai.chat.completions.create(model=MODEL, messages=CHAT, extra_headers=fault("status=529"))
    assert overloaded.value.status_code == 529 and overloaded.value.type == "overloaded_error"
    stream = oai.chat.completions.create(
        model=MODEL, messages=CHAT, stream=True, extra_headers=fault("midstream=error after=3")
    )
    got = []
    with pytest.raises(openai.APIError) as midstream:
        got.extend(stream)
    assert len(got) == 3 and "Overloaded" in midstream.value.message
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, stream=True, extra_headers=fault("midstream=eof after=4")
    )
    cut = list(raw.parse())
    assert len(cut) == 4 and all(c.choices[0].finish_reason is None for c in cut)
    assert emu.wait(raw.headers["request-id"], "completed")[0] == 200
    marked: Any = [{"role": "user", "content": "Hi <<emulator: status=500>>"}]
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model=MODEL, messages=marked)
    many = oai.chat.completions.create(
        model=MODEL, messages=CHAT, extra_headers=fault("events=3 text-bytes=5")
    )
    assert many.choices[0].message.content == text_for(3, 5)
