"""The ASGI application: routing, and a lifespan that builds and drains components.

The /v1 relay is raw ASGI on purpose: a framework's routing and response
objects cost more CPU per request than the relay itself (docs/benchmarks.md).
Components are built once in the lifespan and passed in; nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from sqlalchemy import Engine

from claude_proxy import __version__
from claude_proxy.auth import BadKeyThrottle, KeyCache
from claude_proxy.config import Settings
from claude_proxy.errors import send_error
from claude_proxy.limits import Limiter
from claude_proxy.pricing import PriceTable
from claude_proxy.records import RecordSink, RequestRecord, new_request_id
from claude_proxy.relay import Relay
from claude_proxy.store.engine import redacted_url
from claude_proxy.store.handoff import ProcessSink, writer_config
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.writer_process import build_writer
from claude_proxy.types import ASGIApp, Receive, Scope, Send
from claude_proxy.upstream import UpstreamPool

log = logging.getLogger("claude_proxy.app")

_HEALTH_BODY = b'{"status":"ok"}'
_HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTH_BODY)).encode()),
    (b"cache-control", b"no-store"),
]


_MIGRATE_RETRY_SECONDS = 30.0


@dataclass
class Components:
    upstream: UpstreamPool
    relay: Relay
    engine: Engine
    keys: KeyCache
    limiter: Limiter
    sink: ProcessSink | None
    migrator: asyncio.Task[None] | None
    admin: ASGIApp | None


class ProxyApp:
    """ASGI callable; `create_app` is the way to build one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.components: Components | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                assert self.components is not None, "lifespan did not run"
                await self.components.relay(scope, receive, send)
            elif path == "/health":
                await self._health(send)
            elif path.startswith("/admin/") and self.components and self.components.admin:
                # Its own key (CLAUDE_PROXY_ADMIN_KEY); proxy keys mean nothing there.
                await self.components.admin(scope, receive, send)
            else:
                rid = new_request_id()
                await send_error(send, "not_found_error", f"Not found: {path}", rid)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _health(self, send: Send) -> None:
        # Liveness only: never touches the upstream or the database, so an outage
        # there cannot make the load balancer kill every task.
        await send({"type": "http.response.start", "status": 200, "headers": _HEALTH_HEADERS})
        await send({"type": "http.response.body", "body": _HEALTH_BODY})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
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
        # Load the price table here too: a broken PRICES_FILE stops the start, not the writer.
        writer_cfg = writer_config(st)
        fallback = build_writer(writer_cfg, None)
        engine = fallback.engine
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
            PriceTable.load(st.prices_file),
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
        body_cap = st.log_body_max_bytes if st.log_bodies else 0
        relay = Relay(keys, limiter, throttle, upstream, sink, st.max_body_bytes, body_cap)
        self.components = Components(
            upstream, relay, engine, keys, limiter, process_sink, migrator, admin
        )
        if st.listen_url:
            # Tests and scripts wait for this line; it means requests are being served.
            # One write, newline included: print() writes the newline separately, and with
            # several workers two ready lines then interleave into one.
            sys.stdout.write(f"claude-proxy ready on {st.listen_url}\n")
            sys.stdout.flush()
        log.info(
            "claude-proxy %s started: upstream=%s database=%s static_keys=%d "
            "database_keys=%d admin_api=%s demo=%s",
            __version__,
            st.anthropic_base_url,
            redacted_url(st.database_url),
            keys.static_count,
            len(keys) - keys.static_count,
            admin is not None,
            st.demo,
        )

    async def shutdown(self) -> None:
        c = self.components
        if c is None:
            return
        self.components = None
        await c.upstream.close()
        await c.keys.close()
        await c.limiter.close()
        if c.migrator is not None and not c.migrator.done():
            c.migrator.cancel()
        # Every record handed over is written or spilled within the window; none is lost.
        if c.sink is not None:
            await c.sink.close(self.settings.log_flush_timeout_seconds)
        c.engine.dispose()


class _NoSink:
    """Drops records (CLAUDE_PROXY_LOG_REQUESTS=false), for measuring the logging's cost."""

    def submit(self, record: RequestRecord) -> None:
        return None


async def _migrate_until_done(engine: Engine) -> None:
    """Migrate, retrying while the database is unreachable (the writer spills meanwhile)."""
    while True:
        try:
            await asyncio.to_thread(upgrade, engine)
            log.info("database schema is up to date")
            return
        except Exception as exc:
            log.error(
                "database migration failed (%s); retrying in %.0fs",
                type(exc).__name__,
                _MIGRATE_RETRY_SECONDS,
            )
            await asyncio.sleep(_MIGRATE_RETRY_SECONDS)


def create_app(settings: Settings | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings())
