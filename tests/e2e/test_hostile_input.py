"""Requests an attacker would send: other spellings of governed endpoints, paths that climb
out of /v1, bodies that never finish. Each is refused in the API's shape before it costs
the upstream or the process anything, and each leaves its row."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest

from tests.conftest import Emulator, Proxy
from tests.e2e.test_access_control import WAIT, Cluster, cluster
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

OPUS = "claude-opus-4-1"
BODY = orjson.dumps(
    {"model": OPUS, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)


def connect(px: Proxy) -> socket.socket:
    u = urlsplit(px.url)
    return socket.create_connection((u.hostname, u.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """One response to a request sent on `sock`: status, headers, JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return status, headers, orjson.loads(rest[:length]) if length else {}


def send_raw(
    px: Proxy, method: str, target: str, key: str, body: bytes = b""
) -> tuple[int, dict[str, str], dict[str, object]]:
    with connect(px) as sock:
        head = (
            f"{method} {target} HTTP/1.1\r\nhost: proxy\r\nx-api-key: {key}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        return read_response(sock)


def status_of(px: Proxy, target: str) -> int:
    """The status of a GET whose body need not be JSON (/metrics is Prometheus text)."""
    with connect(px) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n".encode())
        return int(sock.recv(64).split()[1])


def upstream_paths(emulator: Emulator) -> list[str]:
    return [str(r["path"]) for r in emulator.requests()]


@pytest.fixture
def governed(emulator: Emulator) -> Iterator[tuple[Cluster, Proxy, str, str]]:
    with cluster(emulator) as c:
        px = c.start()
        kid, key = c.key("haiku-only", models=("claude-haiku-*",))
        yield c, px, kid, key


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/v1/messages/", 400),
        ("POST", "/v1//messages", 400),
        ("POST", "/v1/./messages", 400),
        ("POST", "/v1/messages;x", 400),
        ("POST", "/v1/%2e/messages", 400),
        ("GET", "/v1/../admin/api/keys", 400),
        ("GET", "/v1/%2e%2e/admin/api/keys", 400),
        ("GET", "/v1/%2E%2E/admin/api/keys", 400),
        ("GET", "/v1/%252e%252e/admin/api/keys", 400),
        ("PUT", "/v1/messages", 405),
        ("GET", "/v1/messages", 405),
        ("PATCH", "/v1/messages/count_tokens", 405),
    ],
)
def test_no_other_spelling_of_a_governed_endpoint_is_forwarded(
    emulator: Emulator,
    governed: tuple[Cluster, Proxy, str, str],
    method: str,
    target: str,
    status: int,
) -> None:
    c, px, kid, key = governed
    before = len(upstream_paths(emulator))
    got, headers, body = send_raw(px, method, target, key, BODY)
    assert got == status, body
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    rid = headers["x-claude-proxy-request-id"]
    assert body["request_id"] == rid
    if status == 405:
        assert headers["allow"] == "POST"
    row = c.row(rid)
    assert row["status_code"] == status and row["error_type"] == "invalid_request_error"
    assert row["refusal"] == ("bad_target" if status == 400 else "method_not_allowed")
    assert row["key_id"] in (None, kid)
    assert len(upstream_paths(emulator)) == before  # nothing reached the upstream


def test_an_escaped_spelling_is_governed_and_forwarded_canonically(
    emulator: Emulator, governed: tuple[Cluster, Proxy, str, str]
) -> None:
    c, px, _, key = governed
    # The upstream reads /v1/%6Dessages as /v1/messages: so does the allowlist.
    got, headers, body = send_raw(px, "POST", "/v1/%6Dessages", key, BODY)
    assert got == 403, body
    assert c.row(headers["x-claude-proxy-request-id"])["refusal"] == "model_not_allowed"
    allowed = BODY.replace(OPUS.encode(), b"claude-haiku-4-5")
    got, headers, body = send_raw(px, "POST", "/v1/%6Dessages", key, allowed)
    assert got == 200, body
    assert upstream_paths(emulator)[-1] == "/v1/messages"  # the canonical spelling went
    row = c.row(headers["x-claude-proxy-request-id"])
    assert row["endpoint"] == "/v1/messages" and row["output_tokens"]


