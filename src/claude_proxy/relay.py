"""The /v1 relay: forward one request upstream and relay its response.

Flow: headers split → key check (auth.py) → body read (size-capped) → limits
(limits.py: model allowlist, budget, RPM/TPM) → upstream request with the real
key → response headers and bytes relayed unchanged as they arrive, while a
ResponseObserver reads a copy → one RequestRecord handed to the sink, however
the request ended.

A client that goes away cancels the request's task, which closes the upstream
connection at once; an upstream that dies mid-stream gets an SSE `error` event
so the SDK raises instead of returning a silently truncated message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NoReturn

import orjson

from claude_proxy.auth import BadKeyThrottle, KeyCache, KeyInfo, KeyStoreUnavailable
from claude_proxy.client_protocol import (
    ANSWERED_KEY,
    DISCONNECT_EXTENSION,
    REQUEST_ID_SCOPE_KEY,
    WRITE_BODY_EXTENSION,
)
from claude_proxy.dispatch import Dispatcher, Failed
from claude_proxy.drain import Drain
from claude_proxy.errors import STATUS_FOR_TYPE, send_error, sse_error_event
from claude_proxy.headers import ClientHeaders, filter_response_headers, split_request_headers
from claude_proxy.limits import Limiter, Refusal
from claude_proxy.records import RecordSink, RequestRecord, new_request_id
from claude_proxy.sse import ResponseObserver
from claude_proxy.telemetry import Telemetry
from claude_proxy.types import Message, Receive, Scope, Send
from claude_proxy.upstream import BodyError

log = logging.getLogger("claude_proxy.relay")

# Endpoints whose request body must be a JSON object (the proxy reads model/stream from it).
_JSON_ENDPOINTS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_BATCHES = "/v1/messages/batches"
_KNOWN_PATHS = frozenset(
    {"/v1/messages", "/v1/messages/count_tokens", "/v1/models", _BATCHES, "/v1/files"}
)
# A key the proxy cannot check right now: the SDKs retry a 503 with this advice.
_KEY_STORE_DOWN = (
    "The proxy cannot verify this API key right now: its key database is unreachable. "
    "Retry shortly."
)


class ClientGone(Exception):
    """Nothing more can be said to the client: it left mid-body, or a plain body broke off."""


def _body_cut(disconnect: Message, record: RequestRecord) -> NoReturn:
    """The body will not come: the client left, or the server answered for it (a 408 for a
    body that stopped coming), and the record says which."""
    answered = disconnect.get(ANSWERED_KEY)
    if answered is not None:
        record.status_code, record.error_type, record.error_message = answered
    raise ClientGone()


def endpoint_label(path: str) -> str:
    """A low-cardinality name for records, metrics and spans: ids are folded to {id}
    (`/v1/models/{id}`, `/v1/messages/batches/{id}/results`, `/v1/files/{id}/content`),
    and paths deeper than /v1 plus four segments are cut."""
    if path in _KNOWN_PATHS:
        return path
    parts = path.split("/")[:6]  # "", "v1", and at most four more
    for i in range(2, len(parts)):
        p = parts[i]
        if len(p) > 24 or any(c.isdigit() for c in p) or not p.replace("_", "").isalpha():
            parts[i] = "{id}"
    return "/".join(parts)


class Relay:
    def __init__(
        self,
        keys: KeyCache,
        limiter: Limiter,
        throttle: BadKeyThrottle,
        dispatcher: Dispatcher,
        sink: RecordSink,
        drain: Drain,
        telemetry: Telemetry,
        max_body: int,
        body_cap: int = 0,
    ) -> None:
        self.telemetry = telemetry
        self.keys = keys
        self.limiter = limiter
        self.throttle = throttle
        self.dispatcher = dispatcher
        self.drain = drain
        self.sink = sink
        self.max_body = max_body
        # > 0 only with CLAUDE_PROXY_LOG_BODIES=true: bytes of each body kept on the record.
        self.body_cap = body_cap
        # Built in the app's lifespan, on the loop that serves it. current_task(loop) skips
        # get_running_loop(), which on Python 3.11 is a getpid() system call per request.
        self._loop = asyncio.get_running_loop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        client = scope.get("client")
        record = RequestRecord(
            id=new_request_id(),
            created_at=time.time(),
            method=scope["method"],
            endpoint=endpoint_label(path),
            client_ip=client[0] if client else None,
        )
        scope[REQUEST_ID_SCOPE_KEY] = record.id
        tracing = self.telemetry.tracing
        span = tracing.start_request(record, scope["headers"]) if tracing is not None else None
        try:
            await self._handle(scope, receive, send, record, started, span)
        except ClientGone:
            # Nothing more can be said to this client; the server closes the connection.
            record.client_disconnected = record.error_type is None
        except Exception:
            log.exception("unexpected error in the relay request_id=%s", record.id)
            if record.status_code is None:  # nothing sent yet: answer in the API's shape
                await self._fail(send, record, "api_error", "Internal proxy error.", 500)
            else:
                raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            status = record.status_code or 0
            self.telemetry.request_finished(
                # 5xx the proxy made without the upstream's part: not a breaker refusal.
                proxy_error=status >= 500
                and record.upstream_attempts == 0
                and record.error_type != "overloaded_error"
            )
            if tracing is not None:
                tracing.finish_request(span, record)
            self.sink.submit(record)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: RequestRecord,
        started: float,
        span: object,
    ) -> None:
        rid = record.id
        hdrs = split_request_headers(scope["headers"])
        record.user_agent = hdrs.user_agent
        record.anthropic_beta = hdrs.anthropic_beta
        record.claude_code_session_id = hdrs.claude_code_session_id

        key = await self._authenticate(hdrs, record, send)
        if key is None:
            return

        if hdrs.content_length is not None and hdrs.content_length > self.max_body:
            return await self._refuse(send, record, "request_too_large", self._too_large_msg())
        body = await self._read_body(receive, record)
        if body is None:
            return await self._refuse(send, record, "request_too_large", self._too_large_msg())

        if record.method == "POST" and record.endpoint in _JSON_ENDPOINTS:
            parsed = _parse_json_object(body)
            if parsed is None:
                return await self._refuse(
                    send, record, "invalid_request_error", "The request body is not valid JSON."
                )
            _note_request(record, parsed)
        models = [record.model] if record.model else []
        if key.models is not None and record.method == "POST" and record.endpoint == _BATCHES:
            batch_models = _batch_models(body)
            if batch_models is None:
                return await self._refuse(
                    send, record, "invalid_request_error", "The request body is not valid JSON."
                )
            models = batch_models

        now = time.time()
        refusal = self.limiter.check(key, models, now)
        if refusal is not None:
            return await self._refuse_for(send, record, refusal)
        self.limiter.admit(key, now)

        if self.body_cap:
            record.request_body = _clip(body, self.body_cap)

        # From here on a client disconnect must stop upstream work: watch for it.
        task = asyncio.current_task(self._loop)
        assert task is not None
        state = _Watch(task)
        watcher = None
        on_disconnect = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        if on_disconnect is not None:
            on_disconnect(state.client_gone)  # our server calls back: no task parked
        else:  # any other ASGI server: a receive() that returns when the client leaves
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(state.client_gone)
        try:
            await self._forward(scope, send, record, hdrs, body, started, span)
        except asyncio.CancelledError:
            if not state.gone:
                raise
            task.uncancel()
            record.client_disconnected = True
            record.error_type = record.error_type or "client_disconnected"
            log.info("client disconnected request_id=%s", rid)
        finally:
            state.finished = True
            if watcher is not None and not watcher.done():
                watcher.cancel()
            self.limiter.finish(key, record, time.time())

    async def _authenticate(
        self, hdrs: ClientHeaders, record: RequestRecord, send: Send
    ) -> KeyInfo | None:
        """The caller's key, or None once a refusal has been sent."""
        creds = [c for c in (hdrs.api_key, hdrs.bearer) if c]
        info = None
        for cred in creds:
            info = self.keys.cached(cred)  # the hot path: no I/O
            if info is not None:
                break
        else:
            if not creds:
                await self._deny(send, record, "missing_key", "x-api-key header is required")
                return None
            info = await self._lookup(creds, record, send)
            if info is None:
                return None
        if info.revoked:
            await self._deny(send, record, "revoked_key", "This API key has been revoked.")
            return None
        if info.expired(time.time()):
            await self._deny(send, record, "expired_key", "This API key has expired.")
            return None
        record.key_id = info.key_id
        return info

    async def _lookup(
        self, creds: list[bytes], record: RequestRecord, send: Send
    ) -> KeyInfo | None:
        """Keys the cache does not hold: throttled per client address, then the database."""
        wait = self.throttle.retry_after(record.client_ip, time.monotonic())
        if wait is not None:
            msg = (
                "Too many requests with invalid API keys from this address. "
                f"Retry after {wait} seconds."
            )
            refusal = Refusal(
                "bad_key_throttled",
                "rate_limit_error",
                429,
                msg,
                ((b"retry-after", str(wait).encode()),),
            )
            await self._refuse_for(send, record, refusal)
            return None
        try:
            for cred in creds:
                info = await self.keys.lookup(cred)
                if info is not None:
                    return info
        except KeyStoreUnavailable:
            refusal = Refusal(
                "key_store_unavailable",
                "api_error",
                503,
                _KEY_STORE_DOWN,
                ((b"retry-after", b"5"), (b"x-should-retry", b"true")),
            )
            await self._refuse_for(send, record, refusal)
            return None
        await self._deny(send, record, "invalid_key", "invalid x-api-key")
        return None

    async def _deny(self, send: Send, record: RequestRecord, reason: str, msg: str) -> None:
        """A 401; every failure also spends the client address's allowance for bad keys."""
        if reason != "missing_key":
            self.throttle.failed(record.client_ip, time.monotonic())
        record.refusal = reason
        await self._refuse(send, record, "authentication_error", msg)

    async def _refuse_for(self, send: Send, record: RequestRecord, refusal: Refusal) -> None:
        record.refusal = refusal.reason
        await self._fail(
            send,
            record,
            refusal.error_type,
            refusal.message,
            refusal.status,
            list(refusal.headers),
        )

    def _too_large_msg(self) -> str:
        return f"Request exceeds the maximum allowed number of bytes ({self.max_body})."

    async def _refuse(self, send: Send, record: RequestRecord, error_type: str, msg: str) -> None:
        """Answer a request the proxy itself rejects; nothing is sent upstream."""
        await self._fail(send, record, error_type, msg, STATUS_FOR_TYPE[error_type])

    async def _read_body(self, receive: Receive, record: RequestRecord) -> bytes | None:
        """The whole request body, or None when it exceeds the cap."""
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                _body_cut(msg, record)
            chunk: bytes = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            if not msg.get("more_body", False):
                # Most bodies arrive in one message: no join, no copy.
                return b"".join((*parts, chunk)) if parts else chunk
            parts.append(chunk)

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        record: RequestRecord,
        hdrs: ClientHeaders,
        body: bytes,
        started: float,
        span: object,
    ) -> None:
        rid = record.id
        target: bytes = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        resp = await self.dispatcher.send(
            record.method.encode(), target, hdrs.forward, body, record, span
        )
        if isinstance(resp, Failed):
            return await self._fail(
                send, record, resp.error_type, resp.message, resp.status, list(resp.headers)
            )

        status = resp.status
        record.status_code = status
        upstream_rid = resp.header(b"request-id")
        record.upstream_request_id = upstream_rid.decode("latin-1") if upstream_rid else None
        is_sse = (resp.header(b"content-type") or b"").startswith(b"text/event-stream")
        encoding = resp.header(b"content-encoding")
        observer = ResponseObserver(encoding.decode("latin-1") if encoding else None)
        # Plain JSON is observed for messages and for every error body.
        observe_json = not is_sse and (record.endpoint in _JSON_ENDPOINTS or status >= 400)
        kept = bytearray() if self.body_cap else None
        out_headers = filter_response_headers(resp.headers, rid.encode())
        if self.drain.draining:
            out_headers.append((b"connection", b"close"))  # reconnect to another replica
        telemetry = self.telemetry
        if is_sse:
            telemetry.stream_started()
        ended = False

        def take(chunk: bytes, at_end: bool) -> bool:
            """Note a chunk on its way to the client; True when it ends the response."""
            nonlocal ended
            if kept is not None and len(kept) < self.body_cap:
                kept.extend(chunk[: self.body_cap - len(kept)])
            if record.ttft_ms is None:
                record.ttft_ms = (time.perf_counter() - started) * 1000.0
            if is_sse:
                observer.feed_sse(chunk)
            elif observe_json:
                observer.feed_json(chunk)
            # The last chunk carries the end of the response: one write, not two.
            ended = at_end and (not is_sse or observer.stream_complete)
            return ended

        write_body = scope.get("extensions", {}).get(WRITE_BODY_EXTENSION)
        try:
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            try:
                if write_body is not None:  # our server: chunks go out from the read callback
                    await resp.pump(
                        lambda chunk, at_end: write_body(chunk, not take(chunk, at_end))
                    )
                else:  # any other ASGI server
                    while not ended and (chunk := await resp.read()):
                        more = not take(chunk, resp.at_end)
                        await send({"type": "http.response.body", "body": chunk, "more_body": more})
            except BodyError as exc:
                if not exc.local:
                    telemetry.upstream_error("stream_error")
                elif exc.timeout:
                    telemetry.upstream_error("timeout")
                if not is_sse:
                    # Without SSE there is no in-band way to say so: cut the connection so
                    # the client sees an incomplete body rather than a valid-looking one.
                    log.error("Streaming error: %s request_id=%s", exc, rid)
                    record.error_type = _error_type(exc)
                    record.error_message = f"Streaming error: {exc}"
                    raise ClientGone() from exc
                await self._break_stream(send, record, f"Streaming error: {exc}", _error_type(exc))
                return
            if is_sse and status == 200 and not observer.stream_complete and not ended:
                telemetry.upstream_error("stream_error")
                await self._break_stream(
                    send, record, "Streaming error: upstream closed the stream before message_stop"
                )
                return
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if is_sse:
                telemetry.stream_ended()
            resp.release()
            if kept:
                record.response_body = _clip(kept, self.body_cap)
            # However the response ended (complete, cut, client gone): what was seen counts.
            _finish_observation(record, observer, is_sse)

    async def _break_stream(
        self, send: Send, record: RequestRecord, message: str, error_type: str = "api_error"
    ) -> None:
        """End a broken SSE stream with an `error` event the SDK raises on."""
        log.error("%s request_id=%s", message, record.id)
        record.error_type = error_type
        record.error_message = message
        event = sse_error_event(error_type, message, record.id)
        await send({"type": "http.response.body", "body": event, "more_body": False})

    async def _fail(
        self,
        send: Send,
        record: RequestRecord,
        error_type: str,
        msg: str,
        status: int,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with a proxy-made Anthropic-shaped error and note it on the record."""
        if self.drain.draining:
            headers = [*(headers or ()), (b"connection", b"close")]
        await send_error(send, error_type, msg, record.id, status=status, extra_headers=headers)
        record.status_code = status
        record.error_type = error_type
        record.error_message = msg


class _Watch:
    """Links the disconnect signal to the request task without racing the normal end."""

    __slots__ = ("finished", "gone", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.gone = False
        self.finished = False

    def client_gone(self, _done: object = None) -> None:
        if self.finished:
            return
        self.gone = True
        self.task.cancel()


def _parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _note_request(record: RequestRecord, req: dict[str, Any]) -> None:
    model = req.get("model")
    if isinstance(model, str):
        record.model = model
    record.stream = req.get("stream") is True
    meta = req.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        record.metadata_user_id = meta["user_id"][:256]


def _error_type(exc: BodyError) -> str:
    return "timeout_error" if exc.timeout else "api_error"


def _batch_models(body: bytes) -> list[str] | None:
    """Every model a message batch asks for (for the key's allowlist); None if unreadable."""
    parsed = _parse_json_object(body)
    if parsed is None:
        return None
    models: list[str] = []
    requests = parsed.get("requests")
    for item in requests if isinstance(requests, list) else []:
        params = item.get("params") if isinstance(item, dict) else None
        model = params.get("model") if isinstance(params, dict) else None
        if isinstance(model, str) and model not in models:
            models.append(model)
    return models


def _clip(data: bytes | bytearray, cap: int) -> str:
    """A body for the log: at most `cap` bytes, decoded leniently (it may be cut mid-character)."""
    return bytes(data[:cap]).decode("utf-8", errors="replace")


def _finish_observation(record: RequestRecord, obs: ResponseObserver, is_sse: bool) -> None:
    if not is_sse:
        obs.finish_json()
    record.model = obs.model or record.model
    record.message_id = obs.message_id
    record.stop_reason = obs.stop_reason
    record.usage = obs.usage
    # An error the proxy itself noted (a broken stream) stands; otherwise the upstream's.
    if obs.error_type is not None and record.error_type is None:
        record.error_type = obs.error_type
        record.error_message = obs.error_message
