"""The fault matrix (issue 5 §7): every fault the emulator can inject, streaming and not, against
a real proxy process. Each cell checks what the client sees (the status and `error.type` of the
Anthropic-shaped JSON error, the SSE `error` event of a broken stream, or a cut body) and the
request's single row in `request_logs` (status, error_type, upstream_attempts, which timeout).

Also: an unreachable upstream (connection refused), one that never accepts (connect timeout),
and the circuit breaker opening, refusing and closing again. docs/reliability.md shows the
results; `pytest -s` prints each cell's observed outcome as a table row.
"""

from __future__ import annotations

import socket
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from sqlalchemy import Engine

from claude_proxy.store.engine import make_engine
from tests.conftest import PROXY_KEY, Emulator, Proxy, start_proxy
from tests.helpers import log_row

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
V = {"anthropic-version": "2023-06-01"}
# Tags each request, so that the emulator's journal tells what crossed the proxy for a cell.
TAG = "x-fault-matrix-cell"

# Small timeouts keep the suite fast; each is still far above what a local emulator needs.
FAST = {
    "CLAUDE_PROXY_CONNECT_TIMEOUT_SECONDS": "0.2",
    "CLAUDE_PROXY_FIRST_BYTE_TIMEOUT_SECONDS": "1",
    "CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS": "1",
    "CLAUDE_PROXY_TOTAL_TIMEOUT_SECONDS": "2",
    "CLAUDE_PROXY_RETRY_BACKOFF_INITIAL_SECONDS": "0.05",
    "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.05",
}
# The matrix's own failures must neither open the breaker nor use up the retry budget: each
# cell is about one request in isolation (the breaker has its own test below).
MATRIX_ENV = {
    **FAST,
    "CLAUDE_PROXY_BREAKER_MIN_REQUESTS": "1000000",
    "CLAUDE_PROXY_RETRY_BUDGET_MIN_PER_SECOND": "100",
}
BREAKER_OPEN_SECONDS = 2


@dataclass
class Target:
    """A proxy under test, and its request log."""

    proxy: Proxy
    engine: Engine
    http: httpx2.Client

    def row(self, request_id: str) -> dict[str, Any]:
        return log_row(self.engine, request_id, timeout=10.0)

    def ready(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.proxy.url}/ready") as r:
            data: dict[str, Any] = orjson.loads(r.read())
            return data


@contextmanager
def target(upstream_url: str, env: dict[str, str]) -> Iterator[Target]:
    tmp = Path(tempfile.mkdtemp(prefix="claude-proxy-faults-"))
    px = start_proxy(upstream_url, env, tmp)
    engine = make_engine(px.env["DATABASE_URL"])
    try:
        with httpx2.Client(base_url=px.url, timeout=20) as http:
            yield Target(px, engine, http)
    finally:
        px.process.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def emulated(emulator: Emulator) -> Iterator[Target]:
    """A proxy in front of the emulator."""
    with target(emulator.url, MATRIX_ENV) as t:
        yield t


@pytest.fixture(scope="module")
def refused() -> Iterator[Target]:
    """A proxy whose upstream port refuses connections: bound, never listening."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        with target(f"http://127.0.0.1:{port}", MATRIX_ENV) as t:
            yield t


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Target]:
    """A proxy whose upstream never completes a connection: a listener with a backlog of 0
    that never accepts, its queue already full, so the kernel drops further SYNs."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        addr = hole.getsockname()
        with socket.create_connection(addr):  # fills the accept queue
            with target(f"http://127.0.0.1:{addr[1]}", MATRIX_ENV) as t:
                yield t


# ------------------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Cell:
    """One fault, and everything that should come of it.

    `spec` goes into `x-emulator-fault`; `{key}` becomes a fresh key per run (for `times=`).
    The client sees one of: success (`error` None), a JSON error with `status` (`sse` False),
    an SSE `error` event after a 200 (`sse` True), or a body cut short (`cut` True). `origin`
    says whose error it is: the upstream's, passed through unchanged, or the proxy's own.
    """

    name: str
    spec: str
    stream: bool
    status: int
    error: str | None = None
    message: str = ""
    origin: str = "proxy"  # or "upstream"
    sse: bool = False
    cut: bool = False
    row_error: str | None = None  # defaults to `error`
    attempts: int = 1
    timeout: bool = False  # the row's error_message names the timeout
    headers: dict[str, str] = field(default_factory=dict)
    # Requests the emulator should have received; None: not checked (see test_reused_...).
    upstream: int | None = -1  # -1: same as attempts
    via: str = "emulated"  # the fixture: emulated, refused, blackhole

    @property
    def id(self) -> str:
        return f"{self.name}-{'sse' if self.stream else 'json'}"


