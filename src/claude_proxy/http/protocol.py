"""The server side of a client connection: HTTP/1.1 in, ASGI to the app, run by uvicorn.Server.

Hand-written on httptools' parser, on purpose: it is the hot path. uvicorn's own protocol
paid, per request, two regular-expression scans per response header, an asyncio.Event,
a keep-alive timer armed and cancelled, a wrapper coroutine, and a second task the relay
needed to notice a client leaving; profiles put that near a fifth of the proxy's CPU per
request (docs/benchmarks.md). This one keeps what a relay needs and the ASGI contract the
admin API and the tests rely on:
- keep-alive, pipelining (one response at a time, in order), `Expect: 100-continue`,
  HEAD, chunked framing when a response has no content-length, HTTP/1.0;
- request bodies buffered up to 64 KiB before reading pauses;
- a bounded write buffer per connection: 4 KiB queue in user space before the app's
  `send` waits (uvloop's 64 KiB default, plus the upstream's read-ahead, made each
  stream to a slow client hold ~400 KB; 100 slow readers now cost ~3 MB);
- a response's head leaves with its body in one write(2), or at the end of the event
  loop's current turn if the body is not ready then (a stream's head is never held
  behind its first event);
- a client that goes away calls the callback the app registered through the
  `claude_proxy.disconnect` ASGI extension, instead of the app parking a task in
  `receive()` to find out;
- the `claude_proxy.write_body` ASGI extension writes a body part without a message
  dict or a coroutine, so the relay can write a stream's chunks from the upstream's read
  callback (upstream/pool.py: UpstreamResponse.pump) rather than wake its task for each;
- open connections are counted into the app's Telemetry (found in the lifespan state);
- a request head that breaks HTTP/1.1 (unparseable, no HTTP version or one other than 1.0
  and 1.1, an HTTP/1.1 request without a Host header, more than one Host header), one over
  64 KiB, or one that does not arrive in time is answered here (400, 431, 408) and never
  reaches the app; this protocol records it itself, through the record sink the app puts
  in the lifespan state, so that every request that reached the proxy has its row.

uvicorn.Server still runs the sockets, the lifespan, the signals and the graceful
shutdown; it builds one of these per connection (`Config(http=ClientProtocol)`).
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import httptools

from claude_proxy.store.records import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_SHORT_TEXT_CHARS,
    MAX_USER_AGENT_CHARS,
    RecordSink,
    RequestRecord,
    bounded,
    new_request_id,
)

log = logging.getLogger("claude_proxy.server")

TELEMETRY_STATE_KEY = "claude_proxy.telemetry"
# Where the app puts its RecordSink in the lifespan state: requests this protocol refuses
# before the app sees them (malformed, oversized or late heads) are recorded through it.
RECORD_SINK_STATE_KEY = "claude_proxy.record_sink"
# A refused head's row when its request line was not parsed as far as the target.
UNPARSED_ENDPOINT = "(unparsed)"
# The ASGI extension through which the app learns that the client left (see module doc).
DISCONNECT_EXTENSION = "claude_proxy.disconnect"
# The ASGI extension `write_body(body, more) -> future | None`: what `send` does with an
# `http.response.body` message, synchronously; it returns a future to wait for before
# writing more when the client is not keeping up (see _Exchange.write_body).
WRITE_BODY_EXTENSION = "claude_proxy.write_body"
# Where in the scope an app may put its id for the request: an error this protocol answers
# for it (a body that stopped coming) then carries the id the app logs it under.
REQUEST_ID_SCOPE_KEY = "claude_proxy.request_id"
# In the `http.disconnect` an app receives when this protocol itself answered the request
# (a 408 for a body that stopped coming): (status, error type, message), for its record.
ANSWERED_KEY = "claude_proxy.answered"

CLIENT_WRITE_HIGH_WATER = 4 * 1024
# The request line and headers together (the ALB allows 64 KB too): httptools sets no
# limit, so without this a client could grow one request's headers without bound.
MAX_HEAD_BYTES = 64 * 1024
# The defaults of how long a client may take to send a whole request head once it began
# one, and to go on with a body the app is waiting for (since its last bytes): nginx's
# client_header_timeout and client_body_timeout. Past either the request gets a 408 and
# the connection closes, so a stalled or trickling client cannot hold a connection and a
# task forever. The server sets them from the settings (ClientProtocol.with_timeouts).
HEAD_TIMEOUT_SECONDS = 30.0
BODY_TIMEOUT_SECONDS = 60.0
# How long a client may take none of a response (the write buffer stays full) before the
# connection is dropped: nginx's send_timeout. The relay then records the client as gone.
SEND_TIMEOUT_SECONDS = 60.0
_BODY_HIGH_WATER = 64 * 1024
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEAD_TIMED_OUT = "Timed out reading the request headers."
# The `refusal` of a row this protocol records, by the status it answered.
_REFUSALS = {400: "malformed_http", 408: "header_timeout", 431: "headers_too_large"}


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}


# How the errors this protocol answers itself look: (error type, message, request id) →
# the response's headers (content type and length, request id) and body. The wire format
# decides (the app's formats/); this protocol only frames them.
ErrorAnswer = Callable[[str, str, str], tuple[list[tuple[bytes, bytes]], bytes]]


class ClientProtocol(asyncio.Protocol):
    """One client connection. Constructed by uvicorn.Server with its config and state;
    `configured` makes the class to give it."""

    head_timeout = HEAD_TIMEOUT_SECONDS
    body_timeout = BODY_TIMEOUT_SECONDS
    send_timeout = SEND_TIMEOUT_SECONDS
    error_answer: ErrorAnswer

    @classmethod
    def configured(
        cls,
        *,
        error_answer: ErrorAnswer,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> type[ClientProtocol]:
        """This protocol with these errors and client timeouts (uvicorn.Config takes a
        class)."""
        attrs = {
            "head_timeout": head_timeout,
            "body_timeout": body_timeout,
            "send_timeout": send_timeout,
            "error_answer": staticmethod(error_answer),
        }
        return type(cls.__name__, (cls,), attrs)

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.app_state = app_state
        self.server_state = server_state
        self.keep_alive_seconds: float = config.timeout_keep_alive
        self.root_path: str = config.root_path
        self.parser = httptools.HttpRequestParser(self)
        # Answer the first of pipelined requests even when the client half-closed after it.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.telemetry: Any = None
        # The exchange whose response is being written, the one being parsed (the same,
        # unless the client pipelines), and parsed ones waiting their turn.
        self.active: _Exchange | None = None
        self.parsing: _Exchange | None = None
        self.waiting: deque[_Exchange] = deque()
        self.mid_message = False
        self.read_paused = False
        self.write_paused = False
        self.writable: asyncio.Future[None] | None = None
        self.send_timer: asyncio.TimerHandle | None = None  # armed while write_paused
        # While the connection waits on the client: since when, for how long at most, and
        # the 408's message once that is over (None: idle between requests, closed quietly).
        self.idle_since: float | None = None
        self.wait_limit = self.keep_alive_seconds
        self.wait_error: str | None = None
        self.keep_alive_timer: asyncio.TimerHandle | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.head_budget = MAX_HEAD_BYTES
        self.hosts = 0  # Host headers in the head being parsed
        self.head_error: str | None = None  # why a parsed head was refused (a 400)

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)
        t.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        self.server = _address(t.get_extra_info("sockname"))
        self.client = _address(t.get_extra_info("peername"))
        if t.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        telemetry = self.app_state.get(TELEMETRY_STATE_KEY)
        if telemetry is not None:
            self.telemetry = telemetry
            telemetry.connection_opened()
        self._went_idle()

    def data_received(self, data: bytes) -> None:
        if not self.mid_message and self.wait_error is None:
            # The first bytes of a request head (it is cleared once the head is whole).
            self._wait_for_client(self.head_timeout, _HEAD_TIMED_OUT)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades (WebSocket) here: the request was answered as plain HTTP
        except httptools.HttpParserError:
            if self.head_error is not None:
                self._bad_request(400, self.head_error)
            elif self.head_budget < 0:
                self._bad_request(431, f"Request headers exceed {MAX_HEAD_BYTES} bytes.")
            else:
                self._bad_request(400, "Invalid HTTP request received.")

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser holds bound methods of this protocol: a cycle the cyclic collector
        # would have to find (see _Exchange.app_finished). Nothing parses after this.
        del self.parser
        self.server_state.connections.discard(self)
        for ex in (self.active, self.parsing, *self.waiting):
            if ex is not None:
                ex.client_gone()
        self.active = self.parsing = None  # each exchange points back here
        self.waiting.clear()
        self._resume_writers()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        if self.keep_alive_timer is not None:
            self.keep_alive_timer.cancel()
            self.keep_alive_timer = None
        if self.telemetry is not None:
            self.telemetry.connection_closed()
            self.telemetry = None

    def eof_received(self) -> bool | None:
        return None  # half-closed by the client: close once the response is out

    def pause_writing(self) -> None:
        self.write_paused = True
        # Only a client that is not keeping up gets here: a timer per pause is cheap.
        if self.send_timer is None:
            self.send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        self._resume_writers()

    def _send_timed_out(self) -> None:
        """The client took none of the response for send_timeout seconds: drop it, so that
        the request ends (the relay sees the client gone) and its row is written."""
        self.send_timer = None
        if not self.write_paused or self.transport is None or self.transport.is_closing():
            return
        active = self.active
        rid = active.scope.get(REQUEST_ID_SCOPE_KEY) if active is not None else None
        log.warning(
            "The client took no response data for %gs: closing the connection request_id=%s",
            self.send_timeout,
            rid or "-",
        )
        self.transport.abort()  # what is buffered for it is dropped

    # --- called by uvicorn.Server ------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: close when idle, or after the response in progress."""
        active = self.active
        if active is None or active.complete:
            if self.transport is not None:
                self.transport.close()
        else:
            active.keep_alive = False
        self.waiting.clear()

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.mid_message = True
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self.head_budget = MAX_HEAD_BYTES
        self.hosts = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_budget -= len(url)
        if self.head_budget < 0:
            raise ValueError("request head too large")  # feed_data raises a parser error

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_budget -= len(name) + len(value) + 4
        if self.head_budget < 0:
            raise ValueError("request head too large")
        name = name.lower()
        if name == b"host":
            self.hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version != "1.1" or self.hosts != 1:  # one comparison on the common path
            problem = _head_problem(http_version, self.hosts)
            if problem is not None:
                self.head_error = problem
                raise ValueError(problem)  # feed_data raises a parser error: a 400
        self._stop_waiting()
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        ex = _Exchange(
            self,
            parser.get_method().decode("ascii"),
            http_version != "1.0" and parser.should_keep_alive(),
            self.expect_continue,
        )
        ex.scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "method": ex.method,
            "path": self.root_path + path if self.root_path else path,
            "raw_path": self.root_path.encode("ascii") + raw_path if self.root_path else raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "state": self.app_state.copy(),
            "extensions": {
                DISCONNECT_EXTENSION: ex.on_disconnect,
                WRITE_BODY_EXTENSION: ex.write_body,
            },
        }
        self.parsing = ex
        if self.active is None:
            self._start(ex)
        else:  # pipelined: answered after the one in progress
            self.waiting.append(ex)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.complete:
            return  # the app already answered without reading it all: drop the rest
        ex.body += body
        if len(ex.body) > _BODY_HIGH_WATER:
            self._pause_reading()
        ex.wake()

    def on_message_complete(self) -> None:
        self.mid_message = False
        ex = self.parsing
        if ex is not None:
            ex.more_body = False
            ex.wake()

    # --- used by the exchanges ---------------------------------------------------------

    def _start(self, ex: _Exchange) -> None:
        self.active = ex
        task = self.loop.create_task(self.app(ex.scope, ex.receive, ex.send))
        self.server_state.tasks.add(task)
        task.add_done_callback(ex.app_finished)

    def _exchange_done(self, ex: _Exchange) -> None:
        """The response is out and the connection stays: start the next request or idle."""
        self.server_state.total_requests += 1
        if self.active is ex:
            self.active = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.waiting:
            self._start(self.waiting.popleft())
            if not self.waiting:
                self._resume_reading()
            return
        self._resume_reading()
        if not self.mid_message:
            self._went_idle()
        elif self.wait_error is None:
            # Part of the next request's head came with this one's (pipelined): its clock
            # starts now that the connection is free, or it would have none at all.
            self._wait_for_client(self.head_timeout, _HEAD_TIMED_OUT)

    def _went_idle(self) -> None:
        """Close the connection once it has been idle for the keep-alive timeout."""
        self._wait_for_client(self.keep_alive_seconds, None)

    def _wait_for_client(self, limit: float, error: str | None) -> None:
        """Start the clock on the client: `limit` seconds from now, then `_timer_fired`.

        One timer per connection, re-armed only when it fires early (or would fire too
        late), instead of one armed and cancelled per request."""
        now = self.loop.time()
        self.idle_since = now
        self.wait_limit = limit
        self.wait_error = error
        timer = self.keep_alive_timer
        if timer is not None and timer.when() > now + limit:
            timer.cancel()
            timer = None
        if timer is None:
            self.keep_alive_timer = self.loop.call_later(limit, self._timer_fired)

    def _stop_waiting(self) -> None:
        self.idle_since = None
        self.wait_error = None

    def _timer_fired(self) -> None:
        self.keep_alive_timer = None
        since = self.idle_since
        if since is None or self.transport is None or self.transport.is_closing():
            return  # busy: the end of the current response re-arms it
        active = self.active
        if self.read_paused or (
            # A pipelined head: the client waits for the response before it, still going.
            self.wait_error is _HEAD_TIMED_OUT and active is not None and not active.complete
        ):  # the proxy is behind, not the client
            since = self.idle_since = self.loop.time()
        left = since + self.wait_limit - self.loop.time()
        if left > 0:
            self.keep_alive_timer = self.loop.call_later(left, self._timer_fired)
        elif self.wait_error is None:
            self.transport.close()
        else:
            self._bad_request(408, self.wait_error, "timeout_error")

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _until_writable(self) -> asyncio.Future[None]:
        """Done once the client has taken enough of the write buffer (or has gone)."""
        if self.writable is None:
            self.writable = self.loop.create_future()
        return self.writable

    def _resume_writers(self) -> None:
        w = self.writable
        if w is not None:
            self.writable = None
            if not w.done():
                w.set_result(None)

    def _bad_request(
        self, status: int, message: str, error_type: str = "invalid_request_error"
    ) -> None:
        """Unparseable, oversized or stalled HTTP: an Anthropic-shaped error, and the
        connection is closed (nothing after it on this connection can be trusted to be a
        request). An app still waiting for this request's body sees the client gone, and
        records it; a request the app never saw is recorded here."""
        active = self.active
        if active is not None and active.complete:
            active = None  # that one was answered: what failed is the next request
        answer = active is None or not active.started  # not mid-response
        rid = active.scope.get(REQUEST_ID_SCOPE_KEY) if active is not None and answer else None
        rid = rid or new_request_id()
        log.warning("%s request_id=%s", message, rid)
        if self.transport is None or self.transport.is_closing():
            return
        if answer:
            self.transport.write(
                _error_response(status, self.error_answer(error_type, message, rid))
            )
        if active is not None:  # before the app could write a second response
            active.client_gone((status, error_type, message) if answer else None)
        else:
            self._record_refusal(rid, status, error_type, message)
        self.transport.close()

    def _record_refusal(self, rid: str, status: int, error_type: str, message: str) -> None:
        """The row of a request refused before the app saw it: only refusals pay for this.

        Method, endpoint (the target's path, as sent) and user agent as far as the head
        was parsed; method "" and endpoint "(unparsed)" when the request line was not."""
        sink: RecordSink | None = self.app_state.get(RECORD_SINK_STATE_KEY)
        if sink is None:
            return
        latency_ms = None
        if self.wait_error is _HEAD_TIMED_OUT and self.idle_since is not None:
            latency_ms = max(0.0, (self.loop.time() - self.idle_since) * 1000)
        method, endpoint, user_agent = "", UNPARSED_ENDPOINT, None
        if self.mid_message and self.url:  # the method was valid, the target begun
            method = self.parser.get_method().decode("ascii", "replace")
            endpoint = _target_path(self.url) or UNPARSED_ENDPOINT
            for name, value in self.headers:
                if name == b"user-agent":
                    user_agent = bounded(value.decode("latin-1"), MAX_USER_AGENT_CHARS)
        record = RequestRecord(
            id=rid,
            created_at=time.time() - (latency_ms or 0.0) / 1000,
            method=method,
            endpoint=endpoint,
            status_code=status,
            error_type=error_type,
            error_message=bounded(message, MAX_ERROR_MESSAGE_CHARS),
            latency_ms=latency_ms,
            client_ip=self.client[0] if self.client else None,
            user_agent=user_agent,
            refusal=_REFUSALS.get(status),
        )
        try:
            sink.submit(record)
        except Exception:  # a record lost must not keep the 400 from being answered
            log.exception("could not record a refused request request_id=%s", rid)


