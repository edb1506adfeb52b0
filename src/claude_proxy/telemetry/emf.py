"""CloudWatch Embedded Metric Format (EMF) lines on stdout.

With `CLAUDE_PROXY_EMF_ENABLED=true` every worker prints, every `emf_interval_seconds`
(60 by default), one JSON line that CloudWatch Logs turns into metrics (the awslogs
driver ships stdout to a log group; nothing else is needed, no agent, no API call)::

    {"_aws": {"Timestamp": 1767225600000, "CloudWatchMetrics": [{"Namespace": "ClaudeProxy",
      "Dimensions": [["ServiceName"]], "Metrics": [{"Name": "ActiveStreams", "Unit": "Count"},
      ...]}]}, "ServiceName": "claude-proxy-service", "ActiveStreams": 3, ...}

(one line in reality). The metrics:

- ActiveStreams, ActiveConnections: gauges, the value at the moment of the line. The
  deployment scales on the average of ActiveStreams; each worker is one sample.
- RequestCount, Upstream5xx, ProxyErrors: what happened during the interval (the
  difference of the since-start counters of `reporter.LiveCounts` between two lines), so
  CloudWatch's Sum over a period is the total. The first line counts since start; when
  the reporter is cancelled (shutdown, after the server has drained) and a counter moved
  since the last line, one last line carries the final partial interval, so no request
  goes uncounted.

Written by hand, not with the aws-embedded-metrics library: by default that library
sends the metrics to a CloudWatch agent over TCP/UDP (it looks for one unless its
environment is set to "Local"), and with no agent listening it drops them silently. A
line on stdout needs no agent and is visible in the logs when in doubt.

No `StorageResolution`: it defaults to 60 s (standard resolution), which matches the
60 s interval; high resolution (1) costs more and is of no use to a scaling policy
that evaluates minutes.

One line is one `write` call (then a flush): the workers share the stdout pipe, and a
single write of less than PIPE_BUF bytes (4 KiB on Linux; a line is about 500 bytes) is
never interleaved with another process's, while print() writes the newline separately.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from claude_proxy.telemetry.reporter import LiveCounts

log = logging.getLogger("claude_proxy.emf")

DIMENSION = "ServiceName"
# EMF metric name -> LiveCounts field.
GAUGES = {"ActiveStreams": "active_streams", "ActiveConnections": "active_connections"}
COUNTERS = {
    "RequestCount": "requests",
    "Upstream5xx": "upstream_5xx",
    "ProxyErrors": "proxy_errors",
}
UNIT = "Count"


def emf_line(
    live_snapshot: Mapping[str, int],
    previous_snapshot: Mapping[str, int],
    namespace: str,
    service: str,
    now: float,
) -> dict[str, Any]:
    """The EMF document for one line.

    `live_snapshot` and `previous_snapshot` are `LiveCounts.snapshot()` now and at the
    previous line (all zeros at start); `now` is seconds since the epoch.
    """
    values: dict[str, int] = {}
    for name, field in GAUGES.items():
        values[name] = live_snapshot[field]
    for name, field in COUNTERS.items():
        values[name] = live_snapshot[field] - previous_snapshot.get(field, 0)
    return {
        "_aws": {
            "Timestamp": int(now * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [[DIMENSION]],
                    "Metrics": [{"Name": name, "Unit": UNIT} for name in values],
                }
            ],
        },
        DIMENSION: service,
        **values,
    }


def _write_stdout(line: str) -> None:
    # sys.stdout looked up at each call: tests and tools may replace it.
    sys.stdout.write(line)
    sys.stdout.flush()


class EmfReporter:
    """Prints one EMF line every `interval` seconds until cancelled."""

    def __init__(
        self,
        *,
        live: LiveCounts,
        namespace: str,
        service: str,
        interval: float,
        write: Callable[[str], None] = _write_stdout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"EMF interval must be positive, got {interval!r}")
        self.live = live
        self.namespace = namespace
        self.service = service
        self.interval = interval
        self._write = write
        self._clock = clock
        # Counters at the last line written; all zero: the first line counts since start.
        self._previous: dict[str, int] = {k: 0 for k in live.snapshot()}

    def emit(self) -> bool:
        """Write one line now; False (and a log line) if it could not be built or written.

        The counters' baseline moves only when the line is written, so counts that a
        failed line would have carried go into the next one.
        """
        snapshot = self.live.snapshot()
        try:
            doc = emf_line(snapshot, self._previous, self.namespace, self.service, self._clock())
            self._write(orjson.dumps(doc).decode() + "\n")
        except Exception:
            log.exception("EMF line not written")
            return False
        self._previous = snapshot
        return True

    def _counters_moved(self) -> bool:
        snapshot = self.live.snapshot()
        return any(snapshot[f] != self._previous.get(f, 0) for f in COUNTERS.values())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        try:
            while True:
                # On a fixed schedule (no drift); ticks missed by a stalled loop are skipped.
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                self.emit()
                next_at += self.interval
                now = loop.time()
                if next_at <= now:
                    next_at += (now - next_at) // self.interval * self.interval + self.interval
        except asyncio.CancelledError:
            if self._counters_moved():
                self.emit()
            raise
