"""Request bodies held in memory under hostile uploads, against the bound.

Twenty connections each announce `Content-Length: 33554000` and trickle about 30 MiB of
it, then hold the connection open. Without a bound every byte is buffered (~600 MB that
stays); with `CLAUDE_PROXY_MAX_BUFFERED_BODY_BYTES` (128 MiB by default) only as many
bodies as fit are read, the others wait and are answered 529. The proxy process tree's
RSS (worker and writer process) is sampled every 50 ms; the target is a rise of at most
the bound plus 25 %.

    .venv/bin/python bench/body_memory.py [--cap BYTES] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import procs
from targets import CLIENT_KEY, start_emulator, start_proxy

ANNOUNCED = 33_554_000
SENT = 30 * 1024 * 1024
CHUNK = 256 * 1024
RESULTS = Path(__file__).resolve().parent / "results"


async def hostile_client(port: int, hold: asyncio.Event) -> str:
    """One upload that never finishes: what the proxy answered, or "held" if it read on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: bench\r\nx-api-key: {CLIENT_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {ANNOUNCED}\r\n\r\n"
    )
    writer.write(head.encode())
    answer = asyncio.ensure_future(reader.readline())
    sent = 0
    chunk = b" " * CHUNK
    try:
        while sent < SENT and not answer.done():
            writer.write(chunk)
            sent += CHUNK
            # Bounded: a proxy that stopped reading this body must not hang the benchmark.
            await asyncio.wait({asyncio.ensure_future(writer.drain()), answer}, timeout=10,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            await asyncio.sleep(0.005)  # a trickle, not a flood
        if not answer.done():
            await asyncio.wait({answer}, timeout=0.1)
        if answer.done():
            line = answer.result().decode("latin-1").split()
            return line[1] if len(line) > 1 else "closed"
        await hold.wait()
        return "held"
    finally:
        answer.cancel()
        writer.close()


async def run(port: int, pid: int, clients: int, seconds: float) -> dict[str, object]:
    pids = procs.tree(pid)
    base = procs.rss_mb(pid, pids)
    peak = base
    hold = asyncio.Event()
    tasks = [asyncio.ensure_future(hostile_client(port, hold)) for _ in range(clients)]
    # Long enough for the admitted uploads to send their 30 MiB and the others to wait out
    # CLAUDE_PROXY_BODY_WAIT_SECONDS (5 s) and get their answer.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, procs.rss_mb(pid, pids))
        await asyncio.sleep(0.05)
    hold.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    after = procs.rss_mb(pid, pids)
    counts: dict[str, int] = {}
    for o in outcomes:
        key = o if isinstance(o, str) else type(o).__name__
        counts[key] = counts.get(key, 0) + 1
    return {
        "rss_idle_mb": round(base, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_rise_mb": round(peak - base, 1),
        "rss_after_mb": round(after, 1),
        "outcomes": counts,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cap", type=int, default=128 * 1024 * 1024, help="the bound, in bytes")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=12.0, help="how long RSS is sampled")
    a = p.parse_args()
    wd = procs.workdir()
    emu = start_emulator(wd)
    env = {"CLAUDE_PROXY_MAX_BUFFERED_BODY_BYTES": str(a.cap)}
    proxy = start_proxy(wd, "proxy", emu.url, "WARNING", 1, True, extra_env=env)
    try:
        port = int(proxy.url.rsplit(":", 1)[1])
        time.sleep(1.0)
        result = asyncio.run(run(port, proxy.pid, a.clients, a.seconds))
    finally:
        proxy.stop()
        emu.stop()
    cap_mb = a.cap / 1e6  # MB, as procs.rss_mb reports
    result["cap_mb"] = round(cap_mb, 1)
    result["target_rise_mb"] = round(cap_mb * 1.25, 1)
    result["pass"] = result["rss_rise_mb"] <= cap_mb * 1.25  # type: ignore[operator]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "body_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(wd, ignore_errors=True)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
