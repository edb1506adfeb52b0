"""Message batches: the estimate a submission reserves, the proxy's own results_url, and the
real cost summed from results (the end-to-end path is tests/e2e/test_batches.py)."""

from __future__ import annotations

from decimal import Decimal

import orjson

from claude_proxy.formats.anthropic.batches import (
    ResultsTally,
    estimate,
    public_base,
    rewrite_results_urls,
)
from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store.records import Usage

PRICES = PriceTable.load(None)
HAIKU = "claude-haiku-4-5"


def test_the_estimate_errs_high_at_batch_prices() -> None:
    params = {
        "model": HAIKU,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "x" * 900}],
    }
    est = estimate([{"custom_id": "a", "params": params}, {"custom_id": "b"}, "junk"], PRICES)
    size = len(orjson.dumps(params))
    assert est.input_tokens == -(-size // 3) and est.output_tokens == 1000
    assert est.models == [HAIKU]
    full = PRICES.cost(HAIKU, Usage(input_tokens=est.input_tokens, output_tokens=1000))
    assert full is not None and est.cost_usd * 2 == full  # the Batch API's 50 %


def test_results_url_points_at_the_proxy_for_an_object_and_a_page() -> None:
    batch = {
        "id": "msgbatch_01",
        "type": "message_batch",
        "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results",
    }
    out = rewrite_results_urls(orjson.dumps(batch), "https://gw.example.com")
    assert out is not None
    assert orjson.loads(out[0])["results_url"] == (
        "https://gw.example.com/v1/messages/batches/msgbatch_01/results"
    )
    pending = {"id": "msgbatch_02", "type": "message_batch", "results_url": None}
    page = {"data": [batch, pending], "has_more": False}
    out = rewrite_results_urls(orjson.dumps(page), "http://127.0.0.1:8000")
    assert out is not None
    data = orjson.loads(out[0])["data"]
    assert data[0]["results_url"].startswith("http://127.0.0.1:8000/v1/messages/batches/")
    assert data[1]["results_url"] is None  # not ended yet: nothing to point at
    assert rewrite_results_urls(b'{"type":"error"}', "http://x") is None
    assert rewrite_results_urls(b"not json", "http://x") is None


def test_the_public_base_prefers_the_setting_and_distrusts_odd_hosts() -> None:
    assert public_base("https://gw.example.com/", "http", b"internal:8000") == (
        "https://gw.example.com"
    )
    assert public_base(None, "https", b"gw.example.com") == "https://gw.example.com"
    assert public_base(None, "http", b"evil.com/@x") == "http://localhost"
    assert public_base(None, "http", None) == "http://localhost"


def test_results_are_summed_across_chunks_and_skip_what_was_not_billed() -> None:
    usage = {"input_tokens": 100, "output_tokens": 40, "cache_read_input_tokens": 10}
    lines = [
        {
            "custom_id": "a",
            "result": {"type": "succeeded", "message": {"model": HAIKU, "usage": usage}},
        },
        {"custom_id": "b", "result": {"type": "errored", "error": {"type": "error"}}},
        {"custom_id": "c", "result": {"type": "canceled"}},
        {
            "custom_id": "d",
            "result": {"type": "succeeded", "message": {"model": HAIKU, "usage": usage}},
        },
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines)  # no newline at the end
    tally = ResultsTally(PRICES)
    for i in range(0, len(body), 7):
        tally.feed(body[i : i + 7])
    tally.finish()
    assert (tally.usage.input_tokens, tally.usage.output_tokens) == (200, 80)
    assert tally.usage.cache_read_input_tokens == 20
    one = PRICES.cost(
        HAIKU, Usage(input_tokens=100, output_tokens=40, cache_read_input_tokens=10), batch=True
    )
    assert one is not None and tally.cost == 2 * one and tally.model == HAIKU
    assert ResultsTally(PRICES).cost == Decimal(0)
