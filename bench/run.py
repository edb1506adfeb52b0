"""The claude-proxy benchmark: the emulator reached directly vs through the proxy, in one run.

    .venv/bin/python bench/run.py          (or `make bench`)

What it measures, and why (see shared/reference/performance.md):
- non-streaming POST /v1/messages with wrk at c=1, 5 and 50: latency added by the proxy, req/s,
  and the proxy's CPU time per request (the measure that does not depend on the emulator);
- 1,000 concurrent streams of 200 events with a per-event delay: added time to first byte and
  added inter-event delay; and 500 streams x 50 events with no delay: events/s, first event;
- the proxy's RSS at idle, with 1,000 streams open, and its growth with 100 slow readers.

The proxy is pinned to core 0; the emulator, wrk and this script (the stream client) share core 1,
so the direct and the proxied runs give the emulator and the load generator the same CPU.
Results go to stdout, bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import load
import procs
import report
import streams

T = TypeVar("T")

UPSTREAM_KEY = "sk-ant-bench-upstream"
CLIENT_KEY = "sk-proxy-bench-client"
PROXY_CORES = [0]
SIDE_CORES = [1]  # emulator, wrk, stream client
EMU_READY = re.compile(r"listening on (http://\S+)")
PROXY_READY = re.compile(r"ready on (http://\S+)")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per wrk cell")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured wrk seconds before a cell")
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams (main run)")
    p.add_argument("--events", type=int, default=200, help="text deltas per stream (main run)")
    p.add_argument(
        "--event-ms",
        type=int,
        default=50,
        help="delay before each SSE event (main run); 50 keeps the direct run below one core",
    )
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams start")
    p.add_argument("--slow-seconds", type=float, default=10.0, help="slow-reader test length")
    p.add_argument("--workers", type=int, default=1, help="proxy workers")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx reference row")
    p.add_argument("--quick", action="store_true", help="a short smoke run (numbers not stable)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.streams, args.events = 2.0, 0.5, 200, 40
        args.slow_seconds = 3.0
    return args


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            pkg: _version(pkg)
            for pkg in ("claude-proxy", "uvicorn", "httptools", "uvloop", "orjson")
        },
        "wrk": _first_line(["wrk", "-v"]),
        "nginx": _first_line(["nginx", "-v"]) if shutil.which("nginx") else None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_emulator(wd: Path) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "claude_proxy", "emulator", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--api-key", UPSTREAM_KEY]
    env = {"CLAUDE_PROXY_LOG_LEVEL": "WARNING"}
    return procs.start("emulator", argv, env=env, cores=SIDE_CORES, ready=EMU_READY, workdir=wd)


def start_proxy(wd: Path, name: str, upstream: str, level: str, workers: int) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "claude_proxy", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--workers", str(workers)]
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": upstream,
        "CLAUDE_PROXY_API_KEYS": CLIENT_KEY,
        "CLAUDE_PROXY_LOG_LEVEL": level,
        "DATABASE_URL": f"sqlite:///{wd / (name + '.db')}",
    }
    return procs.start(name, argv, env=env, cores=PROXY_CORES, ready=PROXY_READY, workdir=wd)


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid %(wd)s/nginx.pid;
error_log %(wd)s/nginx-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path %(wd)s/nginx-body;
  proxy_temp_path %(wd)s/nginx-proxy;
  fastcgi_temp_path %(wd)s/nginx-fastcgi;
  uwsgi_temp_path %(wd)s/nginx-uwsgi;
  scgi_temp_path %(wd)s/nginx-scgi;
  upstream emulator { server %(upstream)s; keepalive 1024; }
  server {
    listen 127.0.0.1:%(port)d backlog=4096;
    location / {
      proxy_pass http://emulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
"""


