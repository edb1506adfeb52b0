"""Request log on versus off, against PostgreSQL, in one run.

Two proxies share one emulator: one records every request in a fresh PostgreSQL
database, the other has CLAUDE_PROXY_LOG_REQUESTS=false. wrk alternates between
them in slices (so background noise hits both alike) at concurrency 50, then both
serve the same burst of streams. Target: throughput with the log on within 5 % of
off (the median of the per-pair ratios), and no change in stream TTFB p99.

Placement: each proxy worker on core 0; its writer process, the emulator, wrk and the
PostgreSQL server on core 1. In production the database runs elsewhere and the writer
process has the task's second vCPU; left unpinned here, PostgreSQL's inserts would
run on the proxy's core and be counted as the log's cost to the proxy. The emulator,
wrk and the stream client stand for machines outside the task (Anthropic and the
clients), so PostgreSQL and the writer process run at nice 10 beside them: they take the
CPU the load generator leaves, as they would on their own cores, instead of slowing the
outside world down. Every request must still land as a row by the end (checked). The
run reports CPU per request three ways: the worker alone, the writer process, and
PostgreSQL. Stream rounds alternate between the two proxies, as the wrk slices do.

A control follows: the log-off proxy alone, then with a CPU burner at nice 19 on the side
core, in alternating slices. Its ratio is what any work beside the load generator costs
the proxy on this machine, and so how much of the on/off gap is the shared core rather
than the log's own work in the worker.

    .venv/bin/python bench/request_log.py [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

import procs
import streams
from load import run_wrk, write_script
from targets import CLIENT_KEY, SIDE_CORES, start_emulator, start_proxy


def _database(admin_url: str) -> tuple[str, str]:
    name = f"claude_proxy_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return name, f"{base}/{name}"


def _drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_stable(url: str, timeout: float = 60.0) -> None:
    """Until the row count stops growing (checked twice a second), at most `timeout`."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM request_logs").fetchone()
        count = row[0] if row else 0
        if count == last:
            return
        last = count
        time.sleep(0.5)


