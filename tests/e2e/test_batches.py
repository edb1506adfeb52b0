"""Message batches through the proxy: a key cannot submit past its budget, results come back
through the proxy with the official SDK, and spend is settled to the real cost, when the
results are read or by polling the batch until it ends. Real proxy processes, PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import pytest
from sqlalchemy import func, select

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store.people import create_group, create_user
from claude_proxy.store.records import Usage
from claude_proxy.store.schema import key_spend, request_logs
from tests.conftest import Emulator
from tests.e2e.test_access_control import WAIT, Cluster, cluster, request_id, sdk
from tests.helpers import log_rows, wait_until

pytestmark = pytest.mark.e2e

HAIKU = "claude-haiku-4-5"
PRICES = PriceTable.load(None)


def batch_requests(n: int, max_tokens: int = 64) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": HAIKU,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Say something about {i}."}],
            },
        }
        for i in range(n)
    ]


def total_spend(c: Cluster, key_id: str) -> Decimal:
    with c.engine.connect() as conn:
        value = conn.execute(
            select(key_spend.c.cost_usd).where(
                key_spend.c.key_id == key_id, key_spend.c.period == "total"
            )
        ).scalar()
    return Decimal(value or 0)


def batch_rows(c: Cluster, batch_id: str) -> list[dict[str, Any]]:
    return log_rows(c.engine, order_by="logged_at", message_id=batch_id)


def real_cost(results: list[Any]) -> tuple[Decimal, Usage]:
    """What the results cost at batch prices, and their tokens, as a client would add up."""
    real = Decimal(0)
    tokens = Usage(input_tokens=0, output_tokens=0)
    for r in results:
        assert r.result.type == "succeeded"
        u = r.result.message.usage
        one = Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens)
        cost = PRICES.cost(HAIKU, one, batch=True)
        assert cost is not None
        real += cost
        tokens.input_tokens = (tokens.input_tokens or 0) + u.input_tokens
        tokens.output_tokens = (tokens.output_tokens or 0) + u.output_tokens
    return real, tokens


def settled(c: Cluster, batch_id: str) -> bool:
    return any(r["id"] == f"cpr_batch_{batch_id}" for r in batch_rows(c, batch_id))


def test_a_batch_cannot_spend_past_the_budget_and_settles_to_its_real_cost(
    emulator: Emulator,
) -> None:
    with cluster(emulator) as c:
        px = c.start()
        # The report: $0.001 in total, and 500 requests that cost about 200 times that.
        _, tiny = c.key("tiny", budget_usd=Decimal("0.001"), budget_period="total")
        upstream_before = len(emulator.requests())
        with pytest.raises(anthropic.RateLimitError) as refused:
            sdk(px, tiny).messages.batches.create(requests=batch_requests(500, 1024))
        assert "estimated cost" in refused.value.message
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert c.row(request_id(refused.value))["refusal"] == "budget"
        assert len(emulator.requests()) == upstream_before  # never reached the upstream

        # A personal key of a team member: the batch counts for the person and the team too.
        create_group(c.engine, name="batchers", actor="test")
        user = create_user(c.engine, email="bea@example.com", groups=["batchers"], actor="test")
        key_id, key = c.key(
            "batches", budget_usd=Decimal("0.05"), budget_period="total", user_id=user.id
        )
        client = sdk(px, key)
        batch = client.messages.batches.create(requests=batch_requests(3))
        (submission,) = wait_until(
            lambda: batch_rows(c, batch.id), timeout=WAIT, what="the submission row"
        )
        reserved = submission["cost_usd"]
        assert reserved is not None and reserved > 0  # the estimate counts at once
        assert submission["endpoint"] == "/v1/messages/batches" and submission["key_id"] == key_id

        # The SDK reads the results from results_url, with this key: the proxy's own URL.
        retrieved = client.messages.batches.retrieve(batch.id)
        assert retrieved.results_url is not None
        assert retrieved.results_url.startswith(px.url)
        results = list(client.messages.batches.results(batch.id))
        assert sorted(r.custom_id for r in results) == ["req-0", "req-1", "req-2"]
        real, tokens = real_cost(results)

        wait_until(lambda: settled(c, batch.id), timeout=WAIT, what="the settlement row")
        rows = batch_rows(c, batch.id)
        settlement = next(r for r in rows if r["id"] == f"cpr_batch_{batch.id}")
        assert settlement["input_tokens"] == tokens.input_tokens
        assert settlement["output_tokens"] == tokens.output_tokens
        assert settlement["model"] == HAIKU and settlement["key_id"] == key_id
        assert settlement["user_id"] == user.id == submission["user_id"]
        assert settlement["group_id"] == submission["group_id"] is not None
        # The batch's rows add up to its real cost at the batch discount; so does the budget.
        assert sum(r["cost_usd"] for r in rows if r["cost_usd"] is not None) == real
        assert real < reserved  # max_tokens is an upper bound on output
        for level in (key_id, user.id, submission["group_id"]):
            wait_until(
                lambda level=level: total_spend(c, level) == real,
                timeout=WAIT,
                what=f"key_spend to hold the real cost for {level}",
            )

        # What is left of the budget bounds the next submission.
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=batch_requests(200, 2048))


def test_a_batch_nobody_reads_is_settled_by_polling(emulator: Emulator) -> None:
    with cluster(emulator) as c:
        px = c.start(CLAUDE_PROXY_BATCH_POLL_SECONDS="0.2")
        key_id, key = c.key("polled", budget_usd=Decimal(1), budget_period="month")
        client = sdk(px, key, default_headers={"x-emulator-fault": "batch-ms=1500"})
        batch = client.messages.batches.create(requests=batch_requests(4))
        assert batch.processing_status == "in_progress" and batch.results_url is None
        wait_until(lambda: settled(c, batch.id), timeout=30, what="the settlement row")
        # Read afterwards, the results give the real cost the rows must add up to.
        real, tokens = real_cost(list(client.messages.batches.results(batch.id)))
        settlement = next(r for r in batch_rows(c, batch.id) if r["id"].startswith("cpr_batch_"))
        assert settlement["input_tokens"] == tokens.input_tokens
        assert settlement["output_tokens"] == tokens.output_tokens
        with c.engine.connect() as conn:
            total = conn.execute(
                select(func.sum(request_logs.c.cost_usd)).where(
                    request_logs.c.message_id == batch.id
                )
            ).scalar_one()
        assert total == real
        # The results read (through the proxy) lands as its own row; settled once all the same.
        wait_until(
            lambda: any(
                r["endpoint"].endswith("/results") and not r["id"].startswith("cpr_batch_")
                for r in c.rows(key_id)
            ),
            timeout=WAIT,
            what="the results read's row",
        )
        assert sum(1 for r in batch_rows(c, batch.id) if r["id"].startswith("cpr_batch_")) == 1
        wait_until(
            lambda: total_spend(c, key_id) == real,
            timeout=WAIT,
            what="key_spend to hold the real cost",
        )
