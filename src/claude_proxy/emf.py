"""CloudWatch Embedded Metric Format lines (placeholder: being written)."""

from __future__ import annotations

from claude_proxy.telemetry import LiveCounts


class EmfReporter:
    def __init__(self, live: LiveCounts, namespace: str, service: str, interval: float) -> None:
        self.live = live

    async def run(self) -> None:
        return None