def both(name: str, spec: str, **kw: Any) -> list[Cell]:
    """The same expectations for a streaming and a non-streaming request."""
    return [Cell(name, spec, False, **kw), Cell(name, spec, True, **kw)]


def passed_through(status: int, error: str, message: str, **kw: Any) -> list[Cell]:
    """An upstream error before the first byte: relayed as it came, 1 attempt."""
    return both(
        f"status-{status}",
        f"status={status}",
        status=status,
        error=error,
        message=message,
        origin="upstream",
        **kw,
    )


def broken_stream(name: str, spec: str, error: str, message: str, **kw: Any) -> Cell:
    return Cell(name, spec, True, 200, error, message, sse=True, **kw)


def cut_body(name: str, spec: str, error: str, message: str, **kw: Any) -> Cell:
    return Cell(name, spec, False, 200, cut=True, row_error=error, message=message, **kw)


CELLS: list[Cell] = [
    *both("ok", "", status=200),
    # Shape options, not failures: they pass through like any answer.
    *both("shape-events-text-bytes-tool", "events=40 text-bytes=64 tool", status=200),
    # Upstream errors before the first byte pass through untouched (4xx, and 5xx other than 529).
    *passed_through(400, "invalid_request_error", "Invalid request"),
    *passed_through(401, "authentication_error", "invalid x-api-key"),
    *passed_through(403, "permission_error", "does not have permission"),
    *passed_through(404, "not_found_error", "Not found"),
    *passed_through(413, "request_too_large", "maximum allowed number of bytes"),
    *passed_through(500, "api_error", "Internal server error"),
    *passed_through(502, "api_error", "Bad gateway"),
    *passed_through(503, "api_error", "Service unavailable"),
    *passed_through(504, "timeout_error", "timed out while processing"),
    *both(
        "status-429-retry-after",
        "status=429 retry-after=7",
        status=429,
        error="rate_limit_error",
        message="rate limit",
        origin="upstream",
        headers={"retry-after": "7"},
    ),
    # 529 is retried (3 attempts in all), unless the upstream says not to or to wait too long.
    *both(
        "status-529-persistent",
        "status=529",
        status=529,
        error="overloaded_error",
        message="Overloaded",
        origin="upstream",
        attempts=3,
    ),
    *both("status-529-once", "status=529 times=1 key={key}", status=200, attempts=2),
    *both("status-529-twice", "status=529 times=2 key={key}", status=200, attempts=3),
    *both(
        "status-529-retry-after-ms-100-once",
        "status=529 retry-after-ms=100 times=1 key={key}",
        status=200,
        attempts=2,
    ),
    *both(
        "status-529-should-retry-false",
        "status=529 should-retry=false",
        status=529,
        error="overloaded_error",
        message="Overloaded",
        origin="upstream",
        headers={"x-should-retry": "false"},
    ),
    *both(
        "status-529-retry-after-30",
        "status=529 retry-after=30",
        status=529,
        error="overloaded_error",
        message="Overloaded",
        origin="upstream",
        headers={"retry-after": "30"},
    ),
    *both(
        "status-529-retry-after-ms-30000",
        "status=529 retry-after-ms=30000",
        status=529,
        error="overloaded_error",
        message="Overloaded",
        origin="upstream",
        headers={"retry-after-ms": "30000"},
    ),
    # The request was sent, so the proxy does not retry: the client's SDK decides.
    *both(
        "close-before-headers",
        "close-before-headers",
        status=502,
        error="api_error",
        message="Upstream error: upstream connection lost",
    ),
    *both("first-byte-under-timeout", "first-byte-ms=300", status=200),
    *both(
        "first-byte-over-timeout",
        "first-byte-ms=3000",
        status=504,
        error="timeout_error",
        message="Timeout (first byte): no response from the upstream API within 1s",
        timeout=True,
    ),
    # After the first byte: streams end with an SSE error event, plain bodies are cut short.
    broken_stream(
        "midstream-error",
        "midstream=error after=3",
        "overloaded_error",
        "Overloaded",
        origin="upstream",
    ),
    # Without a stream the emulator answers midstream=error with a 529: retried like one.
    Cell(
        "midstream-error",
        "midstream=error after=3",
        False,
        529,
        "overloaded_error",
        "Overloaded",
        origin="upstream",
        attempts=3,
    ),
    broken_stream(
        "midstream-reset",
        "midstream=reset after=3",
        "api_error",
        "Streaming error: upstream connection lost",
    ),
    cut_body(
        "midstream-reset",
        "midstream=reset",
        "api_error",
        "Streaming error: upstream connection lost",
    ),
    broken_stream(
        "midstream-eof",
        "midstream=eof after=3",
        "api_error",
        "Streaming error: upstream closed the stream before message_stop",
    ),
    cut_body(
        "midstream-eof", "midstream=eof", "api_error", "Streaming error: upstream connection lost"
    ),
    broken_stream(
        "midstream-stall",
        "midstream=stall after=3",
        "timeout_error",
        "Streaming error: Timeout (idle): no data from the upstream API for 1s",
        timeout=True,
    ),
    cut_body(
        "midstream-stall",
        "midstream=stall",
        "timeout_error",
        "Streaming error: Timeout (idle): no data from the upstream API for 1s",
        timeout=True,
    ),
    # Pacing (streams only): the idle timeout is per gap; the total timeout bounds the whole.
    Cell("event-ms-under-idle-timeout", "event-ms=150 events=3", True, 200),
    broken_stream(
        "event-ms-over-idle-timeout",
        "event-ms=1500",
        "timeout_error",
        "Streaming error: Timeout (idle): no data from the upstream API for 1s",
        timeout=True,
    ),
    broken_stream(
        "event-ms-over-total-timeout",
        "event-ms=400 events=20",
        "timeout_error",
        "Streaming error: Timeout (total): the upstream response took over 2s",
        timeout=True,
    ),
    # No upstream at all: never sent, so retried; 3 attempts in all.
    *both(
        "upstream-refused",
        "",
        status=502,
        error="api_error",
        message="Upstream error: cannot connect to the upstream API",
        attempts=3,
        upstream=None,
        via="refused",
    ),
    *both(
        "upstream-connect-timeout",
        "",
        status=504,
        error="timeout_error",
        message="Timeout (connect): no connection to the upstream API within 0.2s",
        attempts=3,
        timeout=True,
        upstream=None,
        via="blackhole",
    ),
]


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) for each SSE event in a stream's bytes."""
    out = []
    for block in raw.split(b"\n\n"):
        name, data = "", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if name:
            out.append((name, orjson.loads(data)))
    return out