def _renice(pid: int, nice: int, idle: bool = False) -> None:
    """Lower every thread of `pid` (Linux keeps nice and policy per thread) to `nice`, or
    with `idle` to SCHED_IDLE: it runs only when its core has nothing else to run."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return  # gone
    for tid in tids:
        with contextlib.suppress(OSError):  # gone, or not ours to change: measured as it is
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            elif os.sched_getscheduler(tid) == os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def _side_core_control(
    proxy: procs.Proc, script: Path, slices: int, seconds: float, idle: bool
) -> dict[str, float]:
    """The log-off proxy alone, with and without a CPU burner at nice 19 on the side core.

    What any work beside the load generator costs the proxy on this machine, whatever its
    priority: the log-on proxy's writer process and PostgreSQL are such work, and in
    production they would not share a core with wrk and the emulator."""
    burner_code = "import hashlib\nx = b'a' * 65536\nwhile True: hashlib.sha256(x).digest()"
    rps: dict[str, list[float]] = {"alone": [], "burner": []}
    cpu = {"alone": 0.0, "burner": 0.0}
    requests = {"alone": 0, "burner": 0}
    for i in range(slices):
        for arm in ("alone", "burner") if i % 2 == 0 else ("burner", "alone"):
            burner = None
            if arm == "burner":
                burner = subprocess.Popen(
                    [sys.executable, "-c", burner_code], preexec_fn=procs.preexec(SIDE_CORES)
                )
                _renice(burner.pid, 19, idle)
            try:
                cpu0 = procs.own_cpu_seconds(proxy.pid)
                w = run_wrk(proxy.url, script, concurrency=50, seconds=seconds, cores=SIDE_CORES)
                cpu[arm] += procs.own_cpu_seconds(proxy.pid) - cpu0
                requests[arm] += w.requests
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            rps[arm].append(w.requests / w.seconds)
    alone, burned = sum(rps["alone"]), sum(rps["burner"])
    return {
        "rps_alone": round(alone / slices, 1),
        "rps_with_burner": round(burned / slices, 1),
        "throughput_with_burner_over_alone": _pair_ratio(rps["burner"], rps["alone"]),
        "worker_cpu_us_per_request_alone": round(cpu["alone"] / requests["alone"] * 1e6, 1),
        "worker_cpu_us_per_request_with_burner": round(cpu["burner"] / requests["burner"] * 1e6, 1),
    }


def _pair_ratio(a: list[float], b: list[float]) -> float:
    """The median over slice pairs of a/b. This machine's speed wanders by 10-30 % over
    seconds (a shared host): a ratio of sums lets one slow slice decide the result, while
    each pair ran back to back and one odd pair moves a median little."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=float, default=2.0, help="per wrk slice")
    ap.add_argument("--slices", type=int, default=10, help="per proxy, alternating")
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--stream-rounds", type=int, default=3, help="per proxy, alternating")
    ap.add_argument("--nice", type=int, default=10, help="of PostgreSQL and the writer process")
    ap.add_argument(
        "--idle",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run PostgreSQL, the writer process and the control's burner as SCHED_IDLE",
    )
    args = ap.parse_args()
    procs.raise_nofile()
    wd = procs.workdir()
    dbname, url = _database(args.pg)
    pg_pids = procs.named_pids("postgres")
    pg_cores = {p: os.sched_getaffinity(p) for p in pg_pids}
    pg_nice = {p: os.getpriority(os.PRIO_PROCESS, p) for p in pg_pids}
    started: list[procs.Proc] = []
    try:
        emu = start_emulator(wd)
        started.append(emu)
        on = start_proxy(wd, "log-on", emu.url, "WARNING", 1, True, url)
        started.append(on)
        off = start_proxy(wd, "log-off", emu.url, "WARNING", 1, False)
        started.append(off)
        script = write_script(wd, "post", CLIENT_KEY)
        res: dict[str, dict[str, float]] = {
            n: {"requests": 0, "seconds": 0.0, "cpu": 0.0, "worker_cpu": 0.0, "postgres_cpu": 0.0}
            for n in ("on", "off")
        }
        for pid in pg_pids:  # PostgreSQL beside the load generator, off the proxy's core
            procs.pin_pid(pid, SIDE_CORES)
            _renice(pid, args.nice, args.idle)
        for pid in procs.tree(on.pid):  # the writer process (the worker stays at 0)
            if pid != on.pid:
                _renice(pid, args.nice, args.idle)
        warm_requests = 0
        for name, p in (("on", on), ("off", off)):  # warm both
            w = run_wrk(p.url, script, concurrency=50, seconds=1, cores=SIDE_CORES)
            warm_requests += w.requests if name == "on" else 0
        # The writer's connection is a backend forked since (it inherited the pinning).
        pg_pids = procs.named_pids("postgres")
        slice_rps: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(args.slices):
            # ABBA order: a drift in the machine's speed within a pair favours neither side.
            order = (("on", on), ("off", off)) if i % 2 == 0 else (("off", off), ("on", on))
            for name, p in order:
                cpu0 = procs.cpu_seconds(p.pid)
                own0 = procs.own_cpu_seconds(p.pid)
                pg0 = procs.cpu_of(pg_pids)
                w = run_wrk(p.url, script, concurrency=50, seconds=args.seconds, cores=SIDE_CORES)
                res[name]["cpu"] += procs.cpu_seconds(p.pid) - cpu0
                res[name]["worker_cpu"] += procs.own_cpu_seconds(p.pid) - own0
                res[name]["postgres_cpu"] += procs.cpu_of(pg_pids) - pg0
                res[name]["requests"] += w.requests
                res[name]["seconds"] += w.seconds
                slice_rps[name].append(w.requests / w.seconds)
                if w.errors:
                    print(f"!! {w.errors} errors against log-{name}", file=sys.stderr)
        # Let the writer catch up with the wrk backlog first: the stream test measures the
        # steady state, not the last second of a 30k-row burst being written.
        _wait_stable(url)
        control = _side_core_control(off, script, args.slices, args.seconds, args.idle)
        rounds: dict[str, list[streams.Round]] = {"on": [], "off": []}
        for _ in range(args.stream_rounds):
            for name, p in (("on", on), ("off", off)):
                rnd = asyncio.run(
                    streams.run_streams(
                        p.url,
                        CLIENT_KEY,
                        n=args.streams,
                        events=50,
                        event_ms=20,
                        ramp_s=0.5,
                        timeout_s=60,
                    )
                )
                rounds[name].append(rnd)
        _wait_stable(url)
        for name in ("on", "off"):
            s = streams.summarise(rounds[name])
            res[name]["ttfb_p99_ms"] = s["ttfb_p99_ms"]
            res[name]["ttfb_p50_ms"] = s["ttfb_p50_ms"]
            res[name]["stream_failures"] = s["streams"] - s["ok"]
        for r in res.values():
            r["rps"] = round(r["requests"] / r["seconds"], 1)
            r["cpu_us_per_request"] = round(r["cpu"] / r["requests"] * 1e6, 1)
            r["worker_cpu_us_per_request"] = round(r["worker_cpu"] / r["requests"] * 1e6, 1)
            r["writer_cpu_us_per_request"] = round(
                (r["cpu"] - r["worker_cpu"]) / r["requests"] * 1e6, 1
            )
            r["postgres_cpu_us_per_request"] = round(r["postgres_cpu"] / r["requests"] * 1e6, 1)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM request_logs").fetchone()
        res["on"]["rows_in_postgres"] = row[0] if row else 0
        # Every request sent to the log-on proxy, warm-up included, must be a row by now.
        sent = res["on"]["requests"] + warm_requests + args.streams * args.stream_rounds
        res["on"]["rows_expected_at_least"] = sent
        if res["on"]["rows_in_postgres"] < sent:
            got = res["on"]["rows_in_postgres"]
            print(f"!! only {got} rows for {sent} requests", file=sys.stderr)
        out = {
            "throughput_on_over_off": _pair_ratio(slice_rps["on"], slice_rps["off"]),
            "throughput_on_over_off_totals": round(res["on"]["rps"] / res["off"]["rps"], 3),
            "side_core_control": control,
            "ttfb_p99_delta_ms": round(res["on"]["ttfb_p99_ms"] - res["off"]["ttfb_p99_ms"], 2),
            **{f"log_{k}": v for k, v in res.items()},
        }
        print(json.dumps(out, indent=2))
        Path("bench/results").mkdir(parents=True, exist_ok=True)
        Path("bench/results/request_log.json").write_text(json.dumps(out, indent=2))
    finally:
        for p in reversed(started):
            p.stop()
        for pid, cores in pg_cores.items():
            procs.pin_pid(pid, sorted(cores))
            _renice(pid, pg_nice[pid])
        _drop(args.pg, dbname)


if __name__ == "__main__":
    main()
