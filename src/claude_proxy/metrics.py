"""Prometheus metrics that stay correct with several worker processes.

prometheus_client's multiprocess mode: every process (each worker, each worker's
log-writer process) writes its samples to memory-mapped files in one directory
(`PROMETHEUS_MULTIPROC_DIR`, set by `claude-proxy serve` before any process starts,
and before prometheus_client is imported: it reads the variable at import),
and `/metrics`, answered by whichever worker the scrape reaches, sums them all.

Two halves, so that the request path pays almost nothing:
- `ProxyMetrics` lives in each worker: gauges of what is open now (streams,
  connections), upstream errors and retries, the circuit state, the log queue;
- `RecordMetrics` lives in the writer process, which sees every finished record
  anyway: requests, durations, time to first token, tokens, cost, and the writer's
  own counters (rows written, spilled, replayed).

Without PROMETHEUS_MULTIPROC_DIR (the app built in-process, as some tests do) each
half registers into its own registry and /metrics shows that process alone.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from decimal import Decimal
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

from claude_proxy.observability import MULTIPROC_ENV
from claude_proxy.records import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST
# LLM latencies: a cached short answer takes 0.3 s, a long stream minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
# Routes a metric label may name; any other path (a client can send any) is "other".
KNOWN_ROUTES = frozenset(
    {
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/messages/batches",
        "/v1/messages/batches/{id}",
        "/v1/messages/batches/{id}/results",
        "/v1/messages/batches/{id}/cancel",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
    }
)
_TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_write_5m", "cache_creation_5m_input_tokens"),
    ("cache_write_1h", "cache_creation_1h_input_tokens"),
    ("cache_read", "cache_read_input_tokens"),
)


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

    def expose(self) -> bytes:
        """The text exposition, summed over every process when in multiprocess mode."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class RecordMetrics:
    """The writer process's half: request metrics derived from finished records."""

    def __init__(self, known_model: Callable[[str], bool] = lambda m: True) -> None:
        # A client can put anything in "model": only models with a price become labels.
        self._known_model = known_model
        reg = self.registry = _registry()
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
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "claude_proxy_ttft_seconds",
            "Time to the first byte of the upstream's answer, as the client saw it",
            ["model"],
            buckets=TTFT_BUCKETS,
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
            "Request-log rows by outcome: written, spilled, replayed, rejected",
            ["outcome"],
            registry=reg,
        )
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()  # observe() on the writer thread, flush() on another
        self._counts: dict[tuple[Any, ...], float] = {}
        self._hists: dict[tuple[Any, ...], list[float]] = {}

    def observe(self, record: RequestRecord, cost: Decimal | None) -> None:
        """Count one record; `flush()` applies the sums (the writer process calls it every
        second). Each sample written to the shared files costs a lock and an mmap write
        (~3 µs); eleven per record made these metrics half of the writer's CPU."""
        route = record.endpoint if record.endpoint in KNOWN_ROUTES else "other"
        model = record.model or "none"
        if record.model and not self._known_model(record.model):
            model = "other"
        status = record.status_code
        status_class = f"{status // 100}xx" if status else "none"
        u = record.usage
        with self._lock:
            counts = self._counts
            key: tuple[Any, ...] = (self.requests, route, model, status_class)
            counts[key] = counts.get(key, 0) + 1
            if record.latency_ms is not None:
                stream = "true" if record.stream else "false"
                self._observe((self.duration, route, stream), record.latency_ms / 1000)
            if record.ttft_ms is not None and record.model:
                self._observe((self.ttft, model), record.ttft_ms / 1000)
            for label, name in _TOKEN_TYPES:
                n = getattr(u, name)
                if n:
                    key = (self.tokens, model, label)
                    counts[key] = counts.get(key, 0) + n
            if cost:
                key = (self.cost, model)
                counts[key] = counts.get(key, 0) + float(cost)

    def _observe(self, key: tuple[Any, ...], value: float) -> None:
        """One histogram observation into the pending sums: [sum, count per bucket...]."""
        hist: Histogram = key[0]
        bounds = hist._upper_bounds
        sums = self._hists.get(key)
        if sums is None:
            sums = self._hists[key] = [0.0] + [0] * len(bounds)
        sums[0] += value
        sums[1 + bisect_left(bounds, value)] += 1  # the first bound >= value, as observe()

    def flush(self) -> None:
        """Write the sums counted since the last flush into the shared metric files."""
        with self._lock:
            counts, self._counts = self._counts, {}
            hists, self._hists = self._hists, {}
        for (hist, *labels), sums in hists.items():
            child = hist.labels(*labels)
            # Histogram.observe() adds the value to _sum and 1 to one bucket; this adds
            # many observations at once through the same two attributes (a test checks
            # the exposition matches observe()'s, should prometheus_client change them).
            child._sum.inc(sums[0])
            for bucket, n in zip(child._buckets, sums[1:], strict=True):
                if n:
                    bucket.inc(n)
        # Requests last: whoever waits for the request count then sees the rest too.
        for (metric, *labels), n in sorted(
            counts.items(), key=lambda kv: kv[0][0] is self.requests
        ):
            metric.labels(*labels).inc(n)

    def sync_writer(self, stats: dict[str, Any]) -> None:
        """Carry the LogWriter's counters over (they only grow)."""
        for outcome, key in (
            ("written", "written"),
            ("spilled", "spilled"),
            ("replayed", "replayed"),
            ("rejected", "rejected"),
        ):
            now = int(stats.get(key, 0))
            delta = now - self._seen.get(key, 0)
            if delta > 0:
                self.rows.labels(outcome).inc(delta)
                self._seen[key] = now