def _journal(emulator: Emulator, tag: str) -> list[dict[str, Any]]:
    """What the emulator received carrying this cell's tag."""
    return [
        e
        for e in emulator.requests()
        if any(n.lower() == TAG and v == tag for n, v in e["headers"])
    ]


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_fault(cell: Cell, request: pytest.FixtureRequest, emulator: Emulator) -> None:
    tgt: Target = request.getfixturevalue(cell.via)
    tag = uuid.uuid4().hex
    spec = cell.spec.replace("{key}", tag)
    headers = {"x-api-key": PROXY_KEY, **V, TAG: tag}
    if spec:
        headers["x-emulator-fault"] = spec
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": cell.stream,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    started = time.monotonic()
    cut_error: Exception | None = None
    raw = bytearray()
    with tgt.http.stream("POST", "/v1/messages", json=body, headers=headers) as r:
        try:
            for chunk in r.iter_raw():
                raw += chunk
        except httpx2.RemoteProtocolError as exc:
            cut_error = exc
    elapsed = time.monotonic() - started
    rid = r.headers["x-claude-proxy-request-id"]

    # (a) what the client sees
    assert r.status_code == cell.status, bytes(raw[:500])
    seen: str
    if cell.cut:
        assert cut_error is not None, "a cut body must not look complete"
        assert len(raw) < int(r.headers["content-length"])
        seen = f"200, then the body is cut ({len(raw)} of {r.headers['content-length']} bytes)"
    elif cell.sse:
        assert cut_error is None
        events = _events(bytes(raw))
        names = [n for n, _ in events]
        assert names[0] == "message_start" and names[-1] == "error", names
        assert names.count("error") == 1 and "message_stop" not in names
        err = events[-1][1]
        assert err["type"] == "error" and err["error"]["type"] == cell.error
        assert err["error"]["message"].startswith(cell.message), err
        _check_origin(cell, err, rid)
        seen = f"200, SSE error {cell.error}: {err['error']['message']}"
    elif cell.error is None:
        assert cut_error is None
        if cell.stream:
            names = [n for n, _ in _events(bytes(raw))]
            assert names[-1] == "message_stop" and "error" not in names, names
        else:
            assert orjson.loads(raw)["type"] == "message"
        seen = "200 OK"
    else:
        assert cut_error is None
        assert r.headers["content-type"] == "application/json"
        err = orjson.loads(raw)
        assert err["type"] == "error" and err["error"]["type"] == cell.error, err
        assert cell.message in err["error"]["message"], err
        _check_origin(cell, err, rid)
        seen = f"{cell.status} {cell.error}: {err['error']['message']}"
    for name, value in cell.headers.items():
        assert r.headers.get(name) == value, name

    # (b) the request's one row
    row = tgt.row(rid)
    row_error = cell.row_error or cell.error
    assert row["status_code"] == cell.status
    assert row["error_type"] == row_error
    assert row["upstream_attempts"] == cell.attempts
    assert row["stream"] is cell.stream and row["client_disconnected"] is False
    if cell.timeout:
        assert "Timeout" in row["error_message"], row["error_message"]
    if cell.cut or (cell.sse and cell.origin == "proxy"):
        assert row["error_message"].startswith(cell.message), row["error_message"]

    # what crossed the proxy
    upstream = len(_journal(emulator, tag)) if cell.via == "emulated" else 0
    expected_upstream = cell.attempts if cell.upstream == -1 else cell.upstream
    if expected_upstream is not None:
        assert upstream == expected_upstream
    if "retry-after=30" in spec or "retry-after-ms=30000" in spec:
        assert elapsed < 5, "a long retry-after is the client's to wait, not the proxy's"
    if "retry-after-ms=100" in spec:
        assert elapsed >= 0.1, "the upstream's retry-after-ms is honoured"
    print(
        f"\n| {cell.name} | {'stream' if cell.stream else 'json'} | {seen} | "
        f"{row['status_code']}, {row['error_type']}, {row['upstream_attempts']} | "
        f"{upstream if cell.via == 'emulated' else '-'} | {elapsed:.2f} s |"
    )


