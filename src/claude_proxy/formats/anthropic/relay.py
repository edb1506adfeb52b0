"""The /v1 relay: forward one request upstream and relay its response.

Flow: target and method checks → key check (gateway/keys.py) → limits that need no
body (gateway/limits.py: budget, RPM/TPM) → body read (size-capped, gateway/body_budget.py)
→ the endpoint's wire format notes the model → model allowlist → upstream request
(gateway/dispatch.py) → response headers and bytes relayed unchanged as they arrive,
while the format's observer reads a copy → one RequestRecord handed to the sink,
however the request ended. Every error the proxy answers itself is a ProxyError,
answered by `_answer`.

A client that goes away cancels the request's task, which closes the upstream
connection at once; an upstream that dies mid-stream gets an SSE `error` event
so the SDK raises instead of returning a silently truncated message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import orjson

from claude_proxy.formats.anthropic.batches import (
    BatchEstimate,
    BatchSettler,
    public_base,
    rewrite_results_urls,
)
from claude_proxy.formats.anthropic.batches import estimate as estimate_batch
from claude_proxy.formats.anthropic.endpoints import (
    BATCHES,
    JSON_ENDPOINTS,
    METHODS,
    canonical_target,
    endpoint_label,
    target_problem,
)
from claude_proxy.formats.anthropic.errors import send_error, sse_error_event
from claude_proxy.formats.anthropic.headers import (
    ClientHeaders,
    filter_response_headers,
    split_request_headers,
)
from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.formats.anthropic.wire import ANTHROPIC
from claude_proxy.gateway.body_budget import BodyBudget
from claude_proxy.gateway.dispatch import Dispatcher
from claude_proxy.gateway.errors import ProxyError, refusal
from claude_proxy.gateway.keys import BadKeyThrottle, KeyCache, KeyInfo, KeyStoreUnavailable
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import Caller, People, unknown_owner
from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.gateway.wire_format import ResponseObserver, WireFormat
from claude_proxy.http.asgi import Message, Receive, Scope, Send
from claude_proxy.http.drain import Drain
from claude_proxy.http.protocol import (
    ANSWERED_KEY,
    DISCONNECT_EXTENSION,
    REQUEST_ID_SCOPE_KEY,
    WRITE_BODY_EXTENSION,
)
from claude_proxy.store.batches import Submission
from claude_proxy.store.records import (
    MAX_MODEL_CHARS,
    MAX_SHORT_TEXT_CHARS,
    RecordSink,
    RequestRecord,
    bounded,
    new_request_id,
)
from claude_proxy.telemetry.reporter import Telemetry
from claude_proxy.telemetry.spans import Span
from claude_proxy.upstream.pool import BodyError, Buffer, UpstreamResponse

log = logging.getLogger("claude_proxy.relay")
_T = TypeVar("_T")

# Endpoints that answer batch objects, whose results_url is rewritten; and the results.
_BATCH_OBJECT_ENDPOINTS = frozenset(
    {BATCHES, "/v1/messages/batches/{id}", "/v1/messages/batches/{id}/cancel"}
)
_RESULTS = "/v1/messages/batches/{id}/results"
# POST bodies the proxy reads (model, stream, a batch's requests): they must be JSON objects.
_READ_ENDPOINTS = JSON_ENDPOINTS | {BATCHES}


class ClientGone(Exception):
    """Nothing more can be said to the client: it left mid-body, or a plain body broke off."""


def _body_cut(disconnect: Message, record: RequestRecord) -> NoReturn:
    """The body will not come: the client left, or the server answered for it (a 408 for a
    body that stopped coming), and the record says which."""
    answered = disconnect.get(ANSWERED_KEY)
    if answered is not None:
        record.status_code, record.error_type, record.error_message = answered
    raise ClientGone()


@dataclass(slots=True)
class _Request:
    """One request on its way through the relay: what every step needs, in one place."""

    scope: Scope
    send: Send
    record: RequestRecord
    span: Span | None
    format: WireFormat
    batch: BatchEstimate | None = None
    # The tightest budget's level kind and what is left of it (USD), for the response header.
    budget_left: tuple[str, float] | None = None


class Relay:
    """The /v1 request path; built once by wiring.py and called per request."""

    def __init__(
        self,
        *,
        keys: KeyCache,
        people: People,
        limiter: Limiter,
        throttle: BadKeyThrottle,
        dispatcher: Dispatcher,
        sink: RecordSink,
        drain: Drain,
        telemetry: Telemetry,
        max_body: int,
        body_budget: BodyBudget,
        body_cap: int = 0,
        prices: PriceTable | None = None,
        settler: BatchSettler | None = None,
        public_url: str | None = None,
        formats: Mapping[str, WireFormat] | None = None,
        signer: TokenSigner | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.keys = keys
        self.people = people
        # Verifies the access tokens sign-in mints; None while sign-in is off.
        self.signer = signer
        self.limiter = limiter
        self.throttle = throttle
        self.dispatcher = dispatcher
        self.drain = drain
        self.sink = sink
        self.max_body = max_body
        self.body_budget = body_budget
        wait = max(1, round(body_budget.wait_seconds))
        self._bodies_full = refusal(
            "body_memory",
            "overloaded_error",
            "The proxy holds as many request bodies in memory as it may right now. "
            f"Retry after {wait} seconds.",
            headers=((b"retry-after", str(wait).encode()), (b"x-should-retry", b"true")),
        )
        self._too_large = ProxyError(
            "request_too_large",
            f"Request exceeds the maximum allowed number of bytes ({max_body}).",
        )
        # > 0 only with CLAUDE_PROXY_LOG_BODIES=true: bytes of each body kept on the record.
        self.body_cap = body_cap
        # Message batches: estimates at batch prices, settlement, the proxy's results_url.
        self.prices = prices or PriceTable.load(None)
        self.settler = settler
        self.public_url = public_url
        # Endpoints served in another wire format than Anthropic's (the OpenAI-compatible one).
        self._formats = dict(formats or {})
        # Built in the app's lifespan, on the loop that serves it. current_task(loop) skips
        # get_running_loop(), which on Python 3.11 is a getpid() system call per request.
        self._loop = asyncio.get_running_loop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        req = _Request(scope, send, record, span, self._formats.get(record.endpoint, ANTHROPIC))
        try:
            await self._handle(req, receive)
        except ClientGone:
            # Nothing more can be said to this client; the server closes the connection.
            record.client_disconnected = record.error_type is None
        except Exception:
            log.exception("unexpected error in the relay request_id=%s", record.id)
            if record.status_code is None:  # nothing sent yet: answer in the API's shape
                await self._answer(req, ProxyError("api_error", "Internal proxy error."))
            else:
                raise
        finally:
            self._settle(record)  # unless the response's end already did
            status = record.status_code or 0
            self.telemetry.request_finished(
                # 5xx the proxy made without the upstream's part: not a breaker refusal.
                proxy_error=status >= 500
                and record.upstream_attempts == 0
                and record.error_type != "overloaded_error"
            )
            if tracing is not None and span is not None:
                tracing.finish_request(span, record)

    async def _handle(self, req: _Request, receive: Receive) -> None:
        scope, record = req.scope, req.record
        hdrs = split_request_headers(scope["headers"])
        # Header values are bounded by the 64 KiB head; the writer caps them for the row.
        record.user_agent = hdrs.user_agent
        record.anthropic_beta = hdrs.anthropic_beta
        record.claude_code_session_id = hdrs.claude_code_session_id

        problem = target_problem(scope["raw_path"], scope["path"])
        if problem is not None:
            return await self._answer(req, refusal("bad_target", "invalid_request_error", problem))
        methods = METHODS.get(record.endpoint)
        if methods is not None and record.method not in methods:
            allow = ", ".join(sorted(methods))
            msg = f"{record.method} is not allowed on {record.endpoint}; use {allow}."
            return await self._answer(
                req,
                refusal(
                    "method_not_allowed",
                    "invalid_request_error",
                    msg,
                    status=405,
                    headers=((b"allow", allow.encode()),),
                ),
            )

        caller = await self._authenticate(hdrs, record)
        if isinstance(caller, ProxyError):
            return await self._answer(req, caller)
        record.key_id = caller.key_id
        record.user_id = caller.user_id
        record.group_id = caller.group_id

        length = hdrs.content_length
        if length is not None and length > self.max_body:
            return await self._answer(req, self._too_large)
        # Everything that does not need the body is checked before a byte of it is read.
        now = time.time()
        limiter = self.limiter
        refused = limiter.check_all(caller, now) if caller.levels else None
        if refused is not None:
            return await self._answer(req, refused)
        if caller.metered:
            tightest = limiter.remaining(caller, now)
            if tightest is not None:
                req.budget_left = (tightest[0].kind, tightest[1])
        budget = self.body_budget
        if length and not budget.try_reserve(length) and not await budget.reserve(length):
            return await self._answer(req, self._bodies_full)
        held = length or 0
        try:
            try:
                body = await self._read_body(receive, record, length is None)
            except _BodiesFull:
                return await self._answer(req, self._bodies_full)
            if length is None and body is not None:
                held = len(body)
            # With the body read: the checks that need it, then the upstream request.
            if body is None:
                return await self._answer(req, self._too_large)
            models: list[str] = []  # whole, not as bounded for the record
            unmetered = None  # why the response would not report its usage
            if record.method == "POST" and record.endpoint in _READ_ENDPOINTS:
                parsed = _parse_json_object(body)
                if parsed is None:
                    return await self._answer(req, _NOT_JSON)
                if record.endpoint == BATCHES:
                    requests = parsed.get("requests")
                    req.batch = estimate_batch(
                        requests if isinstance(requests, list) else [], self.prices
                    )
                    models = req.batch.models
                    record.model = bounded(models[0], MAX_MODEL_CHARS) if models else None
                else:
                    model = req.format.note_request(record, parsed)
                    models = [model] if model else []
                    if caller.metered:
                        unmetered = req.format.unmetered(parsed)

            refused = limiter.check_models(caller, models) if caller.models_limited else None
            if refused is not None:
                return await self._answer(req, refused)
            if unmetered is not None:  # its spend could not be counted against the limits
                return await self._answer(
                    req, refusal("unmetered", "invalid_request_error", unmetered)
                )
            batch = req.batch
            if batch is not None:
                # A batch is billed when it runs: its whole estimate is reserved now.
                usd, now = float(batch.cost_usd), time.time()
                for level in caller.levels:
                    refused = limiter.check_reservation(level, usd, now)
                    if refused is not None:
                        return await self._answer(req, refused)
                for level in caller.levels:
                    limiter.reserve(level, usd, batch.tokens, now)

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
                await self._forward(req, hdrs.forward, body)
            except asyncio.CancelledError:
                if not state.gone:
                    raise
                task.uncancel()
                record.client_disconnected = True
                record.error_type = record.error_type or "client_disconnected"
                log.info("client disconnected request_id=%s", record.id)
            finally:
                state.finished = True
                if watcher is not None and not watcher.done():
                    watcher.cancel()
                if batch is not None and record.cost_usd is None:
                    # Not accepted upstream: the reservation is given back.
                    for level in caller.levels:
                        limiter.reserve(level, -float(batch.cost_usd), 0, time.time())
        finally:
            self.body_budget.release(held)
            if caller.levels:
                done = time.time()
                for level in caller.levels:
                    limiter.finish(level, record, done)

    async def _authenticate(
        self, hdrs: ClientHeaders, record: RequestRecord
    ) -> Caller | ProxyError:
        """Who the caller is (a key, or a token sign-in minted) and every level it must
        pass, or why it is refused."""
        creds = [c for c in (hdrs.api_key, hdrs.bearer) if c]
        info = None
        for cred in creds:
            info = self.keys.cached(cred)  # the hot path: no I/O
            if info is not None:
                break
        else:
            if not creds:
                return refusal(
                    "missing_key", "authentication_error", "x-api-key header is required"
                )
            signer = self.signer
            if signer is not None:
                for cred in creds:
                    claims = signer.verify(cred)  # a token of ours: no I/O either
                    if claims is not None:
                        person = self.people.caller_for_token(claims)
                        if person is None:
                            person = await self._catch_up(self.people.caller_for_token, claims)
                        return person
            found = await self._lookup(creds, record)
            if isinstance(found, ProxyError):
                return found
            info = found
        if info.revoked:
            return self._denied(record, "revoked_key", "This API key has been revoked.")
        if info.expired(time.time()):
            return self._denied(record, "expired_key", "This API key has expired.")
        caller = self.people.caller_for_key(info)  # from memory, like the key
        if caller is None:
            return await self._catch_up(self.people.caller_for_key, info)
        return caller

    async def _catch_up(
        self, resolve: Callable[[_T], Caller | ProxyError | None], credential: _T
    ) -> Caller | ProxyError:
        """The caller behind a key or token whose owner is not known here yet (made a
        moment ago on another replica): one shared re-read of the people, then again."""
        await self.people.catch_up()
        found = resolve(credential)
        return found if found is not None else unknown_owner()

    async def _lookup(self, creds: list[bytes], record: RequestRecord) -> KeyInfo | ProxyError:
        """Keys the cache does not hold: throttled per client address, then the database."""
        wait = self.throttle.retry_after(record.client_ip, time.monotonic())
        if wait is not None:
            msg = (
                "Too many requests with invalid API keys from this address. "
                f"Retry after {wait} seconds."
            )
            return refusal(
                "bad_key_throttled",
                "rate_limit_error",
                msg,
                headers=((b"retry-after", str(wait).encode()),),
            )
        try:
            for cred in creds:
                info = await self.keys.lookup(cred)
                if info is not None:
                    return info
        except KeyStoreUnavailable as exc:
            # The SDKs retry a 503 with this advice.
            return refusal(
                "key_store_unavailable",
                "api_error",
                f"The proxy cannot verify this API key right now: {exc}. Retry shortly.",
                status=503,
                headers=((b"retry-after", b"5"), (b"x-should-retry", b"true")),
            )
        return self._denied(record, "invalid_key", "invalid x-api-key")

    def _denied(self, record: RequestRecord, reason: str, msg: str) -> ProxyError:
        """A 401 for a key that was given: it spends the address's allowance for bad keys."""
        self.throttle.failed(record.client_ip, time.monotonic())
        return refusal(reason, "authentication_error", msg)

    async def _read_body(
        self, receive: Receive, record: RequestRecord, chunked: bool
    ) -> Buffer | None:
        """The whole request body, or None when it exceeds the cap.

        A body with a Content-Length has its bytes reserved already. One without
        reserves them here as they come and gives them back if it fails, so that on
        return the body's length is what it holds of the budget."""
        msg = await receive()
        if msg["type"] == "http.disconnect":
            _body_cut(msg, record)
        chunk: bytes = msg.get("body", b"")
        if not msg.get("more_body", False):  # most bodies arrive in one message: no copy
            if len(chunk) > self.max_body:
                return None
            if chunked and chunk and not await self.body_budget.reserve(len(chunk)):
                raise _BodiesFull()
            return chunk
        # One buffer grown in place: joining parts at the end would hold the body twice.
        buf = bytearray()
        try:
            while True:
                if len(buf) + len(chunk) > self.max_body:
                    if chunked:
                        self.body_budget.release(len(buf))
                    return None
                if chunked and chunk and not await self.body_budget.reserve(len(chunk)):
                    raise _BodiesFull()
                buf += chunk
                if not msg.get("more_body", False):
                    return buf
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    _body_cut(msg, record)
                chunk = msg.get("body", b"")
        except BaseException:
            if chunked:
                self.body_budget.release(len(buf))
            raise

    async def _forward(
        self, req: _Request, forward: list[tuple[bytes, bytes]], body: Buffer
    ) -> None:
        scope, send, record = req.scope, req.send, req.record
        rid = record.id
        target = canonical_target(scope["raw_path"], scope["path"])
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        batch_object = record.endpoint in _BATCH_OBJECT_ENDPOINTS
        if batch_object:  # read and rewritten here: ask for it uncompressed
            forward = [(n, v) for n, v in forward if n != b"accept-encoding"]
        resp = await self.dispatcher.send(
            record.method.encode(), target, forward, body, record, req.span
        )
        if isinstance(resp, ProxyError):
            return await self._answer(req, resp)
        upstream_rid = resp.header(b"request-id")
        record.upstream_request_id = upstream_rid.decode("latin-1") if upstream_rid else None
        if batch_object and resp.status == 200:
            return await self._forward_batch_object(req, resp)

        status = resp.status
        record.status_code = status
        is_sse = (resp.header(b"content-type") or b"").startswith(b"text/event-stream")
        encoding = resp.header(b"content-encoding")
        observer = req.format.observer(encoding.decode("latin-1") if encoding else None)
        # Plain JSON is observed for messages and for every error body.
        observe_json = not is_sse and (record.endpoint in JSON_ENDPOINTS or status >= 400)
        kept = bytearray() if self.body_cap else None
        out_headers = self._response_headers(resp, record, req.budget_left)
        telemetry = self.telemetry
        if is_sse:
            telemetry.stream_started()
        ended = False
        observed = False
        write_body: WriteBody | None = scope.get("extensions", {}).get(WRITE_BODY_EXTENSION)

        def conclude() -> None:
            """Put what the response showed on the record, once: at its end, before the
            last bytes go out, or however else it ended (cut, client gone)."""
            nonlocal observed
            if observed:
                return
            observed = True
            if kept:
                record.response_body = _clip(kept, self.body_cap)
            _finish_observation(record, observer, is_sse)

        def take(chunk: bytes, at_end: bool) -> bool:
            """Note a chunk on its way to the client; True when it ends the response."""
            nonlocal ended
            if kept is not None and len(kept) < self.body_cap:
                kept.extend(chunk[: self.body_cap - len(kept)])
            if record.ttft_ms is None:
                record.ttft_ms = (time.time() - record.created_at) * 1000.0
            if is_sse:
                observer.feed_sse(chunk)
            elif observe_json:
                observer.feed_json(chunk)
            # The last chunk carries the end of the response: one write, not two.
            ended = at_end and (not is_sse or observer.stream_complete)
            return ended

        try:
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            try:
                if write_body is not None:  # our server: chunks go out from the read callback

                    def deliver(chunk: bytes, at_end: bool) -> asyncio.Future[None] | None:
                        if take(chunk, at_end):
                            conclude()
                            self._settle(record)
                            return write_body(chunk, False)
                        return write_body(chunk, True)

                    await resp.pump(deliver)
                else:  # any other ASGI server
                    while not ended and (chunk := await resp.read()):
                        more = not take(chunk, resp.at_end)
                        if not more:
                            conclude()
                            self._settle(record)
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
                conclude()
                return await self._answer(
                    req, ProxyError(_error_type(exc), f"Streaming error: {exc}"), mid_stream=True
                )
            if is_sse and status == 200 and not observer.stream_complete and not ended:
                telemetry.upstream_error("stream_error")
                conclude()
                return await self._answer(req, _CUT_STREAM, mid_stream=True)
            if not ended:
                conclude()
                self._settle(record)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if record.endpoint == _RESULTS and status == 200 and self.settler is not None:
                self.settler.poke(scope["path"].split("/")[4])  # the whole results went by
        finally:
            if is_sse:
                telemetry.stream_ended()
            resp.release()
            conclude()  # however the response ended (complete, cut, client gone)

    async def _forward_batch_object(self, req: _Request, resp: UpstreamResponse) -> None:
        """A batch object (or a page of them), read whole: its `results_url` is set to the
        proxy's own (the SDK fetches it with the client's key), and a submission the
        upstream accepted keeps its reservation on its row."""
        record = req.record
        kept = bytearray()
        try:
            while chunk := await resp.read():
                kept += chunk
        except BodyError as exc:  # nothing was sent yet: an error the SDK retries
            status, msg = 504 if exc.timeout else 502, f"Upstream error: {exc}"
            return await self._answer(req, ProxyError(_error_type(exc), msg, status))
        finally:
            resp.release()
        record.status_code = 200
        record.ttft_ms = (time.time() - record.created_at) * 1000.0
        host = next((v for n, v in req.scope["headers"] if n == b"host"), None)
        base = public_base(self.public_url, req.scope["scheme"], host)
        out = bytes(kept)
        rewritten = rewrite_results_urls(out, base)
        if rewritten is not None:
            out, found = rewritten
            if not (record.endpoint == BATCHES and record.method == "GET"):  # not a page
                self._note_batch(record, found[0], req.batch)
        headers = [
            (n, v)
            for n, v in self._response_headers(resp, record)
            if n not in (b"content-length", b"content-encoding")
        ]
        headers.append((b"content-length", b"%d" % len(out)))
        await req.send({"type": "http.response.start", "status": 200, "headers": headers})
        self._settle(record)
        await req.send({"type": "http.response.body", "body": out, "more_body": False})

    def _response_headers(
        self,
        resp: UpstreamResponse,
        record: RequestRecord,
        budget_left: tuple[str, float] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The upstream's headers for the client: hop-by-hop ones out, our request id in,
        and `connection: close` while draining (reconnect to another replica)."""
        headers = filter_response_headers(resp.headers, record.id.encode())
        if budget_left is not None:
            # What is left of the tightest budget, before this request: for status lines.
            kind, left = budget_left
            headers.append(
                (b"x-claude-proxy-budget-remaining-usd", f"{max(0.0, left):.4f}".encode())
            )
            headers.append((b"x-claude-proxy-budget-level", kind.encode()))
        if self.drain.draining:
            headers.append((b"connection", b"close"))
        return headers

    def _note_batch(
        self, record: RequestRecord, obj: dict[str, Any], batch: BatchEstimate | None
    ) -> None:
        batch_id = bounded(str(obj["id"]), MAX_SHORT_TEXT_CHARS) or ""
        record.message_id = batch_id
        if batch is not None:  # the submission: its row carries the reservation
            record.cost_usd = str(batch.cost_usd)
            if self.settler is not None:
                sub = Submission(
                    batch_id,
                    record.key_id,
                    record.created_at,
                    batch.cost_usd,
                    record.model,
                    user_id=record.user_id,
                    group_id=record.group_id,
                )
                self.settler.track(sub)
        elif obj.get("processing_status") == "ended" and self.settler is not None:
            self.settler.poke(batch_id)

    async def _answer(self, req: _Request, err: ProxyError, *, mid_stream: bool = False) -> None:
        """Answer with an error the proxy makes itself, and note it on the record: an
        Anthropic-shaped JSON response, or, once a stream has begun, an SSE `error` event
        that ends it (the SDK raises on it instead of returning a truncated message)."""
        record = req.record
        record.refusal = err.reason
        record.error_type = err.error_type
        record.error_message = err.message
        if mid_stream:
            log.error("%s request_id=%s", err.message, record.id)
            self._settle(record)
            event = sse_error_event(err.error_type, err.message, record.id)
            await req.send({"type": "http.response.body", "body": event, "more_body": False})
            return
        headers = list(err.headers)
        if self.drain.draining:
            headers.append((b"connection", b"close"))
        status = err.status
        record.status_code = status
        self._settle(record)
        await send_error(
            req.send, err.error_type, err.message, record.id, status=status, extra_headers=headers
        )

    def _settle(self, record: RequestRecord) -> None:
        """Hand the record over, once, before the client can see its response end: the
        sink puts it into the writer process's socket at once, where a worker killed the
        next moment (OOM, SIGKILL) cannot take it along."""
        if record.latency_ms is None:
            record.latency_ms = (time.time() - record.created_at) * 1000.0
            self.sink.submit(record)


_NOT_JSON = ProxyError("invalid_request_error", "The request body is not valid JSON.")
_CUT_STREAM = ProxyError(
    "api_error", "Streaming error: upstream closed the stream before message_stop"
)


# The WRITE_BODY_EXTENSION: write a body part now; a future while the client is full.
WriteBody = Callable[[bytes, bool], "asyncio.Future[None] | None"]


class _BodiesFull(Exception):
    """The process holds as many request-body bytes as it may (BodyBudget): a 529."""


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


def _parse_json_object(body: Buffer) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _error_type(exc: BodyError) -> str:
    return "timeout_error" if exc.timeout else "api_error"


def _clip(data: bytes | bytearray, cap: int) -> str:
    """A body for the log: at most `cap` bytes, decoded leniently (it may be cut mid-character)."""
    return bytes(data[:cap]).decode("utf-8", errors="replace")


def _finish_observation(record: RequestRecord, obs: ResponseObserver, is_sse: bool) -> None:
    if not is_sse:
        obs.finish_json()
    record.model = obs.model or record.model  # the upstream's; the writer caps it
    record.message_id = obs.message_id
    record.stop_reason = obs.stop_reason
    record.usage = obs.usage
    # An error the proxy itself noted (a broken stream) stands; otherwise the upstream's.
    if obs.error_type is not None and record.error_type is None:
        record.error_type = obs.error_type
        record.error_message = obs.error_message
