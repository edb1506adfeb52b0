"""The upstream pool (upstream.py) in process, against the emulator over a real socket.

Its protocol behaviour (timeouts, resets, retries) is covered end to end in tests/e2e; here,
what only the process itself can see."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
import uvloop

from claude_proxy.config import Settings
from claude_proxy.upstream import (
    BodyError,
    ConnectError,
    UpstreamPool,
    UpstreamResponse,
    _Connection,
)
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
    pool = UpstreamPool(settings, asyncio.get_running_loop())

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
        pool = UpstreamPool(Settings(anthropic_base_url=url), asyncio.get_running_loop())
        try:
            for _ in range(3):
                with pytest.raises(ConnectError):
                    await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
        finally:
            await pool.close()

    with cyclic_garbage(*OURS) as cyclic:
        uvloop.run(refused())
    assert cyclic == []
