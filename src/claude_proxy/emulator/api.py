"""Routing and endpoint handlers: the emulated Anthropic API, the echo aid, the debug endpoints.

Routing is on the path only (query strings such as `?beta=true` are accepted everywhere).
Order of checks on `/v1/*`, as the real API: credential (`x-api-key` or `Authorization: Bearer`),
then `anthropic-version`, then the body. Faults from `x-emulator-fault` (or a `<<emulator: ...>>`
marker in the messages) are applied after validation. `/v1/chat/completions` (chat.py) is the
OpenAI-compatible endpoint: the same checks less `anthropic-version`, errors in OpenAI's shape.

The hot path (a plain non-streaming `POST /v1/messages`) answers synchronously from
`data_received`: no task, one orjson parse, one render, one write. A body seen before with a
stateless reply (no faults, prompt caching or tool ids) skips even the parse and the render: the
reply is kept split around its message id, and only a fresh id is spliced in.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson

from claude_proxy.emulator import catalog, chat
from claude_proxy.emulator.batches import BatchStore
from claude_proxy.emulator.cache import InputUsage, PromptCache
from claude_proxy.emulator.faults import (
    MARKER,
    Fault,
    FaultCounters,
    FaultSpecError,
    marker_spec,
    parse_fault,
)
from claude_proxy.emulator.journal import STATES, Journal
from claude_proxy.emulator.messages import (
    Reply,
    build_reply,
    error_frame,
    message,
    message_json,
    sse_frames,
)
from claude_proxy.emulator.server import Request
from claude_proxy.emulator.tokens import InputShape, fast_tokens, measure
from claude_proxy.emulator.wire import (
    CT_JSON,
    CT_JSONL,
    CT_OCTETS,
    CT_SSE,
    ERROR_MESSAGES,
    ApiError,
    CommonHeaders,
    check_messages_and_stream,
    chunk,
    error_body,
    error_message_for,
    error_type_for,
    new_id,
    request_id_line,
)

Coro = Coroutine[Any, Any, None]
MESSAGES_LIMIT = 32 * 1024 * 1024
BATCHES_LIMIT = 256 * 1024 * 1024
RESULTS_CHUNK = 64 * 1024
REPLAY_ENTRIES = 1024
REPLAY_BODY_LIMIT = 64 * 1024
# (response or message_start frame before the message id, after it, the other SSE frames)
Replay = tuple[bytes, bytes, tuple[bytes, ...] | None]
MAX_WAIT_SECONDS = 300.0
BURST = 16  # SSE events per write (and per loop iteration) when a stream has no event delay


def _bearer(value: bytes | None) -> bytes | None:
    if value is not None and value[:7].lower() == b"bearer ":
        token = value[7:].strip()
        return token or None
    return None


def _query(req: Request) -> dict[str, str]:
    return dict(parse_qsl(req.query.decode("latin-1"), keep_blank_values=True))


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: Input should be a valid integer") from None
    if value < lo:
        raise ApiError(400, f"{name}: Input should be greater than or equal to {lo}")
    if value > hi:
        raise ApiError(400, f"{name}: Input should be less than or equal to {hi}")
    return value


def paginate(items: list[dict[str, Any]], q: dict[str, str]) -> bytes:
    """The `{data, has_more, first_id, last_id}` page of items (already newest first)."""
    limit = _int_param(q, "limit", 20, 1, 1000)
    after, before = q.get("after_id"), q.get("before_id")
    ids = [item["id"] for item in items]
    if before:
        end = ids.index(before) if before in ids else 0
        start = max(0, end - limit)
        page, has_more = items[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after and after in ids else (len(ids) if after else 0)
        page, has_more = items[start : start + limit], start + limit < len(items)
    return orjson.dumps(
        {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
    )


def _validate(params: dict[str, Any], *, max_tokens: bool = True) -> str:
    """Required fields and their types, as the API reports them; returns the model id."""
    model = params.get("model")
    if model is None:
        raise ApiError(400, "model: Field required")
    if not isinstance(model, str):
        raise ApiError(400, "model: Input should be a valid string")
    if max_tokens:
        value = params.get("max_tokens")
        if value is None:
            raise ApiError(400, "max_tokens: Field required")
        if type(value) is not int:
            raise ApiError(400, "max_tokens: Input should be a valid integer")
        if value < 1:
            raise ApiError(400, "max_tokens: Input should be greater than or equal to 1")
    check_messages_and_stream(params)
    if not model.startswith("claude-"):
        raise ApiError(404, f"model: {model}")
    return model


class EmulatorApp:
    """All emulator state (journal, prompt cache, fault counters, batches) and the handlers."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key.encode() if api_key else None
        self.common = CommonHeaders()
        self.journal = Journal()
        self.cache = PromptCache()
        self.counters = FaultCounters()
        self.batches = BatchStore()
        self.base_url = "http://127.0.0.1"
        self._models_pages: dict[bytes, bytes] = {}
        self._replay: dict[bytes, Replay] = {}

    # --- entry points called by the server ------------------------------------------------------

    def handle(self, req: Request) -> Coro | None:
        path = req.path
        if path.startswith(b"/_emulator/"):
            return self._debug(req)
        rid = req.request_id = new_id("req_")
        req.entry = self.journal.add(rid, req.method, path, req.query, req.headers, len(req.body))
        if path == b"/v1/messages":
            return self._messages(req)
        if path == chat.PATH:
            return self._chat(req)
        if path.startswith(b"/v1/messages/"):
            rest = path[13:]
            if rest == b"count_tokens":
                return self._guarded(req, self._count_tokens)
            if rest == b"batches" or rest.startswith(b"batches/"):
                return self._guarded(req, self._batches)
        elif path == b"/v1/models" or path.startswith(b"/v1/models/"):
            return self._guarded(req, self._models)
        elif path == b"/v1/emulator/echo" or path.startswith(b"/v1/emulator/echo/"):
            return self._guarded(req, self._echo, version=False)
        raise ApiError(404, "Not found")

    def error(self, req: Request, exc: ApiError) -> None:
        self._error(req, exc.status, exc.error_type, exc.message)

    # --- response helpers -----------------------------------------------------------------------

    def _error(
        self, req: Request, status: int, error_type: str, message: str, extra: bytes = b""
    ) -> None:
        if not req.request_id:
            req.request_id = new_id("req_")
        rid = req.request_id
        common = self.common.success() if status == 429 else self.common.basic()
        head = CT_JSON + request_id_line(rid) + common + extra
        if req.path == chat.PATH:  # the OpenAI-compatible endpoint answers in OpenAI's shape
            body = chat.error_body(error_type, message)
        else:
            body = error_body(error_type, message, rid)
        req.conn.respond(req, status, head, body)

    def _ok(self, req: Request, body: bytes, status: int = 200) -> None:
        head = CT_JSON + request_id_line(req.request_id) + self.common.success()
        req.conn.respond(req, status, head, body)

    def _auth(self, req: Request, *, version: bool = True) -> None:
        wanted = req.wanted
        key = wanted.get(b"x-api-key") or None
        bearer = _bearer(wanted.get(b"authorization"))
        if key is None and bearer is None:
            raise ApiError(401, "x-api-key header is required", "authentication_error")
        if self.api_key is not None and self.api_key != key and self.api_key != bearer:
            raise ApiError(401, "invalid x-api-key", "authentication_error")
        if version and b"anthropic-version" not in wanted:
            raise ApiError(400, "anthropic-version: header is required")

    @staticmethod
    def _json(req: Request, limit: int) -> dict[str, Any]:
        if req.too_large or len(req.body) > limit:
            raise ApiError(413, ERROR_MESSAGES[413], "request_too_large")
        try:
            params = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400,
                "There was an error parsing the body of your request. "
                "Please ensure that it is valid JSON.",
            ) from None
        if not isinstance(params, dict):
            raise ApiError(400, "Input should be a valid dictionary")
        return params

    @staticmethod
    def _header_fault(req: Request) -> Fault | None:
        raw = req.wanted.get(b"x-emulator-fault")
        if raw is None:
            return None
        try:
            return parse_fault(raw.decode("latin-1"))
        except FaultSpecError as exc:
            raise ApiError(400, str(exc)) from None

    def _fail_early(self, req: Request, fault: Fault) -> Coro | None:
        """A fault that fails the request before any reply: closed, or an error status
        (after `first_byte_ms` when it asks for a wait)."""
        if fault.first_byte_ms:
            return self._faulted(req, fault, True, lambda r: None)
        if fault.close_before_headers:
            req.conn.drop(req)
        else:
            self._fault_error(req, fault)
        return None

    def _fault_error(self, req: Request, fault: Fault) -> None:
        status = fault.status
        assert status is not None
        extra = b""
        if fault.retry_after is not None:
            extra += b"retry-after: %d\r\n" % fault.retry_after
        if fault.retry_after_ms is not None:
            extra += b"retry-after-ms: %d\r\n" % fault.retry_after_ms
        if fault.should_retry is not None:
            extra += b"x-should-retry: " + fault.should_retry.encode() + b"\r\n"
        message = error_message_for(status)
        self._error(req, status, error_type_for(status), message, extra)

    def _guarded(
        self,
        req: Request,
        handler: Callable[[Request], Coro | None],
        *,
        version: bool = True,
    ) -> Coro | None:
        """Auth, then the header fault (failure, delay), then the handler."""
        self._auth(req, version=version)
        fault = self._header_fault(req)
        if fault is None:
            return handler(req)
        failing = self.counters.should_fail(fault)
        if not failing and not fault.first_byte_ms:
            return handler(req)
        return self._faulted(req, fault, failing, handler)

    async def _faulted(
        self,
        req: Request,
        fault: Fault,
        failing: bool,
        handler: Callable[[Request], Coro | None],
    ) -> None:
        if fault.first_byte_ms:
            await asyncio.sleep(fault.first_byte_ms / 1000)
        if failing and fault.close_before_headers:
            req.conn.drop(req)
        elif failing and fault.status is not None:
            self._fault_error(req, fault)
        else:
            coro = handler(req)
            if coro is not None:
                await coro

    # --- /v1/messages ---------------------------------------------------------------------------

    def _messages(self, req: Request) -> Coro | None:
        self._auth(req)
        if req.method != b"POST":
            raise ApiError(405, "Method Not Allowed", "invalid_request_error")
        fault = self._header_fault(req)
        if fault is None:
            hit = self._replay.get(req.body)
            if hit is not None:
                return self._replayed(req, hit)
        params = self._json(req, MESSAGES_LIMIT)
        model = _validate(params)
        hashing = b"cache_control" in req.body
        simple = None if hashing else fast_tokens(params)
        shape = measure(params, hashing=hashing) if simple is None else None
        if fault is None and MARKER in req.body:
            fault = _marked_fault(params)
        stream = params.get("stream") is True
        if fault is None:
            reply = build_reply(params, self._usage(model, shape, simple))
            replayable = (
                not hashing
                and reply.tool is None
                and reply.cacheable
                and len(req.body) <= REPLAY_BODY_LIMIT
                and MARKER not in req.body
            )
            if stream:
                frames = sse_frames(reply)
                if replayable:
                    return self._replayed(req, self._remember(req.body, reply, frames))
                return self._stream(req, frames)
            body = message_json(reply)
            if replayable:
                self._remember(req.body, reply, body)
            self._ok(req, body)
            return None
        failing = self.counters.should_fail(fault)
        if failing and (fault.close_before_headers or fault.status is not None):
            return self._fail_early(req, fault)
        reply = build_reply(
            params,
            self._usage(model, shape, simple),
            events=fault.events,
            text_bytes=fault.text_bytes,
            force_tool=fault.tool,
        )
        midstream = fault.midstream if failing else None
        if stream:
            return self._stream(
                req,
                sse_frames(reply),
                first_byte_ms=fault.first_byte_ms,
                event_ms=fault.event_ms,
                midstream=midstream,
                after=fault.after,
            )
        if midstream is None and not fault.first_byte_ms:
            self._ok(req, message_json(reply))
            return None
        return self._message_slow(req, message_json(reply), fault.first_byte_ms, midstream)

    def _remember(
        self, body: bytes, reply: Reply, rendered: bytes | tuple[int, Iterator[bytes]]
    ) -> Replay:
        """Keep a plain reply, split around its message id, to answer the same body again.

        A repeated body (the benchmark's case) is then answered without parsing or rendering:
        only the message id is new. Only stateless replies qualify: no prompt caching, no tool
        ids, no faults.
        """
        mid = reply.id.encode()
        if isinstance(rendered, bytes):
            i = rendered.index(mid)
            entry: Replay = (rendered[:i], rendered[i + len(mid) :], None)
        else:
            _, frames = rendered
            first, *rest = frames
            i = first.index(mid)
            entry = (first[:i], first[i + len(mid) :], tuple(rest))
        if len(self._replay) >= REPLAY_ENTRIES:
            self._replay.clear()
        self._replay[body] = entry
        return entry

    def _replayed(self, req: Request, hit: Replay) -> Coro | None:
        before, after, rest = hit
        first = before + new_id("msg_").encode() + after
        if rest is None:
            self._ok(req, first)
            return None
        return self._stream(req, (len(rest) + 1, itertools.chain((first,), rest)))

    def _usage(self, model: str, shape: InputShape | None, simple: int | None) -> InputUsage:
        if shape is None:
            assert simple is not None
            return InputUsage(simple)
        if shape.has_breakpoints:
            return self.cache.account(model, shape)
        return InputUsage(shape.tokens)

    async def _stream(
        self,
        req: Request,
        frames: tuple[int, Iterator[bytes]],
        *,
        first_byte_ms: int = 0,
        event_ms: int = 0,
        midstream: str | None = None,
        after: int = 3,
        error: bytes | None = None,
    ) -> None:
        """Send SSE `frames`; with `midstream`, cut the stream after `after` of them (with
        `error` as the error event, the Messages one by default)."""
        conn = req.conn
        if first_byte_ms:
            await asyncio.sleep(first_byte_ms / 1000)
        head = CT_SSE + request_id_line(req.request_id) + self.common.success()
        conn.start_stream(req, 200, head)
        delay = event_ms / 1000
        count, events = frames
        if delay or midstream is not None:
            # Paced or faulted: one write per event, so timing and cut points are exact.
            cut = min(after, count - 1) if midstream is not None else -1
            for i, frame in enumerate(events):
                if delay and i:
                    await asyncio.sleep(delay)
                if i == cut:
                    await self._cut_stream(req, midstream, error)
                    return
                conn.send(frame)
                if conn.paused:
                    await conn.drain()
        else:
            # Unpaced: message_start goes out alone, then the events follow in bursts of BURST
            # chunks per write (each event still its own HTTP chunk), yielding between bursts so
            # concurrent streams interleave and the emulator spends little CPU per event.
            conn.send(next(events))
            await asyncio.sleep(0)
            while batch := list(itertools.islice(events, BURST)):
                conn.send(b"".join(batch))
                if conn.paused:
                    await conn.drain()
                else:
                    await asyncio.sleep(0)
        conn.end_stream(req)

    async def _cut_stream(self, req: Request, mode: str | None, error: bytes | None = None) -> None:
        conn = req.conn
        if mode == "error":
            conn.send(error if error is not None else error_frame(req.request_id))
            conn.end_stream(req)
        elif mode == "reset":
            conn.abort(req)
        elif mode == "eof":
            conn.end_stream(req)
        else:  # stall: nothing more until the client goes away (the task is cancelled then)
            await conn.wait_closed()

    async def _message_slow(
        self, req: Request, body: bytes, first_byte_ms: int, midstream: str | None
    ) -> None:
        """Non-streaming with a delay or a cut: half the body, then RST / FIN / stall."""
        conn = req.conn
        if first_byte_ms:
            await asyncio.sleep(first_byte_ms / 1000)
        if midstream is None:
            self._ok(req, body)
            return
        if midstream == "error":
            self._error(req, 529, "overloaded_error", "Overloaded")
            return
        head = CT_JSON + request_id_line(req.request_id) + self.common.success()
        conn.start_raw(req, 200, head, len(body))
        conn.send(body[: len(body) // 2])
        if midstream == "reset":
            conn.abort(req)
        elif midstream == "eof":
            conn.drop(req)
        else:
            await conn.wait_closed()

    # --- /v1/chat/completions (OpenAI's shapes) -------------------------------------------------

    def _chat(self, req: Request) -> Coro | None:
        """The OpenAI-compatible endpoint (chat.py): auth as `/v1/messages` but without
        `anthropic-version` (OpenAI's SDK sends none), the same validation, tokens, content
        and faults, rendered as Chat Completions."""
        self._auth(req, version=False)
        if req.method != b"POST":
            raise ApiError(405, "Method Not Allowed", "invalid_request_error")
        fault = self._header_fault(req)
        params = self._json(req, MESSAGES_LIMIT)
        _, body, include_usage = chat.to_messages(params)
        tokens = fast_tokens(body)
        if tokens is None:
            tokens = measure(body, hashing=False).tokens
        usage = InputUsage(tokens)  # no prompt caching through this endpoint
        if fault is None and MARKER in req.body:
            fault = _marked_fault(body)
        stream = params.get("stream") is True
        created = int(time.time())
        if fault is None:
            reply = build_reply(body, usage)
            if stream:
                return self._stream(req, chat.chunks(reply, created, include_usage))
            self._ok(req, chat.completion(reply, created))
            return None
        failing = self.counters.should_fail(fault)
        if failing and (fault.close_before_headers or fault.status is not None):
            return self._fail_early(req, fault)
        reply = build_reply(
            body, usage, events=fault.events, text_bytes=fault.text_bytes, force_tool=fault.tool
        )
        midstream = fault.midstream if failing else None
        if stream:
            frames = chat.chunks(reply, created, include_usage)
            return self._stream(
                req,
                frames,
                first_byte_ms=fault.first_byte_ms,
                event_ms=fault.event_ms,
                midstream=midstream,
                after=fault.after,
                error=chat.error_frame(),
            )
        rendered = chat.completion(reply, created)
        if midstream is None and not fault.first_byte_ms:
            self._ok(req, rendered)
            return None
        return self._message_slow(req, rendered, fault.first_byte_ms, midstream)

    # --- count_tokens, models, batches ----------------------------------------------------------

    def _count_tokens(self, req: Request) -> Coro | None:
        if req.method != b"POST":
            raise ApiError(405, "Method Not Allowed", "invalid_request_error")
        params = self._json(req, MESSAGES_LIMIT)
        _validate(params, max_tokens=False)
        tokens = fast_tokens(params)
        if tokens is None:
            tokens = measure(params, hashing=False).tokens
        self._ok(req, b'{"input_tokens":%d}' % tokens)
        return None

    def _models(self, req: Request) -> Coro | None:
        if req.method not in (b"GET", b"HEAD"):
            raise ApiError(405, "Method Not Allowed", "invalid_request_error")
        if req.path == b"/v1/models":
            body = self._models_pages.get(req.query)
            if body is None:
                body = self._models_page(req)
                if len(self._models_pages) < 1024:
                    self._models_pages[req.query] = body
            self._ok(req, body)
            return None
        model_id = req.path[11:].decode("latin-1")
        model = catalog.lookup(model_id)
        if model is None:
            raise ApiError(404, f"model: {model_id}")
        self._ok(req, catalog.info_json(model))
        return None

    @staticmethod
    def _models_page(req: Request) -> bytes:
        pairs = parse_qsl(req.query.decode("latin-1"), keep_blank_values=True)
        q = dict(pairs)
        lifecycles = frozenset(v for k, v in pairs if k in ("lifecycle[]", "lifecycle"))
        unknown = lifecycles - {"active", "deprecated", "retired"}
        if unknown:
            raise ApiError(400, f"lifecycle: unknown value {sorted(unknown)[0]!r}")
        return paginate(catalog.listing(lifecycles or catalog.DEFAULT_LIFECYCLES), q)

    def _batch_reply(self, params: dict[str, Any]) -> dict[str, Any]:
        model = _validate(params)
        hashing = b"cache_control" in orjson.dumps(params)
        shape = measure(params, hashing=hashing)
        reply = build_reply(params, self._usage(model, shape, None), service_tier="batch")
        return message(reply)

    def _batches(self, req: Request) -> Coro | None:
        parts = req.path[13:].split(b"/")  # [b"batches", id?, action?]
        method = req.method
        if len(parts) == 1:
            if method == b"POST":
                body = self._json(req, BATCHES_LIMIT)
                host = req.wanted.get(b"host")
                base = f"http://{host.decode('latin-1')}" if host else self.base_url
                fault = self._header_fault(req)
                seconds = fault.batch_ms / 1000 if fault is not None else 0.0
                batch = self.batches.create(body, base, self._batch_reply, seconds)
                self._ok(req, orjson.dumps(batch.to_json()))
                return None
            if method == b"GET":
                self._ok(req, paginate(self.batches.newest_first(), _query(req)))
                return None
            raise ApiError(405, "Method Not Allowed", "invalid_request_error")
        batch_id = parts[1].decode("latin-1")
        action = parts[2] if len(parts) == 3 else None
        if len(parts) > 3 or not batch_id:
            raise ApiError(404, "Not found")
        if action is None and method == b"GET":
            self._ok(req, orjson.dumps(self.batches.get(batch_id).to_json()))
        elif action is None and method == b"DELETE":
            self._ok(req, orjson.dumps(self.batches.delete(batch_id)))
        elif action == b"cancel" and method == b"POST":
            self._ok(req, orjson.dumps(self.batches.cancel(batch_id).to_json()))
        elif action == b"results" and method == b"GET":
            batch = self.batches.get(batch_id)
            if not batch.ended():
                raise ApiError(400, f"Batch {batch_id} has not finished processing")
            return self._results(req, batch.lines)
        else:
            raise ApiError(404, "Not found")
        return None

    async def _results(self, req: Request, lines: list[bytes]) -> None:
        conn = req.conn
        conn.start_stream(
            req, 200, CT_JSONL + request_id_line(req.request_id) + self.common.basic()
        )
        buf: list[bytes] = []
        size = 0
        for line in lines:
            buf.append(line)
            buf.append(b"\n")
            size += len(line) + 1
            if size >= RESULTS_CHUNK:
                conn.send(chunk(b"".join(buf)))
                buf, size = [], 0
                if conn.paused:
                    await conn.drain()
        if buf:
            conn.send(chunk(b"".join(buf)))
        conn.end_stream(req)

    # --- echo -----------------------------------------------------------------------------------

    def _echo(self, req: Request) -> Coro | None:
        q = _query(req)
        head = CT_JSON + request_id_line(req.request_id) + self.common.basic()
        if "chunks" in q:
            n = _int_param(q, "chunks", 1, 0, 1_000_000)
            size = _int_param(q, "chunk_size", 1024, 1, 16 * 1024 * 1024)
            delay = _int_param(q, "chunk_ms", 0, 0, 3_600_000)
            first = _int_param(q, "first_ms", 0, 0, 3_600_000)
            return self._echo_stream(req, n, size, delay, first)
        status = _int_param(q, "status", 200, 200, 599)
        if status in (204, 205, 304):
            raise ApiError(400, f"status: {status} cannot carry the echo body")
        body = orjson.dumps(
            {
                "method": req.method.decode("latin-1"),
                "path": req.path.decode("latin-1"),
                "query": req.query.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
                "body_b64": base64.b64encode(req.body).decode(),
            }
        )
        if "status" in q:
            head += b"x-echo: yes\r\n"
        req.conn.respond(req, status, head, body)
        return None

    async def _echo_stream(
        self, req: Request, n: int, size: int, delay_ms: int, first_ms: int
    ) -> None:
        conn = req.conn
        conn.start_stream(
            req, 200, CT_OCTETS + request_id_line(req.request_id) + self.common.basic()
        )
        frame = chunk(b"x" * size)
        if first_ms:  # headers out, body not yet
            await asyncio.sleep(first_ms / 1000)
        for i in range(n):
            if delay_ms and i:
                await asyncio.sleep(delay_ms / 1000)
            conn.send(frame)
            if conn.paused:
                await conn.drain()
        conn.end_stream(req)

    # --- debug endpoints (no auth) --------------------------------------------------------------

    def _debug(self, req: Request) -> Coro | None:
        req.request_id = new_id("req_")
        path, method = req.path, req.method
        if path == b"/_emulator/requests":
            if method == b"GET":
                data = [e.to_json() for e in self.journal.entries()]
                self._ok(req, orjson.dumps({"data": data}))
                return None
            if method == b"DELETE":
                self.journal.clear()
                self._ok(req, b'{"deleted":true}')
                return None
        elif path == b"/_emulator/wait" and method == b"GET":
            return self._wait(req)
        elif path == b"/_emulator/reset" and method == b"POST":
            self.journal.clear()
            self.cache.clear()
            self.counters.clear()
            self.batches.clear()
            self._models_pages.clear()
            self._replay.clear()
            self._ok(req, b'{"reset":true}')
            return None
        raise ApiError(404, "Not found", "not_found_error")

    def _wait(self, req: Request) -> Coro:
        q = _query(req)
        request_id = q.get("request_id")
        state = q.get("state", "completed")
        if not request_id:
            raise ApiError(400, "request_id: Field required")
        if state not in STATES:
            raise ApiError(400, f"state: Input should be one of {', '.join(STATES)}")
        try:
            timeout = min(float(q.get("timeout", "5")), MAX_WAIT_SECONDS)
        except ValueError:
            raise ApiError(400, "timeout: Input should be a valid number") from None
        return self._wait_for(req, request_id, state, timeout)

    async def _wait_for(self, req: Request, request_id: str, state: str, timeout: float) -> None:
        entry = await self.journal.wait(request_id, state, timeout)
        if entry is None:
            seen = self.journal.find(request_id)
            message = f"request {request_id} did not reach state {state!r} within {timeout}s"
            if seen is not None:
                message += f" (it is {seen.state!r})"
            self._error(req, 408, "timeout_error", message)
        elif entry.state != state:
            body = orjson.dumps(entry.to_json())
            req.conn.respond(
                req, 409, CT_JSON + request_id_line(req.request_id) + self.common.basic(), body
            )
        else:
            self._ok(req, orjson.dumps(entry.to_json()))


def _marked_fault(params: dict[str, Any]) -> Fault | None:
    """The fault a request asks for inside its body (the marker in a message), if any."""
    spec = marker_spec(params)
    if spec is None:
        return None
    try:
        return parse_fault(spec)
    except FaultSpecError as exc:
        raise ApiError(400, str(exc)) from None
