"""The claude-proxy benchmark: the emulator reached directly vs through the proxy, in one run.

    .venv/bin/python bench/run.py          (or `make bench`; --quick for a smoke run)

What it measures, and why (see docs/benchmarks.md):
- non-streaming POST /v1/messages with wrk at c=1, 5 and 50: latency added by the proxy, req/s,
  and the proxy's CPU time per request (the measure that does not depend on the emulator);
- 1,000 concurrent streams of 200 events with a per-event delay: added time to first byte and
  added inter-event delay; and 500 streams x 50 events with no delay: events/s, first event;
- the proxy's RSS at idle, with 1,000 streams open, and its growth with 100 slow readers.

The machine is shared with other work, so the targets are measured interleaved: every wrk cell is
cut into slices that rotate over direct, proxy, proxy with access log and nginx, and stream runs
alternate their order between rounds. A load that comes and goes then hits all targets alike, and
the CPU each core spent outside our processes is recorded next to every number.
Results go to stdout, bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import load
import procs
import report
import streams
from targets import (
    CLIENT_KEY,
    PROXY_CORES,
    SIDE_CORES,
    UPSTREAM_KEY,
    Target,
    machine,
    start_emulator,
    start_nginx,
    start_proxy,
)

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
SLOW_READERS = {"n": 100, "events": 20000, "text_bytes": 1000, "read_bytes_per_s": 1024}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per wrk cell")
    p.add_argument("--slices", type=int, default=3, help="interleaved slices per wrk cell")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured wrk seconds per cell")
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams (main run)")
    p.add_argument("--events", type=int, default=200, help="text deltas per stream (main run)")
    p.add_argument(
        "--event-ms",
        type=int,
        default=100,
        help="delay before each SSE event (main run). At 50 the emulator+client core saturates\n"
        "in the direct run (12k of 20k events/s); at 100 it runs at about 2/3 of a core.",
    )
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams start")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each stream run, pooled")
    p.add_argument("--slow-seconds", type=float, default=10.0, help="slow-reader test length")
    p.add_argument("--workers", type=int, default=1, help="proxy workers")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="wait up to this many seconds for other load on the machine to calm down",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.15,
        help="a wrk slice during which other programs used more than this share of a core\n"
        "is measured again (up to --retries times)",
    )
    p.add_argument("--retries", type=int, default=2, help="see --noise")
    p.add_argument(
        "--no-request-log",
        action="store_true",
        help="run the proxies with CLAUDE_PROXY_LOG_REQUESTS=false (the relay alone)",
    )
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx reference row")
    p.add_argument(
        "--baseline",
        type=Path,
        help="the src/ of another checkout (e.g. a `git worktree` of main): its proxy joins\n"
        "the non-streaming cells as `proxy_baseline`, for a same-run CPU-per-request A/B",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (numbers not stable)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.slices, args.warmup = 2.0, 1, 0.5
        args.streams, args.events, args.rounds, args.slow_seconds = 200, 40, 1, 3.0
        args.wait_quiet = 0.0
    return args


class Shape(NamedTuple):
    """A stream run: how many streams, events each, delay per event, and the start ramp."""

    n: int
    events: int
    event_ms: int
    ramp: float


def _sum_watches(watches: list[procs.CpuWatch]) -> dict[str, float]:
    """Utilisation (1.0 = a core) over several intervals taken together."""
    wall = sum(w.wall for w in watches) or 1e-9
    keys = sorted({k for w in watches for k in w.cpu})
    return {k: round(sum(w.cpu.get(k, 0.0) for w in watches) / wall, 3) for k in keys}


class Bench:
    """One run: the processes it started and everything it measured."""

    def __init__(self, args: argparse.Namespace, wd: Path) -> None:
        self.args = args
        self.wd = wd
        self.started: list[procs.Proc] = []
        self.errors: dict[str, int] = {}
        self.retry_budget = 40.0  # seconds of noisy wrk slices that may be measured again
        self.runner = asyncio.Runner(loop_factory=_loop_factory())

    # --- bookkeeping -------------------------------------------------------------------------

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

    def watch(self, pids: dict[str, int]) -> procs.CpuWatch:
        """A CpuWatch that counts every process we started as ours, not as other load."""
        return procs.CpuWatch(pids, ours=[p.pid for p in self.started])

    def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()
        self.runner.close()

    # --- non-streaming -----------------------------------------------------------------------

    def wrk_matrix(self, targets: list[Target], emu_pid: int, cells: list[int]) -> dict[str, Any]:
        """Each concurrency: a warm-up per target, then slices rotating over the targets."""
        a = self.args
        scripts = {t.label: load.write_script(self.wd, t.label, t.key) for t in targets}
        out: dict[str, dict[str, Any]] = {t.label: {} for t in targets}
        slice_s = max(1.0, a.seconds / a.slices)
        for c in cells:
            slices: dict[str, list[load.WrkResult]] = {t.label: [] for t in targets}
            watches: dict[str, list[procs.CpuWatch]] = {t.label: [] for t in targets}
            noisy = dict.fromkeys(slices, 0)
            for t in targets:
                self.check_alive()
                warm = load.run_wrk(
                    t.url, scripts[t.label], concurrency=c, seconds=a.warmup, cores=SIDE_CORES
                )
                self.note_errors(f"{t.label} c={c} warm-up", warm.errors)
            for i in range(a.slices):
                for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                    pids = {"emulator": emu_pid} | ({"server": t.pid} if t.pid else {})
                    for attempt in range(a.retries + 1):
                        self.check_alive()
                        watch = self.watch(pids)
                        res = load.run_wrk(
                            t.url,
                            scripts[t.label],
                            concurrency=c,
                            seconds=slice_s,
                            cores=SIDE_CORES,
                        )
                        others = watch.stop()["others"]
                        self.note_errors(f"{t.label} c={c}", res.errors)
                        if others <= a.noise or attempt == a.retries or self.retry_budget <= 0:
                            break
                        noisy[t.label] += 1  # other programs were busy: measure it again
                        self.retry_budget -= slice_s
                    slices[t.label].append(res)
                    watches[t.label].append(watch)
            for t in targets:
                cell = self._merge_cell(slices[t.label], watches[t.label], t.pid is not None)
                cell["noisy_slices_redone"] = noisy[t.label]
                out[t.label][f"c{c}"] = cell
                print(
                    f"  {t.label:<10} c={c:<3} {cell['rps']:>8,.0f} req/s  "
                    f"p50 {cell['p50_ms']:.3f} ms (slices {cell['p50_slices_ms']})  "
                    f"p99 {cell['p99_ms']:.3f} ms  errors {cell['errors']}  "
                    f"cpu/req {cell.get('server_cpu_us_per_req', '-')} µs  "
                    f"others {cell['cpu_util']['others']:.2f} (redone {noisy[t.label]})",
                    flush=True,
                )
        for t in targets:
            c50 = out[t.label].get("c50", {})
            out[t.label]["cpu_us_per_req"] = c50.get("server_cpu_us_per_req")
            out[t.label]["emulator_cpu_us_per_req"] = c50.get("emulator_cpu_us_per_req")
        return out

    @staticmethod
    def _merge_cell(
        slices: list[load.WrkResult], watches: list[procs.CpuWatch], has_server: bool
    ) -> dict[str, Any]:
        """Requests and CPU are summed over slices; latency percentiles are slice medians."""
        requests = sum(s.requests for s in slices)
        seconds = sum(s.seconds for s in slices) or 1e-9
        cell: dict[str, Any] = {
            "concurrency": slices[0].concurrency,
            "slices": len(slices),
            "seconds": round(seconds, 2),
            "requests": requests,
            "rps": round(requests / seconds, 1),
            "errors": sum(s.errors for s in slices),
            "status_errors": sum(s.status_errors for s in slices),
        }
        for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
            cell[key] = round(statistics.median(getattr(s, key) for s in slices), 4)
        cell["p50_slices_ms"] = [round(s.p50_ms, 3) for s in slices]
        cell["max_ms"] = max(s.max_ms for s in slices)
        names = ["emulator"] + (["server"] if has_server else [])
        for name in names:
            cpu = sum(w.cpu.get(name, 0.0) for w in watches)
            cell[f"{name}_cpu_us_per_req"] = round(cpu / max(1, requests) * 1e6, 1)
        cell["cpu_util"] = _sum_watches(watches)
        return cell

    # --- streams -----------------------------------------------------------------------------

    def stream_matrix(
        self, targets: list[Target], emu_pid: int, shape: Shape, peak_of: int | None
    ) -> dict[str, Any]:
        """`rounds` runs of `shape` per target, the order reversed every other round.

        A burst (no delay per event) first gets one unmeasured round per target, as each wrk
        cell gets its warm-up: the proxy's upstream pool drops connections idle for 60 s, so
        the first burst after the slow cells also opens 500 upstream connections. That cold
        round is reported apart (`cold_round`), not pooled with the measured ones."""
        n, events, event_ms, ramp = shape
        expected = ramp + (events + 8) * event_ms / 1000
        rounds: dict[str, list[streams.Round]] = {t.label: [] for t in targets}
        watches: dict[str, list[procs.CpuWatch]] = {t.label: [] for t in targets}
        cold: dict[str, dict[str, Any]] = {}
        if event_ms == 0:
            for t in targets:
                rnd = self.run_async(
                    streams.run_streams(
                        t.url, t.key, n=n, events=events, event_ms=0, ramp_s=ramp, timeout_s=60
                    )
                )
                summary = streams.summarise([rnd])
                cold[t.label] = {
                    k: summary[k] for k in ("events_per_s", "first_event_p99_ms", "ok", "streams")
                }
                time.sleep(1.0)
        peak = [0.0]
        for i in range(self.args.rounds):
            for t in targets if i % 2 == 0 else targets[::-1]:
                self.check_alive()
                pid = t.pid
                sampled = procs.tree(pid) if pid is not None and pid == peak_of else []

                def sample(pid: int | None = pid, sampled: list[int] = sampled) -> None:
                    if pid is not None and sampled:
                        peak[0] = max(peak[0], procs.rss_mb(pid, sampled))

                pids = {"emulator": emu_pid, "client": 0} | ({"server": pid} if pid else {})
                watch = self.watch(pids)
                rnd = self.run_async(
                    streams.run_streams(
                        t.url,
                        t.key,
                        n=n,
                        events=events,
                        event_ms=event_ms,
                        ramp_s=ramp,
                        timeout_s=2 * expected + 30,
                        sample=sample,
                    )
                )
                watch.stop()
                rounds[t.label].append(rnd)
                watches[t.label].append(watch)
                time.sleep(1.0)  # let sockets close before the next run
        out: dict[str, Any] = {}
        for t in targets:
            res = streams.summarise(rounds[t.label])
            res["cpu_util"] = _sum_watches(watches[t.label])
            for name in ("emulator", "client", "server"):
                cpu = sum(w.cpu.get(name, 0.0) for w in watches[t.label])
                if cpu:
                    res[f"{name}_cpu_us_per_event"] = round(cpu / max(1, res["events"]) * 1e6, 2)
            if t.pid is not None and t.pid == peak_of:
                res["server_peak_rss_mb"] = round(peak[0], 1)
            if t.label in cold:
                res["cold_round"] = cold[t.label]
                self.note_errors(
                    f"{t.label} {n}x{events} cold round",
                    cold[t.label]["streams"] - cold[t.label]["ok"],
                )
            self.note_errors(f"{t.label} {n}x{events} streams", res["streams"] - res["ok"])
            print(
                f"  {t.label:<10} {n}x{events} ev-ms={event_ms}: ok {res['ok']}/{res['streams']}  "
                f"{res['events_per_s']} ev/s  "
                f"ttfb p50/p99 {res['ttfb_p50_ms']}/{res['ttfb_p99_ms']} ms  "
                f"first-event p50/p99 {res['first_event_p50_ms']}/{res['first_event_p99_ms']} ms  "
                f"gap p50/p99 {res['inter_event_p50_ms']}/{res['inter_event_p99_ms']} ms\n"
                f"             cpu (1.0 = a core): {res['cpu_util']}",
                flush=True,
            )
            if t.label in cold:
                c = cold[t.label]
                print(
                    f"             cold round (unmeasured): {c['events_per_s']} ev/s, "
                    f"first-event p99 {c['first_event_p99_ms']} ms",
                    flush=True,
                )
            if res["failures"]:
                print(f"  !! failures: {res['failures']}", flush=True)
            out[t.label] = res
        return out

    # --- memory with slow readers ------------------------------------------------------------

    def slow_readers(self, emu: procs.Proc) -> dict[str, Any]:
        """RSS growth of a fresh, warmed proxy while 100 clients read a 20 MB stream at 1 KB/s.

        20 MB per stream is far more than the loopback socket buffers hold, so the proxy must
        stop reading the upstream (backpressure) or buffer it in memory. The same readers against
        the emulator (which waits for drain) are the control.
        """
        proxy = self.keep(
            start_proxy(
                self.wd,
                "proxy-slow",
                emu.url,
                "WARNING",
                self.args.workers,
                not self.args.no_request_log,
            )
        )
        assert proxy is not None
        warm = load.run_wrk(
            proxy.url,
            load.write_script(self.wd, "slow-warm", CLIENT_KEY),
            concurrency=5,
            seconds=1,
            cores=SIDE_CORES,
        )
        self.note_errors("slow-reader warm-up (wrk)", warm.errors)
        rnd = self.run_async(
            streams.run_streams(
                proxy.url, CLIENT_KEY, n=20, events=50, event_ms=0, ramp_s=0.0, timeout_s=30
            )
        )
        ws = streams.summarise([rnd])
        self.note_errors("slow-reader warm-up (streams)", ws["streams"] - ws["ok"])
        time.sleep(1.0)
        res = self.slow_readers_on("proxy", proxy.url, CLIENT_KEY, proxy.pid, emu.pid)
        self.stop(proxy)
        res["control_emulator"] = self.slow_readers_on(
            "emulator", emu.url, UPSTREAM_KEY, emu.pid, emu.pid
        )
        return res

    def slow_readers_on(
        self, label: str, url: str, key: str, pid: int, emu_pid: int
    ) -> dict[str, Any]:
        """Run the slow readers against `url`, sampling the RSS of `pid` every 250 ms."""
        self.check_alive()
        base = procs.rss_mb(pid)
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()

        family = procs.tree(pid)

        def sample() -> None:
            samples.append((round(time.monotonic() - t0, 2), round(procs.rss_mb(pid, family), 2)))

        # With backpressure both the server and the emulator idle while the readers dawdle;
        # a busy emulator means the stream is being read ahead into memory.
        watch = self.watch(
            {"server": pid} if pid == emu_pid else {"server": pid, "emulator": emu_pid}
        )
        io0 = procs.io_bytes(pid)
        res = self.run_async(
            streams.slow_readers(
                url,
                key,
                n=SLOW_READERS["n"],
                events=SLOW_READERS["events"],
                text_bytes=SLOW_READERS["text_bytes"],
                read_bytes=SLOW_READERS["read_bytes_per_s"],
                seconds=self.args.slow_seconds,
                sample=sample,
            )
        )
        util = watch.stop()
        io1 = procs.io_bytes(pid)
        peak = max((m for _, m in samples), default=base)
        time.sleep(2.0)
        after = procs.rss_mb(pid)
        self.note_errors(f"slow readers ({label})", sum(res["errors"].values()))
        res.update(
            {
                "baseline_mb": round(base, 1),
                "peak_mb": round(peak, 1),
                "growth_mb": round(peak - base, 2),
                "after_close_mb": round(after, 1),
                "timeline_mb": samples[:: max(1, len(samples) // 20)],
                "cpu_util": util,
                # What the server read (from the upstream, for the proxy) and wrote meanwhile:
                # with backpressure both stay near what the readers took.
                "server_read_mb": round((io1[0] - io0[0]) / 1e6, 2),
                "server_written_mb": round((io1[1] - io0[1]) / 1e6, 2),
            }
        )
        print(
            f"  {label:<9} {SLOW_READERS['n']} slow readers, {self.args.slow_seconds:.0f} s: "
            f"RSS {base:.1f} -> peak {peak:.1f} MB (+{peak - base:.2f}), {after:.1f} MB 2 s "
            f"after close; readers got {res['bytes_read_total']:,} bytes in all, the server read "
            f"{res['server_read_mb']} MB and wrote {res['server_written_mb']} MB; "
            f"errors {res['errors']}; cpu {util}",
            flush=True,
        )
        return res

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a, wd = self.args, self.wd
        main_shape = Shape(a.streams, a.events, a.event_ms, a.ramp)
        burst = Shape(100 if a.quick else 500, 50, 0, 0.0)
        r: dict[str, Any] = {
            "machine": machine(),
            "config": {
                "wrk_seconds": a.seconds,
                "wrk_slices": a.slices,
                "wrk_warmup_seconds": a.warmup,
                "proxy_workers": a.workers,
                "proxy_request_log": "off" if a.no_request_log else "on (SQLite in a temp dir)",
                "pinning": "proxy (and nginx) on core 0; emulator, wrk, stream client on core 1",
                "streams_main": main_shape._asdict(),
                "streams_burst": burst._asdict(),
                "stream_rounds": a.rounds,
                "slow_readers": SLOW_READERS | {"seconds": a.slow_seconds},
                "open_file_limit": procs.raise_nofile(),
                "quick": a.quick,
            },
            "memory": {},
        }
        mem = r["memory"]
        log = not a.no_request_log
        if a.wait_quiet > 0:
            print(f"waiting up to {a.wait_quiet:g} s for a quiet machine...", flush=True)
        r["background_load_before"] = procs.wait_quiet(a.wait_quiet)
        print(f"background load before start (1.0 = a core): {r['background_load_before']}")

        emu = self.keep(start_emulator(wd))
        assert emu is not None
        proxy = self.keep(start_proxy(wd, "proxy", emu.url, "WARNING", a.workers, log))
        assert proxy is not None
        info = self.keep(start_proxy(wd, "proxy-info", emu.url, "INFO", a.workers, log))
        assert info is not None
        time.sleep(1.0)
        mem["idle_mb"] = round(procs.rss_mb(proxy.pid), 1)
        print(
            f"emulator {emu.url} (core {SIDE_CORES}); proxy {proxy.url} and proxy with access "
            f"log {info.url} (core {PROXY_CORES}); proxy idle RSS {mem['idle_mb']} MB",
            flush=True,
        )
        nginx = None if a.no_nginx else self.keep(start_nginx(wd, emu.url))
        direct = Target("direct", emu.url, UPSTREAM_KEY, None)
        prox = Target("proxy", proxy.url, CLIENT_KEY, proxy.pid)
        ngx = Target("nginx", nginx.url, UPSTREAM_KEY, nginx.pid) if nginx else None
        wrk_targets = [direct, prox, Target("proxy_info", info.url, CLIENT_KEY, info.pid)]
        base = None
        if a.baseline is not None:
            base = self.keep(
                start_proxy(
                    wd, "proxy-baseline", emu.url, "WARNING", a.workers, log, source=a.baseline
                )
            )
            assert base is not None
            wrk_targets.append(Target("proxy_baseline", base.url, CLIENT_KEY, base.pid))
        stream_targets = [direct, prox]
        if ngx is not None:
            wrk_targets.append(ngx)
            stream_targets.append(ngx)

        print("non-streaming (wrk, interleaved slices):", flush=True)
        r["nonstream"] = self.wrk_matrix(wrk_targets, emu.pid, [1, 5, 50])
        # Access lines come from the writer process, as JSON (or "request id=" in console).
        lines = sum(
            1
            for ln in info.log_path.open(errors="replace")
            if '"logger":"claude_proxy.access"' in ln or " request id=" in ln
        )
        r["nonstream"]["proxy_info"]["access_log_lines"] = lines
        self.stop(info)
        if base is not None:
            self.stop(base)

        print("streams:", flush=True)
        r["streams_1000"] = self.stream_matrix(stream_targets, emu.pid, main_shape, proxy.pid)
        r["streams_500"] = self.stream_matrix(stream_targets, emu.pid, burst, None)
        mem["streams_1000_peak_mb"] = r["streams_1000"]["proxy"].get("server_peak_rss_mb")
        mem["after_streams_mb"] = round(procs.rss_mb(proxy.pid), 1)
        self.stop(proxy)
        if nginx is not None:
            self.stop(nginx)

        print("slow readers (a fresh proxy, then the emulator as control):", flush=True)
        mem["slow_readers"] = self.slow_readers(emu)
        r["errors"] = self.errors
        r["errors_total"] = sum(self.errors.values())
        r["checks"] = report.checks(r)
        return r


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


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
    # A SIGTERM (a CI timeout, `kill`) must still stop the children, which run in their own
    # sessions: turn it into an exception so the `finally` below runs.
    signal.signal(signal.SIGTERM, _terminate)
    wd = procs.workdir()
    bench = Bench(args, wd)
    ok = False
    started = time.monotonic()
    try:
        results = bench.run()
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        results["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
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
