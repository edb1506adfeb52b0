"""The server's HTTP/1.1 protocol (http/protocol.py's ClientProtocol), over a real socket pair,
with small ASGI apps: framing, keep-alive, pipelining, bodies, errors, and the disconnect
extension. The relay's own behaviour through it is covered end to end in tests/e2e."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from claude_proxy.formats.anthropic.errors import error_answer
from claude_proxy.http.protocol import (
    ANSWERED_KEY,
    DISCONNECT_EXTENSION,
    RECORD_SINK_STATE_KEY,
    REQUEST_ID_SCOPE_KEY,
    ClientProtocol,
    _Exchange,
)
from claude_proxy.store.records import RequestRecord, new_request_id
from tests.conftest import cyclic_garbage, within_loop_turns

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


class Recording:
    """The connection's real transport, remembering every write(2)-bound call."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


class Peer:
    """The client's end of the socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _more(self) -> bytes:
        """The next bytes from the server (b"" once it closed), at most 5 s away."""
        chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), 5)
        self.buf += chunk
        return chunk

    def _take(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def until(self, marker: bytes) -> bytes:
        """Everything up to and including `marker`; the rest stays buffered."""
        while marker not in self.buf:
            if not await self._more():
                raise EOFError(self.buf)
        return self._take(self.buf.index(marker) + len(marker))

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._more():
                raise EOFError(self.buf)
        return self._take(n)

    async def eof(self) -> bytes:
        """What arrives before the server closes the connection."""
        while await self._more():
            pass
        return self._take(len(self.buf))


Serve = Callable[..., Awaitable[tuple[ClientProtocol, Recording, Peer]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    opened: list[tuple[asyncio.BaseTransport, socket.socket]] = []

    async def start(
        app: App, keep_alive: float = 5, state: dict[str, Any] | None = None
    ) -> tuple[ClientProtocol, Recording, Peer]:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            app,
            proxy_headers=False,
            timeout_keep_alive=keep_alive,
            log_config=None,  # type: ignore[arg-type]
        )
        protocol = ClientProtocol.configured(error_answer=error_answer)
        proto = protocol(config, ServerState(), state or {}, loop)
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        rec = Recording(proto.transport)  # type: ignore[arg-type]
        proto.transport = rec  # type: ignore[assignment]
        opened.append((transport, theirs))
        return proto, rec, Peer(theirs)

    yield start
    for transport, sock in opened:
        transport.abort()
        sock.close()


def plain(body: bytes = b"hello", status: int = 200, headers: list[Any] | None = None) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        hdrs = [(b"content-length", b"%d" % len(body)), *(headers or [])]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_head_and_body_leave_in_one_write(serve: Serve) -> None:
    _, rec, peer = await serve(plain())
    await peer.send(GET)
    head = await peer.until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5" in head
    assert await peer.exactly(5) == b"hello"
    assert rec.writes == [head + b"hello"]


async def test_a_stream_head_is_not_held_behind_its_first_event(serve: Serve) -> None:
    first_event = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        hdrs = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await first_event.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": False})

    _, _, peer = await serve(app)
    await peer.send(GET)
    head = await peer.until(b"\r\n\r\n")  # arrives while the app still waits
    assert b"transfer-encoding: chunked" in head  # no content-length: chunked framing
    first_event.set()
    assert await peer.until(b"0\r\n\r\n") == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"


async def test_keep_alive_and_pipelined_requests_answered_in_order(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = scope["path"].encode() + b"?" + scope["query_string"]
        if scope["path"] == "/slow":
            await asyncio.sleep(0)  # give the second request a chance to overtake
        await plain(body)(scope, receive, send)

    proto, _, peer = await serve(app)
    await peer.send(
        b"GET /slow?a=1 HTTP/1.1\r\nhost: t\r\n\r\nGET /fast HTTP/1.1\r\nhost: t\r\n\r\n"
    )
    first = await peer.until(b"/slow?a=1")
    second = await peer.until(b"/fast?")
    assert first.startswith(b"HTTP/1.1 200 OK") and second.startswith(b"HTTP/1.1 200 OK")
    await peer.send(GET)  # the same connection, a third time
    assert (await peer.until(b"/x?")).startswith(b"HTTP/1.1 200 OK")
    assert proto.server_state.total_requests == 3


async def test_a_large_body_arrives_whole_and_100_continue_is_sent(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        parts = []
        while True:
            msg = await receive()
            parts.append(msg["body"])
            if not msg["more_body"]:
                break
        await plain(b"%d:%d" % (len(b"".join(parts)), len(parts)))(scope, receive, send)

    _, _, peer = await serve(app)
    body = b"x" * 300_000  # beyond the 64 KiB the server buffers before pausing
    await peer.send(
        b"POST /v1/messages HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    assert await peer.until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await peer.send(body)
    head = await peer.until(b"\r\n\r\n")
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    size, parts = (await peer.exactly(length)).split(b":")
    assert size == b"300000" and int(parts) > 1  # whole, and streamed in parts


async def test_header_injection_is_refused_with_an_anthropic_500(serve: Serve) -> None:
    _, _, peer = await serve(plain(headers=[(b"x-ok", b"1\r\nx-evil: injected")]))
    await peer.send(GET)
    raw = await peer.eof()
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"x-evil" not in raw.split(b"\r\n\r\n")[0]
    err = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    assert err["request_id"].startswith("cpr_")


async def test_malformed_http_gets_an_anthropic_400_and_the_connection_closes(
    serve: Serve,
) -> None:
    _, _, peer = await serve(plain())
    await peer.send(b"NOT HTTP AT ALL\r\n\r\n")
    raw = await peer.eof()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ") and b"request-id: cpr_" in head
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


async def test_an_app_error_before_the_response_gets_an_anthropic_500(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("boom")

    _, _, peer = await serve(app)
    await peer.send(GET)
    raw = await peer.eof()
    assert raw.startswith(b"HTTP/1.1 500 ") and b"boom" not in raw
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "api_error"


async def test_head_gets_no_body_and_the_connection_stays_usable(serve: Serve) -> None:
    _, _, peer = await serve(plain())
    await peer.send(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await peer.until(b"\r\n\r\n")
    assert b"content-length: 5" in head
    await peer.send(GET)
    nxt = await peer.until(b"\r\n\r\n")
    assert nxt.startswith(b"HTTP/1.1 200 OK")  # no stray "hello" from the HEAD before it
    assert await peer.exactly(5) == b"hello"


async def test_a_client_leaving_mid_response_calls_the_disconnect_extension(
    serve: Serve,
) -> None:
    gone = asyncio.Event()
    started = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"][DISCONNECT_EXTENSION](gone.set)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.Event().wait()  # a stream that never ends

    _, _, peer = await serve(app)
    await peer.send(GET)
    await asyncio.wait_for(started.wait(), 5)
    peer.sock.close()
    await asyncio.wait_for(gone.wait(), 5)


async def test_requests_and_closed_connections_are_freed_without_the_cyclic_collector(
    serve: Serve,
) -> None:
    """Whatever a finished request or a closed connection leaves in reference cycles waits
    for the cyclic collector, whose full passes over a big heap stall every open stream
    (measured: 1.4 million such objects and pauses up to 90 ms in a 1,000-stream run)."""

    class Watch:  # as the relay does: the disconnect callback reaches the request's task
        def __init__(self, task: asyncio.Task[Any] | None) -> None:
            self.task = task

        def gone(self) -> None:
            if self.task is not None:
                self.task.cancel()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"][DISCONNECT_EXTENSION](Watch(asyncio.current_task()).gone)
        await receive()
        if scope["path"] == "/stall":  # the client leaves mid-response
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.Event().wait()
        await plain()(scope, receive, send)

    with cyclic_garbage(ClientProtocol, _Exchange, Watch, asyncio.Task) as cyclic:
        kept, _, peer = await serve(app)
        for _ in range(3):
            await peer.send(GET)
            await peer.until(b"hello")
        await peer.send(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        await peer.eof()
        left, _, peer2 = await serve(app)
        await peer2.send(b"GET /stall HTTP/1.1\r\nhost: t\r\n\r\n")
        await peer2.until(b"\r\n\r\n")
        peer2.sock.close()
        for proto in (kept, left):
            await within_loop_turns(
                "connection_lost", lambda p=proto: p not in p.server_state.connections
            )
        for _ in range(10):  # the cancelled app task winds down
            await asyncio.sleep(0)
    assert cyclic == []


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(serve: Serve) -> None:
    _, _, peer = await serve(plain(), keep_alive=0.2)
    await peer.send(GET)
    await peer.until(b"hello")
    assert await peer.eof() == b""  # closed by the server, nothing more sent


async def test_connection_close_is_honoured(serve: Serve) -> None:
    _, _, peer = await serve(plain())
    await peer.send(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    raw = await peer.eof()
    assert b"connection: close" in raw and raw.endswith(b"hello")


async def test_oversized_request_headers_get_431_and_the_connection_closes(
    serve: Serve,
) -> None:
    called = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await plain()(scope, receive, send)

    _, _, peer = await serve(app)
    big = b"x-filler: " + b"a" * 8000 + b"\r\n"
    await peer.send(b"GET /x HTTP/1.1\r\nhost: t\r\n" + big * 9 + b"\r\n")  # ~72 KB of headers
    raw = await peer.eof()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 431 ")
    err = orjson.loads(body)
    assert err["error"]["type"] == "invalid_request_error" and "65536" in err["error"]["message"]
    assert called == []  # the app never saw it


async def test_headers_just_under_the_limit_are_served(serve: Serve) -> None:
    _, _, peer = await serve(plain())
    big = b"x-filler: " + b"a" * 8000 + b"\r\n"
    await peer.send(b"GET /x HTTP/1.1\r\nhost: t\r\n" + big * 7 + b"\r\n")  # ~56 KB
    assert (await peer.until(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    assert await peer.exactly(5) == b"hello"


def timed_out(raw: bytes, what: str) -> None:
    """`raw` is the whole connection: one Anthropic-shaped 408, then the server closed."""
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 ") and b"request-id: cpr_" in head
    err = orjson.loads(body)["error"]
    assert err["type"] == "timeout_error" and what in err["message"]


async def test_a_request_head_left_unfinished_gets_408(serve: Serve) -> None:
    proto, _, peer = await serve(plain(), keep_alive=30)
    proto.head_timeout = 0.2
    await peer.send(b"GET /x HTTP/1.1\r\nhost: t\r\n")  # no blank line: the head never ends
    timed_out(await peer.eof(), "request headers")


@pytest.mark.parametrize("with_the_first", [True, False], ids=["same-packet", "later"])
async def test_a_pipelined_head_left_unfinished_does_not_cut_the_response_before_it(
    serve: Serve, with_the_first: bool
) -> None:
    """A client may send its next request's head while a stream is still coming. Its clock
    runs from when the connection is free again: the stream finishes, then the 408 (before,
    a head that came in the first request's packet had no clock at all, and one that came
    later cut the stream)."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"-done"})

    proto, _, peer = await serve(app, keep_alive=30)
    proto.head_timeout = 0.2
    unfinished = b"GET /y HTTP/1.1\r\nhost: t\r\n"  # the second head never ends
    if with_the_first:
        await peer.send(GET + unfinished)
        await peer.until(b"first")
    else:
        await peer.send(GET)
        await peer.until(b"first")
        await peer.send(unfinished)
    await asyncio.sleep(0.5)  # past the head timeout, with the first response still open
    release.set()
    rest = await peer.eof()
    first_end, after = rest.split(b"-done\r\n0\r\n\r\n", 1)
    assert first_end == b"\r\n5\r\n"  # the stream ended whole
    timed_out(after, "request headers")


