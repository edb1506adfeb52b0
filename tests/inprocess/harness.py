"""The proxy's ASGI app and the emulator on the test's own event loop: no process, no port
for the proxy.

The app is driven only from outside: `create_app(settings)`, the ASGI lifespan protocol
(`lifespan.startup` / `lifespan.shutdown`, sent here as a server would) and HTTP requests,
either through httpx's ASGITransport (what the official SDK uses; it hands the response
over whole) or by hand (`Exchange`), which keeps each `http.response.body` message as the
app sends it, for what a streaming client sees.

Between the proxy and the emulator runs a `Tap`, a TCP relay that keeps the bytes the
emulator sent, so a test can compare what the client got with the emulator's own answer.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote

import anthropic
import httptools
import httpx2
import orjson
import pytest
from sqlalchemy import Engine

from claude_proxy.app import create_app
from claude_proxy.settings import Settings
from claude_proxy.store.engine import make_engine
from tests.helpers import log_rows, wait_until_async

CLIENT_KEY = "sk-proxy-inprocess-client-key-0123456789"
UPSTREAM_KEY = "sk-ant-api03-inprocess-upstream-key-0123456789"
VERSION = {"anthropic-version": "2023-06-01"}
MODEL = "claude-haiku-4-5"
HELLO = [{"role": "user", "content": "Hello there"}]
MAX_BODY = 64 * 1024  # CLAUDE_PROXY_MAX_BODY_BYTES here: a 413 costs a small body
TAG = "x-inprocess-test"  # marks a request, to find it in the emulator's journal
TIMEOUT = 10.0  # upper bound for any single wait; each returns as soon as its event comes
BASE_URL = "http://proxy.test"
# Every test here runs on the package's one event loop, where the emulator and the shared
# proxy were started: `pytestmark = PACKAGE_LOOP` in each module.
PACKAGE_LOOP = pytest.mark.asyncio(loop_scope="package")

# What every in-process proxy runs with unless a test says otherwise: fast retries, no
# breaker (a test's failures must not open it for the next), records written promptly.
DEFAULTS: dict[str, Any] = {
    "anthropic_api_key": UPSTREAM_KEY,
    "api_keys": CLIENT_KEY,
    "log_flush_interval_seconds": 0.05,
    "retry_backoff_initial_seconds": 0.01,
    "retry_budget_min_per_second": 100.0,
    "breaker_min_requests": 1_000_000,
    "bad_key_burst": 3,
    "bad_key_per_minute": 6,
    "max_body_bytes": MAX_BODY,
    "pre_stop_seconds": 0.0,
}


def make_settings(upstream_url: str, workdir: Path, **overrides: Any) -> Settings:
    """Settings built in code, SQLite and spill dir in `workdir`. The developer's own
    ANTHROPIC_*, CLAUDE_PROXY_* and DATABASE_URL are hidden while they are read."""
    fields = {
        **DEFAULTS,
        "anthropic_base_url": upstream_url,
        "database_url": f"sqlite:///{workdir / 'proxy.db'}",
        "spill_dir": str(workdir / "spill"),
        **overrides,
    }
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_PROXY_", "DATABASE_URL"))
    }
    with mock.patch.dict(os.environ, clean, clear=True):
        settings = Settings(**fields)
    assert settings.anthropic_base_url == upstream_url.rstrip("/")
    return settings


# ------------------------------------------------------------------------ lifespan


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run `app`'s lifespan as an ASGI server does: startup before, shutdown after.

    A worker's startup tunes the cyclic collector for the life of its process (it freezes
    the heap and raises the young threshold): here the process is pytest's, so the
    collector is put back as it was afterwards."""
    threshold = gc.get_threshold()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    try:
        await inbox.put({"type": "lifespan.startup"})
        reply = await _lifespan_reply(task, outbox)
        assert reply["type"] == "lifespan.startup.complete", f"the app did not start: {reply}"
        yield
        await inbox.put({"type": "lifespan.shutdown"})
        reply = await _lifespan_reply(task, outbox)
        assert reply["type"] == "lifespan.shutdown.complete", reply
        await asyncio.wait_for(task, TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def _lifespan_reply(
    task: asyncio.Task[None], outbox: asyncio.Queue[dict[str, Any]]
) -> dict[str, Any]:
    """The app's next lifespan message, or why there is none (it raised, or took too long)."""
    getter = asyncio.ensure_future(outbox.get())
    done, _ = await asyncio.wait({getter, task}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    if getter in done:
        return getter.result()
    getter.cancel()
    if task in done:
        task.result()  # raises what the app raised
        raise AssertionError("the app's lifespan ended without answering")
    raise AssertionError(f"no lifespan answer within {TIMEOUT}s")


# ------------------------------------------------------------------ a request by hand


class Exchange:
    """One HTTP request through the ASGI app, driven by hand as a server would drive it.

    The body parts are kept as the app sends them (`chunks`), so a test sees what a
    streaming client would, when it would. `body=None` announces no body and never sends
    one (with a content-length header: a client that is slow to send). The client leaves
    when `disconnect()` is called: the next `receive()` says so."""

    def __init__(
        self,
        app: Any,
        method: str,
        target: bytes,
        headers: dict[str, str] | None = None,
        body: bytes | None = b"",
        client: tuple[str, int] = ("127.0.0.1", 40000),
    ) -> None:
        raw_path, _, query = target.partition(b"?")
        hdrs = [(b"host", b"proxy.test")]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if body is not None and not any(k == b"content-length" for k, _ in hdrs):
            hdrs.append((b"content-length", b"%d" % len(body)))
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),  # as uvicorn decodes it
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": hdrs,
            "client": client,
            "server": ("proxy.test", 80),
        }
        self._app = app
        self._body = body
        self._gone = asyncio.Event()
        self._changed = asyncio.Event()
        self.receive_calls = 0
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Exchange:
        self.task = asyncio.create_task(self._app(self.scope, self._receive, self._send))
        self.task.add_done_callback(lambda _: self._changed.set())
        return self

    async def run(self) -> Exchange:
        """The whole exchange: start, and wait until the app is done with it."""
        self.start()
        await self.finished()
        return self

    async def _receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert self.status is None, "two response starts"
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            assert self.status is not None and not self.complete, message
            if message.get("body"):
                self.chunks.append(bytes(message["body"]))
            self.complete = not message.get("more_body", False)
        self._changed.set()

    def disconnect(self) -> None:
        self._gone.set()

    async def until(self, done: Callable[[Exchange], object], what: str) -> None:
        """Wait (on the app's sends, no polling) until `done(self)` holds."""
        while not done(self):
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError(f"the app finished before {what}: {self.body[-300:]!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), TIMEOUT)
            except TimeoutError:
                raise AssertionError(f"{what}: not within {TIMEOUT}s") from None

    async def finished(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, TIMEOUT)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.encode():
                return v.decode("latin-1")
        return None


# -------------------------------------------------------------- the tap upstream


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes  # transfer coding removed: the bytes the emulator meant
    complete: bool


class Tap:
    """A TCP relay in front of the emulator, keeping the bytes each connection brought back."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._received: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> Tap:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            kept = bytearray()
            self._received.append(kept)
            await asyncio.gather(_pipe(reader, up_writer, None), _pipe(up_reader, writer, kept))
        finally:
            self._pipes.discard(task)
            writer.close()

    def response(self, request_id: str) -> UpstreamResponse:
        """The emulator's response carrying `request-id: request_id`, as it sent it."""
        for data in self._received:
            for resp in _parse_responses(bytes(data)):
                if resp.headers.get("request-id") == request_id:
                    return resp
        raise AssertionError(f"the emulator sent no response with request-id {request_id}")


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, kept: bytearray | None
) -> None:
    try:
        while data := await src.read(65536):
            if kept is not None:
                kept += data
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        dst.close()


