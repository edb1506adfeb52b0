"""Prometheus metrics that stay correct with several worker processes.

prometheus_client's multiprocess mode: every worker writes its samples to
memory-mapped files in one directory (`PROMETHEUS_MULTIPROC_DIR`, set by
`claude-proxy serve` before any process starts, and before prometheus_client is
imported: it reads the variable at import), and `/metrics`, answered by whichever
worker the scrape reaches, sums them all.

Each worker's `ProxyMetrics` holds gauges of what is open now (streams,
connections), upstream errors and retries, the circuit state and the log queue,
set on the request path; and the request metrics (requests, durations, time to
first token, tokens, cost) and the log writer's row counts, which its writer
process sums from the records (tally.RecordTally) and reports once a second
(`apply_report`): the request path pays nothing for them.

Without PROMETHEUS_MULTIPROC_DIR (the app built in-process, as some tests do) the
metrics register into their own registry and /metrics shows that process alone.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from claude_proxy.telemetry.logs import MULTIPROC_ENV
from claude_proxy.telemetry.tally import BUCKETS, COST, DURATION, REQUESTS, ROWS, TOKENS, TTFT

CONTENT_TYPE = CONTENT_TYPE_LATEST
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


def multiprocess_on() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def process_gone(pid: int) -> None:
    """Drop a dead process's live gauges (its counters keep counting in the totals)."""
    if multiprocess_on():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _registry() -> CollectorRegistry | None:
    # Multiprocess: samples go to files whatever the registry; register nowhere.
    return None if multiprocess_on() else CollectorRegistry()


class ProxyMetrics:
    """The worker's half. Built once in the app's lifespan."""

    def __init__(self) -> None:
        reg = self.registry = _registry()
        self.active_streams = Gauge(
            "claude_proxy_active_streams",
            "SSE responses being relayed now",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.active_connections = Gauge(
            "claude_proxy_active_connections",
            "Client connections open now",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.upstream_errors = Counter(
            "claude_proxy_upstream_errors_total",
            "Upstream failures by type: connect_error, timeout, status_5xx, overloaded (529), "
            "stream_error (broke after the first byte), circuit_open",
            ["type"],
            registry=reg,
        )
        self.budget_alerts = Counter(
            "claude_proxy_budget_alerts_total",
            "Budget thresholds this process saw crossed, by outcome: claimed (it sends the "
            "alert), taken (another replica had claimed it), sent (the webhook took it)",
            ["outcome"],
            registry=reg,
        )
        self.retries = Counter(
            "claude_proxy_upstream_retries_total",
            "Upstream attempts the proxy retried itself",
            registry=reg,
        )
        self.circuit_state = Gauge(
            "claude_proxy_circuit_state",
            "Upstream circuit breaker: 0 closed, 1 half-open, 2 open (the worst over workers)",
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.log_queue_depth = Gauge(
            "claude_proxy_log_queue_depth",
            "Records handed to the log writer and not yet confirmed written or spilled",
            multiprocess_mode="livesum",
            registry=reg,
        )

        self.requests = Counter(
            "claude_proxy_requests_total",
            "Requests by route, model and status class (2xx, 4xx, 5xx, or 'none' when the "
            "client left before any answer)",
            ["route", "model", "status_class"],
            registry=reg,
        )
        self.duration = Histogram(
            "claude_proxy_request_duration_seconds",
            "Whole request, first byte in to last byte out",
            ["route", "stream"],
            buckets=BUCKETS[DURATION],
            registry=reg,
        )
        self.ttft = Histogram(
            "claude_proxy_ttft_seconds",
            "Time to the first byte of the upstream's answer, as the client saw it",
            ["model"],
            buckets=BUCKETS[TTFT],
            registry=reg,
        )
        self.tokens = Counter(
            "claude_proxy_tokens_total",
            "Tokens by model and type (input, output, cache_write_5m, cache_write_1h, cache_read)",
            ["model", "type"],
            registry=reg,
        )
        self.cost = Counter(
            "claude_proxy_cost_usd_total",
            "Cost in USD by model (requests with no known price add nothing)",
            ["model"],
            registry=reg,
        )
        self.rows = Counter(
            "claude_proxy_log_rows_total",
            "Request-log rows by outcome: written, spilled, replayed, reduced, quarantined",
            ["outcome"],
            registry=reg,
        )
        self._counters = {
            REQUESTS: self.requests,
            TOKENS: self.tokens,
            COST: self.cost,
            ROWS: self.rows,
        }
        self._histograms = {DURATION: self.duration, TTFT: self.ttft}

    def apply_report(self, tally: dict[str, Any]) -> None:
        """Add what the writer process counted since its last report (tally.RecordTally)."""
        for name, *labels, sums in tally.get("hists", ()):
            child = self._histograms[name].labels(*labels)
            # Histogram.observe() adds a value to _sum and 1 to one bucket; this adds many
            # observations at once through the same two attributes (tests/test_metrics.py
            # checks the exposition against observe()'s, should prometheus_client change).
            child._sum.inc(sums[0])
            for bucket, n in zip(child._buckets, sums[1:], strict=True):
                if n:
                    bucket.inc(n)
        counts = tally.get("counts", ())
        # Requests last: whoever waits for the request count then sees the rest too.
        for name, *labels, n in sorted(counts, key=lambda c: c[0] == REQUESTS):
            self._counters[name].labels(*labels).inc(n)

    def expose(self) -> bytes:
        """The text exposition, summed over every process when in multiprocess mode."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
