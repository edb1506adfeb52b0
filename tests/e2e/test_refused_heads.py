"""Requests the proxy's HTTP server refuses before the app sees them (malformed HTTP, a head
that breaks HTTP/1.1's rules, a head over 64 KiB, a head that does not arrive in time)
still leave their one row in request_logs, on SQLite and on PostgreSQL, under the request
id the client was given."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from claude_proxy.store.engine import make_engine
from tests.conftest import Emulator, Proxy, start_proxy
from tests.helpers import log_row
from tests.pg import create_database, drop_database, pg_url

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 0.5  # CLAUDE_PROXY_CLIENT_HEADER_TIMEOUT_SECONDS for these proxies


@dataclass
class Recorded:
    proxy: Proxy
    engine: Engine

    def exchange(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Send `raw` on a new connection; the status and error body the proxy answered
        before closing it."""
        host, port = self.proxy.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):  # the proxy closes after its answer
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"connection: close" in head
        return int(head.split(b" ", 2)[1]), orjson.loads(body)

    def row(self, request_id: str) -> dict[str, Any]:
        return log_row(self.engine, request_id)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def recorded(request: pytest.FixtureRequest, emulator: Emulator) -> Iterator[Recorded]:
    tmp = Path(tempfile.mkdtemp(prefix=f"claude-proxy-refused-{request.param}-"))
    dbname = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'log.db'}"
    else:
        dbname = create_database()
        url = pg_url(dbname)
    env = {
        "DATABASE_URL": url,
        "CLAUDE_PROXY_CLIENT_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.1",
    }
    px = start_proxy(emulator.url, env, tmp)
    engine = make_engine(url)
    try:
        yield Recorded(px, engine)
    finally:
        px.process.stop()
        engine.dispose()
        if dbname is not None:
            drop_database(dbname)


FILLER = b"x-filler: " + b"a" * 8000 + b"\r\n"
# name: (what the client sends, status, error type, refusal, method and endpoint in the row)
REFUSED: dict[str, tuple[bytes, int, str, str, str, str]] = {
    "malformed": (
        b"NOT HTTP AT ALL\r\n\r\n",
        400,
        "invalid_request_error",
        "malformed_http",
        "",
        "(unparsed)",
    ),
    "no Host": (
        b"GET /v1/models HTTP/1.1\r\nuser-agent: raw-test/1\r\n\r\n",
        400,
        "invalid_request_error",
        "malformed_http",
        "GET",
        "/v1/models",
    ),
    "no version": (
        b"GET /v1/models\r\n\r\n",
        400,
        "invalid_request_error",
        "malformed_http",
        "GET",
        "/v1/models",
    ),
    "HTTP/2.0": (
        b"POST /v1/messages HTTP/2.0\r\nhost: proxy\r\n\r\n",
        400,
        "invalid_request_error",
        "malformed_http",
        "POST",
        "/v1/messages",
    ),
    "head over 64 KiB": (
        b"POST /v1/messages HTTP/1.1\r\nhost: proxy\r\n" + FILLER * 9 + b"\r\n",
        431,
        "invalid_request_error",
        "headers_too_large",
        "POST",
        "/v1/messages",
    ),
    "head never ends": (
        b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: proxy\r\n",
        408,
        "timeout_error",
        "header_timeout",
        "POST",
        "/v1/messages",
    ),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_a_request_refused_by_the_http_server_leaves_its_row(
    recorded: Recorded, case: tuple[bytes, int, str, str, str, str]
) -> None:
    raw, status, error_type, refusal, method, endpoint = case
    got_status, body = recorded.exchange(raw)
    assert got_status == status
    assert body["type"] == "error" and body["error"]["type"] == error_type
    row = recorded.row(body["request_id"])
    assert (row["status_code"], row["error_type"], row["refusal"]) == (
        status,
        error_type,
        refusal,
    )
    assert (row["method"], row["endpoint"]) == (method, endpoint)
    assert row["error_message"] == body["error"]["message"]
    assert row["client_ip"] == "127.0.0.1" and row["key_id"] is None
    if status == 408:  # waited for from the head's first byte
        assert row["latency_ms"] >= HEAD_TIMEOUT * 1000
