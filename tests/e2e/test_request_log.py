"""Every request through the proxy leaves exactly one correct row, on SQLite, PostgreSQL and
PostgreSQL behind pgbouncer (transaction mode, like Supabase's pooler on 6543), whatever happens
to the request, the database or the proxy itself."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from sqlalchemy import Engine

from claude_proxy.store.engine import make_engine
from tests.conftest import PROXY_KEY, Emulator, Proxy, spawn, start_proxy
from tests.helpers import log_ids, log_row, log_rows, run_cli, spill_lines, wait_until
from tests.pg import PgBouncer, create_database, drop_database, free_port, pg_url

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there"}]
V = {"anthropic-version": "2023-06-01"}
WAIT = 30.0  # for a row: a proxy under load writes in batches


@dataclass
class LoggedProxy:
    proxy: Proxy
    engine: Engine
    tmp: Path
    bouncer: PgBouncer | None = None

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        return log_rows(self.engine, **where)

    def row(self, request_id: str) -> dict[str, Any]:
        return log_row(self.engine, request_id, timeout=WAIT)

    def count(self) -> int:
        return len(log_ids(self.engine))


@contextmanager
def logged_proxy(
    emulator: Emulator, backend: str, env: dict[str, str] | None = None
) -> Iterator[LoggedProxy]:
    """A proxy recording into a fresh database: sqlite, postgres, or postgres via pgbouncer."""
    tmp = Path(tempfile.mkdtemp(prefix=f"claude-proxy-{backend}-"))
    dbname = None
    bouncer = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'log.db'}"
    else:
        dbname = create_database()
        url = pg_url(dbname)
        if backend == "pgbouncer":
            bouncer = PgBouncer(tmp, free_port())
            bouncer.start()
            url = pg_url(dbname, bouncer.port)
    full_env = {
        "DATABASE_URL": url,
        "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
        **(env or {}),
    }
    px = start_proxy(emulator.url, full_env, tmp)
    engine = make_engine(url)
    try:
        yield LoggedProxy(px, engine, tmp, bouncer)
    finally:
        px.process.stop()
        engine.dispose()
        if bouncer is not None:
            bouncer.stop()
        if dbname is not None:
            drop_database(dbname)


@pytest.fixture(scope="module", params=["sqlite", "postgres", "pgbouncer"])
def logged(request: pytest.FixtureRequest, emulator: Emulator) -> Iterator[LoggedProxy]:
    with logged_proxy(emulator, request.param) as lp:
        yield lp


def client(lp: LoggedProxy, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=lp.proxy.url, api_key=PROXY_KEY, max_retries=0, **kw)


def fault(spec: str) -> dict[str, str]:
    return {"x-emulator-fault": spec}


def test_success_rows_carry_usage_cost_and_timing(logged: LoggedProxy) -> None:
    with client(logged) as c:
        raw = c.messages.with_raw_response.create(
            model=MODEL, max_tokens=32, messages=HELLO, metadata={"user_id": "user-42"}
        )
        msg = raw.parse()
        with c.messages.stream(model=MODEL, max_tokens=32, messages=HELLO) as s:
            final = s.get_final_message()
            srid = s.response.headers["x-claude-proxy-request-id"]
    row = logged.row(raw.headers["x-claude-proxy-request-id"])
    assert row["status_code"] == 200 and row["stream"] is False and row["error_type"] is None
    assert (row["input_tokens"], row["output_tokens"]) == (
        msg.usage.input_tokens,
        msg.usage.output_tokens,
    )
    assert row["model"] == msg.model and row["stop_reason"] == "end_turn"
    assert row["message_id"] == msg.id and row["upstream_request_id"] == raw.headers["request-id"]
    assert row["metadata_user_id"] == "user-42" and row["endpoint"] == "/v1/messages"
    assert row["key_id"].startswith("static-") and PROXY_KEY not in str(row)
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["latency_ms"] > 0 and row["ttft_ms"] is not None and row["upstream_attempts"] == 1
    assert row["request_body"] is None and row["response_body"] is None  # off by default
    srow = logged.row(srid)
    assert srow["stream"] is True and srow["output_tokens"] == final.usage.output_tokens


def test_error_paths_each_leave_one_row(logged: LoggedProxy, emulator: Emulator) -> None:
    ids: dict[str, str] = {}
    with client(logged) as c:
        with pytest.raises(anthropic.OverloadedError) as e1:
            c.messages.create(
                model=MODEL, max_tokens=8, messages=HELLO, extra_headers=fault("status=529")
            )
        ids["upstream_error"] = e1.value.response.headers["x-claude-proxy-request-id"]
        for name, spec in (
            ("midstream", "midstream=error after=3"),
            ("cut", "midstream=reset after=4"),
        ):
            with pytest.raises(anthropic.APIStatusError):
                with c.messages.stream(
                    model=MODEL, max_tokens=32, messages=HELLO, extra_headers=fault(spec)
                ) as s:
                    ids[name] = s.response.headers["x-claude-proxy-request-id"]
                    s.get_final_message()
    with anthropic.Anthropic(base_url=logged.proxy.url, api_key="sk-bad", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as e2:
            bad.models.list()
    ids["bad_key"] = e2.value.response.headers["request-id"]
    big = httpx2.post(
        f"{logged.proxy.url}/v1/messages",
        content=b"x" * (33 * 1024 * 1024),
        headers={"x-api-key": PROXY_KEY, **V},
        timeout=60,
    )
    ids["too_large"] = big.headers["request-id"]
    with (
        httpx2.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{logged.proxy.url}/v1/messages",
            headers={"x-api-key": PROXY_KEY, **V, **fault("midstream=stall after=4")},
            json={"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True},
        ) as r,
    ):
        ids["disconnect"] = r.headers["x-claude-proxy-request-id"]
        upstream_rid = r.headers["request-id"]
        next(r.iter_bytes())
    emulator.wait_request(upstream_rid, "client_closed")

    row = logged.row(ids["upstream_error"])
    assert (row["status_code"], row["error_type"]) == (529, "overloaded_error")
    row = logged.row(ids["midstream"])
    assert (row["status_code"], row["error_type"], row["stream"]) == (200, "overloaded_error", True)
    assert row["input_tokens"] and row["output_tokens"] == 1  # partial usage from message_start
    row = logged.row(ids["cut"])
    assert row["error_type"] == "api_error" and row["error_message"].startswith("Streaming error")
    row = logged.row(ids["bad_key"])
    assert (row["status_code"], row["error_type"], row["key_id"]) == (
        401,
        "authentication_error",
        None,
    )
    row = logged.row(ids["too_large"])
    assert (row["status_code"], row["error_type"]) == (413, "request_too_large")
    row = logged.row(ids["disconnect"])
    assert row["client_disconnected"] is True and row["stream"] is True
    assert row["input_tokens"] and row["cost_usd"] is not None  # partial usage is still billed
    for rid in ids.values():
        assert len(logged.rows(id=rid)) == 1


def test_cache_tokens_on_streams_are_costed_to_the_cent(logged: LoggedProxy) -> None:
    stamp = str(time.time_ns())
    a = {
        "type": "text",
        "text": f"{stamp} Reference A. " + "alpha " * 1500,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    b = {
        "type": "text",
        "text": "Reference B. " + "beta " * 1500,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    question = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Long context C. " + "gamma " * 1500,
                    "cache_control": {"type": "ephemeral", "ttl": "5m"},
                },
                {"type": "text", "text": "What do A, B and C say?"},
            ],
        }
    ]
    with client(logged) as c:
        with c.messages.stream(
            model="claude-opus-5-5", max_tokens=64, system=[a], messages=HELLO
        ) as s:  # type: ignore[list-item]
            s.get_final_message()
        with c.messages.stream(
            model="claude-opus-5-5", max_tokens=64, system=[a, b], messages=question
        ) as s:  # type: ignore[list-item,arg-type]
            final = s.get_final_message()
            rid = s.response.headers["x-claude-proxy-request-id"]
    u = final.usage
    assert u.cache_read_input_tokens and u.cache_creation
    w5, w1 = u.cache_creation.ephemeral_5m_input_tokens, u.cache_creation.ephemeral_1h_input_tokens
    assert w5 > 0 and w1 > 0
    row = logged.row(rid)
    assert (
        row["cache_creation_5m_input_tokens"] == w5 and row["cache_creation_1h_input_tokens"] == w1
    )
    assert row["cache_read_input_tokens"] == u.cache_read_input_tokens
    assert row["cache_creation_input_tokens"] == w5 + w1
    # Opus 5.5: $4 input, $5 5m write, $8 1h write, $0.20 read, $20 output per MTok.
    expected = (
        Decimal(u.input_tokens) * 4
        + Decimal(w5) * 5
        + Decimal(w1) * 8
        + Decimal(u.cache_read_input_tokens) * Decimal("0.20")
        + Decimal(u.output_tokens) * 20
    ) / 10**6
    assert row["cost_usd"] == expected.quantize(Decimal("1e-8"))
    assert round(row["cost_usd"], 2) == round(expected, 2)


def _fire(url: str, n: int, concurrency: int, on_done: Callable[[int], None]) -> list[str]:
    """n requests at the given concurrency (half streaming); returns the failures."""
    failures: list[str] = []
    done = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal done
        body = {"model": MODEL, "max_tokens": 16, "messages": HELLO, "stream": i % 2 == 0}
        try:
            r = http.post("/v1/messages", json=body)
            if r.status_code != 200 or (body["stream"] and b"message_stop" not in r.content):
                failures.append(f"{r.status_code} {r.text[:200]}")
        except Exception as exc:
            failures.append(repr(exc))
        with lock:
            done += 1
            on_done(done)

    limits = httpx2.Limits(max_connections=concurrency)
    with (
        httpx2.Client(
            base_url=url, headers={"x-api-key": PROXY_KEY, **V}, timeout=30, limits=limits
        ) as http,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        list(pool.map(one, range(n)))
    return failures


def test_database_outage_loses_no_row_and_fails_no_request(emulator: Emulator) -> None:
    with logged_proxy(emulator, "pgbouncer") as lp:
        _outage(lp)


def _outage(lp: LoggedProxy) -> None:
    bouncer, px = lp.bouncer, lp.proxy
    assert bouncer is not None
    down, up = threading.Event(), threading.Event()

    def progress(done: int) -> None:
        if done == 500:
            down.set()
        if done == 1500:
            up.set()

    def outage() -> None:
        down.wait()
        bouncer.stop()  # the database becomes unreachable mid-load
        up.wait()
        bouncer.start()

    t = threading.Thread(target=outage)
    t.start()
    failures = _fire(px.url, 2000, 50, progress)
    t.join()
    assert failures == []
    px.process.wait_for(r"spill: ")
    wait_until(lambda: lp.count() >= 2000, timeout=90, what="2,000 rows")
    ids = [r["id"] for r in lp.rows()]
    assert len(ids) == 2000 and len(set(ids)) == 2000
    print(f"\n2000 requests, 0 failed, {len(ids)} rows after a database outage")


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def test_a_killed_writer_process_loses_no_row(emulator: Emulator) -> None:
    """The request log's writer runs in a child process; killing it mid-load costs nothing."""
    with logged_proxy(emulator, "postgres") as lp:
        px = lp.proxy
        (first,) = _children(px.process.proc.pid)
        killed = threading.Event()

        def progress(done: int) -> None:
            if done == 150 and not killed.is_set():
                os.kill(first, signal.SIGKILL)
                killed.set()

        failures = _fire(px.url, 400, 20, progress)
        assert failures == [] and killed.is_set()
        px.process.wait_for(r"writer process exited .* restarting")
        px.process.wait_for(r"writer process \d+ started", count=2)
        wait_until(lambda: lp.count() >= 400, timeout=WAIT, what="400 rows")
        ids = [r["id"] for r in lp.rows()]
        assert len(ids) == 400 and len(set(ids)) == 400
        (second,) = _children(px.process.proc.pid)
        assert second != first


