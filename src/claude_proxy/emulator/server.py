"""A hand-written HTTP/1.1 server: asyncio.Protocol + httptools, keep-alive, pipelining.

This is deliberate, not a shortcut. The emulator is the upstream in the proxy's benchmarks, so it
must cost as little CPU per request as possible (a framework would cost several times more than
the proxy under test), and its fault injection needs exact control of bytes and socket that
frameworks hide: closing before any response, a chunked body ended cleanly before its last SSE
events, an RST (SO_LINGER 0) in the middle of a body, a stall that only ends when the client
goes away, and noticing at once that the client went away.

Responses are written straight to the transport: JSON with content-length, streams with chunked
transfer encoding. A handler either answers synchronously (the fast path: no task, no await) or
returns a coroutine that the connection runs as its one current task; pipelined requests wait
their turn. Writers respect backpressure: when the transport pauses writing, a stream awaits
`drain()` before writing more, so a slow reader does not grow memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, cast

import httptools

from claude_proxy.emulator.journal import ABORTED, CLIENT_CLOSED, COMPLETED, Entry
from claude_proxy.emulator.wire import (
    CHUNK_END,
    CHUNKED,
    CONTINUE_100,
    CT_JSON,
    ApiError,
    CommonHeaders,
    error_body,
    error_type_for,
    new_id,
    request_id_line,
    status_line,
)

log = logging.getLogger("claude_proxy.emulator")

MAX_BODY = 300 * 1024 * 1024
MAX_PIPELINED = 256
# Request headers the emulator looks at, by lower-case name; all headers are kept for the journal.
WANTED = frozenset(
    {b"x-api-key", b"authorization", b"anthropic-version", b"x-emulator-fault", b"host", b"expect"}
)
_LINGER_RST = struct.pack("ii", 1, 0)
_KEEP = b"\r\n"
_CLOSE = b"connection: close\r\n\r\n"


class ConnectionLost(Exception):
    """The client went away while a handler was still producing the response."""


class Request:
    """One parsed request. `wanted` holds the few headers the emulator reads, by lower-case name."""

    __slots__ = (
        "body",
        "conn",
        "entry",
        "head_only",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "request_id",
        "started",
        "too_large",
        "wanted",
    )

    def __init__(
        self,
        conn: HttpProtocol,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        wanted: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.wanted = wanted
        self.body = body
        self.keep_alive = keep_alive
        self.head_only = method == b"HEAD"
        self.request_id = ""
        self.entry: Entry | None = None
        self.started = False
        self.too_large = False


class App(Protocol):
    common: CommonHeaders

    def handle(self, req: Request) -> Coroutine[Any, Any, None] | None:
        """Answer `req` now (and return None), or return a coroutine that answers it.

        Either may raise ApiError before the response has started; the server then calls
        `error()`.
        """

    def error(self, req: Request, exc: ApiError) -> None:
        """Answer `req` with the Anthropic-shaped error `exc`."""


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_len",
        "_closed_waiter",
        "_connections",
        "_drain_waiter",
        "_headers",
        "_too_large",
        "_url",
        "_wanted",
        "app",
        "closed",
        "current",
        "parser",
        "paused",
        "pending",
        "reading_paused",
        "task",
        "transport",
    )

    def __init__(self, app: App, connections: set[HttpProtocol]) -> None:
        self.app = app
        self._connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.pending: deque[Request] = deque()
        self.current: Request | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.paused = False
        self.reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._wanted: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._too_large = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error(400, "Protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            self._protocol_error(400, f"Malformed HTTP request: {exc}")
            return
        if self.pending:
            if self.task is None:
                self._process()
            elif len(self.pending) >= MAX_PIPELINED and not self.reading_paused:
                # A client pipelining far ahead of a slow response: stop reading until it drains.
                self.reading_paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        self.pending.clear()
        if self.current is not None and self.current.entry is not None:
            self.current.entry.settle(CLIENT_CLOSED)
        if self.task is not None:
            self.task.cancel()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionLost())
            self._drain_waiter.exception()  # mark retrieved; nobody may be waiting any more
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks --------------------------------------------------------------------

    # No on_message_begin / on_headers_complete: each Python callback costs on the hot path, so
    # per-message state is reset in on_message_complete instead, and Expect is handled here.

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        low = name.lower()
        if low in WANTED:
            self._wanted[low] = value
            if low == b"expect" and value.lower() == b"100-continue":
                self.transport.write(CONTINUE_100)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > MAX_BODY:
            self._too_large = True
            self._body = []
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        path, _, query = url.partition(b"?")
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        req = Request(
            self,
            self.parser.get_method(),
            path,
            query,
            self._headers,
            self._wanted,
            body,
            bool(self.parser.should_keep_alive()),
        )
        req.too_large = self._too_large
        self.pending.append(req)
        self._url = b""
        self._headers = []
        self._wanted = {}
        self._body = []
        self._body_len = 0
        self._too_large = False

    # --- dispatch -------------------------------------------------------------------------------

    def _process(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        while self.pending and self.task is None and not self.closed:
            req = self.pending.popleft()
            try:
                coro = self.app.handle(req)
            except ApiError as exc:
                self.app.error(req, exc)
                continue
            except Exception:
                log.exception("emulator handler failed")
                self._internal_error(req)
                continue
            if coro is not None:
                self.current = req
                self.task = asyncio.get_running_loop().create_task(self._run(req, coro))

    async def _run(self, req: Request, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            if not self.closed:
                raise
        except ConnectionLost:
            pass
        except ApiError as exc:
            if not self.closed:
                if req.started:
                    self.abort(req)
                else:
                    self.app.error(req, exc)
        except Exception:
            log.exception("emulator handler failed")
            if not self.closed:
                self._internal_error(req)
        finally:
            self.task = None
            self.current = None
            if not self.closed:
                if not req.keep_alive:
                    self.transport.close()
                elif self.pending:
                    self._process()

    def _internal_error(self, req: Request) -> None:
        if req.started:
            self.abort(req)
            return
        if not req.request_id:
            req.request_id = new_id("req_")
        head = CT_JSON + request_id_line(req.request_id) + self.app.common.basic()
        self.respond(
            req, 500, head, error_body("api_error", "Internal server error", req.request_id)
        )

    def _protocol_error(self, status: int, message: str) -> None:
        if self.closed:
            return
        rid = new_id("req_")
        body = error_body(error_type_for(status), message, rid)
        head = status_line(status) + CT_JSON + request_id_line(rid) + self.app.common.basic()
        self.transport.write(head + b"content-length: %d\r\n" % len(body) + _CLOSE + body)
        self.transport.close()

    # --- writing --------------------------------------------------------------------------------

    def respond(self, req: Request, status: int, head: bytes, body: bytes) -> None:
        """A whole response with content-length. `head` is header lines without the length."""
        if self.closed or self.transport.is_closing():
            return
        req.started = True
        out = b"".join(
            (
                status_line(status),
                head,
                b"content-length: %d\r\n" % len(body),
                _KEEP if req.keep_alive else _CLOSE,
                b"" if req.head_only else body,
            )
        )
        self.transport.write(out)
        entry = req.entry
        if entry is not None:
            entry.status = status
            entry.settle(COMPLETED)
        if not req.keep_alive:
            self.transport.close()

    def start_stream(self, req: Request, status: int, head: bytes) -> None:
        """Response headers with `transfer-encoding: chunked`; follow with send()/end_stream()."""
        self._check()
        req.started = True
        self.transport.write(
            status_line(status) + head + CHUNKED + (_KEEP if req.keep_alive else _CLOSE)
        )
        if req.entry is not None:
            req.entry.status = status

    def start_raw(self, req: Request, status: int, head: bytes, content_length: int) -> None:
        """Response headers with a content-length, for a body written later with send()."""
        self._check()
        req.started = True
        self.transport.write(
            status_line(status)
            + head
            + b"content-length: %d\r\n" % content_length
            + (_KEEP if req.keep_alive else _CLOSE)
        )
        if req.entry is not None:
            req.entry.status = status

    def send(self, data: bytes) -> None:
        """Write bytes as they are (already chunk-framed for streams)."""
        self._check()
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport accepts more data (no-op unless writing is paused)."""
        self._check()
        if self.paused:
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            await waiter

    def end_stream(self, req: Request) -> None:
        """The chunked terminator; the response is complete."""
        self._check()
        self.transport.write(CHUNK_END)
        if req.entry is not None:
            req.entry.settle(COMPLETED)

    def abort(self, req: Request) -> None:
        """Cut the connection with a TCP RST (SO_LINGER 0), wherever the response is."""
        if req.entry is not None:
            req.entry.settle(ABORTED)
        if self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self.transport.abort()

    def drop(self, req: Request) -> None:
        """Close the connection cleanly (FIN) without finishing the response."""
        if req.entry is not None:
            req.entry.settle(ABORTED)
        if not self.closed:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Until the client goes away (the task is also cancelled then)."""
        if self.closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await self._closed_waiter

    def _check(self) -> None:
        if self.closed or self.transport.is_closing():
            raise ConnectionLost()
