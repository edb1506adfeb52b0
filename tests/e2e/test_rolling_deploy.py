"""Rolling-deploy rehearsal: replicas behind a real load balancer, stopped under continuous
load, lose no request and no log row, and a stream is never cut without an SSE `error` event.

Both orders in which a task can learn that it is stopping are rehearsed:

- deregistered first, SIGTERM once drained: what ECS does in a deployment or a scale-in. A
  stream longer than the old 110 s deregistration delay runs on the deregistered replica
  and must arrive complete through the load balancer; the SIGTERM then finds nothing left;
- SIGTERM while still registered (a Fargate Spot interruption; the load balancer learns from
  `/health`): requests in flight finish within the drain window, new ones are still served
  during the pre-stop, and a stream longer than the window gets the SSE `error` event,
  through the load balancer, at the deadline.

The load balancer is a real haproxy (Debian's package) configured like an AWS ALB: HTTP mode,
`GET /health` checks expecting 200, a target failing its check leaves the rotation. Replicas
are registered and deregistered through haproxy's admin socket, as ECS does with a target
group. Every wait is on an event (a line haproxy or a proxy prints, a process exit) or a
bounded poll on the database; the only sleeps are the load itself running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import pytest
from sqlalchemy import Engine, select

from claude_proxy.store.engine import make_engine
from claude_proxy.store.schema import request_logs
from tests.conftest import PROXY_KEY, Emulator, Process, Proxy, start_proxy
from tests.helpers import log_ids, wait_until
from tests.pg import create_database, drop_database, free_port, pg_url

pytestmark = pytest.mark.e2e

MODEL = "claude-haiku-4-5"
HELLO = [{"role": "user", "content": "Hello there"}]
RID = "x-claude-proxy-request-id"
BACKEND = "proxies"

PRE_STOP = 1.5  # > haproxy's detection time (one 200 ms check interval, fall 1)
DRAIN = 20.0
FLUSH = 10.0  # the log writer's flush timeout at shutdown (the default)
CLIENT_THREADS = 10
# The ALB's deregistration delay before it was raised: it cut every stream still open then,
# before SIGTERM, without an SSE error event.
OLD_DEREGISTRATION_DELAY = 110.0
# A stream held open on a deregistered replica: 116 text deltas, one event a second after
# message_start (121 events): ~121 s, longer than the old delay.
DEREGISTERED_STREAM = "events=116 event-ms=1000"
DEREGISTERED_STREAM_SECONDS = 121.0
# A stream on a replica stopped SIGTERM-first that outlives its drain: ~32 s > 1.5 + 20 s.
OVER_WINDOW_STREAM = "events=60 event-ms=500"
# A header haproxy routes on (`use-server`), so that the test knows which replica holds a
# stream it sends through the load balancer.
PIN = "x-lb-pin"


def fault(kind: str, n: int) -> dict[str, str]:
    """The emulator's pacing for request `n` of a kind: streams of ~1 s and ~3 s (longer than
    the pre-stop: some are in flight when the listener closes), and non-streaming requests
    waiting 50-250 ms for their headers. The spread keeps the threads out of step, so
    requests start at any moment of the deploy."""
    if kind == "message":
        spec = f"first-byte-ms={50 + n * 37 % 200}"
    elif kind == "stream":
        spec = f"events=20 event-ms={40 + n % 3 * 10}"
    elif kind == "deregistered-stream":
        spec = DEREGISTERED_STREAM
    elif kind == "over-window-stream":
        spec = OVER_WINDOW_STREAM
    else:  # "long-stream", "pinned-stream"
        spec = f"events=40 event-ms={70 + n % 3 * 5}"
    return {"x-emulator-fault": spec}


REPLICA_ENV = {
    "CLAUDE_PROXY_PRE_STOP_SECONDS": str(PRE_STOP),
    "CLAUDE_PROXY_DRAIN_SECONDS": str(DRAIN),
    "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
}

# Like an ALB target group: round robin, `GET /health` every 200 ms expecting 200, one failed
# check takes a target out, one passed check puts it in. Why each setting is there:
# docs/reliability.md. The retry settings are a safety net the test requires to stay unused.
# Each log line carries the proxy's request id (`{cpr_...}`): the test finds a request's line,
# its server, status and termination state (`----`: ended normally on both sides) by it.
HAPROXY_CFG = """\
global
    log stderr format raw local0 info
    stats socket {admin_socket} mode 600 level admin
    maxconn 1000

