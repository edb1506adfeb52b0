"""The upstream pool (upstream/pool.py) in process, against the emulator over a real socket.

Its protocol behaviour (timeouts, resets, retries) is covered end to end in tests/e2e; here,
what only the process itself can see."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
import uvloop

from claude_proxy.settings import Settings
from claude_proxy.upstream.pool import (
    BodyError,
    ConnectError,
    UpstreamPool,
    UpstreamResponse,
    _Connection,
)
from claude_proxy.wiring import upstream_pool
from tests.conftest import Emulator, cyclic_garbage, within_loop_turns

BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
)
HEADERS = [(b"anthropic-version", b"2023-06-01"), (b"content-type", b"application/json")]
OURS = (_Connection, UpstreamResponse, BodyError, ConnectError)


async def test_broken_upstream_exchanges_are_freed_without_the_cyclic_collector(
    emulator: Emulator,
) -> None:
    """An upstream reset mid-stream, or a connection closed before any answer, must not
    leave the connection, its response and the error's traceback in a reference cycle."""
    settings = Settings(anthropic_api_key=emulator.upstream_key, anthropic_base_url=emulator.url)
    pool = upstream_pool(settings, asyncio.get_running_loop())

    def fault(spec: bytes) -> list[tuple[bytes, bytes]]:
        return [*HEADERS, (b"x-emulator-fault", spec)]

    try:
        with cyclic_garbage(*OURS) as cyclic:
            for _ in range(3):
                reset = fault(b"midstream=reset after=3")
                resp = await pool.request(b"POST", b"/v1/messages", reset, BODY)
                with pytest.raises(BodyError):
                    while await resp.read():
                        pass
                resp.release()
                with pytest.raises(ConnectError):
                    closed = fault(b"close-before-headers")
                    await pool.request(b"POST", b"/v1/messages", closed, BODY)
                resp = await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
                while await resp.read():
                    pass
                resp.release()
            await within_loop_turns("the connections to close", lambda: not pool._busy)
            del resp
    finally:
        await pool.close()
    assert cyclic == []


def test_a_refused_connection_is_freed_without_the_cyclic_collector() -> None:
    """uvloop (the proxy's loop) builds the protocol before it connects: a connection that
    never connects must not keep a parser whose callbacks point back at it."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def refused() -> None:
        url = f"http://127.0.0.1:{port}"
        pool = upstream_pool(Settings(anthropic_base_url=url), asyncio.get_running_loop())
        try:
            for _ in range(3):
                with pytest.raises(ConnectError):
                    await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
        finally:
            await pool.close()

    with cyclic_garbage(*OURS) as cyclic:
        uvloop.run(refused())
    assert cyclic == []


async def _pool_and_stream(
    emulator: Emulator, spec: bytes
) -> tuple[UpstreamPool, UpstreamResponse]:
    """A pool, and a stream of as many text deltas as `spec` asks for."""
    body = orjson.dumps({**orjson.loads(BODY), "max_tokens": 100_000})
    settings = Settings(anthropic_api_key=emulator.upstream_key, anthropic_base_url=emulator.url)
    pool = upstream_pool(settings, asyncio.get_running_loop())
    headers = [*HEADERS, (b"x-emulator-fault", spec)]
    return pool, await pool.request(b"POST", b"/v1/messages", headers, body)


async def test_pump_pauses_the_upstream_while_its_consumer_is_full_then_delivers_all(
    emulator: Emulator,
) -> None:
    """pump() writes from the read callback; a consumer that returns a future (its client is
    full) gets nothing more, and the upstream is not read, until that future is done."""
    pool, resp = await _pool_and_stream(emulator, b"events=2000 text-bytes=200")
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    holds: list[asyncio.Future[None]] = []
    full = asyncio.Event()
    delivered_while_held = 0

    def deliver(chunk: bytes, at_end: bool) -> asyncio.Future[None] | None:
        nonlocal delivered_while_held
        if holds and not holds[-1].done():
            delivered_while_held += 1
        got.append(chunk)
        if len(holds) < 5 and len(got) % 10 == 1:  # full now and then, five times
            holds.append(loop.create_future())
            full.set()
            return holds[-1]
        return None

    try:
        pumping = asyncio.ensure_future(resp.pump(deliver))
        for _ in range(5):
            await asyncio.wait_for(full.wait(), 10)
            full.clear()
            seen = len(got)
            for _ in range(20):  # held: nothing is read or delivered meanwhile
                await asyncio.sleep(0)
            assert len(got) == seen and resp._conn.paused
            holds[-1].set_result(None)
        await asyncio.wait_for(pumping, 10)
        assert resp.at_end and delivered_while_held == 0
        body = b"".join(got)
        assert body.count(b"event: content_block_delta") == 2000
        assert body.rstrip().endswith(b'data: {"type":"message_stop"}')
        resp.release()
    finally:
        await pool.close()


async def test_pump_raises_what_its_consumer_raised_in_the_read_callback(
    emulator: Emulator,
) -> None:
    """An error in the consumer, called from the connection's read callback, is raised in the
    pump's task (not lost in the event loop's exception handler), and the connection closes."""
    pool, resp = await _pool_and_stream(emulator, b"events=500 text-bytes=200")
    calls = 0

    def deliver(chunk: bytes, at_end: bool) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ValueError("the consumer broke")

    try:
        with pytest.raises(ValueError, match="the consumer broke"):
            await resp.pump(deliver)
        assert calls == 3 and not resp.at_end
        resp.release()
        await within_loop_turns("the connection to close", lambda: not pool._busy)
        assert pool._idle == []
    finally:
        await pool.close()


async def test_after_the_drain_window_no_new_request_starts(emulator: Emulator) -> None:
    """A request that was between attempts (a retry's backoff) when the drain window ended
    must not open a new upstream request afterwards: it fails at once, as ended locally."""
    settings = Settings(anthropic_api_key=emulator.upstream_key, anthropic_base_url=emulator.url)
    pool = upstream_pool(settings, asyncio.get_running_loop())
    try:
        resp = await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
        assert resp.status == 200
        while await resp.read():
            pass
        resp.release()
        last = emulator.requests()[-1]  # the journal's newest entry: the request above
        assert pool.abort_all("the drain window is over") == 0
        with pytest.raises(ConnectError) as ended:
            await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
        assert ended.value.local and "drain window" in str(ended.value)
        assert emulator.requests()[-1] == last  # nothing more reached the upstream
    finally:
        await pool.close()