class _Exchange:
    """One request and its response: the ASGI `receive` and `send` the app is given."""

    __slots__ = (
        "answered",
        "body",
        "chunked",
        "complete",
        "delivered",
        "disconnected",
        "expect_continue",
        "gone_callback",
        "held_head",
        "keep_alive",
        "method",
        "more_body",
        "proto",
        "remaining",
        "scope",
        "started",
        "waiter",
    )

    def __init__(
        self, proto: ClientProtocol, method: str, keep_alive: bool, expect_continue: bool
    ) -> None:
        self.proto = proto
        self.method = method
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.scope: dict[str, Any] = {}
        self.body = bytearray()
        self.more_body = True
        self.delivered = False  # the body's end was handed to the app
        self.waiter: asyncio.Future[None] | None = None
        self.gone_callback: Callable[[], None] | None = None
        self.disconnected = False
        self.answered: tuple[int, str, str] | None = None
        self.started = False
        self.complete = False
        self.chunked = False
        self.remaining = -1  # bytes still due by content-length; -1: none was given
        self.held_head: bytes | None = None

    # --- the app's side ----------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        proto = self.proto
        if self.expect_continue:
            self.expect_continue = False
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.write(_CONTINUE)
        while not (self.disconnected or self.complete):
            if not self.delivered and (self.body or not self.more_body):
                body = bytes(self.body)
                self.body.clear()
                more = self.more_body
                if more:
                    if proto.parsing is self:
                        proto._resume_reading()
                else:
                    self.delivered = True
                return {"type": "http.request", "body": body, "more_body": more}
            waiting_on_body = self.more_body and proto.parsing is self
            if waiting_on_body:
                proto._resume_reading()
                proto._wait_for_client(proto.body_timeout, "Timed out reading the request body.")
            self.waiter = proto.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
                if waiting_on_body:
                    proto._stop_waiting()
        if self.answered is not None:
            return {"type": "http.disconnect", ANSWERED_KEY: self.answered}
        return {"type": "http.disconnect"}

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """The DISCONNECT_EXTENSION: `callback` runs if the client leaves before the
        response is complete (at most once; a second registration replaces the first)."""
        self.gone_callback = callback

    async def send(self, message: dict[str, Any]) -> None:
        proto = self.proto
        if proto.write_paused and not self.disconnected:
            await proto._until_writable()
        if self.disconnected:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got '{message['type']}'")
            self._start_response(message["status"], message.get("headers", ()))
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' after the response")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected 'http.response.body', got '{message['type']}'")
        self.write_body(message.get("body", b""), message.get("more_body", False))

    def write_body(self, body: bytes, more: bool) -> asyncio.Future[None] | None:
        """The WRITE_BODY_EXTENSION: an `http.response.body` message's work, synchronously.

        Returns None when the client can take more now, else a future that is done once it
        can: the caller waits for it before writing again (backpressure), as `send` does.
        A client that has gone takes nothing, silently (the disconnect callback says so)."""
        if self.disconnected:
            return None
        if not self.started or self.complete:
            raise RuntimeError("A response body must follow the response start")
        if self.method == "HEAD":
            data = b""
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
            if self.remaining >= 0:
                self.remaining -= len(body)
                if self.remaining < 0:
                    raise RuntimeError("Response content longer than Content-Length")
        self._write(data)
        if not more:
            if self.remaining > 0 and self.method != "HEAD":
                raise RuntimeError("Response content shorter than Content-Length")
            self._finish()
        proto = self.proto
        return proto._until_writable() if proto.write_paused and not self.disconnected else None

    def _start_response(self, status: int, headers: Any) -> None:
        parts = [_STATUS_LINE[status]]
        default = self.proto.server_state.default_headers
        lines = 2  # the status line and the blank line
        length_seen = close_seen = False
        for name, value in (*default, *headers) if default else headers:
            name = name.lower()
            if name == b"content-length" and not length_seen:
                length_seen = True
                self.remaining = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.chunked = True
                length_seen = True
                self.remaining = -1
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                close_seen = True
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        if not self.keep_alive and not close_seen:
            parts.append(b"connection: close\r\n")
            lines += 1
        if not length_seen and self.method != "HEAD" and status not in _NO_BODY_STATUS:
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Response splitting: a CR or LF inside any name or value adds to these counts.
        # Two C-level scans of the head instead of two regex scans per header.
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise RuntimeError("Invalid HTTP header: CR or LF in a response header")
        self.started = True
        self.expect_continue = False
        if status < 200 or self.method == "HEAD" or status in _NO_BODY_STATUS:
            self.remaining = -1
        # Held until the body's first write or the end of this loop turn: one write(2).
        self.held_head = head
        self.proto.loop.call_soon(self._flush_head)

    def _write(self, data: bytes) -> None:
        transport = self.proto.transport
        assert transport is not None
        head = self.held_head
        if head is not None:
            self.held_head = None
            data = head + data
        if data:
            transport.write(data)

    def _flush_head(self) -> None:
        head = self.held_head
        if head is not None and not self.disconnected:
            self.held_head = None
            transport = self.proto.transport
            if transport is not None and not transport.is_closing():
                transport.write(head)

    def _finish(self) -> None:
        self.complete = True
        self.wake()
        proto = self.proto
        if not self.keep_alive:
            if proto.transport is not None:
                proto.transport.close()
            if proto.active is self:
                proto.active = None
            return
        proto._exchange_done(self)

    # --- the connection's side ---------------------------------------------------------

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def client_gone(self, answered: tuple[int, str, str] | None = None) -> None:
        """The client left, or the protocol answered the request itself (`answered`)."""
        if self.complete:
            return
        if answered is not None:
            self.answered = answered
        self.disconnected = True
        self.held_head = None
        self.wake()
        callback = self.gone_callback
        if callback is not None:
            self.gone_callback = None
            callback()

    def app_finished(self, task: asyncio.Task[None]) -> None:
        """The app's task ended: make sure the client got a complete response."""
        # Break this exchange's reference cycle (scope -> extensions -> on_disconnect ->
        # self), so that reference counting frees the request, its task and what the app's
        # disconnect callback holds now. Left to the cyclic collector, every request's
        # objects pile up until a full collection, which stalls every open stream.
        self.scope = {}
        proto = self.proto
        proto.server_state.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("exception in the ASGI app", exc_info=exc)
        transport = proto.transport
        if self.complete or self.disconnected or transport is None or transport.is_closing():
            return
        if not self.started:
            if exc is None and not task.cancelled():
                log.error("the ASGI app returned without starting a response")
            rid = new_request_id()
            answer = proto.error_answer("api_error", "Internal proxy error.", rid)
            transport.write(_error_response(500, answer))
        else:  # a response cut short: closing tells the client it is incomplete
            self._write(b"")
            if exc is None:  # the relay does this on purpose, having logged why
                log.info("response cut short: closing the connection")
        self.complete = True
        transport.close()
        if proto.active is self:
            proto.active = None