defaults
    mode http
    log global
    option httplog
    option log-health-checks
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 30s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend front
    bind 127.0.0.1:{port}
    capture response header x-claude-proxy-request-id len 64
    default_backend {backend}

backend {backend}
    balance roundrobin
    http-reuse safe
    option httpchk GET /health
    http-check expect status 200
{servers}
"""
CHECK = "check inter 200 fall 1 rise 1"
# haproxy's counters (`show stat`) of what the clients would have seen fail without its help:
# connection errors, response errors, retries, redispatches, aborted transfers, 5xx.
LB_ERRORS = ("econ", "eresp", "wretr", "wredis", "cli_abrt", "srv_abrt", "hrsp_5xx")
LISTENER_CLOSED = r"drain: listener closed; (\d+) requests in flight"
WINDOW_OVER = r"drain: window over; (\d+) requests still in flight were ended"


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if path is None:
        pytest.fail(
            "haproxy is not installed: apt-get install -y haproxy (or `make system-deps`); "
            "the rolling-deploy rehearsal runs the replicas behind it",
            pytrace=False,
        )
    return path


@dataclass
class HAProxy:
    """A real haproxy in the foreground, its output captured, driven by its admin socket."""

    process: Process
    port: int
    admin_socket: Path

    @property
    def lines(self) -> list[str]:
        return self.process.lines

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """Block until haproxy prints a line matching `pattern`; returns it. The deadline is
        overall: haproxy prints a line per request, and none of them may extend it."""
        return self.process.wait_for(pattern, timeout).string

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin_socket))
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode().strip()

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat`, by "proxy/server" (FRONTEND and BACKEND for the totals)."""
        header, *rows = self.command("show stat").splitlines()
        names = header.removeprefix("# ").split(",")
        table = {}
        for row in rows:
            values = dict(zip(names, row.split(","), strict=False))
            table[f"{values['pxname']}/{values['svname']}"] = values
        return table

    def deregister(self, server: str) -> None:
        """What ECS does first to stop a task: take it out of the target group. haproxy's
        `maint` is an ALB target's `draining`: no new request goes to it, those in flight go
        on."""
        assert self.command(f"set server {BACKEND}/{server} state maint") == ""
        self.wait_for(rf"\[WARNING\].*Server {BACKEND}/{server} is going DOWN for maintenance")

    def sessions(self, server: str) -> int:
        """Requests in flight on `server` (`scur`)."""
        return int(self.stats()[f"{BACKEND}/{server}"]["scur"])

    def access(self, request_id: str, timeout: float = 10.0) -> tuple[str, int, str]:
        """Server, status and termination state of a request, from the line haproxy logs
        when its response has ended (waited for: it comes just after the client's end)."""
        line = self.wait_for(r"\{" + re.escape(request_id) + r"\}", timeout)
        m = re.search(rf" {BACKEND}/(\S+) \S+ (\d+) \S+ \S+ \S+ (\S+) ", line)
        assert m, line
        return m.group(1), int(m.group(2)), m.group(3)

    def register(self, server: str, proxy: Proxy) -> None:
        """Add a target in maintenance, let it pass a real health check, then put it in."""
        addr = proxy.url.removeprefix("http://")
        reply = self.command(f"add server {BACKEND}/{server} {addr} {CHECK}")
        assert "New server registered" in reply, reply
        assert self.command(f"enable health {BACKEND}/{server}") == ""
        self.wait_for(rf"\[WARNING\].*Health check for server {BACKEND}/{server} succeeded")
        assert self.command(f"enable server {BACKEND}/{server}") == ""
        self.wait_for(rf"\[WARNING\].*Server {BACKEND}/{server} is UP")

    def stop(self) -> None:
        self.process.stop()


