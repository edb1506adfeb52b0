"""Request metrics summed from finished records, in the writer process.

The writer process sees every record anyway, so it counts requests, durations,
time to first token, tokens and cost there, off the request path, into plain dicts.
Once a second it hands the sums, and how many rows it wrote, spilled, replayed
or set aside since, to its proxy worker with its report line
(store/writer_process.py), and the worker adds them to its Prometheus metrics
(metrics.ProxyMetrics.apply_report): a few dozen increments a second instead of
eleven shared-memory writes per request, and the writer process never loads
prometheus_client (~10 MB of memory).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from claude_proxy.store.records import RequestRecord

# LLM latencies: a cached short answer takes 0.3 s, a long stream minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
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
TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_write_5m", "cache_creation_5m_input_tokens"),
    ("cache_write_1h", "cache_creation_1h_input_tokens"),
    ("cache_read", "cache_read_input_tokens"),
)
# Short names on the wire -> (metric, histogram buckets or None for a counter).
REQUESTS, DURATION, TTFT, TOKENS, COST = "requests", "duration", "ttft", "tokens", "cost"
ROWS = "rows"  # the LogWriter's rows by outcome
ROW_OUTCOMES = ("written", "spilled", "replayed", "reduced", "quarantined")
BUCKETS = {DURATION: DURATION_BUCKETS, TTFT: TTFT_BUCKETS}


class RecordTally:
    """observe() per record on the writer thread; take() from the report thread."""

    def __init__(self, known_model: Callable[[str], bool] = lambda m: True) -> None:
        # A client can put anything in "model": only models with a price become labels.
        self._known_model = known_model
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], float] = {}
        self._hists: dict[tuple[str, ...], list[float]] = {}
        self._rows_reported = dict.fromkeys(ROW_OUTCOMES, 0)  # used by take() only

    def observe(self, record: RequestRecord, cost: Decimal | None) -> None:
        route = record.endpoint if record.endpoint in KNOWN_ROUTES else "other"
        model = record.model or "none"
        if record.model and not self._known_model(record.model):
            model = "other"
        status = record.status_code
        status_class = f"{status // 100}xx" if status else "none"
        u = record.usage
        with self._lock:
            counts = self._counts
            key: tuple[str, ...] = (REQUESTS, route, model, status_class)
            counts[key] = counts.get(key, 0) + 1
            if record.latency_ms is not None:
                stream = "true" if record.stream else "false"
                self._observe((DURATION, route, stream), record.latency_ms / 1000)
            if record.ttft_ms is not None and record.model:
                self._observe((TTFT, model), record.ttft_ms / 1000)
            for label, name in TOKEN_TYPES:
                n = getattr(u, name)
                if n:
                    key = (TOKENS, model, label)
                    counts[key] = counts.get(key, 0) + n
            if cost:
                key = (COST, model)
                counts[key] = counts.get(key, 0) + float(cost)

    def _observe(self, key: tuple[str, ...], value: float) -> None:
        """One histogram observation into [sum, count per bucket..., count above the last]."""
        bounds = BUCKETS[key[0]]
        sums = self._hists.get(key)
        if sums is None:
            sums = self._hists[key] = [0.0] * (len(bounds) + 2)
        sums[0] += value
        # The first bound >= value, as prometheus_client's observe() picks it.
        sums[1 + bisect_left(bounds, value)] += 1

    def take(self, writer_stats: dict[str, Any]) -> dict[str, Any]:
        """The sums since the last take(), as JSON-ready lists, and start again from zero;
        with the growth of the LogWriter's row counters (`stats()`) since then too."""
        with self._lock:
            counts, self._counts = self._counts, {}
            hists, self._hists = self._hists, {}
        for outcome in ROW_OUTCOMES:
            now = int(writer_stats.get(outcome, 0))
            if now > self._rows_reported[outcome]:
                counts[(ROWS, outcome)] = now - self._rows_reported[outcome]
                self._rows_reported[outcome] = now
        return {
            "counts": [[*key, n] for key, n in counts.items()],
            "hists": [[*key, sums] for key, sums in hists.items()],
        }