def _check_origin(cell: Cell, err: dict[str, Any], rid: str) -> None:
    """Upstream errors keep the upstream's request id; the proxy's own carry the proxy's."""
    if cell.origin == "upstream":
        assert err["request_id"].startswith("req_"), err
    else:
        assert err["request_id"] == rid, err


# --------------------------------------------------------------------------- the SDK's view


SDK_CASES = [
    ("status=529", False, anthropic.OverloadedError, "overloaded_error", 529),
    ("status=529 retry-after=30", True, anthropic.OverloadedError, "overloaded_error", 529),
    ("close-before-headers", False, anthropic.InternalServerError, "api_error", 502),
    ("midstream=eof after=3", True, anthropic.APIStatusError, "api_error", 200),
    ("midstream=reset after=3", True, anthropic.APIStatusError, "api_error", 200),
    ("midstream=reset", False, anthropic.APIConnectionError, None, None),
]


@pytest.mark.parametrize(
    ("spec", "stream", "exc_type", "error_type", "status"),
    SDK_CASES,
    ids=[f"{s.replace(' ', '-')}-{'sse' if st else 'json'}" for s, st, *_ in SDK_CASES],
)
def test_the_sdk_raises_the_matching_exception(
    emulated: Target,
    spec: str,
    stream: bool,
    exc_type: type[Exception],
    error_type: str | None,
    status: int | None,
) -> None:
    """What the official SDK (max_retries=0) makes of each: the class its retry logic and
    Claude Code's recovery key on. A clean early EOF must raise, not return a partial message."""
    hello = [{"role": "user", "content": "Hello there"}]
    with anthropic.Anthropic(base_url=emulated.proxy.url, api_key=PROXY_KEY, max_retries=0) as c:
        with pytest.raises(exc_type) as info:
            extra = {"x-emulator-fault": spec}
            if stream:
                with c.messages.stream(
                    model=MODEL, max_tokens=64, messages=hello, extra_headers=extra
                ) as s:
                    s.get_final_message()
            else:
                c.messages.create(model=MODEL, max_tokens=64, messages=hello, extra_headers=extra)
    exc = info.value
    if status is None:
        assert not isinstance(exc, anthropic.APIStatusError)
        return
    assert isinstance(exc, anthropic.APIStatusError)
    assert exc.status_code == status and exc.type == error_type
    if "retry-after" in spec:
        assert exc.response.headers["retry-after"] == "30"


