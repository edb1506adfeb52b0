"""The OpenAI-compatible endpoint end to end: OpenAI's own SDK, pointed at the proxy as at
the API (`base_url=<proxy>/v1`), through a real proxy to the emulator. The proxy forwards
it byte for byte, reads its usage for the row (tokens, cost, stop reason, the `user`), and
governs it by its `model` like /v1/messages: allowlists, TPM and budgets."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import Engine

from tests.conftest import PROXY_KEY, Emulator, Proxy, start_proxy
from tests.helpers import database, log_row, log_rows, make_key

pytestmark = pytest.mark.e2e

HAIKU = "claude-haiku-4-5"  # $1 input, $0.10 cache read, $5 output per MTok
SONNET = "claude-sonnet-4-6"
CHAT: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
]
ENDPOINT = "/v1/chat/completions"


@dataclass
class Gateway:
    proxy: Proxy
    engine: Engine
    emulator: Emulator

    def client(self, key: str = PROXY_KEY, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.proxy.url}/v1", api_key=key, **kw)

    def row(self, request_id: str) -> dict[str, Any]:
        return log_row(self.engine, request_id)

    def forwarded(self) -> int:
        """How many chat completions reached the upstream so far."""
        return sum(1 for r in self.emulator.requests() if r["path"] == ENDPOINT)


@pytest.fixture(scope="module")
def gw(emulator: Emulator) -> Iterator[Gateway]:
    """A proxy recording into its own SQLite database (static key PROXY_KEY; database keys
    made by the tests)."""
    tmp = Path(tempfile.mkdtemp(prefix="claude-proxy-openai-"))
    url = f"sqlite:///{tmp / 'log.db'}"
    px = start_proxy(
        emulator.url, {"DATABASE_URL": url, "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2"}, tmp
    )
    try:
        with database(url) as engine:
            yield Gateway(px, engine, emulator)
    finally:
        px.process.stop()


def haiku_cost(row: dict[str, Any]) -> Decimal:
    return (
        Decimal(row["input_tokens"]) * 1
        + Decimal(row["cache_read_input_tokens"] or 0) * Decimal("0.10")
        + Decimal(row["output_tokens"]) * 5
    ) / 10**6


def test_non_streaming_row_has_tokens_cost_stop_reason_and_user(gw: Gateway) -> None:
    with gw.client() as c:
        raw = c.chat.completions.with_raw_response.create(
            model=HAIKU, messages=CHAT, user="end-user-7"
        )
    done = raw.parse()
    assert done.choices[0].message.content and done.usage is not None
    row = gw.row(raw.headers["x-claude-proxy-request-id"])
    assert (row["endpoint"], row["status_code"], row["stream"]) == (ENDPOINT, 200, False)
    assert row["model"] == HAIKU and row["message_id"] == done.id
    assert row["stop_reason"] == "stop" and row["error_type"] is None
    assert row["metadata_user_id"] == "end-user-7"
    assert row["upstream_request_id"] == raw.headers["request-id"]
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (
        done.usage.prompt_tokens,
        done.usage.completion_tokens,
        0,
    )
    assert row["cost_usd"] is not None and row["cost_usd"] == haiku_cost(row) > 0
    assert row["key_id"].startswith("static-") and row["ttft_ms"] is not None


def test_streams_end_cleanly_with_and_without_include_usage(gw: Gateway) -> None:
    """A stream ends with `data: [DONE]`: the proxy passes it through as it came (no error
    event appended), and records the usage when the client asked for it."""
    with gw.client() as c:
        raw = c.chat.completions.with_raw_response.create(
            model=HAIKU,
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
            user="streamer",
        )
        chunks = list(raw.parse())  # an appended error event would raise openai.APIError
        usage = chunks[-1].usage
        assert usage is not None and chunks[-1].choices == []
        row = gw.row(raw.headers["x-claude-proxy-request-id"])
        assert row["stream"] is True and row["status_code"] == 200 and row["error_type"] is None
        assert (row["input_tokens"], row["output_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert row["cache_read_input_tokens"] == 0 and row["stop_reason"] == "stop"
        assert row["message_id"] == chunks[0].id and row["metadata_user_id"] == "streamer"
        assert row["cost_usd"] == haiku_cost(row) > 0

        # Without include_usage the API sends no usage: the stream still ends as it should,
        # and the row says the tokens are unknown (NULL), not zero.
        raw = c.chat.completions.with_raw_response.create(model=HAIKU, messages=CHAT, stream=True)
        chunks = list(raw.parse())
        assert all(ch.usage is None for ch in chunks)
        row = gw.row(raw.headers["x-claude-proxy-request-id"])
        assert row["status_code"] == 200 and row["error_type"] is None
        assert row["stop_reason"] == "stop" and row["message_id"] == chunks[0].id
        assert row["input_tokens"] is None and row["output_tokens"] is None

    # The bytes the client gets are the upstream's, [DONE] last.
    body = {"model": HAIKU, "messages": CHAT, "stream": True}
    auth = {"authorization": f"Bearer {PROXY_KEY}"}
    r = httpx2.post(f"{gw.proxy.url}{ENDPOINT}", json=body, headers=auth, timeout=30)
    assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
    assert b"event: error" not in r.content


def test_a_model_outside_the_allowlist_is_refused_and_never_forwarded(gw: Gateway) -> None:
    kid, key = make_key(gw.engine, "haiku-only", models=("claude-haiku-*",))
    before = gw.forwarded()
    with gw.client(key) as c:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            c.chat.completions.create(model=SONNET, messages=CHAT)
        with pytest.raises(openai.PermissionDeniedError) as denied_stream:
            c.chat.completions.create(model=SONNET, messages=CHAT, stream=True)
        assert gw.forwarded() == before  # neither reached the upstream
        allowed = c.chat.completions.with_raw_response.create(model=HAIKU, messages=CHAT)
    assert gw.forwarded() == before + 1
    for refused in (denied.value, denied_stream.value):
        assert refused.status_code == 403 and refused.type == "permission_error"
        assert f"'{SONNET}'" in refused.message
        row = gw.row(refused.response.headers["x-claude-proxy-request-id"])
        assert (row["refusal"], row["status_code"], row["key_id"]) == (
            "model_not_allowed",
            403,
            kid,
        )
        assert row["model"] == SONNET and row["upstream_request_id"] is None
    row = gw.row(allowed.headers["x-claude-proxy-request-id"])
    assert row["key_id"] == kid and row["status_code"] == 200 and row["cost_usd"] > 0


def test_tokens_per_minute_count_a_streams_usage(gw: Gateway) -> None:
    kid, key = make_key(gw.engine, "tpm", tpm=20)
    with gw.client(key) as c:
        # A stream that would not report its usage cannot be counted: refused, not sent.
        before = gw.forwarded()
        with pytest.raises(openai.BadRequestError) as unmetered:
            c.chat.completions.create(model=HAIKU, messages=CHAT, stream=True)
        assert gw.forwarded() == before and "include_usage" in unmetered.value.message
        row = gw.row(unmetered.value.response.headers["x-claude-proxy-request-id"])
        assert (row["refusal"], row["status_code"]) == ("unmetered", 400)
        first = list(
            c.chat.completions.create(
                model=HAIKU, messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
        )
        assert first[-1].usage is not None and first[-1].usage.total_tokens >= 20
        with pytest.raises(openai.RateLimitError) as limited:
            c.chat.completions.create(model=HAIKU, messages=CHAT)
    assert "20 tokens per minute" in limited.value.message
    assert limited.value.response.headers["retry-after"].isdigit()
    row = gw.row(limited.value.response.headers["x-claude-proxy-request-id"])
    assert row["refusal"] == "tpm" and row["key_id"] == kid


def test_budget_stops_spend_and_the_sdk_does_not_retry(gw: Gateway) -> None:
    kid, key = make_key(gw.engine, "tiny", budget_usd=Decimal("0.000001"), budget_period="day")
    with gw.client(key, max_retries=2) as c:
        c.chat.completions.create(model=HAIKU, messages=CHAT)  # costs more than the budget
        with pytest.raises(openai.RateLimitError) as over:
            c.chat.completions.create(model=HAIKU, messages=CHAT)
    assert "Budget exhausted" in over.value.message
    assert over.value.response.headers["x-should-retry"] == "false"
    assert gw.row(over.value.response.headers["x-claude-proxy-request-id"])["refusal"] == "budget"
    assert len(log_rows(gw.engine, key_id=kid)) == 2  # OpenAI's SDK honours x-should-retry


def test_upstream_errors_are_recorded(gw: Gateway) -> None:
    with gw.client() as c:
        with pytest.raises(openai.NotFoundError) as missing:
            c.chat.completions.create(model="gpt-4o", messages=CHAT)
        stream = c.chat.completions.with_raw_response.create(
            model=HAIKU,
            messages=CHAT,
            stream=True,
            extra_headers={"x-emulator-fault": "midstream=error after=3"},
        )
        with pytest.raises(openai.APIError, match="Overloaded"):
            list(stream.parse())
        cut = c.chat.completions.with_raw_response.create(
            model=HAIKU,
            messages=CHAT,
            stream=True,
            extra_headers={"x-emulator-fault": "midstream=eof after=4"},
        )
        # The upstream ended the stream before [DONE]: the proxy says so in-band.
        with pytest.raises(openai.APIError, match="upstream closed the stream"):
            list(cut.parse())
    row = gw.row(missing.value.response.headers["x-claude-proxy-request-id"])
    assert (row["status_code"], row["error_type"], row["error_message"]) == (
        404,
        "not_found_error",
        "model: gpt-4o",
    )
    row = gw.row(stream.headers["x-claude-proxy-request-id"])
    assert (row["status_code"], row["error_type"]) == (200, "overloaded_error")
    row = gw.row(cut.headers["x-claude-proxy-request-id"])
    assert row["error_type"] == "api_error" and row["message_id"] is not None
