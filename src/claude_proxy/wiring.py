"""Wiring: every component is built here, once, and passed to what uses it.

`build_components` runs in the app's lifespan, on the loop that will serve; `run_worker`
is what each server process runs. Nothing is global: a test builds its own app.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from claude_proxy.child import MIGRATE_PROCESS, WRITER_PROCESS, build_writer
from claude_proxy.formats.anthropic.batches import BatchSettler
from claude_proxy.formats.anthropic.endpoints import CHAT_COMPLETIONS
from claude_proxy.formats.anthropic.errors import error_answer
from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.formats.anthropic.relay import Relay
from claude_proxy.formats.openai.wire import OPENAI_CHAT
from claude_proxy.gateway.alerts import BudgetAlerts
from claude_proxy.gateway.body_budget import BodyBudget
from claude_proxy.gateway.breaker import BreakerConfig, CircuitBreaker
from claude_proxy.gateway.dispatch import Dispatcher
from claude_proxy.gateway.keys import BadKeyThrottle, KeyCache
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import People
from claude_proxy.gateway.retry import RetryConfig, RetryPolicy
from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.http.asgi import ASGIApp
from claude_proxy.http.drain import Drain
from claude_proxy.http.protocol import ClientProtocol
from claude_proxy.http.runner import run_server
from claude_proxy.settings import Settings
from claude_proxy.store.engine import database_target, make_engine
from claude_proxy.store.handoff import ProcessSink
from claude_proxy.store.migrate import MigrationError, ensure_schema
from claude_proxy.store.records import RecordSink, RequestRecord
from claude_proxy.store.writer_process import WriterConfig
from claude_proxy.telemetry.logs import setup_logging
from claude_proxy.telemetry.metrics import ProxyMetrics, process_gone
from claude_proxy.telemetry.reporter import Telemetry
from claude_proxy.upstream.auth import ApiKey
from claude_proxy.upstream.pool import UpstreamPool

if TYPE_CHECKING:
    from claude_proxy.signin.routes import SigninApp
    from claude_proxy.telemetry.spans import Tracing

log = logging.getLogger("claude_proxy.app")

_MIGRATE_RETRY_SECONDS = 30.0


@dataclass
class Components:
    upstream: UpstreamPool
    breaker: CircuitBreaker
    retry: RetryPolicy
    relay: Relay
    engine: Engine
    keys: KeyCache
    people: People
    signer: TokenSigner | None
    limiter: Limiter
    sink: ProcessSink | None
    migrator: asyncio.Task[None] | None
    admin: ASGIApp | None
    # The Claude apps gateway's spend-limit routes (/v1/organizations/spend_limits).
    spend_limits: ASGIApp | None
    # Sign-in's routes (discovery, /oauth/..., /device, /managed/settings, /me, OTLP).
    signin: SigninApp | None
    telemetry: Telemetry
    metrics: ProxyMetrics
    settler: BatchSettler
    background: list[asyncio.Task[None]]


def run_worker(settings: Settings, sock: socket.socket) -> None:
    """One server process: the app, its drain, our HTTP protocol, on the shared socket.
    The settings arrive as an object (pickled into a spawned worker)."""
    from claude_proxy.app import create_app

    setup_logging()  # again: a spawned worker starts with a fresh interpreter
    drain = Drain(pre_stop=settings.pre_stop_seconds, window=settings.drain_seconds)
    protocol = ClientProtocol.configured(
        error_answer=error_answer,
        head_timeout=settings.client_header_timeout_seconds,
        body_timeout=settings.client_body_timeout_seconds,
        send_timeout=settings.client_send_timeout_seconds,
    )
    run_server(
        sock,
        create_app(settings, drain=drain),
        drain,
        protocol=protocol,
        keepalive_seconds=settings.keepalive_seconds,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def upstream_pool(st: Settings, loop: asyncio.AbstractEventLoop) -> UpstreamPool:
    """The pool to the configured upstream, with its API key."""
    return UpstreamPool(
        base_url=st.anthropic_base_url,
        auth=ApiKey(st.upstream_key()),
        loop=loop,
        connect_timeout=st.connect_timeout_seconds,
        first_byte_timeout=st.first_byte_timeout_seconds,
        idle_timeout=st.idle_timeout_seconds,
        total_timeout=st.total_timeout_seconds,
        recv_buffer=st.upstream_recv_buffer_bytes,
    )


def writer_config(st: Settings) -> WriterConfig:
    """What the writer process needs (it does not import the settings: less memory)."""
    return WriterConfig(
        database=database_target(st.database_url),
        spill_dir=st.spill_dir,
        prices_file=st.prices_file,
        statement_timeout=st.db_statement_timeout_seconds,
        batch_size=st.log_batch_size,
        flush_interval=st.log_flush_interval_seconds,
        flush_timeout=st.log_flush_timeout_seconds,
    )


async def build_components(
    st: Settings, *, drain: Drain, tracing: Tracing | None = None
) -> Components:
    """Every component of one server process, started; `tracing` injected by tests."""
    loop = asyncio.get_running_loop()
    # Loaded here too: a broken PRICES_FILE stops the start, not the writer process.
    prices = PriceTable.load(st.prices_file)
    writer_cfg = writer_config(st)
    fallback = build_writer(writer_cfg, prices, None)  # only spills: it never connects
    engine = make_engine(
        st.database_url, pool_size=st.db_pool_size, max_overflow=st.db_max_overflow
    )
    migrator = None
    if st.auto_migrate:
        migrator = loop.create_task(_migrate_until_done(engine))
        # Normally done in milliseconds; a database that is down must not stop the
        # proxy from serving (the writer spills until the table exists).
        await asyncio.wait({migrator}, timeout=10.0)
    process_sink: ProcessSink | None = None
    sink: RecordSink
    if st.log_requests:
        process_sink = ProcessSink(
            config=writer_cfg,
            fallback=fallback,
            capacity=st.log_queue_size,
            process=WRITER_PROCESS,
            on_exit=process_gone,
        )
        await process_sink.start()
        sink = process_sink
    else:
        log.warning("CLAUDE_PROXY_LOG_REQUESTS=false: requests are not recorded")
        sink = _NoSink()
    keys = KeyCache(
        static_keys=st.client_keys(), engine=engine, refresh_interval=st.key_refresh_seconds
    )
    await keys.start()
    people = People(engine=engine, refresh_interval=st.key_refresh_seconds)
    await people.start()
    signer = token_signer(st)
    limiter = Limiter(
        engine=engine,
        prices=prices,
        sync_interval=st.limits_sync_seconds,
        budgets=lambda: {**keys.budgets(), **people.budgets()},
    )
    await limiter.start()
    admin: ASGIApp | None = None
    spend_limits: ASGIApp | None = None
    if st.admin_token() or signer is not None:
        # Only then: FastAPI costs ~7 MB.
        from claude_proxy.admin import build_admin_app, build_spend_limits_app

        admin = build_admin_app(
            engine,
            keys,
            st.admin_token() or None,
            signer=signer,
            people=people,
            admin_groups=st.admin_groups(),
        )
        spend_limits = build_spend_limits_app(
            engine,
            st.admin_token() or None,
            signer=signer,
            people=people,
            admin_groups=st.admin_groups(),
        )
    signin: SigninApp | None = None
    if st.oidc_issuer and signer is not None:
        signin = _signin_app(
            st, engine=engine, signer=signer, people=people, limiter=limiter, keys=keys
        )
    upstream = upstream_pool(st, loop)
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
    if tracing is None and st.tracing:
        from claude_proxy.telemetry.tracing import build_tracing  # only then: OpenTelemetry

        tracing = build_tracing(service_name=st.service_name, upstream_url=st.anthropic_base_url)
    telemetry = Telemetry(metrics=metrics, tracing=tracing)
    settler = BatchSettler(
        engine=engine,
        upstream=upstream,
        sink=sink,
        prices=prices,
        poll_seconds=st.batch_poll_seconds,
    )
    relay = Relay(
        keys=keys,
        people=people,
        signer=signer,
        limiter=limiter,
        throttle=BadKeyThrottle(burst=st.bad_key_burst, per_minute=st.bad_key_per_minute),
        dispatcher=Dispatcher(pool=upstream, breaker=breaker, retry=retry, telemetry=telemetry),
        sink=sink,
        drain=drain,
        telemetry=telemetry,
        max_body=st.max_body_bytes,
        body_budget=BodyBudget(limit=st.max_buffered_body_bytes, wait_seconds=st.body_wait_seconds),
        body_cap=st.log_body_max_bytes if st.log_bodies else 0,
        prices=prices,
        settler=settler,
        public_url=st.public_url,
        formats={CHAT_COMPLETIONS: OPENAI_CHAT},
    )
    alerts = BudgetAlerts(
        engine=engine,
        limiter=limiter,
        levels=lambda: [*keys.budgeted(), *people.budget_levels()],
        webhook_url=(
            st.alert_webhook_url.get_secret_value() if st.alert_webhook_url is not None else None
        ),
        counted=lambda outcome: metrics.budget_alerts.labels(outcome).inc(),
        interval=st.alert_check_seconds,
    )
    background: list[asyncio.Task[None]] = [
        loop.create_task(telemetry.publish_every(1.0)),
        loop.create_task(settler.run()),
        loop.create_task(alerts.run()),
    ]
    if st.emf_enabled:
        from claude_proxy.telemetry.emf import EmfReporter

        emf = EmfReporter(
            live=telemetry.live,
            namespace=st.emf_namespace,
            service=st.service_name,
            interval=st.emf_interval_seconds,
        )
        background.append(loop.create_task(emf.run()))
    return Components(
        upstream=upstream,
        breaker=breaker,
        retry=retry,
        relay=relay,
        engine=engine,
        keys=keys,
        people=people,
        signer=signer,
        limiter=limiter,
        sink=process_sink,
        migrator=migrator,
        admin=admin,
        spend_limits=spend_limits,
        signin=signin,
        telemetry=telemetry,
        metrics=metrics,
        settler=settler,
        background=background,
    )


def _signin_app(
    st: Settings,
    *,
    engine: Engine,
    signer: TokenSigner,
    people: People,
    limiter: Limiter,
    keys: KeyCache,
) -> SigninApp:
    """Sign-in's routes (imported only when sign-in is configured: Starlette, the IdP client)."""
    from claude_proxy.signin.routes import build_signin_app

    assert st.oidc_issuer and st.oidc_client_id and st.public_url  # settings.py checks them
    assert st.oidc_client_secret is not None and st.session_secret is not None
    return build_signin_app(
        public_url=st.public_url,
        oidc_issuer=st.oidc_issuer,
        oidc_client_id=st.oidc_client_id,
        oidc_client_secret=st.oidc_client_secret.get_secret_value(),
        oidc_scopes=st.oidc_scopes,
        oidc_groups_claim=st.oidc_groups_claim,
        allowed_groups=st.allowed_groups(),
        admin_groups=st.admin_groups(),
        session_secret=st.session_secret.get_secret_value(),
        engine=engine,
        signer=signer,
        people=people,
        limiter=limiter,
        keys=keys,
    )


def token_signer(st: Settings) -> TokenSigner | None:
    """The signer of the proxy's access tokens and admin sessions, when a session secret
    is set (sign-in needs one; settings.py checks that)."""
    if st.session_secret is None:
        return None
    issuer = (st.public_url or st.listen_url).rstrip("/")
    return TokenSigner(
        secret=st.session_secret.get_secret_value(), issuer=issuer, ttl=st.token_ttl_seconds
    )


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
            await asyncio.to_thread(ensure_schema, engine, MIGRATE_PROCESS)
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