def test_kill_9_of_the_worker_loses_no_row_a_client_saw_complete(emulator: Emulator) -> None:
    """An OOM kill or ECS's SIGKILL takes the worker with whatever it holds: a record must
    already be in the writer process's socket when its client sees the response end."""
    with logged_proxy(emulator, "postgres") as lp:
        px = lp.proxy
        (writer,) = _children(px.process.proc.pid)
        completed: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()
        stop = threading.Event()

        def client_loop(n: int) -> None:
            headers = {"x-api-key": PROXY_KEY, **V, **fault("event-ms=3")}
            with httpx2.Client(base_url=px.url, headers=headers, timeout=30) as http:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    stream = (i + n) % 3 != 0
                    body = {"model": MODEL, "max_tokens": 16, "messages": HELLO, "stream": stream}
                    try:
                        with http.stream("POST", "/v1/messages", json=body) as r:
                            data = r.read()  # raises unless the whole response arrived
                    except httpx2.HTTPError:
                        return  # the proxy is gone
                    assert r.status_code == 200, data[:200]
                    assert not stream or b"message_stop" in data
                    with lock:
                        completed.append(r.headers["x-claude-proxy-request-id"])
                        if len(completed) >= 300:
                            enough.set()

        threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        try:
            assert enough.wait(60), "the clients did not complete 300 requests"
            os.kill(px.process.proc.pid, signal.SIGKILL)  # the worker, not its writer process
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        px.process.proc.wait()
        # The writer process reads to the end of its socket, writes, and exits.
        wait_until(
            lambda: not Path(f"/proc/{writer}").exists(),
            timeout=WAIT,
            what="the orphaned writer process to exit",
        )
        px2 = start_proxy(emulator.url, px.env, lp.tmp)  # same database and spill directory
        try:
            seen = set(completed)
            wait_until(
                lambda: seen <= {r["id"] for r in lp.rows()},
                timeout=WAIT,
                what=f"rows for all {len(seen)} completed requests",
            )
            ids = [r["id"] for r in lp.rows()]
            assert len(ids) == len(set(ids)), "a request has two rows"
        finally:
            px2.process.stop()