@pytest.mark.parametrize("target", ["/%6detrics", "/%72eady", "/%68ealth", "/metrics/"])
def test_operational_endpoints_answer_only_on_their_exact_path(
    governed: tuple[Cluster, Proxy, str, str], target: str
) -> None:
    _, px, _, key = governed
    got, _, body = send_raw(px, "GET", target, key)
    assert got == 404, body  # an Anthropic-shaped JSON error
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == "not_found_error"
    for exact in ("/metrics", "/ready", "/health"):
        assert status_of(px, exact) == 200


def test_a_key_over_its_limit_is_refused_before_its_body_is_read(
    governed: tuple[Cluster, Proxy, str, str],
) -> None:
    c, px, _, _ = governed
    _, key = c.key("one-a-minute", rpm=1)
    assert (
        send_raw(px, "POST", "/v1/messages", key, BODY.replace(b"opus-4-1", b"haiku-4-5"))[0] == 200
    )
    # A 32 MiB body is announced and never sent: the refusal comes at once all the same.
    with connect(px) as sock:
        sock.sendall(
            f"POST /v1/messages HTTP/1.1\r\nhost: proxy\r\nx-api-key: {key}\r\n"
            "content-type: application/json\r\ncontent-length: 33554000\r\n\r\n".encode()
        )
        status, headers, body = read_response(sock)
    assert status == 429, body
    assert c.row(headers["x-claude-proxy-request-id"])["refusal"] == "rpm"


def bodies_held(px: Proxy, key: str) -> int:
    _, _, report = send_raw(px, "GET", "/ready", key)
    bodies = report["request_bodies"]
    assert isinstance(bodies, dict)
    return int(bodies["used"])


def test_request_bodies_held_in_memory_are_bounded(emulator: Emulator) -> None:
    """Past CLAUDE_PROXY_MAX_BUFFERED_BODY_BYTES a body waits for room, then gets a 529
    with retry-after and a row; once room is made, bodies go through again."""
    with cluster(emulator) as c:
        px = c.start(
            CLAUDE_PROXY_MAX_BUFFERED_BODY_BYTES=str(1_000_000),
            CLAUDE_PROXY_BODY_WAIT_SECONDS="0.3",
        )
        _, key = c.key("uploads")
        big = 700_000
        head = (
            f"POST /v1/messages/count_tokens HTTP/1.1\r\nhost: proxy\r\nx-api-key: {key}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {big}\r\n\r\n"
        ).encode()
        with connect(px) as holder:
            holder.sendall(head + b" " * 1000)  # holds 700,000 bytes of the 1,000,000
            # Wait until the proxy has reserved it: /ready reports the bytes held.
            wait_until(
                lambda: bodies_held(px, key) == big,
                timeout=WAIT,
                what="the first body's reservation",
            )
            status, headers, body = send_raw(px, "POST", "/v1/messages/count_tokens", key,
                                             b"{" + b" " * 400_000 + b"}")  # fmt: skip
            assert status == 529, body
            error = body["error"]
            assert isinstance(error, dict) and error["type"] == "overloaded_error"
            assert headers["retry-after"].isdigit() and headers["x-should-retry"] == "true"
            assert c.row(headers["x-claude-proxy-request-id"])["refusal"] == "body_memory"
            # A small body still fits beside the held one.
            small = orjson.dumps(
                {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert send_raw(px, "POST", "/v1/messages/count_tokens", key, small)[0] == 200
        # The holder left: its bytes are given back, and a large body goes through.
        wait_until(
            lambda: bodies_held(px, key) == 0, timeout=WAIT, what="the reservation given back"
        )
        large = orjson.dumps(
            {
                "model": "claude-haiku-4-5",
                "messages": [{"role": "user", "content": "hi " * 200_000}],
            }
        )
        assert send_raw(px, "POST", "/v1/messages/count_tokens", key, large)[0] == 200