def start_nginx(wd: Path, upstream: str) -> procs.Proc | None:
    """nginx proxy_pass as the reference limit; None (with a printed line) if not installed."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        print("nginx is not installed: skipping the nginx reference row", flush=True)
        return None
    port = _free_port()
    conf = wd / "nginx.conf"
    hostport = upstream.removeprefix("http://")
    conf.write_text(_NGINX_CONF % {"wd": wd, "upstream": hostport, "port": port})
    proc = procs.start(
        "nginx", [binary, "-p", str(wd), "-c", str(conf)], cores=PROXY_CORES, workdir=wd
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            proc.url = f"http://127.0.0.1:{port}"
            return proc
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    print(f"nginx did not start, skipping it:\n{proc.log_tail()}", flush=True)
    proc.stop()
    return None


class Shape(NamedTuple):
    """A stream run: how many streams, events each, delay per event, and the start ramp."""

    n: int
    events: int
    event_ms: int
    ramp: float


class Bench:
    """One run: the processes it started and everything it measured."""

    def __init__(self, args: argparse.Namespace, wd: Path) -> None:
        self.args = args
        self.wd = wd
        self.started: list[procs.Proc] = []
        self.errors: dict[str, int] = {}
        self.runner = asyncio.Runner(loop_factory=_loop_factory())

    def note_errors(self, where: str, count: int) -> None:
        if count:
            self.errors[where] = self.errors.get(where, 0) + count
            print(f"  !! {count} errors in {where}", flush=True)

    def keep(self, proc: procs.Proc | None) -> procs.Proc | None:
        if proc is not None:
            self.started.append(proc)
        return proc

    def stop(self, proc: procs.Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def check_alive(self) -> None:
        """Fail loudly (exit code, log tail) if a process died: its numbers would be wrong."""
        for proc in self.started:
            proc.check_alive()

    def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    # --- non-streaming -----------------------------------------------------------------------

    def wrk_cells(
        self, label: str, url: str, key: str, server_pid: int | None, emu_pid: int, cells: list[int]
    ) -> dict[str, Any]:
        """wrk at each concurrency; CPU of the server and the emulator over the c=50 cell."""
        script = load.write_script(self.wd, label, key)
        out: dict[str, Any] = {}
        for c in cells:
            self.check_alive()
            warm = load.run_wrk(
                url, script, concurrency=c, seconds=self.args.warmup, cores=SIDE_CORES
            )
            self.note_errors(f"{label} c={c} warm-up", warm.errors)
            s0 = procs.cpu_seconds(server_pid) if server_pid else 0.0
            e0 = procs.cpu_seconds(emu_pid)
            res = load.run_wrk(
                url, script, concurrency=c, seconds=self.args.seconds, cores=SIDE_CORES
            )
            s1 = procs.cpu_seconds(server_pid) if server_pid else 0.0
            e1 = procs.cpu_seconds(emu_pid)
            self.note_errors(f"{label} c={c}", res.errors)
            cell = res.as_dict()
            if res.requests:
                cell["emulator_cpu_us_per_req"] = round((e1 - e0) / res.requests * 1e6, 1)
                if server_pid:
                    cell["server_cpu_us_per_req"] = round((s1 - s0) / res.requests * 1e6, 1)
            out[f"c{c}"] = cell
            print(
                f"  {label:<11} c={c:<3} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:.3f} ms  "
                f"p99 {res.p99_ms:.3f} ms  errors {res.errors}"
                + (f"  cpu/req {cell.get('server_cpu_us_per_req')} µs" if server_pid else ""),
                flush=True,
            )
        c50 = out.get("c50", {})
        out["cpu_us_per_req"] = c50.get("server_cpu_us_per_req")
        out["emulator_cpu_us_per_req"] = c50.get("emulator_cpu_us_per_req")
        return out

    # --- streams -----------------------------------------------------------------------------

    def stream_run(
        self,
        label: str,
        url: str,
        key: str,
        server_pid: int | None,
        emu_pid: int,
        shape: Shape,
    ) -> dict[str, Any]:
        """One stream run; adds the CPU per event of each process and the peak RSS of the server."""
        n, events, event_ms, ramp = shape
        self.check_alive()
        peak = [0.0]

        def sample() -> None:
            if server_pid:
                peak[0] = max(peak[0], procs.rss_mb(server_pid))

        expected = ramp + (events + 8) * event_ms / 1000
        s0 = procs.cpu_seconds(server_pid) if server_pid else 0.0
        e0, c0 = procs.cpu_seconds(emu_pid), procs.self_cpu_seconds()
        res = self.run_async(
            streams.run_streams(
                url,
                key,
                n=n,
                events=events,
                event_ms=event_ms,
                ramp_s=ramp,
                timeout_s=2 * expected + 30,
                sample=sample,
            )
        )
        s1 = procs.cpu_seconds(server_pid) if server_pid else 0.0
        e1, c1 = procs.cpu_seconds(emu_pid), procs.self_cpu_seconds()
        ev = max(1, res["events"])
        wall = max(res["wall_s"], 1e-9)
        if server_pid:
            res["server_cpu_us_per_event"] = round((s1 - s0) / ev * 1e6, 2)
            res["server_core_util"] = round((s1 - s0) / wall, 3)
            res["server_peak_rss_mb"] = round(peak[0], 1)
        res["emulator_cpu_us_per_event"] = round((e1 - e0) / ev * 1e6, 2)
        res["client_cpu_us_per_event"] = round((c1 - c0) / ev * 1e6, 2)
        res["side_core_util"] = round(((e1 - e0) + (c1 - c0)) / wall, 3)
        bad = res["streams"] - res["ok"]
        self.note_errors(f"{label} {n}x{events} streams", bad)
        print(
            f"  {label:<11} {n}x{events} ev-ms={event_ms}: ok {res['ok']}/{n} "
            f"{res['events_per_s']} ev/s  "
            f"ttfb p50/p99 {res['ttfb_p50_ms']}/{res['ttfb_p99_ms']} ms  "
            f"first-event p50/p99 {res['first_event_p50_ms']}/{res['first_event_p99_ms']} ms  "
            f"gap p50/p99 {res['inter_event_p50_ms']}/{res['inter_event_p99_ms']} ms  "
            f"core1 {res['side_core_util']:.0%}"
            + (f"  core0 {res.get('server_core_util', 0):.0%}" if server_pid else ""),
            flush=True,
        )
        if res["failures"]:
            print(f"  !! failures: {res['failures']}", flush=True)
        return res

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a, wd = self.args, self.wd
        r: dict[str, Any] = {
            "machine": machine(),
            "config": {
                "wrk_seconds": a.seconds,
                "wrk_warmup_seconds": a.warmup,
                "proxy_workers": a.workers,
                "pinning": "proxy (and nginx) on core 0; emulator, wrk, stream client on core 1",
                "streams_main": {"n": a.streams, "events": a.events, "event_ms": a.event_ms},
                "streams_ramp_s": a.ramp,
                "streams_burst": {"n": 500, "events": 50, "event_ms": 0},
                "slow_readers": {"n": 100, "events": 20000, "text_bytes": 1000, "read_Bps": 1024},
                "quick": a.quick,
            },
            "nonstream": {},
            "streams_1000": {},
            "streams_500": {},
            "memory": {},
        }
        ns, s1k, s500, mem = r["nonstream"], r["streams_1000"], r["streams_500"], r["memory"]
        emu = self.keep(start_emulator(wd))
        assert emu is not None
        print(f"emulator {emu.url} (pid {emu.pid}, core {SIDE_CORES})", flush=True)
        proxy = self.keep(start_proxy(wd, "proxy", emu.url, "WARNING", a.workers))
        assert proxy is not None
        time.sleep(1.0)
        mem["idle_mb"] = round(procs.rss_mb(proxy.pid), 1)
        print(
            f"proxy {proxy.url} (pid {proxy.pid}, core {PROXY_CORES}); idle RSS "
            f"{mem['idle_mb']} MB",
            flush=True,
        )

        print("non-streaming (wrk):", flush=True)
        ns["direct"] = self.wrk_cells("direct", emu.url, UPSTREAM_KEY, None, emu.pid, [1, 5, 50])
        ns["proxy"] = self.wrk_cells("proxy", proxy.url, CLIENT_KEY, proxy.pid, emu.pid, [1, 5, 50])

        print("streams:", flush=True)
        main_run = Shape(a.streams, a.events, a.event_ms, a.ramp)
        burst = Shape(500 if not a.quick else 100, 50, 0, 0.0)
        for label, url, key, pid in (
            ("direct", emu.url, UPSTREAM_KEY, None),
            ("proxy", proxy.url, CLIENT_KEY, proxy.pid),
        ):
            s1k[label] = self.stream_run(label, url, key, pid, emu.pid, main_run)
            time.sleep(1.0)
            s500[label] = self.stream_run(label, url, key, pid, emu.pid, burst)
            time.sleep(1.0)
        mem["streams_1000_peak_mb"] = s1k["proxy"].get("server_peak_rss_mb")
        mem["after_streams_mb"] = round(procs.rss_mb(proxy.pid), 1)
        self.stop(proxy)

        print("slow readers (fresh proxy):", flush=True)
        mem["slow_readers"] = self.slow_readers(emu)

        print("proxy with access log (CLAUDE_PROXY_LOG_LEVEL=INFO):", flush=True)
        info = self.keep(start_proxy(wd, "proxy-info", emu.url, "INFO", a.workers))
        assert info is not None
        ns["proxy_info"] = self.wrk_cells(
            "proxy INFO", info.url, CLIENT_KEY, info.pid, emu.pid, [1, 50]
        )
        lines = sum(1 for ln in info.log_path.open(errors="replace") if " request id=" in ln)
        ns["proxy_info"]["access_log_lines"] = lines
        self.stop(info)

        if not a.no_nginx:
            nginx = self.keep(start_nginx(wd, emu.url))
            if nginx is not None:
                print(f"nginx reference {nginx.url}:", flush=True)
                ns["nginx"] = self.wrk_cells(
                    "nginx", nginx.url, UPSTREAM_KEY, nginx.pid, emu.pid, [1, 5, 50]
                )
                s1k["nginx"] = self.stream_run(
                    "nginx", nginx.url, UPSTREAM_KEY, nginx.pid, emu.pid, main_run
                )
                time.sleep(1.0)
                s500["nginx"] = self.stream_run(
                    "nginx", nginx.url, UPSTREAM_KEY, nginx.pid, emu.pid, burst
                )
                self.stop(nginx)
        r["errors"] = self.errors
        r["errors_total"] = sum(self.errors.values())
        r["checks"] = report.checks(r)
        return r

    def slow_readers(self, emu: procs.Proc) -> dict[str, Any]:
        """RSS growth of a fresh, warmed proxy while 100 clients read a 20 MB stream at 1 KB/s."""
        a = self.args
        proxy = self.keep(start_proxy(self.wd, "proxy-slow", emu.url, "WARNING", a.workers))
        assert proxy is not None
        warm = load.run_wrk(
            proxy.url,
            load.write_script(self.wd, "slow-warm", CLIENT_KEY),
            concurrency=5,
            seconds=1,
            cores=SIDE_CORES,
        )
        self.note_errors("slow-reader warm-up", warm.errors)
        self.run_async(
            streams.run_streams(
                proxy.url, CLIENT_KEY, n=20, events=50, event_ms=0, ramp_s=0.0, timeout_s=30
            )
        )
        time.sleep(1.0)
        base = procs.rss_mb(proxy.pid)
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()

        def sample() -> None:
            samples.append((round(time.monotonic() - t0, 2), round(procs.rss_mb(proxy.pid), 2)))

        res = self.run_async(
            streams.slow_readers(
                proxy.url,
                CLIENT_KEY,
                n=100,
                events=20000,
                text_bytes=1000,
                read_bytes=1024,
                seconds=a.slow_seconds,
                sample=sample,
            )
        )
        peak = max((m for _, m in samples), default=base)
        time.sleep(2.0)
        after = procs.rss_mb(proxy.pid)
        self.stop(proxy)
        self.note_errors("slow readers", sum(res["errors"].values()))
        res.update(
            {
                "baseline_mb": round(base, 1),
                "peak_mb": round(peak, 1),
                "growth_mb": round(peak - base, 2),
                "after_close_mb": round(after, 1),
                "timeline_mb": samples[:: max(1, len(samples) // 20)],
            }
        )
        print(
            f"  100 slow readers for {a.slow_seconds:.0f} s: RSS {base:.1f} -> peak {peak:.1f} MB "
            f"(+{peak - base:.2f}), {after:.1f} MB 2 s after close; "
            f"read {res['bytes_read_total']:,} bytes in all; errors {res['errors']}",
            flush=True,
        )
        return res

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()
        self.runner.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not load.have_wrk():
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    nofile = procs.raise_nofile()
    procs.pin(SIDE_CORES)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 cores, pinning is a no-op", flush=True)
    print(f"open-file limit {nofile}; this client on core {SIDE_CORES}", flush=True)
    wd = procs.workdir()
    bench = Bench(args, wd)
    ok = False
    started = time.monotonic()
    try:
        results = bench.run()
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        ok = True
    finally:
        bench.close()
        if ok:
            shutil.rmtree(wd, ignore_errors=True)
        else:
            print(f"logs kept in {wd}", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md = report.markdown(results)
    (RESULTS / "latest.md").write_text(md)
    print()
    print(md)
    print(f"wrote {RESULTS / 'latest.json'} and latest.md in {results['elapsed_s']} s")
    failed = [c["measure"] for c in results["checks"] if c["pass"] is False]
    if failed:
        print(f"{len(failed)} target(s) missed: " + "; ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
