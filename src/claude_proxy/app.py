"""The ASGI application: routing, and a lifespan that builds and drains components.

The /v1 relay is raw ASGI on purpose: a framework's routing and response
objects cost more CPU per request than the relay itself (docs/benchmarks.md).
Components are built once in the lifespan and passed in; nothing is global.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import Engine

from claude_proxy import __version__
from claude_proxy.formats.anthropic.batches import BatchSettler
from claude_proxy.formats.anthropic.endpoints import CHAT_COMPLETIONS
from claude_proxy.formats.anthropic.errors import send_error
from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.formats.anthropic.relay import Relay
from claude_proxy.formats.openai.wire import OPENAI_CHAT
from claude_proxy.gateway.body_budget import BodyBudget
from claude_proxy.gateway.keys import BadKeyThrottle, KeyCache
from claude_proxy.gateway.limits import Limiter
from claude_proxy.http.asgi import ASGIApp, Receive, Scope, Send
from claude_proxy.http.collector import settle_startup_heap
from claude_proxy.http.drain import Drain
from claude_proxy.http.protocol import RECORD_SINK_STATE_KEY, TELEMETRY_STATE_KEY
from claude_proxy.settings import Settings
from claude_proxy.store.engine import make_engine, redacted_url
from claude_proxy.store.handoff import ProcessSink, writer_config
from claude_proxy.store.migrate import MigrationError, ensure_schema
from claude_proxy.store.records import (
    MAX_SHORT_TEXT_CHARS,
    RecordSink,
    RequestRecord,
    bounded,
    new_request_id,
)
from claude_proxy.store.writer_process import build_writer
from claude_proxy.telemetry.logs import FIELDS
from claude_proxy.telemetry.metrics import CIRCUIT_STATES, CONTENT_TYPE, ProxyMetrics
from claude_proxy.telemetry.reporter import Telemetry
from claude_proxy.upstream.breaker import BreakerConfig, CircuitBreaker
from claude_proxy.upstream.dispatch import Dispatcher
from claude_proxy.upstream.pool import UpstreamPool
from claude_proxy.upstream.retry import RetryConfig, RetryPolicy

if TYPE_CHECKING:
    from claude_proxy.telemetry.tracing import Tracing

log = logging.getLogger("claude_proxy.app")

_HEALTH_BODY = b'{"status":"ok"}'
_DRAINING_BODY = b'{"status":"draining"}'


_MIGRATE_RETRY_SECONDS = 30.0


@dataclass
class Components:
    upstream: UpstreamPool
    breaker: CircuitBreaker
    retry: RetryPolicy
    relay: Relay
    engine: Engine
    keys: KeyCache
    limiter: Limiter
    sink: ProcessSink | None
    migrator: asyncio.Task[None] | None
    admin: ASGIApp | None
    drain_task: asyncio.Task[None]
    telemetry: Telemetry
    metrics: ProxyMetrics
    background: list[asyncio.Task[None]]


class ProxyApp:
    """ASGI callable; `create_app` is the way to build one."""

    def __init__(
        self, settings: Settings, drain: Drain | None = None, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self._tracing = tracing  # injected (tests); otherwise built when settings.tracing
        self.drain = drain or Drain(settings.pre_stop_seconds, settings.drain_seconds)
        self.components: Components | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Routed on the raw target: `/%6detrics` must not reach /metrics, which the
            # load balancer hides by its exact path, nor `/%761/...` the relay.
            raw: bytes = scope["raw_path"]
            if raw.startswith(b"/v1/") or raw == b"/v1":
                assert self.components is not None, "lifespan did not run"
                await self.components.relay(scope, receive, send)
            elif raw == b"/health":
                await self._health(send)
            elif raw == b"/ready":
                await self._ready(send)
            elif raw == b"/metrics":
                await self._metrics(scope, send)
            elif raw.startswith(b"/admin/") and self.components and self.components.admin:
                # Its own key (CLAUDE_PROXY_ADMIN_KEY); proxy keys mean nothing there.
                await self.components.admin(scope, receive, send)
            else:
                rid = new_request_id()
                shown = bounded(raw.decode("latin-1"), MAX_SHORT_TEXT_CHARS)
                await send_error(send, "not_found_error", f"Not found: {shown}", rid)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)

    async def _health(self, send: Send) -> None:
        # Liveness only: never touches the upstream or the database, so an outage
        # there cannot make the load balancer kill every task. 503 once draining, so
        # the load balancer deregisters this task before it stops listening.
        if self.drain.draining:
            await _json(send, 503, _DRAINING_BODY, close=True)
        else:
            await _json(send, 200, _HEALTH_BODY)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """Prometheus text format, summed over every process of this task."""
        c = self.components
        if c is None:
            return await _json(send, 503, b'{"status":"starting"}')
        token = self.settings.metrics_token
        if token is not None:
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
            expected = b"Bearer " + token.get_secret_value().encode()
            if not hmac.compare_digest(given, expected):
                rid = new_request_id()
                return await send_error(
                    send, "authentication_error", "/metrics wants the metrics token.", rid
                )
        # Point-in-time values are set at scrape time: nothing to do on the request path.
        m = c.metrics
        c.telemetry.publish_gauges()
        m.circuit_state.set(CIRCUIT_STATES.get(c.breaker.state, 0))
        if c.sink is not None:
            depth = c.sink.stats()
            m.log_queue_depth.set(depth["pending"] + depth["unacknowledged"])
        body = await asyncio.to_thread(m.expose)
        headers = [
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _ready(self, send: Send) -> None:
        """A readiness report for people and dashboards (no I/O: cached states only)."""
        c = self.components
        if c is None:
            return await _json(send, 503, b'{"status":"starting"}')
        writer = c.sink.writer_stats if c.sink is not None else {}
        last = writer.get("last_write_at")
        report = {
            "status": "draining" if self.drain.draining else "ok",
            "version": __version__,
            "draining": self.drain.draining,
            "upstream": {
                "circuit": c.breaker.stats(),
                "in_flight": c.upstream.in_flight,
                "retries": c.retry.stats(),
            },
            "database": {
                "reachable": c.keys.healthy()
                and c.limiter.healthy()
                and writer.get("healthy", True),
                "keys": "ok" if c.keys.healthy() else "unreachable",
                "limits": "ok" if c.limiter.healthy() else "unreachable",
                "last_written_at": _iso(last) if last else None,
                "last_written_seconds_ago": round(time.time() - last, 1) if last else None,
            },
            "log_queue": c.sink.stats() if c.sink is not None else None,
            "request_bodies": c.relay.body_budget.stats(),  # bytes held, bound, waiting
            "live": c.telemetry.live.snapshot(),
            "limits": c.limiter.stats(),  # processes sharing the limits, sync health
        }
        await _json(send, 503 if self.drain.draining else 200, orjson.dumps(report))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                    # uvicorn shares this state with every connection: the client protocol
                    # counts connections into the telemetry through it, and records the
                    # requests it refuses itself (malformed or late heads) into the sink.
                    assert self.components is not None
                    if "state" in scope:
                        scope["state"][TELEMETRY_STATE_KEY] = self.components.telemetry
                        if self.components.sink is not None:
                            scope["state"][RECORD_SINK_STATE_KEY] = self.components.sink
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        st = self.settings
        # Loaded here too: a broken PRICES_FILE stops the start, not the writer process.
        prices = PriceTable.load(st.prices_file)
        writer_cfg = writer_config(st)
        fallback = build_writer(writer_cfg, prices, None)  # only spills: it never connects
        engine = make_engine(
            st.database_url, pool_size=st.db_pool_size, max_overflow=st.db_max_overflow
        )
        migrator = None
        if st.auto_migrate:
            migrator = asyncio.get_running_loop().create_task(_migrate_until_done(engine))
            # Normally done in milliseconds; a database that is down must not stop the
            # proxy from serving (the writer spills until the table exists).
            await asyncio.wait({migrator}, timeout=10.0)
        process_sink: ProcessSink | None = None
        sink: RecordSink
        if st.log_requests:
            process_sink = ProcessSink(writer_cfg, fallback, capacity=st.log_queue_size)
            await process_sink.start()
            sink = process_sink
        else:
            log.warning("CLAUDE_PROXY_LOG_REQUESTS=false: requests are not recorded")
            sink = _NoSink()
        keys = KeyCache(st.client_keys(), engine, refresh_interval=st.key_refresh_seconds)
        await keys.start()
        limiter = Limiter(
            engine,
            prices,
            sync_interval=st.limits_sync_seconds,
            budgets=keys.budgets,
        )
        await limiter.start()
        throttle = BadKeyThrottle(st.bad_key_burst, st.bad_key_per_minute)
        admin: ASGIApp | None = None
        if st.admin_token():
            from claude_proxy.admin import build_admin_app  # only then: FastAPI costs ~7 MB

            admin = build_admin_app(engine, keys, st.admin_token())
        upstream = UpstreamPool(st, asyncio.get_running_loop())
        breaker = CircuitBreaker(
            BreakerConfig(
                failure_ratio=st.breaker_failure_ratio,
                min_requests=st.breaker_min_requests,
                window_seconds=st.breaker_window_seconds,
                open_seconds=st.breaker_open_seconds,
                probes=st.breaker_half_open_probes,
            )
        )
        retry = RetryPolicy(
            RetryConfig(
                statuses=st.retry_statuses(),
                connect_errors=st.retry_connect_errors(),
                max_attempts=st.retry_max_attempts,
                backoff_initial=st.retry_backoff_initial_seconds,
                max_backoff=st.retry_backoff_max_seconds,
                ratio=st.retry_budget_ratio,
                min_per_second=st.retry_budget_min_per_second,
            )
        )
        metrics = ProxyMetrics()
        if process_sink is not None:
            process_sink.on_report = metrics.apply_report
        tracing = self._tracing
        if tracing is None and st.tracing:
            from claude_proxy.telemetry.tracing import build_tracing  # only then: OpenTelemetry

            tracing = build_tracing(st)
        telemetry = Telemetry(metrics, tracing)
        dispatcher = Dispatcher(upstream, breaker, retry, telemetry)
        body_cap = st.log_body_max_bytes if st.log_bodies else 0
        settler = BatchSettler(engine, upstream, sink, prices, st.batch_poll_seconds)
        relay = Relay(
            keys,
            limiter,
            throttle,
            dispatcher,
            sink,
            self.drain,
            telemetry,
            st.max_body_bytes,
            BodyBudget(st.max_buffered_body_bytes, st.body_wait_seconds),
            body_cap,
            prices,
            settler,
            st.public_url,
            {CHAT_COMPLETIONS: OPENAI_CHAT},
        )
        background: list[asyncio.Task[None]] = [
            asyncio.get_running_loop().create_task(telemetry.publish_every(1.0)),
            asyncio.get_running_loop().create_task(settler.run()),
        ]
        if st.emf_enabled:
            from claude_proxy.telemetry.emf import EmfReporter

            emf = EmfReporter(
                telemetry.live, st.emf_namespace, st.service_name, st.emf_interval_seconds
            )
            background.append(asyncio.get_running_loop().create_task(emf.run()))
        self.drain.attach(asyncio.get_running_loop())
        drain_task = asyncio.get_running_loop().create_task(self._drain(upstream))
        self.components = Components(
            upstream,
            breaker,
            retry,
            relay,
            engine,
            keys,
            limiter,
            process_sink,
            migrator,
            admin,
            drain_task,
            telemetry,
            metrics,
            background,
        )
        settle_startup_heap()  # every component is built: what follows is requests
        log.info(
            "claude-proxy %s started",
            __version__,
            extra={FIELDS: _config_summary(st, keys, admin is not None)},
        )
        if st.listen_url:
            # Scripts, tests and the benchmark wait for this line: printed whatever the log
            # level (handle() skips the level check), in the configured format.
            ready = log.makeRecord(
                log.name,
                logging.INFO,
                __file__,
                0,
                "claude-proxy ready on %s",
                (st.listen_url,),
                None,
                extra={FIELDS: {"pid": os.getpid()}},
            )
            log.handle(ready)

    async def shutdown(self) -> None:
        c = self.components
        if c is None:
            return
        self.components = None
        c.drain_task.cancel()
        for task in c.background:
            task.cancel()
        if c.telemetry.tracing is not None:
            await asyncio.to_thread(c.telemetry.tracing.shutdown)
        if c.relay.settler is not None:
            await c.relay.settler.close()
        await c.upstream.close()
        await c.keys.close()
        await c.limiter.close()
        if c.migrator is not None and not c.migrator.done():
            c.migrator.cancel()
        # Every record handed over is written or spilled within the window; none is lost.
        if c.sink is not None:
            await c.sink.close(self.settings.log_flush_timeout_seconds)
        c.engine.dispose()

    async def _drain(self, upstream: UpstreamPool) -> None:
        """Log the drain's steps, and end what is still in flight at its deadline."""
        d = self.drain
        await d.wait_begun()
        log.info(
            "drain started: /health answers 503; serving for %gs (pre-stop), then %d "
            "in-flight requests get up to %gs to finish",
            d.pre_stop,
            upstream.in_flight,
            d.window,
        )
        await asyncio.sleep(max(0.0, d.stop_accepting_at - time.monotonic()))
        log.info("drain: listener closed; %d requests in flight", upstream.in_flight)
        await asyncio.sleep(max(0.0, d.deadline - time.monotonic()))
        ended = upstream.abort_all(
            "the proxy is shutting down (drain window over); retry the request"
        )
        log.warning("drain: window over; %d requests still in flight were ended", ended)