def _parse_responses(data: bytes) -> list[UpstreamResponse]:
    """Every response in one connection's bytes, the last possibly incomplete."""
    out: list[UpstreamResponse] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = bytearray()

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

        def on_headers_complete(self) -> None:
            out.append(UpstreamResponse(parser.get_status_code(), self.headers, b"", False))

        def on_body(self, body: bytes) -> None:
            self.body += body
            out[-1].body = bytes(self.body)

        def on_message_complete(self) -> None:
            out[-1].complete = True

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return out


# ------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    """A running in-process proxy, the emulator behind it, and the proxy's request log."""

    app: Any
    settings: Settings
    engine: Engine
    emulator_url: str
    tap: Tap | None = None
    _clients: list[httpx2.AsyncClient] = field(default_factory=list)

    def http(self, client_ip: str = "127.0.0.1") -> httpx2.AsyncClient:
        """An httpx client whose requests go straight into the app, from `client_ip`
        (the bad-key throttle counts per client address)."""
        transport = httpx2.ASGITransport(app=self.app, client=(client_ip, 40000))
        client = httpx2.AsyncClient(transport=transport, base_url=BASE_URL, timeout=TIMEOUT)
        self._clients.append(client)
        return client

    def sdk(
        self, key: str = CLIENT_KEY, client_ip: str = "127.0.0.1", **kw: Any
    ) -> anthropic.AsyncAnthropic:
        """The official SDK, without retries of its own, talking to the app in process."""
        return anthropic.AsyncAnthropic(
            base_url=BASE_URL, api_key=key, max_retries=0, http_client=self.http(client_ip), **kw
        )

    def upstream_response(self, request_id: str | None) -> UpstreamResponse:
        """The emulator's answer with this `request-id`, as the tap saw it go by."""
        assert self.tap is not None, "this proxy's upstream is not tapped"
        assert request_id, "the response carries no upstream request-id"
        return self.tap.response(request_id)

    def exchange(self, method: str, target: bytes, **kw: Any) -> Exchange:
        """A request by hand (`Exchange`): `target` is the raw request target, as sent."""
        return Exchange(self.app, method, target, **kw)

    async def row(self, request_id: str) -> dict[str, Any]:
        """The request's one row in request_logs, once the writer process has written it."""
        rows = await wait_until_async(
            lambda: log_rows(self.engine, id=request_id), what=f"the row of {request_id}"
        )
        assert len(rows) == 1, rows
        return rows[0]

    async def upstream(self, tag: str) -> list[dict[str, Any]]:
        """What the emulator received carrying this tag (TAG header), oldest first."""
        async with httpx2.AsyncClient(base_url=self.emulator_url, timeout=TIMEOUT) as http:
            entries = (await http.get("/_emulator/requests")).json()["data"]
        return [e for e in entries if [TAG, tag] in [[k.lower(), v] for k, v in e["headers"]]]

    async def upstream_reached(self, request_id: str, state: str) -> dict[str, Any]:
        """Wait (the emulator long-polls: no polling here) until its request `request_id`
        reaches `state` (open, completed, client_closed)."""
        async with httpx2.AsyncClient(base_url=self.emulator_url, timeout=TIMEOUT + 5) as http:
            r = await http.get(
                "/_emulator/wait",
                params={"request_id": request_id, "state": state, "timeout": TIMEOUT},
            )
        assert r.status_code == 200, f"upstream request {request_id} never {state}: {r.text}"
        data: dict[str, Any] = r.json()
        return data

    async def ready(self) -> dict[str, Any]:
        r = await self.http().get("/ready")
        data: dict[str, Any] = r.json()
        return data

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self.engine.dispose()


