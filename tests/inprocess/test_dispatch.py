"""Dispatch, in process: what the proxy retries itself (a 529, a refused connection), what it
passes on after its last attempt, and the circuit breaker opening, refusing without the
upstream and closing again. The emulator fails on request (its `x-emulator-fault` header,
docs/emulator.md). (tests/e2e/test_fault_matrix.py: every fault through real processes.)"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.helpers import wait_until_async
from tests.inprocess.harness import (
    CLIENT_KEY,
    HELLO,
    MODEL,
    PACKAGE_LOOP,
    TAG,
    VERSION,
    Stack,
    StartStack,
    proxy_error,
)

pytestmark = PACKAGE_LOOP

BODY = {"model": MODEL, "max_tokens": 32, "messages": HELLO}
AUTH = {"x-api-key": CLIENT_KEY, **VERSION}


def tagged(spec: str = "") -> tuple[str, dict[str, str]]:
    """A fresh tag, and headers carrying it and the fault `spec`."""
    tag = uuid.uuid4().hex
    headers = {**AUTH, TAG: tag}
    if spec:
        headers["x-emulator-fault"] = spec.replace("{key}", tag)
    return tag, headers


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound, never listening."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        yield hole.getsockname()[1]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_529_is_retried_and_the_client_sees_only_the_success(
    stack: Stack, stream: bool
) -> None:
    tag, headers = tagged("status=529 times=1 key={key}")  # the first attempt only
    r = await stack.http().post("/v1/messages", json={**BODY, "stream": stream}, headers=headers)
    assert r.status_code == 200
    if stream:
        assert r.content.rstrip().endswith(b'data: {"type":"message_stop"}')
    else:
        assert r.json()["type"] == "message"
    attempts = await stack.upstream(tag)
    assert [a["status"] for a in attempts] == [529, 200]
    row = await stack.row(r.headers["x-claude-proxy-request-id"])
    assert (row["status_code"], row["error_type"], row["upstream_attempts"]) == (200, None, 2)


async def test_a_529_that_persists_is_passed_on_after_the_last_attempt(stack: Stack) -> None:
    tag, headers = tagged("status=529")
    r = await stack.http().post("/v1/messages", json=BODY, headers=headers)
    assert r.status_code == 529
    doc = r.json()
    assert doc["error"]["type"] == "overloaded_error"
    assert doc["request_id"] == r.headers["request-id"]  # the upstream's answer, as it came
    assert r.content == stack.upstream_response(r.headers["request-id"]).body
    assert len(await stack.upstream(tag)) == 3  # CLAUDE_PROXY_RETRY_MAX_ATTEMPTS
    row = await stack.row(r.headers["x-claude-proxy-request-id"])
    assert (row["status_code"], row["upstream_attempts"]) == (529, 3)


async def test_an_upstream_that_should_not_be_retried_is_not(stack: Stack) -> None:
    tag, headers = tagged("status=529 should-retry=false")
    r = await stack.http().post("/v1/messages", json=BODY, headers=headers)
    assert r.status_code == 529 and r.headers["x-should-retry"] == "false"
    assert len(await stack.upstream(tag)) == 1


async def test_a_connection_refused_is_retried_then_a_502(
    start_stack: StartStack, closed_port: int
) -> None:
    async with start_stack(f"http://127.0.0.1:{closed_port}") as proxy:
        r = await proxy.http().post("/v1/messages", json=BODY, headers=AUTH)
        assert r.status_code == 502
        doc = proxy_error(r.content, r.headers)
        assert doc["error"]["type"] == "api_error"
        assert "cannot connect to the upstream API" in doc["error"]["message"]
        # Never sent, so safe to retry: 3 attempts in all (CLAUDE_PROXY_RETRY_MAX_ATTEMPTS).
        assert (await proxy.ready())["upstream"]["retries"]["retried"] == 2


async def test_the_breaker_opens_refuses_without_the_upstream_and_closes_after_probes(
    start_stack: StartStack,
) -> None:
    settings = {
        "breaker_min_requests": 4,
        "breaker_open_seconds": 1.0,
        "breaker_half_open_probes": 3,
    }
    async with start_stack(**settings) as proxy:
        http = proxy.http()
        # 4 attempts, all failed (500 is not retried): over the 50 % ratio, it opens.
        for _ in range(4):
            assert (await proxy.ready())["upstream"]["circuit"]["state"] == "closed"
            _, headers = tagged("status=500")
            assert (await http.post("/v1/messages", json=BODY, headers=headers)).status_code == 500
        assert (await proxy.ready())["upstream"]["circuit"]["state"] == "open"

        # Open: answered at once by the proxy, 529 with a retry-after; the upstream sees none.
        tag, headers = tagged()
        refused = await http.post("/v1/messages", json=BODY, headers=headers)
        assert refused.status_code == 529
        doc = proxy_error(refused.content, refused.headers)
        assert doc["error"]["type"] == "overloaded_error"
        assert "circuit breaker is open" in doc["error"]["message"]
        assert refused.headers["retry-after"] == "1"  # whole seconds, at least 1
        assert await proxy.upstream(tag) == []

        # After the open period a request goes through as a probe (each try before that is
        # refused at once, as above); 3 probes that succeed close it.
        async def probe_passes() -> bool:
            r = await http.post("/v1/messages", json=BODY, headers=AUTH)
            return r.status_code == 200

        await wait_until_async(probe_passes, timeout=5, what="a probe let through")
        assert (await proxy.ready())["upstream"]["circuit"]["state"] == "half_open"
        for _ in range(2):
            r = await http.post("/v1/messages", json=BODY, headers=AUTH)
            assert r.status_code == 200, orjson.loads(r.content)
        assert (await proxy.ready())["upstream"]["circuit"]["state"] == "closed"
