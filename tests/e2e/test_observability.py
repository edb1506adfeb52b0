"""The running proxy explains itself: JSON log lines, /metrics summed over every process
(two workers and their writer processes), /ready, and a console format for people."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    PROXY_KEY,
    UPSTREAM_KEY,
    Emulator,
    Process,
    spawn,
    start_proxy,
)
from tests.helpers import register_secret, wait_until

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello"}]
MODEL = "claude-haiku-4-5"
METRICS_TOKEN = register_secret("metrics-" + "t0ken" * 6)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples(text).items()
        if n == name and all(dict(lab).get(k) == val for k, val in labels.items())
    )


@pytest.fixture(scope="module")
def two_workers(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`serve --workers 2`: every scrape reaches one worker, and must show both."""
    tmp = tmp_path_factory.mktemp("workers")
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": emulator.url,
        "CLAUDE_PROXY_API_KEYS": PROXY_KEY,
        "DATABASE_URL": f"sqlite:///{tmp / 'proxy.db'}",
        "CLAUDE_PROXY_SPILL_DIR": str(tmp / "spill"),
        "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
        "CLAUDE_PROXY_METRICS_TOKEN": METRICS_TOKEN,
    }
    p = spawn(["serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2"], env, tmp)
    url = p.wait_for(r"claude-proxy ready on (http://[^\s\"]+)").group(1)
    p.wait_for(r"claude-proxy ready on", count=2)
    yield url
    p.stop()
    assert p.proc.returncode == 0
    check_json_lines(p)


def check_json_lines(p: Process) -> None:
    """Every line the proxy printed is one JSON object with the standard fields."""
    for line in p.output().splitlines():
        doc = orjson.loads(line)
        assert {"time", "level", "logger", "message"} <= set(doc), line


def scrape(url: str) -> str:
    r = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_are_summed_over_workers_and_writer_processes(two_workers: str) -> None:
    url = two_workers
    assert httpx2.get(f"{url}/metrics").status_code == 401  # the token is required
    sent = 12
    usage_in = usage_out = 0
    for i in range(sent):
        # A new client each time: a new connection, so both workers get requests.
        with anthropic.Anthropic(base_url=url, api_key=PROXY_KEY, max_retries=0) as c:
            if i % 2:
                msg = c.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
            else:
                with c.messages.stream(model=MODEL, max_tokens=32, messages=HELLO) as s:
                    msg = s.get_final_message()
            usage_in += msg.usage.input_tokens
            usage_out += msg.usage.output_tokens

    def counted() -> bool:
        # Any scrape, whichever worker answers it, must see all 12.
        return all(
            total(scrape(url), "claude_proxy_requests_total", status_class="2xx") == sent
            for _ in range(4)
        )

    wait_until(counted, what="every request in /metrics")
    text = scrape(url)
    assert total(text, "claude_proxy_tokens_total", model=MODEL, type="input") == usage_in
    assert total(text, "claude_proxy_tokens_total", model=MODEL, type="output") == usage_out
    assert total(text, "claude_proxy_cost_usd_total", model=MODEL) > 0
    assert total(text, "claude_proxy_request_duration_seconds_count") == sent
    assert total(text, "claude_proxy_ttft_seconds_count", model=MODEL) == sent
    assert total(text, "claude_proxy_request_duration_seconds_count", stream="true") == sent / 2
    assert total(text, "claude_proxy_circuit_state") == 0
    assert total(text, "claude_proxy_active_streams") == 0
    wait_until(
        lambda: total(scrape(url), "claude_proxy_log_rows_total", outcome="written") == sent,
        what="the rows written to show",
    )


def test_active_streams_and_connections_are_live(two_workers: str) -> None:
    url = two_workers
    headers = {
        "x-api-key": PROXY_KEY,
        "anthropic-version": "2023-06-01",
        "x-emulator-fault": "events=40 event-ms=100",
    }
    body = {"model": MODEL, "max_tokens": 512, "stream": True, "messages": HELLO}
    with (
        httpx2.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=body, headers=headers) as r,
    ):
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("event: content_block_delta"):
                break

        # The scrape may reach the other worker: each worker publishes its gauges at every
        # scrape it serves and once a second, so the open stream shows within a second.
        def live() -> bool:
            text = scrape(url)
            return (
                total(text, "claude_proxy_active_streams") == 1
                # this connection and the scrape's
                and total(text, "claude_proxy_active_connections") >= 2
            )

        wait_until(live, timeout=3.0, what="the open stream to show")
        for _ in lines:
            pass
    wait_until(
        lambda: total(scrape(url), "claude_proxy_active_streams") == 0, what="the stream to end"
    )


def test_ready_reports_version_circuit_database_and_queue(two_workers: str) -> None:
    with anthropic.Anthropic(base_url=two_workers, api_key=PROXY_KEY, max_retries=0) as c:
        c.messages.create(model=MODEL, max_tokens=8, messages=HELLO)

    def written() -> dict[str, Any] | None:
        for _ in range(4):  # either worker; one of them served the request
            r = httpx2.get(f"{two_workers}/ready")
            assert r.status_code == 200
            doc: dict[str, Any] = r.json()
            if doc["database"]["last_written_at"]:
                return doc
        return None

    doc = wait_until(written, what="a worker that has written")
    assert doc["status"] == "ok" and doc["draining"] is False
    assert doc["version"]
    assert doc["upstream"]["circuit"]["state"] == "closed"
    assert doc["database"]["reachable"] is True
    assert doc["log_queue"]["pending"] >= 0 and "writer" in doc["log_queue"]


def test_console_format_and_log_level(emulator: Emulator, tmp_path: Path) -> None:
    px = start_proxy(
        emulator.url,
        {"CLAUDE_PROXY_LOG_FORMAT": "console", "CLAUDE_PROXY_LOG_LEVEL": "INFO"},
        tmp_path,
    )
    try:
        with anthropic.Anthropic(base_url=px.url, api_key=PROXY_KEY, max_retries=0) as c:
            raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=HELLO)
        rid = raw.headers["x-claude-proxy-request-id"]
        line = px.process.wait_for(rf"INFO claude_proxy.access request request_id={rid} .*")
        assert f"model={MODEL}" in line.group(0) and "status=200" in line.group(0)
        assert not px.output().lstrip().startswith("{")
    finally:
        px.process.stop()


def test_the_ready_line_is_printed_at_any_log_level(emulator: Emulator, tmp_path: Path) -> None:
    px = start_proxy(emulator.url, {"CLAUDE_PROXY_LOG_LEVEL": "WARNING"}, tmp_path)  # waits for it
    try:
        with anthropic.Anthropic(base_url=px.url, api_key=PROXY_KEY, max_retries=0) as c:
            c.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert '"message":"request"' not in px.output()  # INFO lines are off
    finally:
        px.process.stop()
