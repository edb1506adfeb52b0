"""The upstream pool (upstream.py) in process, against the emulator over a real socket.

Its protocol behaviour (timeouts, resets, retries) is covered end to end in tests/e2e; here,
what only the process itself can see."""

from __future__ import annotations

import asyncio
import gc

import orjson
import pytest

from claude_proxy.config import Settings
from claude_proxy.upstream import (
    BodyError,
    ConnectError,
    UpstreamPool,
    UpstreamResponse,
    _Connection,
)
from tests.conftest import Emulator

BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
)
HEADERS = [(b"anthropic-version", b"2023-06-01"), (b"content-type", b"application/json")]


async def test_broken_upstream_exchanges_are_freed_without_the_cyclic_collector(
    emulator: Emulator,
) -> None:
    """An upstream reset mid-stream, or a connection closed before any answer, must not
    leave the connection, its response and the error's traceback in a reference cycle:
    those wait for the cyclic collector, whose full passes stall every open stream."""
    settings = Settings(anthropic_api_key=emulator.upstream_key, anthropic_base_url=emulator.url)
    pool = UpstreamPool(settings, asyncio.get_running_loop())

    def fault(spec: bytes) -> list[tuple[bytes, bytes]]:
        return [*HEADERS, (b"x-emulator-fault", spec)]

    async def all_closed() -> None:
        for _ in range(1000):  # connection_lost runs a few loop turns after the close
            if not pool._busy:
                return
            await asyncio.sleep(0)
        raise AssertionError("connections still open")

    ours = (_Connection, UpstreamResponse, BodyError, ConnectError)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to look at it
    try:
        for _ in range(3):
            resp = await pool.request(
                b"POST", b"/v1/messages", fault(b"midstream=reset after=3"), BODY
            )
            with pytest.raises(BodyError):
                while await resp.read():
                    pass
            resp.release()
            with pytest.raises(ConnectError):
                await pool.request(b"POST", b"/v1/messages", fault(b"close-before-headers"), BODY)
            resp = await pool.request(b"POST", b"/v1/messages", HEADERS, BODY)
            while await resp.read():
                pass
            resp.release()
        await all_closed()
        del resp
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, ours)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await pool.close()
    assert cyclic == []