# The `start_stack` fixture: `async with start_stack(upstream_url=None, **settings) as stack`.
StartStack = Callable[..., AbstractAsyncContextManager[Stack]]


@asynccontextmanager
async def running_stack(
    upstream_url: str, emulator_url: str, workdir: Path, tap: Tap | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    """A proxy app in front of `upstream_url`, started and stopped through its lifespan."""
    settings = make_settings(upstream_url, workdir, **overrides)
    app = create_app(settings)
    async with lifespan(app):
        stack = Stack(app, settings, make_engine(settings.database_url), emulator_url, tap)
        try:
            yield stack
        finally:
            await stack.aclose()


def proxy_error(body: bytes, headers: Mapping[str, str] | list[tuple[bytes, bytes]]) -> Any:
    """An error response the proxy made itself, checked to be Anthropic-shaped: the API's
    envelope, JSON, and the proxy's request id in the body and in both id headers. Returns
    the parsed body (`error.type`, `error.message`, `request_id`)."""
    hdrs = (
        {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        if isinstance(headers, list)
        else dict(headers)
    )
    assert hdrs["content-type"] == "application/json", hdrs
    doc = orjson.loads(body)
    assert set(doc) == {"type", "error", "request_id"}, doc
    assert doc["type"] == "error" and set(doc["error"]) == {"type", "message"}, doc
    rid = doc["request_id"]
    assert rid.startswith("cpr_"), doc
    assert hdrs["x-claude-proxy-request-id"] == rid and hdrs["request-id"] == rid, hdrs
    return doc