def _head_problem(http_version: str, hosts: int) -> str | None:
    """Why a parsed request head breaks HTTP/1.1 (RFC 9112), or None if it does not."""
    if http_version == "0.9":
        return "The request line has no HTTP version: send HTTP/1.1."
    if http_version not in ("1.0", "1.1"):
        return f"HTTP/{http_version} is not supported here: send HTTP/1.1."
    if hosts > 1:
        return "A request must have at most one Host header."
    if hosts == 0 and http_version == "1.1":
        return "An HTTP/1.1 request must have a Host header."
    return None


def _target_path(url: bytes) -> str:
    """The path of a request target as sent (no query), capped: for a refused head's row."""
    try:
        path: bytes = httptools.parse_url(url).path or b""
    except httptools.HttpParserInvalidURLError:
        path = url.partition(b"?")[0]
    return bounded(path.decode("latin-1"), MAX_SHORT_TEXT_CHARS) or ""


def _error_response(status: int, answer: tuple[list[tuple[bytes, bytes]], bytes]) -> bytes:
    """A whole error response, written straight to the transport (no app to send it)."""
    headers, body = answer
    headers = [*headers, (b"connection", b"close")]
    lines = b"".join(b"%b: %b\r\n" % header for header in headers)
    return _STATUS_LINE[status] + lines + b"\r\n" + body


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
