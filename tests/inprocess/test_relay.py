"""The relay, in process: answers reach the client exactly as the emulator sent them, a
stream part by part while the upstream is still sending, usage lands on the request's
row, and what the proxy refuses itself is refused in the API's shape, before the upstream.
(tests/e2e/test_relay_*.py do the same through real processes and sockets.)"""

from __future__ import annotations

import uuid

import orjson
import pytest

from tests.inprocess.harness import (
    CLIENT_KEY,
    HELLO,
    MAX_BODY,
    MODEL,
    PACKAGE_LOOP,
    TAG,
    UPSTREAM_KEY,
    VERSION,
    Stack,
    proxy_error,
)

pytestmark = PACKAGE_LOOP

AUTH = {"x-api-key": CLIENT_KEY, **VERSION, "content-type": "application/json"}


def message_body(stream: bool, **extra: object) -> bytes:
    return orjson.dumps(
        {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": stream, **extra}
    )


def sse_events(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in raw.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"event" in fields:
            out.append((fields[b"event"].decode(), orjson.loads(fields[b"data"])))
    return out


async def test_a_message_is_relayed_byte_for_byte_and_its_usage_recorded(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    async with stack.sdk() as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=64,
            messages=HELLO,
            metadata={"user_id": "user-7"},
            extra_headers={TAG: tag},
        )
    message = await raw.parse()
    upstream = stack.upstream_response(raw.headers["request-id"])
    assert upstream.complete
    assert raw.http_response.content == upstream.body  # the emulator's very bytes
    assert raw.headers["content-type"] == upstream.headers["content-type"]
    limit = "anthropic-ratelimit-requests-limit"  # the API's headers come along
    assert raw.headers[limit] == upstream.headers[limit]
    # The upstream got the real key, never the client's.
    (seen,) = await stack.upstream(tag)
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert sent["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent
    assert CLIENT_KEY not in orjson.dumps(seen).decode()

    row = await stack.row(raw.headers["x-claude-proxy-request-id"])
    assert (row["status_code"], row["stream"], row["error_type"]) == (200, False, None)
    assert (row["input_tokens"], row["output_tokens"]) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert row["model"] == message.model and row["message_id"] == message.id
    assert row["stop_reason"] == message.stop_reason and row["metadata_user_id"] == "user-7"
    assert row["upstream_request_id"] == raw.headers["request-id"]
    assert row["key_id"].startswith("static-") and row["cost_usd"] > 0
    assert row["upstream_attempts"] == 1 and row["client_ip"] == "127.0.0.1"


async def test_a_stream_is_relayed_part_by_part_byte_for_byte(stack: Stack) -> None:
    # ~40 KB of events: more than the relay reads from the upstream at once.
    headers = {**AUTH, "x-emulator-fault": "events=100 text-bytes=300"}
    body = message_body(True, max_tokens=10_000)
    ex = await stack.exchange("POST", b"/v1/messages", headers=headers, body=body).run()
    assert ex.status == 200 and (ex.header("content-type") or "").startswith("text/event-stream")
    upstream = stack.upstream_response(ex.header("request-id"))
    assert upstream.complete
    assert ex.body == upstream.body  # every byte, in order, nothing added or re-encoded
    assert len(ex.chunks) > 1, "the stream was gathered, not relayed as it came"
    names = [name for name, _ in sse_events(ex.body)]
    assert names[0] == "message_start" and names[-1] == "message_stop"

    # The SDK's view of a stream, and its usage on the row.
    async with stack.sdk() as client:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
            final = await s.get_final_message()
            rid = s.response.headers["x-claude-proxy-request-id"]
    row = await stack.row(rid)
    assert row["stream"] is True and row["status_code"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert row["ttft_ms"] is not None and row["stop_reason"] == final.stop_reason


async def test_a_stream_reaches_the_client_before_the_upstream_ends_and_a_leaving_client_closes_it(
    stack: Stack,
) -> None:
    """The emulator sends three events and then nothing until its client leaves: the events
    must reach our client meanwhile (the relay holds nothing back), and our client leaving
    must end the upstream request."""
    headers = {**AUTH, "x-emulator-fault": "midstream=stall after=3"}
    ex = stack.exchange("POST", b"/v1/messages", headers=headers, body=message_body(True))
    ex.start()
    await ex.until(lambda e: b"event: content_block_start" in e.body, "the first events")
    upstream_id = ex.header("request-id")
    assert upstream_id and not ex.complete
    ex.disconnect()
    await stack.upstream_reached(upstream_id, "client_closed")
    await ex.finished()
    row = await stack.row(ex.header("x-claude-proxy-request-id") or "")
    assert row["client_disconnected"] is True and row["stream"] is True
    assert row["input_tokens"], "the usage seen before the client left is still recorded"


@pytest.mark.parametrize(
    ("method", "target", "status", "refusal"),
    [
        ("POST", b"/v1//messages", 400, "bad_target"),
        ("POST", b"/v1/./messages", 400, "bad_target"),
        ("POST", b"/v1/messages;x", 400, "bad_target"),
        ("GET", b"/v1/%2e%2e/admin/api/keys", 400, "bad_target"),
        ("PUT", b"/v1/messages", 405, "method_not_allowed"),
        ("GET", b"/v1/messages/count_tokens", 405, "method_not_allowed"),
    ],
)
async def test_a_bad_target_or_method_is_refused_in_the_api_shape_before_the_upstream(
    stack: Stack, method: str, target: bytes, status: int, refusal: str
) -> None:
    tag = uuid.uuid4().hex
    headers = {**AUTH, TAG: tag}
    ex = await stack.exchange(method, target, headers=headers, body=message_body(False)).run()
    assert ex.status == status
    doc = proxy_error(ex.body, ex.headers)
    assert doc["error"]["type"] == "invalid_request_error"
    if status == 405:
        assert ex.header("allow") == "POST"
    assert await stack.upstream(tag) == []
    row = await stack.row(doc["request_id"])
    assert (row["status_code"], row["refusal"]) == (status, refusal)


async def test_an_unknown_path_outside_v1_is_a_404_in_the_api_shape(stack: Stack) -> None:
    r = await stack.http().get("/v2/messages")
    assert r.status_code == 404
    assert proxy_error(r.content, r.headers)["error"]["type"] == "not_found_error"


async def test_an_oversized_body_gets_413_without_reaching_the_upstream(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    big = b'{"model":"' + b"x" * MAX_BODY + b'"}'
    r = await stack.http().post("/v1/messages", content=big, headers={**AUTH, TAG: tag})
    assert r.status_code == 413
    doc = proxy_error(r.content, r.headers)
    assert doc["error"]["type"] == "request_too_large"
    assert str(MAX_BODY) in doc["error"]["message"]
    # Announced too large: refused at once, without reading a byte of it.
    announced = stack.exchange(
        "POST",
        b"/v1/messages",
        headers={**AUTH, TAG: tag, "content-length": str(MAX_BODY + 1)},
        body=None,
    )
    await announced.run()
    assert announced.status == 413 and announced.receive_calls == 0
    assert proxy_error(announced.body, announced.headers)["error"]["type"] == "request_too_large"
    assert await stack.upstream(tag) == []
    row = await stack.row(doc["request_id"])
    assert (row["status_code"], row["error_type"]) == (413, "request_too_large")


async def test_a_body_that_is_not_json_is_a_400(stack: Stack) -> None:
    r = await stack.http().post("/v1/messages", content=b"{not json", headers=AUTH)
    assert r.status_code == 400
    doc = proxy_error(r.content, r.headers)
    assert doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"] == "The request body is not valid JSON."


async def test_an_upstream_error_passes_through_unchanged(stack: Stack) -> None:
    """An error the API made (here a 429 with its retry-after) reaches the client as it came,
    under the upstream's request id: the proxy does not dress it as its own."""
    headers = {**AUTH, "x-emulator-fault": "status=429 retry-after=7"}
    ex = await stack.exchange(
        "POST", b"/v1/messages", headers=headers, body=message_body(False)
    ).run()
    assert ex.status == 429 and ex.header("retry-after") == "7"
    assert ex.body == stack.upstream_response(ex.header("request-id")).body
    doc = ex.json()
    assert doc["error"]["type"] == "rate_limit_error"
    assert doc["request_id"] == ex.header("request-id") != ex.header("x-claude-proxy-request-id")