async def test_a_request_head_trickling_in_still_gets_408_in_time(serve: Serve) -> None:
    """The head timeout runs from its first byte: new bytes do not extend it."""
    proto, _, peer = await serve(plain(), keep_alive=30)
    proto.head_timeout = 0.3

    async def trickle() -> None:
        for byte in b"GET /x HTTP/1.1\r\nhost: t\r\nx-pad: " + b"a" * 1000:
            await peer.send(bytes([byte]))
            await asyncio.sleep(0.02)  # a client sending one byte every 20 ms

    sender = asyncio.create_task(trickle())
    try:
        timed_out(await peer.eof(), "request headers")
        assert not sender.done()  # cut off while it was still sending
    finally:
        sender.cancel()


async def test_a_stalled_request_body_gets_408_and_the_app_sees_the_client_gone(
    serve: Serve,
) -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            got.append(await receive())
            if got[-1]["type"] == "http.disconnect" or not got[-1]["more_body"]:
                break
        await plain()(scope, receive, send)  # dropped: the connection is gone

    proto, _, peer = await serve(app, keep_alive=30)
    proto.body_timeout = 0.2
    await peer.send(b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
    timed_out(await peer.eof(), "request body")
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
    assert got[0]["body"] == b"abc"
    status, error_type, message = got[1][ANSWERED_KEY]  # for the app's record
    assert (status, error_type) == (408, "timeout_error") and "request body" in message


async def test_a_slow_body_that_keeps_coming_is_served(serve: Serve) -> None:
    """The body timeout counts from the last bytes, not from the start."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg["body"]
            if not msg["more_body"]:
                break
        await plain(body)(scope, receive, send)

    proto, _, peer = await serve(app, keep_alive=30)
    proto.body_timeout = 0.25
    await peer.send(b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\n")
    for part in (b"ab", b"cd", b"ef"):  # 0.3 s in all, never 0.25 s without bytes
        await asyncio.sleep(0.1)
        await peer.send(part)
    await peer.until(b"\r\n\r\n")
    assert await peer.exactly(6) == b"abcdef"


# --------------------------------------------------- request-head rules (RFC 9112)


def refused(raw: bytes, status: int = 400) -> dict[str, Any]:
    """`raw` is the whole connection: one Anthropic-shaped error, then the server closed."""
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    err: dict[str, Any] = orjson.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["request_id"].startswith("cpr_")
    assert b"request-id: " + err["request_id"].encode() in head
    assert b"connection: close" in head
    return err


BAD_HEADS = {
    "1.1 without Host": (b"GET /x HTTP/1.1\r\nuser-agent: t\r\n\r\n", "Host header"),
    "no version (HTTP/0.9)": (b"GET /x\r\n\r\n", "no HTTP version"),
    "HTTP/2.0": (b"GET /x HTTP/2.0\r\nhost: t\r\n\r\n", "HTTP/2.0"),
    "two Host headers": (b"GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "one Host"),
    "two Host on 1.0": (b"GET /x HTTP/1.0\r\nhost: a\r\nHost: b\r\n\r\n", "one Host"),
}


@pytest.mark.parametrize("raw,why", BAD_HEADS.values(), ids=BAD_HEADS.keys())
async def test_a_head_that_breaks_http_1_1_gets_400_and_never_reaches_the_app(
    serve: Serve, raw: bytes, why: str
) -> None:
    called: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await plain()(scope, receive, send)

    _, _, peer = await serve(app)
    await peer.send(raw + GET)  # what follows a refused head is never served either
    err = refused(await peer.eof())
    assert why in err["error"]["message"]
    assert called == []


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x HTTP/1.0\r\n\r\n",  # HTTP/1.0 may leave Host out
        b"GET /x HTTP/1.1\r\nhost:\r\n\r\n",  # an empty Host is allowed (RFC 9112 3.2)
        b"GET /x HTTP/1.1\r\nHOST: t\r\n\r\n",
    ],
    ids=["1.0 without Host", "empty Host", "upper-case Host"],
)
async def test_heads_that_http_1_1_allows_are_served(serve: Serve, raw: bytes) -> None:
    _, _, peer = await serve(plain())
    await peer.send(raw)
    assert (await peer.until(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    assert await peer.exactly(5) == b"hello"


# --------------------------------------------- refused heads are recorded here


class ListSink:
    """A RecordSink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def submit(self, record: RequestRecord) -> None:
        self.records.append(record)


async def test_a_refused_head_is_recorded_with_what_was_parsed(serve: Serve) -> None:
    sink = ListSink()
    _, _, peer = await serve(plain(), state={RECORD_SINK_STATE_KEY: sink})
    await peer.send(b"POST /v1/messages?beta=true HTTP/1.1\r\nuser-agent: curl/8\r\n\r\n")
    err = refused(await peer.eof())
    (record,) = sink.records
    assert record.id == err["request_id"]
    assert (record.method, record.endpoint) == ("POST", "/v1/messages")
    assert (record.status_code, record.error_type) == (400, "invalid_request_error")
    assert record.error_message == err["error"]["message"]
    assert record.refusal == "malformed_http" and record.user_agent == "curl/8"


async def test_unparseable_and_oversized_heads_are_recorded(serve: Serve) -> None:
    sink = ListSink()
    _, _, peer = await serve(plain(), state={RECORD_SINK_STATE_KEY: sink})
    await peer.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # TLS to a plain port
    err = refused(await peer.eof())
    _, _, peer = await serve(plain(), state={RECORD_SINK_STATE_KEY: sink})
    target = b"/v1/" + b"a" * 70_000  # the request line alone is over the limit
    await peer.send(b"GET " + target + b" HTTP/1.1\r\nhost: t\r\n\r\n")
    big = refused(await peer.eof(), 431)
    unparsed, oversized = sink.records
    assert unparsed.id == err["request_id"] and big["request_id"] == oversized.id
    assert (unparsed.method, unparsed.endpoint, unparsed.status_code) == ("", "(unparsed)", 400)
    assert (oversized.method, oversized.status_code) == ("GET", 431)
    assert oversized.refusal == "headers_too_large"
    assert oversized.endpoint.startswith("/v1/aaaa") and len(oversized.endpoint) <= 256


async def test_a_head_timeout_is_recorded_with_how_long_it_was_waited_for(serve: Serve) -> None:
    sink = ListSink()
    proto, _, peer = await serve(plain(), keep_alive=30, state={RECORD_SINK_STATE_KEY: sink})
    proto.head_timeout = 0.2
    await peer.send(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n")  # never ends
    timed_out(await peer.eof(), "request headers")
    (record,) = sink.records
    assert (record.method, record.endpoint) == ("GET", "/v1/models")
    assert (record.status_code, record.error_type, record.refusal) == (
        408,
        "timeout_error",
        "header_timeout",
    )
    assert record.latency_ms is not None and record.latency_ms >= 200


async def test_a_bad_head_after_an_answered_request_gets_its_own_id_and_row(
    serve: Serve,
) -> None:
    """The request before it has its own row from the app: the refusal must not reuse its
    id (one row would overwrite the other) nor be recorded twice."""
    sink = ListSink()
    first_id = new_request_id()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[REQUEST_ID_SCOPE_KEY] = first_id  # as the relay does
        await plain()(scope, receive, send)

    _, _, peer = await serve(app, state={RECORD_SINK_STATE_KEY: sink})
    await peer.send(GET)
    await peer.until(b"hello")
    await peer.send(b"NOT HTTP\r\n\r\n")  # on the same kept-alive connection
    err = refused(await peer.eof())
    assert err["request_id"] != first_id
    assert [r.id for r in sink.records] == [err["request_id"]]


async def test_a_request_the_app_saw_is_not_recorded_by_the_protocol(serve: Serve) -> None:
    """A body that stops coming is the app's to record (it gets the 408 in http.disconnect);
    a request served normally costs the protocol no record at all."""
    sink = ListSink()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    proto, _, peer = await serve(plain(), state={RECORD_SINK_STATE_KEY: sink})
    await peer.send(GET)
    await peer.until(b"hello")
    assert sink.records == []
    proto, _, peer = await serve(app, keep_alive=30, state={RECORD_SINK_STATE_KEY: sink})
    proto.body_timeout = 0.2
    await peer.send(b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n")
    timed_out(await peer.eof(), "request body")
    assert sink.records == []
