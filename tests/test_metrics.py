"""RecordMetrics sums records in memory and writes them once a second: the exposition must
be exactly what one observe()/inc() per record would have written."""

from __future__ import annotations

import random
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from claude_proxy.metrics import DURATION_BUCKETS, TTFT_BUCKETS, RecordMetrics
from claude_proxy.records import RequestRecord
from tests.store.conftest import make_record


def records(n: int) -> list[RequestRecord]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        out.append(
            make_record(
                i,
                model=rnd.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "made-up", None]),
                endpoint=rnd.choice(["/v1/messages", "/v1/models", "/v1/secret-path"]),
                status_code=rnd.choice([200, 200, 429, 529, None]),
                # Bucket edges exactly, beyond the last bound, and in between.
                latency_ms=rnd.choice([100.0, 250.0, 0.5, 3_600_000.0, rnd.uniform(0, 9e5)]),
                ttft_ms=rnd.choice([None, 50.0, 1000.0, rnd.uniform(0, 7e4)]),
            )
        )
    return out


def reference(recs: list[RequestRecord], known: set[str]) -> bytes:
    """What the metrics showed when every record was written sample by sample."""
    reg = CollectorRegistry()
    requests = Counter(
        "claude_proxy_requests_total", "", ["route", "model", "status_class"], registry=reg
    )
    duration = Histogram(
        "claude_proxy_request_duration_seconds",
        "",
        ["route", "stream"],
        buckets=DURATION_BUCKETS,
        registry=reg,
    )
    ttft = Histogram("claude_proxy_ttft_seconds", "", ["model"], buckets=TTFT_BUCKETS, registry=reg)
    tokens = Counter("claude_proxy_tokens_total", "", ["model", "type"], registry=reg)
    cost = Counter("claude_proxy_cost_usd_total", "", ["model"], registry=reg)
    for r in recs:
        route = r.endpoint if r.endpoint in ("/v1/messages", "/v1/models") else "other"
        model = (r.model if r.model in known else "other") if r.model else "none"
        status = f"{r.status_code // 100}xx" if r.status_code else "none"
        requests.labels(route, model, status).inc()
        assert r.latency_ms is not None
        duration.labels(route, "true" if r.stream else "false").observe(r.latency_ms / 1000)
        if r.ttft_ms is not None and r.model:
            ttft.labels(model).observe(r.ttft_ms / 1000)
        for label, n in (
            ("input", r.usage.input_tokens),
            ("output", r.usage.output_tokens),
            ("cache_write_5m", r.usage.cache_creation_5m_input_tokens),
            ("cache_write_1h", r.usage.cache_creation_1h_input_tokens),
            ("cache_read", r.usage.cache_read_input_tokens),
        ):
            if n:
                tokens.labels(model, label).inc(n)
        cost.labels(model).inc(0.25)
    return generate_latest(reg)


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_summed_flush_matches_one_sample_per_record() -> None:
    known = {"claude-sonnet-4-5", "claude-haiku-4-5"}
    recs = records(600)
    m = RecordMetrics(known_model=known.__contains__)
    for r in recs[:400]:
        m.observe(r, Decimal("0.25"))
    m.flush()
    for r in recs[400:]:
        m.observe(r, Decimal("0.25"))
    assert m.registry is not None
    before = samples(generate_latest(m.registry))
    m.flush()
    m.flush()  # nothing new: adds nothing
    got = samples(generate_latest(m.registry))
    want = {
        k: v
        for k, v in samples(reference(recs, known)).items()
        if not k.startswith("claude_proxy_log_rows")
    }
    got = {k: v for k, v in got.items() if not k.startswith("claude_proxy_log_rows")}
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-6 * max(1.0, abs(want[k])), k
    # Until the flush, the last 200 records were not visible yet.
    assert sum(v for k, v in before.items() if k.startswith("claude_proxy_requests_total")) == 400