def start_haproxy(workdir: Path, servers: dict[str, Proxy]) -> HAProxy:
    port = free_port()
    admin = workdir / "admin.sock"
    lines = "\n".join(
        [f"    use-server {name} if {{ req.hdr({PIN}) -m str {name} }}" for name in servers]
        + [
            f"    server {name} {px.url.removeprefix('http://')} {CHECK}"
            for name, px in servers.items()
        ]
    )
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_CFG.format(admin_socket=admin, port=port, backend=BACKEND, servers=lines)
    )
    check = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, f"haproxy rejects its config:\n{check.stdout}{check.stderr}"
    proc = subprocess.Popen(
        [haproxy_binary(), "-db", "-f", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    hx = HAProxy(Process(proc), port, admin)
    hx.process.start_reader()
    # The first passed check of each target: the frontend is bound and the targets are in.
    for name in servers:
        hx.wait_for(rf"\[WARNING\].*Health check for server {BACKEND}/{name} succeeded")
    return hx


# ---------------------------------------------------------------------- the load


@dataclass
class Outcome:
    kind: str  # "message", "stream", "long-stream", "pinned-stream", "deregistered-stream"
    # or "over-window-stream"
    started: float  # monotonic
    ended: float
    request_id: str | None
    error: str | None = None


@dataclass
class Load:
    """Client threads sending streaming and non-streaming requests until stopped."""

    url: str
    threads: int
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"client-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self.stopping.set()
        for t in self._workers:
            t.join(60)
            assert not t.is_alive(), f"{t.name} is stuck"

    def add(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def wait_more(self, n: int, timeout: float = 15.0) -> None:
        """Block until `n` more requests have finished."""
        with self._cond:
            target = len(self.outcomes) + n
            ok = self._cond.wait_for(lambda: len(self.outcomes) >= target, timeout)
        assert ok, f"the load is stuck at {len(self.outcomes)} requests"

    def _run(self, i: int) -> None:
        kinds = ("stream", "message", "long-stream", "message")
        n = i  # threads start at different points of the mix
        with anthropic.Anthropic(
            base_url=self.url, api_key=PROXY_KEY, max_retries=0, timeout=30
        ) as client:
            while not self.stopping.is_set():
                self.add(one_request(client, kinds[n % len(kinds)], n))
                n += 1


def one_request(
    client: anthropic.Anthropic,
    kind: str,
    n: int = 0,
    on_headers: Callable[[], None] | None = None,
    pin: str | None = None,
) -> Outcome:
    """One request of `kind`, sent to `pin` if given (through haproxy's `use-server`)."""
    started = time.monotonic()
    rid: str | None = None
    error: str | None = None
    headers = fault(kind, n) | ({PIN: pin} if pin else {})
    try:
        if kind == "message":
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=1024, messages=HELLO, extra_headers=headers
            )
            rid = raw.headers.get(RID)
            msg = raw.parse()
            if raw.status_code != 200 or msg.stop_reason != "end_turn":
                error = f"status {raw.status_code}, stop_reason {msg.stop_reason}"
        else:
            with client.messages.stream(
                model=MODEL, max_tokens=1024, messages=HELLO, extra_headers=headers
            ) as stream:
                rid = stream.response.headers.get(RID)
                if on_headers is not None:
                    on_headers()
                events = [event.type for event in stream]
                final = stream.get_final_message()
            if stream.response.status_code != 200 or events[-1:] != ["message_stop"]:
                error = f"status {stream.response.status_code}, events ended {events[-3:]}"
            elif final.stop_reason != "end_turn":
                error = f"stop_reason {final.stop_reason}"
    except anthropic.APIStatusError as exc:
        rid = rid or exc.response.headers.get(RID)
        error = f"{type(exc).__name__} {exc.status_code}: {exc.message}"
    except Exception as exc:  # connection reset, timeout, a cut stream: all failures
        error = f"{type(exc).__name__}: {exc}"
    if rid is None and error is None:
        error = f"no {RID} header"
    return Outcome(kind, started, time.monotonic(), rid, error)


# ------------------------------------------------------------------ the replicas


@dataclass
class Replica:
    name: str
    proxy: Proxy
    tmp: Path
    sigterm_at: float | None = None
    stopped_after: float | None = None  # SIGTERM to exit
    deregistered_at: float | None = None  # out of the load balancer (before SIGTERM)
    detected_after: float | None = None  # SIGTERM to haproxy's "is DOWN"
    down: str = ""  # haproxy's failed health check, with the reason
    exit_code: int | None = None

    def terminate(self) -> None:
        """What ECS does to stop a task: SIGTERM."""
        self.sigterm_at = time.monotonic()
        self.proxy.process.proc.send_signal(signal.SIGTERM)

    def wait_exit(self) -> None:
        """The whole drain, bounded: pre-stop, drain window, the log writer's flush."""
        self.exit_code = self.proxy.process.proc.wait(PRE_STOP + DRAIN + FLUSH + 5)
        assert self.sigterm_at is not None
        self.stopped_after = time.monotonic() - self.sigterm_at

    def output_tail(self) -> str:
        """What it said about draining, and anything that went wrong."""
        keep = re.compile(r"drain|WARNING|ERROR|Traceback")
        return "".join(ln for ln in self.proxy.process.lines if keep.search(ln))

    def access_ids(self) -> set[str]:
        # The JSON access lines: {"message":"request","request_id":"cpr_...",...}
        return set(re.findall(r'"message":"request","request_id":"([^"]+)"', self.proxy.output()))

    def spilled(self) -> list[str]:
        spill = self.tmp / "spill"
        return [str(p) for p in spill.rglob("*") if p.is_file()] if spill.exists() else []


def start_replica(name: str, emulator: Emulator, database_url: str) -> Replica:
    tmp = Path(tempfile.mkdtemp(prefix=f"claude-proxy-{name}-"))
    px = start_proxy(emulator.url, {"DATABASE_URL": database_url, **REPLICA_ENV}, tmp)
    return Replica(name, px, tmp)


def background_stream(
    load: Load, url: str, kind: str, name: str, pin: str | None = None
) -> threading.Thread:
    """A stream of `kind` to `url` in its own thread, with its response headers in when this
    returns (so it is provably in flight); its outcome joins the load's."""
    headers = threading.Event()

    def run() -> None:
        with anthropic.Anthropic(
            base_url=url, api_key=PROXY_KEY, max_retries=0, timeout=30
        ) as client:
            load.add(one_request(client, kind, on_headers=headers.set, pin=pin))
        headers.set()  # also when it failed before its headers: the outcome says why

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    assert headers.wait(10), f"the stream {name} did not start"
    return t


def pinned_stream(load: Load, replica: Replica) -> threading.Thread:
    """A long stream straight to `replica`, started before it is told to stop: whatever the
    balancer did with the load, one request is still running when the listener closes."""
    return background_stream(load, replica.proxy.url, "pinned-stream", f"pinned-{replica.name}")


def replace(
    hx: HAProxy, load: Load, old: Replica, new: Replica, *, over_window: bool = False
) -> None:
    """The deploy step for one target, SIGTERM first (as on a Spot interruption: the load
    balancer learns from `/health`): register the new task, wait until it is healthy, stop
    the old one (SIGTERM) and wait for it to exit. With `over_window`, a stream longer than
    the drain runs on the old one through the load balancer. Assertions come later."""
    hx.register(new.name, new.proxy)
    streams = [pinned_stream(load, old)]
    if over_window:
        streams.append(
            background_stream(
                load, hx.url, "over-window-stream", f"over-window-{old.name}", pin=old.name
            )
        )
    old.terminate()
    # The load balancer must see the 503 and take the target out before the listener closes.
    old.down = hx.wait_for(rf"\[WARNING\].*Health check for server {BACKEND}/{old.name} failed")
    hx.wait_for(rf"\[WARNING\].*Server {BACKEND}/{old.name} is DOWN")
    old.detected_after = time.monotonic() - old.sigterm_at
    old.wait_exit()
    for t in streams:
        t.join(30)
    # Deregister it, as ECS does once the task is gone.
    hx.command(f"disable server {BACKEND}/{old.name}")


def deregister_during_a_long_stream(hx: HAProxy, load: Load, old: Replica) -> threading.Thread:
    """How ECS stops a task in a deployment or a scale-in, first step: take it out of the
    target group, here while a stream longer than the old deregistration delay runs on it
    (sent through the load balancer). The rest of the deployment goes on meanwhile."""
    stream = background_stream(
        load, hx.url, "deregistered-stream", f"deregistered-{old.name}", pin=old.name
    )
    hx.deregister(old.name)
    old.deregistered_at = time.monotonic()  # a request sent after this cannot reach it
    return stream


def stop_once_drained(hx: HAProxy, old: Replica, stream: threading.Thread) -> None:
    """Second step: once the target has nothing in flight (ECS waits for that, up to the
    deregistration delay), SIGTERM; the drain then finds nothing left to wait for."""
    assert old.deregistered_at is not None
    left = old.deregistered_at + DEREGISTERED_STREAM_SECONDS - time.monotonic()
    stream.join(max(0.0, left) + 30)
    assert not stream.is_alive(), "the stream held through the deregistration is stuck"
    wait_until(lambda: hx.sessions(old.name) == 0, what=f"{old.name} drained in haproxy")
    old.terminate()
    old.wait_exit()


def logged_ids(engine: Engine) -> Counter[str]:
    return Counter(log_ids(engine))


# ---------------------------------------------------------------------- the test


def test_rolling_deploy_loses_no_request_and_no_row(emulator: Emulator) -> None:
    haproxy_binary()  # fail at once, with the fix, if it is missing
    dbname = create_database()
    url = pg_url(dbname)
    engine = make_engine(url)
    workdir = Path(tempfile.mkdtemp(prefix="haproxy-"))
    replicas: list[Replica] = []
    hx: HAProxy | None = None
    load: Load | None = None
    try:
        with ThreadPoolExecutor(3) as pool:
            r1, r2, r3 = pool.map(lambda n: start_replica(n, emulator, url), ("r1", "r2", "r3"))
        replicas += [r1, r2, r3]
        hx = start_haproxy(workdir, {"r1": r1.proxy, "r2": r2.proxy, "r3": r3.proxy})

        load = Load(hx.url, CLIENT_THREADS)
        load.start()
        load.wait_more(2 * CLIENT_THREADS)
        # The deployment stops r3 the way ECS does (deregistered, SIGTERM once drained) while
        # a ~121 s stream runs on it, and replaces r1 and r2 SIGTERM-first meanwhile (r2 with
        # a stream longer than its drain): the long stream covers both replacements.
        held = deregister_during_a_long_stream(hx, load, r3)
        news: list[Replica] = []
        for old, name in ((r1, "n1"), (r2, "n2")):
            new = start_replica(name, emulator, url)
            replicas.append(new)
            news.append(new)
            replace(hx, load, old, new, over_window=old is r2)
            load.wait_more(CLIENT_THREADS)  # the load runs on the new set for a moment
        load.stop()
        stop_once_drained(hx, r3, held)
        outcomes = load.outcomes
        sent = {o.request_id for o in outcomes if o.request_id}
        # The stream that outlived r2's drain must end in an error: the SSE one (below).
        failed = [o for o in outcomes if o.error and o.kind != "over-window-stream"]
        (long,) = [o for o in outcomes if o.kind == "deregistered-stream"]
        (over,) = [o for o in outcomes if o.kind == "over-window-stream"]
        assert long.request_id and over.request_id, (long, over)
        long_lb = hx.access(long.request_id)
        over_lb = hx.access(over.request_id)

        try:  # the counts below say what is missing
            landed = wait_until(
                lambda: sent <= logged_ids(engine).keys(), what="a row for every request sent"
            )
        except AssertionError:
            landed = False
        # Stopping the new replicas flushes whatever they still hold: now count exactly.
        for new in news:
            new.terminate()
        for new in news:
            new.wait_exit()
        rows = logged_ids(engine)
        with engine.connect() as conn:
            bad_rows = {
                row.id: (row.status_code, row.error_type, row.error_message)
                for row in conn.execute(
                    select(
                        request_logs.c.id,
                        request_logs.c.status_code,
                        request_logs.c.error_type,
                        request_logs.c.error_message,
                    ).where(
                        (request_logs.c.status_code != 200) | request_logs.c.error_type.is_not(None)
                    )
                )
            }

        served = {r.name: r.access_ids() for r in replicas}
        by_replica = {r.name: len(served[r.name] & sent) for r in replicas}
        at_sigterm = {
            r.name: sum(
                1 for o in outcomes if o.request_id in served[r.name] and o.started < t < o.ended
            )
            for r in (r1, r2)
            if (t := r.sigterm_at) is not None
        }
        at_close = {
            r.name: [int(n) for n in re.findall(LISTENER_CLOSED, r.proxy.output())]
            for r in replicas
        }
        # Seconds from SIGTERM to haproxy's "is DOWN" (None: never seen). A check that was
        # about to run anyway sees the 503 within milliseconds: 0.0 once rounded, still valid.
        detected = {r.name: r.detected_after and round(r.detected_after, 3) for r in (r1, r2)}
        codes = {r.name: r.exit_code for r in replicas}
        stats = hx.stats()
        front, back = stats["front/FRONTEND"], stats[f"{BACKEND}/BACKEND"]
        via_lb = sum(1 for o in outcomes if o.kind != "pinned-stream")
        lb_errors = {c: int(back[c]) for c in LB_ERRORS if back[c] != "0"}
        lb_errors |= {c: int(front[c]) for c in ("ereq", "hrsp_5xx") if front[c] != "0"}
        lb_requests = {r.name: int(stats[f"{BACKEND}/{r.name}"]["req_tot"]) for r in replicas}
        spilled = [f for r in replicas for f in r.spilled()]
        missing = sent - rows.keys()
        unknown = rows.keys() - sent
        duplicated = {k: n for k, n in rows.items() if n > 1}
        window_over = {
            r.name: [int(n) for n in re.findall(WINDOW_OVER, r.proxy.output())] for r in replicas
        }
        assert r3.deregistered_at is not None and r2.sigterm_at is not None
        held_after = long.ended - r3.deregistered_at  # open since the deregistration
        sent_after = sum(
            1 for o in outcomes if o.request_id in served["r3"] and o.started > r3.deregistered_at
        )
        over_after = over.ended - r2.sigterm_at
        stopped = {r.name: r.stopped_after and round(r.stopped_after, 2) for r in replicas}
        print(
            f"\nrolling deploy: {len(outcomes)} requests sent "
            f"({dict(Counter(o.kind for o in outcomes))}), {len(failed)} failed; "
            f"{rows.total()} rows found: {len(missing)} missing, {len(duplicated)} duplicated, "
            f"{len(unknown)} unknown, {len(bad_rows)} not 200; per replica: {by_replica}; "
            f"in flight at SIGTERM: {at_sigterm}; in flight when the listener closed: "
            f"{at_close}; ended by the drain window: {window_over}; "
            f"haproxy saw SIGTERM after (s): {detected}; "
            f"haproxy: {front['req_tot']} requests ({lb_requests}), errors {lb_errors}; "
            f"exit codes: {codes}; SIGTERM to exit (s): {stopped};\n"
            f"deregistered first: r3's stream ran {long.ended - long.started:.1f}s, "
            f"{held_after:.1f}s of it after the deregistration, ended "
            f"{long.error or 'complete'}, haproxy {long_lb}; r3 got {sent_after} requests "
            f"after it;\nSIGTERM first: r2's over-window stream ended after {over_after:.2f}s: "
            f"{over.error}; haproxy {over_lb}"
        )

        assert not failed, (
            "requests failed during the deploy:\n"
            + "\n".join(
                f"  {o.kind} {o.request_id} after {o.ended - o.started:.2f}s: {o.error}"
                for o in failed
            )
            + "\nhaproxy:\n"
            + "".join(hx.lines[-80:])
            + "".join(f"\n{r.name}:\n{r.output_tail()}" for r in replicas)
        )
        assert all(d is not None and 0 <= d < PRE_STOP for d in detected.values()), (
            f"haproxy must take a draining replica out before its listener closes "
            f"({PRE_STOP}s): { {n: d and round(d, 3) for n, d in detected.items()} }"
        )
        for r in (r1, r2):  # ... because /health said so, not because the port was closed
            assert "Layer7 wrong status, code: 503" in r.down, r.down
        assert codes == {r.name: 0 for r in replicas}, f"exit codes: {codes}"
        assert landed and not missing and not unknown and not duplicated, (
            f"rows: missing {sorted(missing)}, unknown {sorted(unknown)}, "
            f"duplicated {duplicated}; spilled: {spilled}"
        )
        assert not spilled, f"records were spilled instead of written: {spilled}"
        # Deregistered first: the stream outlived the old delay and arrived complete through
        # the load balancer, which sent r3 nothing new; SIGTERM then found nothing in flight.
        assert long.error is None and held_after > OLD_DEREGISTRATION_DELAY, (
            f"{long.error}; open for {held_after:.1f}s after the deregistration"
        )
        assert long_lb == ("r3", 200, "----"), long_lb
        assert sent_after == 0, f"haproxy sent r3 {sent_after} requests after deregistering it"
        assert at_close["r3"] == [0] and window_over["r3"] == [], r3.output_tail()
        assert r3.stopped_after is not None and r3.stopped_after < PRE_STOP + 5, stopped
        # SIGTERM first, a stream longer than the drain: the SSE error event at the deadline,
        # raised by the SDK, and a response the load balancer saw end normally (an ALB passes
        # it on as it is), not a cut.
        assert over.error is not None and "APIStatusError" in over.error, over.error
        assert "the proxy is shutting down (drain window over)" in over.error, over.error
        assert PRE_STOP + DRAIN <= over_after < PRE_STOP + DRAIN + 2, over_after
        assert over_lb == ("r2", 200, "----"), over_lb
        assert window_over == {r.name: [1] if r is r2 else [] for r in replicas}, window_over
        assert set(bad_rows) == {over.request_id}, f"rows of failed requests: {bad_rows}"
        status, error_type, message = bad_rows[over.request_id]
        assert (status, error_type) == (200, "api_error"), bad_rows
        assert "shutting down" in (message or ""), message
        assert len(sent) == len(outcomes), "a request id was returned twice"
        # Not vacuous: the old replicas stopped SIGTERM-first were busy when told to stop (a
        # stream still running when the listener closed, too), and every replica served.
        assert all(at_sigterm.values()), f"no request in flight at SIGTERM: {at_sigterm}"
        assert all(at_close[r.name] and at_close[r.name][0] > 0 for r in (r1, r2)), (
            f"no request in flight when the listener closed: {at_close}"
        )
        assert all(by_replica.values()), f"a replica served nothing: {by_replica}"
        # The load balancer had nothing to hide: an ALB does not retry, so a retried or cut
        # request here would have been a 502 there.
        assert int(front["req_tot"]) == via_lb, f"haproxy saw {front['req_tot']} of {via_lb}"
        assert not lb_errors, f"haproxy counted errors, retries or redispatches: {lb_errors}"
    finally:
        if load is not None:
            load.stopping.set()
        for r in replicas:
            r.proxy.process.stop()
        if hx is not None:
            hx.stop()
        engine.dispose()
        drop_database(dbname)
        for path in [workdir, *(r.tmp for r in replicas)]:
            shutil.rmtree(path, ignore_errors=True)
