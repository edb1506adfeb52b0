"""Non-streaming load with wrk: one POST /v1/messages cell at a fixed concurrency.

wrk is C and costs a few µs per request, so it measures the servers rather than itself. A Lua
`done` hook prints the exact percentiles and error counts as one JSON line, which is sturdier than
scraping wrk's human output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from procs import preexec

BODY = (
    '{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}'
)

_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "%(key)s"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,"status_errors":%%d,' ..
    '"timeouts":%%d,"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,"p999_us":%%.1f,' ..
    '"mean_us":%%.1f,"max_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


@dataclass
class WrkResult:
    """One wrk cell. Latencies in ms; `errors` counts socket errors, timeouts and HTTP >= 400."""

    concurrency: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    status_errors: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def write_script(workdir: Path, name: str, key: str) -> Path:
    path = workdir / f"wrk-{name}.lua"
    path.write_text(_LUA % {"body": BODY, "key": key})
    return path


def run_wrk(
    url: str,
    script: Path,
    *,
    concurrency: int,
    seconds: float,
    cores: Sequence[int] | None = None,
) -> WrkResult:
    """Run one wrk cell against `url`/v1/messages; raises if wrk fails or prints no summary."""
    argv = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"{url}/v1/messages",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        preexec_fn=preexec(cores),
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    d = json.loads(line.removeprefix("BENCH_JSON "))
    secs = d["duration_us"] / 1e6
    errors = sum(
        d[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        concurrency=concurrency,
        seconds=round(secs, 3),
        requests=d["requests"],
        rps=round(d["requests"] / secs, 1) if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000,
        mean_ms=round(d["mean_us"] / 1000, 4),
        max_ms=d["max_us"] / 1000,
        errors=errors,
        status_errors=d["status_errors"],
    )
