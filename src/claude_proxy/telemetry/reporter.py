"""What one proxy process counts about itself, for the EMF lines and /ready.

Plain integers bumped on the event loop (no locks: one thread). Request-level
metrics (tokens, cost, latency histograms) are not here: the writer process
derives them from the records, off the request path (tally.RecordTally), and the
worker adds its reports to Prometheus (metrics.ProxyMetrics.apply_report).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from claude_proxy.telemetry.metrics import ProxyMetrics
    from claude_proxy.telemetry.spans import Tracing


@dataclass
class LiveCounts:
    active_streams: int = 0  # SSE responses being relayed now
    active_connections: int = 0  # client connections open now
    requests: int = 0  # /v1 requests finished, since start
    upstream_5xx: int = 0  # upstream answers >= 500, connection failures and timeouts
    proxy_errors: int = 0  # 5xx the proxy produced itself (not the upstream's)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Telemetry:
    """The request path's one handle on counts, metrics and traces (each optional)."""

    def __init__(
        self, *, metrics: ProxyMetrics | None = None, tracing: Tracing | None = None
    ) -> None:
        self.live = LiveCounts()
        self.metrics = metrics
        self.tracing = tracing

    # Streams and connections open and close on the hot path: only the plain integers move
    # there. The Prometheus gauges (shared-memory values) are set from them once a second
    # and at each scrape, which saved four shared-memory writes per stream.

    def stream_started(self) -> None:
        self.live.active_streams += 1

    def stream_ended(self) -> None:
        self.live.active_streams -= 1

    def connection_opened(self) -> None:
        self.live.active_connections += 1

    def connection_closed(self) -> None:
        self.live.active_connections -= 1

    def publish_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.active_streams.set(self.live.active_streams)
            self.metrics.active_connections.set(self.live.active_connections)

    async def publish_every(self, seconds: float) -> None:
        """Keep this process's gauges at most `seconds` old (another worker may be the one
        /metrics is scraped from)."""
        while True:
            self.publish_gauges()
            await asyncio.sleep(seconds)

    def upstream_error(self, kind: str) -> None:
        """connect_error, timeout, status_5xx, overloaded, stream_error or circuit_open."""
        if kind != "stream_error":
            self.live.upstream_5xx += 1
        if self.metrics is not None:
            self.metrics.upstream_errors.labels(kind).inc()

    def retried(self) -> None:
        if self.metrics is not None:
            self.metrics.retries.inc()

    def request_finished(self, *, proxy_error: bool) -> None:
        self.live.requests += 1
        if proxy_error:
            self.live.proxy_errors += 1