# ------------------------------------------------------- a POST is never sent twice


def test_reused_connection_first_byte_timeout_is_not_sent_twice(
    emulated: Target, emulator: Emulator
) -> None:
    tag = uuid.uuid4().hex
    headers = {"x-api-key": PROXY_KEY, **V, TAG: tag}
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx2.Client(base_url=emulated.proxy.url, headers=headers, timeout=20) as http:
        # A plain answer first leaves a keep-alive connection in the proxy's pool.
        assert http.post("/v1/messages", json=body).status_code == 200
        started = time.monotonic()
        r = http.post("/v1/messages", json=body, headers={"x-emulator-fault": "first-byte-ms=3000"})
        elapsed = time.monotonic() - started
    assert r.status_code == 504
    row = emulated.row(r.headers["x-claude-proxy-request-id"])
    assert row["upstream_attempts"] == 1
    slow = [e for e in _journal(emulator, tag) if e["state"] != "completed"]
    assert len(slow) == 1, f"the upstream received it {len(slow)} times"
    assert elapsed < 2.0, f"a 1 s first-byte timeout took {elapsed:.2f} s"


# --------------------------------------------------------------------------- the breaker


@pytest.fixture
def breaker_proxy(emulator: Emulator) -> Iterator[Target]:
    env = {
        **FAST,
        "CLAUDE_PROXY_BREAKER_MIN_REQUESTS": "4",
        "CLAUDE_PROXY_BREAKER_OPEN_SECONDS": str(BREAKER_OPEN_SECONDS),
        "CLAUDE_PROXY_RETRY_ON": "connect_error",
    }
    with target(emulator.url, env) as t:
        yield t


def test_circuit_breaker_opens_refuses_at_once_and_closes_again(
    breaker_proxy: Target, emulator: Emulator
) -> None:
    tgt = breaker_proxy
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx2.Client(
        base_url=tgt.proxy.url, headers={"x-api-key": PROXY_KEY, **V}, timeout=20
    ) as http:
        # 4 failing attempts (of at least 4, all failed: over the 50% ratio) open it.
        for i in range(4):
            assert tgt.ready()["upstream"]["circuit"]["state"] == "closed", i
            r = http.post("/v1/messages", json=body, headers={"x-emulator-fault": "status=500"})
            assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
        tgt.proxy.process.wait_for(r"circuit breaker: closed -> open \(4 of 4 attempts failed")
        assert tgt.ready()["upstream"]["circuit"]["state"] == "open"

        # Open: answered at once with 529 + retry-after, without reaching the upstream.
        refused = []
        for stream in (False, True):
            tag = uuid.uuid4().hex
            started = time.monotonic()
            r = http.post("/v1/messages", json={**body, "stream": stream}, headers={TAG: tag})
            assert time.monotonic() - started < 0.5
            assert r.status_code == 529 and r.headers["content-type"] == "application/json"
            err = r.json()
            assert err["error"]["type"] == "overloaded_error"
            assert "circuit breaker is open" in err["error"]["message"]
            assert 1 <= int(r.headers["retry-after"]) <= BREAKER_OPEN_SECONDS
            assert _journal(emulator, tag) == []
            refused.append(r)
        for r in refused:
            row = tgt.row(r.headers["x-claude-proxy-request-id"])
            assert (row["status_code"], row["error_type"]) == (529, "overloaded_error")
            assert row["upstream_attempts"] == 0
        tgt.proxy.process.wait_for(r"circuit open: refused request_id=")

        # After the open period (the retry-after a client would wait), probes go through;
        # 3 successful probes (the default) close it.
        time.sleep(int(refused[-1].headers["retry-after"]))
        r = http.post("/v1/messages", json=body)
        assert r.status_code == 200
        tgt.proxy.process.wait_for(r"circuit breaker: open -> half_open")
        assert tgt.ready()["upstream"]["circuit"]["state"] == "half_open"
        for _ in range(2):
            assert http.post("/v1/messages", json=body).status_code == 200
        tgt.proxy.process.wait_for(r"circuit breaker: half_open -> closed \(3 probes succeeded")
        assert tgt.ready()["upstream"]["circuit"]["state"] == "closed"
        print(
            "\nbreaker: 4 x 500 -> open; next requests 529 overloaded_error retry-after="
            f"{refused[0].headers['retry-after']} with 0 upstream attempts; "
            f"{BREAKER_OPEN_SECONDS} s later 3 probes -> closed"
        )
