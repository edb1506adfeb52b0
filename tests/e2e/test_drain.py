"""Graceful drain on SIGTERM: /health turns 503 at once, requests are still served during
the pre-stop delay, in-flight streams finish, what outlives the window gets an SSE error
event at the deadline (SIGTERM + pre-stop + window, not before), every request leaves its
row, and the process exits 0.

These are the stops where SIGTERM comes while the load balancer may still route here (a
Fargate Spot interruption: ECS starts the deregistration and sends SIGTERM at once, with
about two minutes before the kill). The stop that deregisters first and SIGTERMs later (a
deployment, a scale-in) is rehearsed behind a real haproxy by test_rolling_deploy.py."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import PROXY_KEY, Emulator, Proxy, start_proxy
from tests.helpers import database, log_rows

pytestmark = pytest.mark.e2e

HEADERS = {"x-api-key": PROXY_KEY, "anthropic-version": "2023-06-01"}


def body(stream: bool = True) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello"}],
    }


class StreamResult:
    def __init__(self) -> None:
        self.first_event = asyncio.Event()
        self.text = b""
        self.request_id = ""
        self.status = 0
        self.connection = ""  # the response's `connection` header
        self.last_delta_at = 0.0  # monotonic: when the last text delta arrived
        self.error_at = 0.0  # monotonic: when the SSE `error` event arrived (0: none)


async def one_stream(client: httpx2.AsyncClient, fault: str, result: StreamResult) -> None:
    headers = {**HEADERS, "x-emulator-fault": fault}
    async with client.stream("POST", "/v1/messages", json=body(), headers=headers) as r:
        result.status = r.status_code
        result.request_id = r.headers["x-claude-proxy-request-id"]
        result.connection = r.headers.get("connection", "")
        async for chunk in r.aiter_bytes():
            result.text += chunk
            if b"event: content_block_delta" in chunk:
                result.last_delta_at = time.monotonic()
            if not result.error_at and b"event: error" in result.text:
                result.error_at = time.monotonic()
            if b"event: message_start" in result.text:
                result.first_event.set()


def rows(px: Proxy) -> dict[str, dict[str, Any]]:
    with database(px.env["DATABASE_URL"]) as engine:
        return {r["id"]: r for r in log_rows(engine)}


def drain_proxy(emulator: Emulator, tmp: Path, pre_stop: float, window: float) -> Proxy:
    return start_proxy(
        emulator.url,
        {
            "CLAUDE_PROXY_PRE_STOP_SECONDS": str(pre_stop),
            "CLAUDE_PROXY_DRAIN_SECONDS": str(window),
            "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
        },
        tmp,
    )


async def open_streams(
    px: Proxy, n: int, fault: str
) -> tuple[httpx2.AsyncClient, list[StreamResult], list[asyncio.Task[None]]]:
    client = httpx2.AsyncClient(
        base_url=px.url,
        timeout=60,
        limits=httpx2.Limits(max_connections=n + 20, max_keepalive_connections=n + 20),
    )
    results = [StreamResult() for _ in range(n)]
    tasks = [asyncio.ensure_future(one_stream(client, fault, r)) for r in results]
    waits = [asyncio.ensure_future(r.first_event.wait()) for r in results]
    done, _ = await asyncio.wait(waits, timeout=30)
    assert len(done) == n, "not every stream started"
    return client, results, tasks


async def test_sigterm_with_200_open_streams_finishes_them_all(
    emulator: Emulator, tmp_path: Path
) -> None:
    px = drain_proxy(emulator, tmp_path, pre_stop=1.0, window=20.0)
    # 30 events 100 ms apart: each stream runs ~3 s, well inside the window.
    client, results, tasks = await open_streams(px, 200, "events=30 event-ms=100")
    px.process.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    async with httpx2.AsyncClient(base_url=px.url, timeout=5) as probe:
        health = await probe.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        # During the pre-stop delay new requests are still served, told to reconnect.
        late = await probe.post("/v1/messages", json=body(stream=False), headers=HEADERS)
        assert late.status_code == 200 and late.headers["connection"] == "close"
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    await client.aclose()
    exit_code = await asyncio.to_thread(px.process.proc.wait, 30)
    took = time.monotonic() - signalled
    assert exit_code == 0, px.output()
    assert took < 1.0 + 20.0, f"took {took:.1f}s: the drain waited for nothing"
    for r in results:
        assert r.status == 200
        assert r.text.count(b"event: content_block_delta") == 30, "a stream was cut"
        assert r.text.rstrip().endswith(b'data: {"type":"message_stop"}'), "no message_stop"
    logged = rows(px)
    assert {r.request_id for r in results} <= set(logged), "a stream's row is missing"
    assert all(logged[r.request_id]["status_code"] == 200 for r in results)
    assert all(logged[r.request_id]["error_type"] is None for r in results)
    assert len(logged) == 201  # the 200 streams and the request made while draining
    out = px.output()
    assert "drain started" in out and "drain: listener closed" in out


async def test_streams_that_outlive_the_window_get_an_sse_error_event_at_the_deadline(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A Spot interruption with streams longer than the drain: SIGTERM while the task is still
    routed to (no deregistration waited for), so a stream also arrives during the pre-stop.
    Every stream keeps flowing until SIGTERM + pre-stop + window, then gets the SSE `error`
    event (never a silent cut, never earlier), and the process exits 0 soon after."""
    pre_stop, window = 0.5, 1.5
    deadline = pre_stop + window
    px = drain_proxy(emulator, tmp_path, pre_stop=pre_stop, window=window)
    fault = "events=100 event-ms=100"  # ~10 s, far longer than pre-stop + window (2 s)
    client, results, tasks = await open_streams(px, 20, fault)
    signalled = time.monotonic()  # before the signal: the proxy's own clock starts later
    px.process.proc.send_signal(signal.SIGTERM)
    async with httpx2.AsyncClient(base_url=px.url, timeout=5) as probe:
        health = await probe.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "draining"}
    # The load balancer has not caught up yet: a new stream during the pre-stop is served, is
    # told to reconnect elsewhere next time, and gets the same deadline, not a window of its own.
    late = StreamResult()
    late_task = asyncio.ensure_future(one_stream(client, fault, late))
    await asyncio.wait_for(late.first_event.wait(), timeout=5)
    assert time.monotonic() - signalled < pre_stop, "the late stream missed the pre-stop"
    assert late.connection == "close"
    await asyncio.wait_for(asyncio.gather(*tasks, late_task), timeout=15)  # none hangs
    await client.aclose()
    exit_code = await asyncio.to_thread(px.process.proc.wait, 15)
    exited = time.monotonic() - signalled
    assert exit_code == 0, px.output()
    ended = [r.error_at - signalled for r in [*results, late]]
    print(
        f"\nSpot-like drain (pre-stop {pre_stop}s, window {window}s): 21 streams got the SSE "
        f"error {min(ended):.3f}-{max(ended):.3f}s after SIGTERM, last text delta "
        f"{min(r.error_at - r.last_delta_at for r in [*results, late]):.3f}-"
        f"{max(r.error_at - r.last_delta_at for r in [*results, late]):.3f}s before it; "
        f"exit 0 after {exited:.2f}s"
    )
    for r in [*results, late]:
        assert r.status == 200
        assert b"event: message_stop" not in r.text
        tail = r.text.rstrip().rsplit(b"\n\n", 1)[-1]
        assert tail.startswith(b"event: error\ndata: "), tail
        assert b"shutting down" in tail and b'"request_id":"' in tail
        # Not before the deadline, and promptly at it (the drain task sleeps until then).
        assert deadline <= r.error_at - signalled < deadline + 1.0, r.error_at - signalled
        # The stream was flowing right up to the end: the listener's close at pre-stop did
        # not stop it, the window did.
        assert r.error_at - r.last_delta_at < 0.5, "the stream stalled before the deadline"
    # The log writer's flush is all that follows the deadline: well under its 10 s bound.
    assert exited < deadline + 5.0, f"exited {exited:.1f}s after SIGTERM"
    logged = rows(px)
    for r in [*results, late]:
        row = logged[r.request_id]
        assert row["error_type"] == "api_error" and "shutting down" in row["error_message"]
    out = px.output()
    assert "drain: listener closed; 21 requests in flight" in out
    assert "drain: window over; 21 requests still in flight were ended" in out
