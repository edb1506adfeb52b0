"""A client that reads slowly gets backpressure all the way to the upstream: the proxy
holds a few KB per stream, not the whole response, and the upstream is made to wait."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
import urllib.error
from pathlib import Path

import orjson
import pytest

from tests.conftest import PROXY_KEY, Emulator, Proxy, start_proxy
from tests.helpers import database, wait_for_rows

pytestmark = pytest.mark.e2e

READERS = 10
# 20,000 events of 1,000 bytes: ~23 MB per stream, more than the kernel's socket buffers on
# the way (a few MB) can hold, and 230 MB in all if the proxy buffered it.
EVENTS, TEXT_BYTES = 20_000, 1000
FAULT = f"events={EVENTS} text-bytes={TEXT_BYTES}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_unread_stream(px: Proxy) -> tuple[socket.socket, str]:
    """Send a streaming request and read only the response head; returns the upstream id."""
    host, port = px.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect((host, int(port)))
    body = orjson.dumps(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": EVENTS * TEXT_BYTES // 4 + 64,  # ~4 bytes a token
            "stream": True,
            "messages": [{"role": "user", "content": "Hello"}],
        }
    )
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\nx-api-key: {PROXY_KEY}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"x-emulator-fault: {FAULT}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1)  # one byte at a time: leave the body in the kernel
    for line in data.decode("latin-1").split("\r\n"):
        if line.lower().startswith("request-id:"):
            return sock, line.split(":", 1)[1].strip()
    raise AssertionError(f"no upstream request-id in {data!r}")


def proxy_with_client_timeout(emulator: Emulator, setting: str, seconds: str) -> Proxy:
    """A proxy of its own with one client timeout made short, writing its rows promptly."""
    tmp = Path(tempfile.mkdtemp(prefix="claude-proxy-slow-client-"))
    env = {setting: seconds, "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.1"}
    return start_proxy(emulator.url, env, tmp)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything up to the end of the chunked body (the response stays keep-alive)."""
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_slow_readers_hold_the_upstream_back_and_memory_stays_bounded(
    emulator: Emulator, proxy: Proxy
) -> None:
    pid = proxy.process.proc.pid
    before = rss_mb(pid)
    streams = [open_unread_stream(proxy) for _ in range(READERS)]
    try:
        # The upstream cannot finish while nobody reads: its wait for "completed" times out.
        upstream_id = streams[0][1]
        with pytest.raises(urllib.error.HTTPError) as waited:
            emulator.wait_request(upstream_id, "completed", timeout=2.0)
        assert waited.value.code == 408
        grown = rss_mb(pid) - before
        print(f"{READERS} unread 23 MB streams: proxy RSS grew {grown:.1f} MB")
        assert grown < 10, f"the proxy buffered the streams: +{grown:.1f} MB"
        # Reading resumes: every stream is delivered whole.
        for sock, _ in streams:
            data = read_to_end(sock)
            assert b'"type":"message_stop"' in data
        assert emulator.wait_request(upstream_id, "completed", timeout=10)["state"] == "completed"
    finally:
        for sock, _ in streams:
            sock.close()


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
    emulator: Emulator,
) -> None:
    """A client that takes none of a stream for CLAUDE_PROXY_CLIENT_SEND_TIMEOUT_SECONDS
    (without closing) is disconnected, as by nginx's send_timeout: the upstream request is
    closed and the row is written now, not whenever the client would have come back."""
    px = proxy_with_client_timeout(emulator, "CLAUDE_PROXY_CLIENT_SEND_TIMEOUT_SECONDS", "0.5")
    try:
        sock, upstream_id = open_unread_stream(px)
        with sock:
            # The proxy closes the upstream request once it has dropped the client.
            entry = emulator.wait_request(upstream_id, "client_closed", timeout=10)
            assert entry["state"] == "client_closed"
            with database(px.env["DATABASE_URL"]) as engine:
                row = wait_for_rows(engine, upstream_request_id=upstream_id)[0]
            assert row["client_disconnected"] is True
            assert row["status_code"] == 200 and row["output_tokens"] is not None
            # What the client finds when it comes back: a connection cut short, not a
            # stream that ends as if it were whole.
            sock.settimeout(10)
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    data += chunk
            assert not data.endswith(b"\r\n0\r\n\r\n")
        px.process.wait_for(r"took no response data for 0.5s: closing the connection", timeout=5)
    finally:
        px.process.stop()


def test_a_request_body_that_stops_coming_gets_408_and_one_row(emulator: Emulator) -> None:
    """A client that sends part of a body and then nothing: the proxy answers 408 after
    CLAUDE_PROXY_CLIENT_BODY_TIMEOUT_SECONDS, under the id its row is logged with, and the
    row says 408 too."""
    px = proxy_with_client_timeout(emulator, "CLAUDE_PROXY_CLIENT_BODY_TIMEOUT_SECONDS", "0.3")
    try:
        host, port = px.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-api-key: "
                + PROXY_KEY.encode()
                + b"\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                b'content-length: 500\r\n\r\n{"model": "claude-haiku-4-5"'
            )
            sock.settimeout(10)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408 ")
        err = orjson.loads(body)
        assert err["error"]["type"] == "timeout_error"
        with database(px.env["DATABASE_URL"]) as engine:
            row = wait_for_rows(engine, id=err["request_id"])[0]
        assert (row["status_code"], row["error_type"]) == (408, "timeout_error")
        assert row["client_disconnected"] is False  # the proxy ended it, not the client
        assert row["upstream_attempts"] == 0  # nothing went upstream
    finally:
        px.process.stop()


def test_a_client_gone_before_its_body_is_logged_as_gone_not_as_bad_json(proxy: Proxy) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    agent = f"gone-before-body-{time.monotonic_ns()}"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-api-key: {PROXY_KEY}\r\n"
            f"user-agent: {agent}\r\ncontent-length: 500\r\n\r\n".encode()
        )
    with database(proxy.env["DATABASE_URL"]) as engine:
        rows = wait_for_rows(engine, user_agent=agent)
    assert len(rows) == 1
    assert rows[0]["client_disconnected"] is True
    assert rows[0]["status_code"] is None and rows[0]["upstream_attempts"] == 0
