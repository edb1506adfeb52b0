"""The pooled HTTP/1.1 client towards the Anthropic API.

Hand-written on asyncio protocols with httptools' parser, on purpose: this is
the hot path, and every general-purpose client measured here (httpx, httpcore,
niquests, aiohttp) spent more CPU per request than the whole proxy budget
(docs/benchmarks.md). It does exactly what a transparent relay needs and no more:
- request bytes are written as given: method, raw path and query, client
  headers in order, body; nothing is re-quoted, decompressed or invented;
- response headers come back raw (names lowercased) and the body comes back
  as the chunks that arrived, with transfer-encoding removed: either pulled with
  `read()`, or pushed with `pump()` to a callback from the socket's read callback
  (no task wake-up per chunk: a stream's events cost a write, not a task step);
- keep-alive connections are pooled (LIFO) and reused;
- reading pauses when the consumer lags (backpressure to the upstream);
- a per-pool watchdog enforces the first-byte, idle and total timeouts without
  per-request timers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from claude_proxy.upstream.auth import UpstreamAuth

# A request body: bytes, or the bytearray a body read in parts was gathered into.
Buffer = bytes | bytearray

# Pause reading from the upstream when this much is buffered for a slow client; small so
# that 100 slow readers cost a few MB (events are ~100-500 bytes, so streams never notice).
_HIGH_WATER = 4 * 1024
# Bytes taken from the socket per read. Left to the event loop, one read after a pause
# hands over whatever the kernel holds (~256 KB), all of it then held for a slow client.
# 4 KiB holds a typical JSON answer or several SSE events; larger bodies take more reads.
_READ_SIZE = 4 * 1024
# Bodies up to this size are copied into the head's write (one system call).
_JOIN_BODY_MAX = 256 * 1024
_WATCHDOG_SECONDS = 1.0
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_DNS_TTL_SECONDS = 60.0

# pump()'s consumer: takes a chunk and whether it ends the body; returns None, or a
# future to wait for before it can take more (its client is not keeping up).
Deliver = Callable[[bytes, bool], "asyncio.Future[None] | None"]


class UpstreamError(Exception):
    """Base of the transport-level failures the relay turns into Anthropic-shaped errors."""

    def __init__(
        self, message: str, *, timeout: bool = False, sent: bool = True, local: bool = False
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        # False only when the request provably never reached the upstream (so retrying
        # it cannot run it twice): the connection itself could not be made.
        self.sent = sent
        # The proxy ended it itself (a timeout, the end of the drain), not the upstream.
        self.local = local or timeout


class ConnectError(UpstreamError):
    """No response headers arrived: refused, reset, closed early or timed out."""


class BodyError(UpstreamError):
    """The response started but its body broke off (reset, idle timeout, bad framing)."""


class UpstreamResponse:
    """A response being received. `read()` returns the next chunk, b"" at the end."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deliver",
        "_failed",
        "_hold",
        "_waiter",
        "complete",
        "error",
        "headers",
        "status",
        "until_close",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._deliver: Deliver | None = None
        self._hold: asyncio.Future[None] | None = None
        self._failed: BaseException | None = None
        self.complete = False
        self.error: UpstreamError | None = None
        self.until_close = False

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    async def read(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._take_buffered()
                self._conn.resume()  # nothing is buffered now
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()

    async def pump(self, deliver: Deliver) -> None:
        """Hand the body to `deliver` as it arrives, until its end; raises like `read()`.

        Each read from the socket goes to `deliver` from the connection's read callback:
        unlike `read()`, no future and no task step per chunk, which is most of a stream's
        per-event cost. This task only waits for the end, or for the consumer's client to
        catch up (`deliver` returned a future): reading from the upstream pauses meanwhile.
        """
        self._deliver = deliver
        try:
            while True:
                hold = self._hold
                if hold is not None:
                    await hold
                    self._hold = None
                    if not self._chunks:
                        self._conn.resume()  # else the next flush resumes, or holds again
                elif self._chunks:
                    self._flush()  # arrived before the pump started, or while held
                elif self._failed is not None:
                    raise self._failed
                elif self.error is not None:
                    raise self.error
                elif self.complete:
                    return
                else:
                    await self._wait()
        finally:
            self._deliver = None
            self._hold = None
            self._failed = None  # its traceback holds this frame (see release)

    async def _wait(self) -> None:
        """Until the connection calls `_wake` (a chunk for read(), the end, an error)."""
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take_buffered(self) -> bytes:
        """Every buffered chunk as one: under load several wait, relayed in one write."""
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return chunk

    def _flush(self) -> None:
        """Everything buffered, as one chunk, to the pump's consumer."""
        assert self._deliver is not None
        hold = self._deliver(self._take_buffered(), self.complete)
        if hold is not None:
            self._hold = hold
            self._conn.pause()
            self._wake()
        else:
            self._conn.resume()

    def _pushed(self) -> None:
        """The connection's read callback fed the parser: pump what it produced."""
        if self._chunks and self._hold is None:
            try:
                self._flush()
            except Exception as exc:  # the consumer's: raised in the pump's task
                self._failed = exc
                self._wake()

    @property
    def at_end(self) -> bool:
        """The body is complete and every chunk of it has been read."""
        return self.complete and not self._chunks and self.error is None

    def release(self) -> None:
        """Give the connection back when the body was fully read, otherwise close it."""
        if self.at_end and not self.until_close:
            self._conn.finished()
        else:
            self._conn.abort()
        # A raised error's traceback holds read()'s frame, which holds this response: drop
        # the cycle so reference counting frees both.
        self.error = None

    # --- called by the connection ------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        if self._deliver is None:  # a pump delivers once the read is parsed (_pushed)
            self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, err: UpstreamError) -> None:
        if not self.complete:
            self.error = err
        self._wake()


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; parser callbacks feed the current response.

    A buffered protocol so that each read is at most _READ_SIZE bytes, into one buffer
    the whole pool shares: the parser copies what it keeps before the next read.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        # Made once connected: its callbacks are bound methods of this object, a cycle that
        # connection_lost breaks, and a connection that never connects gets no such call.
        self.parser: httptools.HttpResponseParser
        self.resp: UpstreamResponse | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False
        self.got_bytes = False
        self.last_io = 0.0
        self.sent_at = 0.0
        self.keep_alive = True
        self.head = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpResponseParser(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.pool.recv_buffer:
            # Bounds the kernel memory a paused connection holds for a slow client (our own
            # is bounded by _READ_SIZE and _HIGH_WATER).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.pool.recv_buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.pool.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last_io = self.loop.time()
        self.got_bytes = True
        try:
            self.parser.feed_data(self.pool.read_buffer[:nbytes])
        except httptools.HttpParserError as exc:
            self._broken(f"invalid HTTP from upstream: {exc}")
            self.abort()
        resp = self.resp
        if resp is not None and resp._deliver is not None:
            resp._pushed()

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser's callbacks are bound methods of this connection, and the response
        # points back here: break both cycles so reference counting frees a closed
        # connection (http/protocol.py's ClientProtocol does the same).
        del self.parser
        self.closed = True
        self.pool.forget(self)
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp.until_close and resp.status:
                resp._finish()  # body delimited by connection close: this is its end
            else:
                self._broken("upstream connection lost")
        self.resp = None  # it points back here; whoever reads it holds it
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        resp.status = self.parser.get_status_code()
        if resp.status < 200:  # 1xx interim response: wait for the real one
            resp.headers.clear()
            return
        self.keep_alive = self.parser.should_keep_alive()
        has_length = any(n in (b"content-length", b"transfer-encoding") for n, _ in resp.headers)
        resp.until_close = not has_length and resp.status not in (204, 304)
        fut = self.headers_ready
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self.head or resp.status in (204, 304):
            resp._finish()
            self.keep_alive = False  # the parser can't be told about HEAD: don't reuse

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._push(bytes(body))

    def on_message_complete(self) -> None:
        if self.resp is not None and self.resp.status >= 200:
            self.resp._finish()

    # used by the pool and the response

    def _broken(self, message: str, *, timeout: bool = False, local: bool = False) -> None:
        resp = self.resp
        fut = self.headers_ready
        if fut is not None and not fut.done():
            fut.set_exception(ConnectError(message, timeout=timeout, local=local))
        elif resp is not None:
            resp._fail(BodyError(message, timeout=timeout, local=local))

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.last_io = self.loop.time()
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def finished(self) -> None:
        self.resp = None
        self.headers_ready = None
        if self.keep_alive and not self.closed:
            self.pool.put_back(self)
        else:
            self.abort()

    async def send(self, data: bytes, body: Buffer, head: bool) -> UpstreamResponse:
        """Write the request (`data`, then `body` when it was too large to copy into it)."""
        assert self.transport is not None
        self.head = head
        self.got_bytes = False
        self.resp = resp = UpstreamResponse(self)  # connection_lost may drop self.resp
        self.headers_ready = self.loop.create_future()
        self.last_io = self.sent_at = self.loop.time()
        self.transport.write(data)
        if body:
            self.transport.write(body)
        try:
            if self._write_paused:  # a large body: wait until the kernel took it
                self._drain = self.loop.create_future()
                await self._drain
            await self.headers_ready
        finally:
            # Done either way (None reads as done below). Kept, a failed future would hold
            # its exception, whose traceback holds this frame and so this connection: a
            # cycle only the cyclic collector frees.
            self.headers_ready = None
        return resp


class UpstreamPool:
    """Keep-alive connections to one upstream origin; built in the app's lifespan."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: UpstreamAuth,
        loop: asyncio.AbstractEventLoop,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        total_timeout: float,
        recv_buffer: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ANTHROPIC_BASE_URL must be an http(s) URL, got {parts.scheme!r}")
        self.loop = loop
        self.host = parts.hostname
        tls = parts.scheme == "https"
        default_port = 443 if tls else 80
        self.port = parts.port or default_port
        self.prefix = parts.path.rstrip("/").encode()
        host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self.host_line = b"host: " + host_header.encode("idna") + b"\r\n"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.auth = auth
        self.recv_buffer = recv_buffer
        self.read_buffer = memoryview(bytearray(_READ_SIZE))
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self._tick = max(0.05, min(_WATCHDOG_SECONDS, self.first_byte_timeout / 4,
                                   self.idle_timeout / 4))  # fmt: skip
        self.max_idle = 1024
        self._addr: str | None = None
        self._addr_expires = 0.0
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._watchdog = loop.create_task(self._watch())
        # Set when the drain window is over (abort_all): no new request is started then,
        # not even a retry that was waiting for its backoff.
        self._ended: str | None = None

    async def request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: Buffer
    ) -> UpstreamResponse:
        """Send one request and return once its response headers arrived.

        A pooled connection the server closed just as it was taken fails before any
        byte comes back. Like Go's http.Transport, the request is then sent again on a
        fresh connection only if it is idempotent (GET, HEAD, OPTIONS): a POST may
        have reached the API, which may be running it, so its failure goes to the
        client (502), whose SDK decides. A timeout or the proxy's own abort is never
        sent again.
        """
        if self._ended is not None:
            raise ConnectError(self._ended, local=True)
        parts: list[Buffer] = [method, b" ", self.prefix, target, b" HTTP/1.1\r\n", self.host_line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method in (b"POST", b"PUT", b"PATCH"):
            parts.append(b"content-length: %d\r\n" % len(body))
        parts.append(self.auth.header_lines(method, target, headers, body))  # last: it may sign
        # A small body goes in the same write as the head; a large one is written as it
        # is, so the process never holds a second copy of it (BodyBudget counts one).
        separate = len(body) > _JOIN_BODY_MAX
        parts += (b"\r\n", b"" if separate else body)
        data = b"".join(parts)
        rest = body if separate else b""
        head = method == b"HEAD"
        while True:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            self._busy.add(conn)
            try:
                return await conn.send(data, rest, head)
            except ConnectError as exc:
                if reused and not conn.got_bytes and not exc.local and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                conn.abort()  # cancelled while waiting: the upstream must see the close
                raise

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _resolve(self) -> str:
        """The upstream's address, looked up at most once a minute.

        A burst of new streams opens a burst of connections; resolving the name for
        each one (a thread-pool hop per getaddrinfo) made stream start-up the slowest
        part of the proxy. TLS still verifies and sends SNI for the host name.
        """
        now = self.loop.time()
        if self._addr is None or now > self._addr_expires:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addr = str(infos[0][4][0])
            self._addr_expires = now + _DNS_TTL_SECONDS
        return self._addr

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                addr = await self._resolve()
                _, proto = await self.loop.create_connection(
                    lambda: _Connection(self),
                    addr,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise ConnectError(
                f"Timeout (connect): no connection to the upstream API within "
                f"{self.connect_timeout:g}s",
                timeout=True,
                sent=False,
            ) from None
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to the upstream API: {exc.strerror or exc}", sent=False
            ) from None
        assert isinstance(proto, _Connection)
        return proto

    def put_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if len(self._idle) < self.max_idle:
            conn.last_io = self.loop.time()
            self._idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)

    async def _watch(self) -> None:
        """Every tick: time out slow upstreams and drop long-idle connections."""
        while True:
            await asyncio.sleep(self._tick)
            now = self.loop.time()
            for conn in list(self._busy):
                why = self._overdue(conn, now)
                if why is not None:
                    conn._broken(why, timeout=True)
                    conn.abort()
            if self._idle and now - self._idle[0].last_io > 60:
                keep = [c for c in self._idle if now - c.last_io <= 60]
                for c in self._idle:
                    if now - c.last_io > 60:
                        c.abort()
                self._idle = keep

    def _overdue(self, conn: _Connection, now: float) -> str | None:
        """Which timeout this connection's request has run past, if any."""
        resp = conn.resp
        if resp is None or resp.complete:
            return None
        if now - conn.sent_at > self.total_timeout:
            return f"Timeout (total): the upstream response took over {self.total_timeout:g}s"
        if not resp.status:
            if now - conn.sent_at > self.first_byte_timeout:
                return (
                    f"Timeout (first byte): no response from the upstream API within "
                    f"{self.first_byte_timeout:g}s"
                )
            return None
        # A paused connection is waiting for a slow client, not for the upstream.
        if not conn.paused and now - conn.last_io > self.idle_timeout:
            return f"Timeout (idle): no data from the upstream API for {self.idle_timeout:g}s"
        return None

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def abort_all(self, message: str) -> int:
        """End every request in flight with `message` (the drain window is over), and
        refuse every request started from now on with it."""
        self._ended = message
        busy = list(self._busy)
        for conn in busy:
            conn._broken(message, local=True)
            conn.abort()
        return len(busy)

    async def close(self) -> None:
        self._watchdog.cancel()
        for conn in self._idle + list(self._busy):
            conn.abort()
        self._idle.clear()
        self._busy.clear()
