"""Request metrics are summed in the writer process (RecordTally) and added to the worker's
Prometheus metrics once a second (ProxyMetrics.apply_report): the exposition must be exactly
what one observe()/inc() per record would have written."""

from __future__ import annotations

import random
from decimal import Decimal

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from claude_proxy.store.records import RequestRecord
from claude_proxy.telemetry.metrics import ProxyMetrics
from claude_proxy.telemetry.tally import DURATION_BUCKETS, TTFT_BUCKETS, RecordTally
from tests.store.conftest import make_record

KNOWN = {"claude-sonnet-4-5", "claude-haiku-4-5"}


def records(n: int) -> list[RequestRecord]:
    rnd = random.Random(7)
    return [
        make_record(
            i,
            model=rnd.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "made-up", None]),
            endpoint=rnd.choice(["/v1/messages", "/v1/models", "/v1/secret-path"]),
            status_code=rnd.choice([200, 200, 429, 529, None]),
            # Bucket edges exactly, beyond the last bound, and in between.
            latency_ms=rnd.choice([100.0, 250.0, 0.5, 3_600_000.0, rnd.uniform(0, 9e5)]),
            ttft_ms=rnd.choice([None, 50.0, 1000.0, rnd.uniform(0, 7e4)]),
        )
        for i in range(n)
    ]


def reference(recs: list[RequestRecord]) -> bytes:
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
        model = (r.model if r.model in KNOWN else "other") if r.model else "none"
        status = f"{r.status_code // 100}xx" if r.status_code else "none"
        requests.labels(route, model, status).inc()
        assert r.latency_ms is not None
        duration.labels(route, "true" if r.stream else "false").observe(r.latency_ms / 1000)
        if r.ttft_ms is not None and r.model:
            ttft.labels(model).observe(r.ttft_ms / 1000)
        u = r.usage
        for label, n in (
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_write_5m", u.cache_creation_5m_input_tokens),
            ("cache_write_1h", u.cache_creation_1h_input_tokens),
            ("cache_read", u.cache_read_input_tokens),
        ):
            if n:
                tokens.labels(model, label).inc(n)
        cost.labels(model).inc(0.25)
    return generate_latest(reg)


def samples(text: bytes, prefix: str = "claude_proxy_") -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line.startswith(prefix) and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def request_samples(m: ProxyMetrics) -> dict[str, float]:
    names = ("requests", "request_duration", "ttft", "tokens", "cost_usd")
    got = samples(m.expose())
    return {k: v for k, v in got.items() if k.removeprefix("claude_proxy_").startswith(names)}


def test_reported_sums_match_one_sample_per_record() -> None:
    recs = records(600)
    tally = RecordTally(known_model=KNOWN.__contains__)
    m = ProxyMetrics()

    def report(stats: dict[str, int]) -> None:
        # As it travels: a JSON line from the writer process.
        m.apply_report(orjson.loads(orjson.dumps(tally.take(stats))))

    for r in recs[:400]:
        tally.observe(r, Decimal("0.25"))
    report({"written": 400})
    for r in recs[400:]:
        tally.observe(r, Decimal("0.25"))
    before = request_samples(m)
    report({"written": 600})
    report({"written": 600})  # nothing new: adds nothing
    got, want = request_samples(m), samples(reference(recs))
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-6 * max(1.0, abs(want[k])), k
    # Until its report, the last 200 records were not visible yet.
    assert sum(v for k, v in before.items() if k.startswith("claude_proxy_requests_total")) == 400
    assert samples(m.expose())['claude_proxy_log_rows_total{outcome="written"}'] == 600


def test_a_new_writer_process_counts_rows_from_zero() -> None:
    m = ProxyMetrics()
    first, successor = RecordTally(), RecordTally()  # one per writer process
    m.apply_report(first.take({"written": 500, "spilled": 3}))
    m.apply_report(successor.take({"written": 20}))  # the first died; this one starts over
    rows = samples(m.expose(), "claude_proxy_log_rows_total")
    assert rows['claude_proxy_log_rows_total{outcome="written"}'] == 520
    assert rows['claude_proxy_log_rows_total{outcome="spilled"}'] == 3