def _config_summary(st: Settings, keys: KeyCache, admin: bool) -> dict[str, object]:
    """What this process runs with, for the startup line: never a secret."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "upstream": st.anthropic_base_url,
        "upstream_key_set": bool(st.upstream_key()),
        "database": redacted_url(st.database_url),
        "static_keys": keys.static_count,
        "database_keys": len(keys) - keys.static_count,
        "admin_api": admin,
        "demo": st.demo,
        "log_requests": st.log_requests,
        "log_bodies": st.log_bodies,
        "timeouts_s": {
            "connect": st.connect_timeout_seconds,
            "first_byte": st.first_byte_timeout_seconds,
            "idle": st.idle_timeout_seconds,
            "total": st.total_timeout_seconds,
        },
        "retry_on": st.retry_on,
        "retry_max_attempts": st.retry_max_attempts,
        "pre_stop_s": st.pre_stop_seconds,
        "drain_s": st.drain_seconds,
        "emf": st.emf_enabled,
        "tracing": st.tracing,
        "metrics_token_set": st.metrics_token is not None,
    }


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds")


async def _json(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _NoSink:
    """Drops records (CLAUDE_PROXY_LOG_REQUESTS=false), for measuring the logging's cost."""

    def submit(self, record: RequestRecord) -> None:
        return None


async def _migrate_until_done(engine: Engine) -> None:
    """Migrate, retrying while the database is unreachable (the writer spills meanwhile).

    The migration itself runs in a child process (store.migrate.ensure_schema), so this
    long-lived worker never imports Alembic; a current schema costs one SELECT."""
    while True:
        try:
            await asyncio.to_thread(ensure_schema, engine)
            log.info("database schema is up to date")
            return
        except Exception as exc:
            # The child's own summary (already free of the password); for the database's
            # errors raised here, only their type, as before.
            reason = str(exc) if isinstance(exc, MigrationError) else type(exc).__name__
            log.error(
                "database migration failed (%s); retrying in %.0fs",
                reason,
                _MIGRATE_RETRY_SECONDS,
            )
            await asyncio.sleep(_MIGRATE_RETRY_SECONDS)


def create_app(
    settings: Settings | None = None, drain: Drain | None = None, tracing: Tracing | None = None
) -> ProxyApp:
    return ProxyApp(settings or Settings(), drain, tracing)