def test_kill_9_with_spilled_records_replays_them_on_restart(emulator: Emulator) -> None:
    with logged_proxy(emulator, "pgbouncer") as lp:
        bouncer, px, tmp = lp.bouncer, lp.proxy, lp.tmp
        assert bouncer is not None
        bouncer.stop()
        with client(lp) as c:
            ids = [
                c.messages.with_raw_response.create(
                    model=MODEL, max_tokens=8, messages=HELLO
                ).headers["x-claude-proxy-request-id"]
                for _ in range(20)
            ]
        px.process.wait_for(r"spill: database write failed")
        wait_until(
            lambda: spill_lines(tmp / "spill") == 20, timeout=WAIT, what="20 spilled records"
        )
        os.kill(px.process.proc.pid, signal.SIGKILL)
        px.process.proc.wait()
        bouncer.start()
        px2 = start_proxy(emulator.url, px.env, tmp)
        try:
            px2.process.wait_for(r"replay: ")
            wait_until(lambda: lp.count() == 20, timeout=WAIT, what="replayed rows")
            assert sorted(r["id"] for r in lp.rows()) == sorted(ids)
        finally:
            px2.process.stop()


def test_cli_usage_and_logs_tail(logged: LoggedProxy) -> None:
    env = {"DATABASE_URL": logged.proxy.env["DATABASE_URL"]}
    follow = spawn(["logs", "tail", "--follow", "--model", "claude-haiku-4-5"], env)
    try:
        follow.wait_for(r"created_at\s+id")  # header printed: it is polling now
        with client(logged) as c:
            raw = c.messages.with_raw_response.create(
                model="claude-haiku-4-5", max_tokens=16, messages=HELLO
            )
        rid = raw.headers["x-claude-proxy-request-id"]
        line = follow.wait_for(rf"{rid}.*").group(0)
        assert "claude-haiku-4-5" in line and " 200 " in line
    finally:
        follow.stop()
    logged.row(rid)
    assert rid in run_cli("logs", "tail", "--limit", "5", env=env, timeout=30)
    out = run_cli("usage", "--by", "model", "--since", "1h", env=env, timeout=30)
    haiku = [ln for ln in out.splitlines() if ln.strip().startswith("claude-haiku-4-5 ")]
    assert haiku, out
    assert "lat_p95" in out and "cache_1h" in out
    for by in ("key", "day"):
        assert "requests" in run_cli("usage", "--by", by, "--since", "7d", env=env, timeout=30)


def test_bodies_are_captured_only_when_asked_and_capped(emulator: Emulator) -> None:
    env = {"CLAUDE_PROXY_LOG_BODIES": "true", "CLAUDE_PROXY_LOG_BODY_MAX_BYTES": "300"}
    with logged_proxy(emulator, "sqlite", env) as lp:
        prompt = "Remember the word PINEAPPLE. " + "x" * 1000
        with client(lp) as c:
            raw = c.messages.with_raw_response.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": prompt}]
            )
        row = lp.row(raw.headers["x-claude-proxy-request-id"])
        assert "PINEAPPLE" in row["request_body"] and len(row["request_body"]) <= 300
        assert row["response_body"].startswith('{"model"') and len(row["response_body"]) <= 300
        assert PROXY_KEY not in row["request_body"] + row["response_body"]
