"""EMF lines from a real proxy (CLAUDE_PROXY_EMF_ENABLED=true), driven by the official SDK.

The proxy's output is captured line by line; the EMF lines are the ones that start with
`{"_aws":` (the logs are JSON lines too, starting with `{"time":`). Each is checked
against the EMF specification with tests/test_emf.py's schema and rules.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from tests.conftest import Emulator, Proxy, start_proxy
from tests.test_emf import check_line

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there"}]
EMF_LINE = r'^\{"_aws":.*$'
EMF_ON = {"CLAUDE_PROXY_EMF_ENABLED": "true", "CLAUDE_PROXY_EMF_INTERVAL_SECONDS": "1"}
# Lines to wait for a condition, at one a second: a bound, not a pace.
MAX_LINES = 15
METRICS = ("ActiveStreams", "ActiveConnections", "RequestCount", "Upstream5xx", "ProxyErrors")


@pytest.fixture
def emf_proxy(emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    px = start_proxy(emulator.url, EMF_ON, tmp_path)
    yield px
    px.process.stop()


def client(px: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=px.url, api_key=px.key, max_retries=0)


def emf_count(px: Proxy) -> int:
    return sum(1 for line in list(px.process.lines) if line.startswith('{"_aws":'))


def nth_line(px: Proxy, n: int) -> dict[str, Any]:
    """The n-th EMF line (1-based), once printed, checked against the specification."""
    m = px.process.wait_for(EMF_LINE, count=n)
    return check_line(m.string)


def lines_until(px: Proxy, start: int, done: Any) -> list[dict[str, Any]]:
    """EMF lines from the (start+1)-th on, until `done(lines so far)` holds."""
    docs: list[dict[str, Any]] = []
    for n in range(start + 1, start + 1 + MAX_LINES):
        docs.append(nth_line(px, n))
        if done(docs):
            return docs
    raise AssertionError(f"not in {MAX_LINES} EMF lines: {docs}")


def total(docs: list[dict[str, Any]], name: str) -> int:
    return sum(int(d[name]) for d in docs)


def test_lines_follow_the_specification_and_count_the_requests(emf_proxy: Proxy) -> None:
    px = emf_proxy
    with client(px) as c:
        for _ in range(3):
            c.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        with c.messages.stream(model=MODEL, max_tokens=32, messages=HELLO) as s:
            s.get_final_message()
        with pytest.raises(anthropic.InternalServerError):
            c.messages.create(
                model=MODEL,
                max_tokens=32,
                messages=HELLO,
                extra_headers={"x-emulator-fault": "status=500"},
            )
        sent_at = time.time()

    # The client is closed: wait until the counts add up and no connection is left.
    docs = lines_until(
        px, 0, lambda d: total(d, "RequestCount") >= 5 and d[-1]["ActiveConnections"] == 0
    )
    # Counts over the intervals, not since start: their sum is what was sent, exactly.
    assert total(docs, "RequestCount") == 5
    assert total(docs, "Upstream5xx") == 1
    assert total(docs, "ProxyErrors") == 0
    assert docs[-1]["ActiveStreams"] == 0
    # The next interval, with nothing happening: all zeros (counts are not since start).
    quiet = nth_line(px, len(docs) + 1)
    assert {k: quiet[k] for k in METRICS} == dict.fromkeys(METRICS, 0)
    docs.append(quiet)
    # Integer milliseconds of now, one interval apart.
    stamps = [d["_aws"]["Timestamp"] for d in docs]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] / 1000 - sent_at) < 30
    assert all(500 <= b - a <= 5000 for a, b in pairwise(stamps))

    # Every line that mentions _aws is a whole EMF line (never interleaved with a log line).
    out = px.process.lines
    assert all(line.startswith('{"_aws":') for line in out if '"_aws"' in line)
    assert all(orjson.loads(line) for line in out if line.startswith("{"))


def test_an_open_stream_counts_in_active_streams(emf_proxy: Proxy) -> None:
    px = emf_proxy
    with client(px) as c:
        # The emulator stops after 3 events and stays silent until the client leaves.
        stream = c.messages.create(
            model=MODEL,
            max_tokens=32,
            messages=HELLO,
            stream=True,
            extra_headers={"x-emulator-fault": "midstream=stall after=3"},
        )
        with stream:
            assert next(iter(stream)).type == "message_start"
            # A line printed while the stream is open (an earlier one may still be in the
            # pipe, hence "until").
            open_docs = lines_until(px, emf_count(px), lambda d: d[-1]["ActiveStreams"] >= 1)
            assert open_docs[-1]["ActiveStreams"] == 1
            assert open_docs[-1]["ActiveConnections"] >= 1
            seen = emf_count(px)
    # The client has left: the stream ends, the request counts.
    docs = lines_until(
        px,
        0,
        lambda d: len(d) > seen and d[-1]["ActiveStreams"] == 0 and total(d, "RequestCount"),
    )
    assert total(docs, "RequestCount") == 1
    assert total(docs, "Upstream5xx") == 0


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off-by-default"])
def test_lines_only_when_enabled(emulator: Emulator, tmp_path: Path, enabled: bool) -> None:
    # The interval is set either way: it alone must not turn the lines on.
    env = EMF_ON if enabled else {"CLAUDE_PROXY_EMF_INTERVAL_SECONDS": "1"}
    px = start_proxy(emulator.url, env, tmp_path)
    try:
        with client(px) as c:
            # About 2.5 s: longer than the 1 s interval, so a reporter would print meanwhile.
            with c.messages.stream(
                model=MODEL,
                max_tokens=32,
                messages=HELLO,
                extra_headers={"x-emulator-fault": "events=20 event-ms=100"},
            ) as s:
                s.get_final_message()
                rid = s.response.headers["x-claude-proxy-request-id"]
        # The access line comes after the request ended; any EMF line due before is printed.
        m = px.process.wait_for(rf'^{{.*"message":"request".*"request_id":"{re.escape(rid)}"')
        before = px.process.lines[: px.process.lines.index(m.string)]
        emf = [line for line in before if '"_aws"' in line]
        if enabled:
            assert emf, "no EMF line while the stream was open"
            assert any(check_line(line)["ActiveStreams"] == 1 for line in emf)
        else:
            assert emf == []
    finally:
        px.process.stop()
    if not enabled:
        # Not even at shutdown (an enabled reporter prints its last partial interval then).
        assert '"_aws"' not in px.output()


def test_with_two_workers_the_counts_add_up_over_both(emulator: Emulator, tmp_path: Path) -> None:
    px = start_proxy(emulator.url, {**EMF_ON, "CLAUDE_PROXY_WORKERS": "2"}, tmp_path)
    try:
        for _ in range(6):
            # A new client each time: a new connection, which either worker may accept.
            with client(px) as c:
                c.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        docs = lines_until(px, 0, lambda d: total(d, "RequestCount") >= 6)
        assert total(docs, "RequestCount") == 6
        # Two processes print to one pipe: still one whole line per write.
        out = px.process.lines
        assert all(line.startswith('{"_aws":') for line in out if '"_aws"' in line)
        assert all(orjson.loads(line) for line in out if line.startswith("{"))
    finally:
        px.process.stop()
