"""Raw HTTP through the proxy: generic pass-through, bad input, health, unknown paths."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator

import httpx2
import orjson
import pytest

from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Proxy

pytestmark = pytest.mark.e2e

V = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def http(proxy: Proxy) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=proxy.url, headers={"x-api-key": PROXY_KEY, **V}, timeout=30) as c:
        yield c


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_generic_passthrough_keeps_method_path_query_body(http: httpx2.Client, method: str) -> None:
    body = os.urandom(3000) if method in ("POST", "PUT", "PATCH") else b""
    r = http.request(
        method,
        "/v1/emulator/echo/some/new%2Fendpoint?beta=true&q=a%20b&list[]=1&list[]=2",
        content=body or None,
        headers={"x-extra": "1", "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == method
    assert echo["path"] == "/v1/emulator/echo/some/new%2Fendpoint"
    assert echo["query"] == "beta=true&q=a%20b&list[]=1&list[]=2"
    assert base64.b64decode(echo["body_b64"]) == body
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["x-extra"] == "1" and sent["x-api-key"] == UPSTREAM_KEY
    assert PROXY_KEY not in r.text


def test_passthrough_keeps_status_and_headers(http: httpx2.Client) -> None:
    r = http.post("/v1/emulator/echo?status=418", content=b"{}")
    assert r.status_code == 418
    assert r.headers["x-echo"] == "yes"
    assert r.headers["request-id"].startswith("req_")


def test_streamed_bodies_pass_through_byte_for_byte(http: httpx2.Client) -> None:
    received = bytearray()
    chunks = 0
    with http.stream("GET", "/v1/emulator/echo?chunks=200&chunk_size=5000") as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            received += chunk
            chunks += 1
    assert bytes(received) == b"x" * 1_000_000
    assert chunks > 1


def test_sse_bytes_are_not_re_encoded(http: httpx2.Client) -> None:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = http.post("/v1/messages", json=body).content
    # The API's own quirks survive: `{"type": "ping"}` keeps its space, LF framing, event order.
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw
    names = [line[7:] for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"message_start" and names[-2:] == [b"message_delta", b"message_stop"]
    assert b"\r" not in raw


def test_a_streams_head_is_not_held_back_for_its_body(proxy: Proxy) -> None:
    # The proxy sends a response's head together with its body when both are ready in the
    # same turn of its event loop; an upstream that sends headers and then makes the body
    # wait (3 s here) must still have its headers reach the client at once.
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=2.0) as sock:
        sock.sendall(
            b"GET /v1/emulator/echo?chunks=1&chunk_size=10&first_ms=3000 HTTP/1.1\r\n"
            b"host: proxy\r\nx-api-key: " + PROXY_KEY.encode() + b"\r\n"
            b"anthropic-version: 2023-06-01\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:  # socket timeout 2 s: fails if held for the body
            data = sock.recv(65536)
            assert data, "connection closed before the response head"
            got += data
    assert got.startswith(b"HTTP/1.1 200 ")
    assert b"xxxxxxxxxx" not in got  # the body was not there yet


def test_batches_and_results_pass_through(http: httpx2.Client) -> None:
    req = {
        "custom_id": "one",
        "params": {
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }
    batch = http.post("/v1/messages/batches", json={"requests": [req]}).json()
    assert batch["type"] == "message_batch"
    got = http.get(f"/v1/messages/batches/{batch['id']}").json()
    assert got["id"] == batch["id"]
    results = http.get(f"/v1/messages/batches/{batch['id']}/results")
    lines = [orjson.loads(x) for x in results.content.splitlines() if x.strip()]
    assert lines[0]["custom_id"] == "one"


def test_body_over_32mb_is_413_with_request_id(proxy: Proxy) -> None:
    big = b"x" * (32 * 1024 * 1024 + 1)
    r = httpx2.post(
        f"{proxy.url}/v1/messages", content=big, headers={"x-api-key": PROXY_KEY, **V}, timeout=60
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"
    assert r.headers["request-id"] == r.json()["request_id"]


def test_chunked_body_over_limit_without_length_is_413(proxy: Proxy) -> None:
    def gen() -> Iterator[bytes]:
        for _ in range(33):
            yield b"y" * (1024 * 1024)

    r = httpx2.post(
        f"{proxy.url}/v1/messages", content=gen(), headers={"x-api-key": PROXY_KEY, **V}, timeout=60
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b""])
def test_non_json_messages_body_is_400(http: httpx2.Client, body: bytes) -> None:
    r = http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert r.headers["request-id"] == data["request_id"]


def test_unknown_path_outside_v1_is_404(proxy: Proxy) -> None:
    for method, path in [("GET", "/nope"), ("POST", "/v2/messages"), ("HEAD", "/api/hello")]:
        r = httpx2.request(method, f"{proxy.url}{path}")
        assert r.status_code == 404
        assert r.headers["request-id"]
        if method != "HEAD":
            assert r.json()["error"]["type"] == "not_found_error"


def test_health_answers_without_upstream(proxy: Proxy) -> None:
    r = httpx2.get(f"{proxy.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_bearer_credential_is_accepted_and_stripped(proxy: Proxy) -> None:
    r = httpx2.post(
        f"{proxy.url}/v1/emulator/echo",
        headers={"authorization": f"Bearer {PROXY_KEY}", **V},
        content=b"{}",
    )
    assert r.status_code == 200
    sent = {k.lower(): v for k, v in r.json()["headers"]}
    assert "authorization" not in sent and sent["x-api-key"] == UPSTREAM_KEY


def test_upstream_unreachable_is_anthropic_shaped_502(tmp_path: object) -> None:
    from tests.conftest import start_proxy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    px = start_proxy(f"http://127.0.0.1:{dead_port}")
    try:
        r = httpx2.post(
            f"{px.url}/v1/messages", json={"model": "m"}, headers={"x-api-key": PROXY_KEY, **V}
        )
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "api_error"
        assert r.headers["request-id"].startswith("cpr_")
    finally:
        px.process.stop()
