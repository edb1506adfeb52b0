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
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from claude_proxy import __version__
from claude_proxy.formats.anthropic.errors import send_error
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.http.asgi import ASGIApp, Receive, Scope, Send
from claude_proxy.http.collector import settle_startup_heap
from claude_proxy.http.drain import Drain
from claude_proxy.http.protocol import RECORD_SINK_STATE_KEY, TELEMETRY_STATE_KEY
from claude_proxy.settings import Settings
from claude_proxy.store.engine import redacted_url
from claude_proxy.store.records import MAX_SHORT_TEXT_CHARS, bounded, new_request_id
from claude_proxy.telemetry.logs import FIELDS
from claude_proxy.telemetry.metrics import CIRCUIT_STATES, CONTENT_TYPE
from claude_proxy.upstream.pool import UpstreamPool
from claude_proxy.wiring import Components, build_components

if TYPE_CHECKING:
    from claude_proxy.telemetry.spans import Tracing

log = logging.getLogger("claude_proxy.app")

_HEALTH_BODY = b'{"status":"ok"}'
_DRAINING_BODY = b'{"status":"draining"}'


class ProxyApp:
    """ASGI callable; `create_app` is the way to build one."""

    def __init__(
        self, settings: Settings, *, drain: Drain | None = None, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self._tracing = tracing  # injected (tests); otherwise built when settings.tracing
        self.drain = drain or Drain(
            pre_stop=settings.pre_stop_seconds, window=settings.drain_seconds
        )
        self.components: Components | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Routed on the raw target: `/%6detrics` must not reach /metrics, which the
            # load balancer hides by its exact path, nor `/%761/...` the relay.
            raw: bytes = scope["raw_path"]
            if raw.startswith(b"/v1/") or raw == b"/v1":
                c = self.components
                assert c is not None, "lifespan did not run"
                if raw.startswith(_SPEND_LIMITS) and _own_route(raw, _SPEND_LIMITS):
                    # Answered here, never passed to Anthropic's Admin API.
                    await self._served_by(c.spend_limits, scope, receive, send)
                elif raw in _OTLP and c.signin is not None:
                    await c.signin(scope, receive, send)  # Claude Code's telemetry: dropped
                else:
                    await c.relay(scope, receive, send)
            elif raw == b"/health":
                await self._health(send)
            elif raw == b"/ready":
                await self._ready(send)
            elif raw == b"/metrics":
                await self._metrics(scope, send)
            elif raw.startswith(b"/admin/") and self.components and self.components.admin:
                # The admin key, an admin's session or an admin group's token; proxy keys
                # mean nothing there.
                await self.components.admin(scope, receive, send)
            elif raw in _SIGNIN or raw.startswith(b"/oauth/"):
                signin = self.components.signin if self.components else None
                await self._served_by(signin, scope, receive, send)
            else:
                await _not_found(raw, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)

    async def _served_by(
        self, app: ASGIApp | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A route of a part that may be off (sign-in, the spend-limit API): 404 when off."""
        if app is None:
            await _not_found(scope["raw_path"], send)
        else:
            await app(scope, receive, send)

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
        self.drain.attach(asyncio.get_running_loop())
        c = await build_components(st, drain=self.drain, tracing=self._tracing)
        self.components = c
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(c.upstream))
        settle_startup_heap()  # every component is built: what follows is requests
        log.info(
            "claude-proxy %s started",
            __version__,
            extra={FIELDS: _config_summary(st, c.keys, c.admin is not None)},
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
        if self._drain_task is not None:
            self._drain_task.cancel()
        for task in c.background:
            task.cancel()
        if c.telemetry.tracing is not None:
            await asyncio.to_thread(c.telemetry.tracing.shutdown)
        await c.settler.close()
        await c.upstream.close()
        await c.keys.close()
        await c.people.close()
        if c.signin is not None:
            await c.signin.close()
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


# Routes of sign-in (signin/routes.py) and of the spend-limit API (admin/spend_limits.py).
_SIGNIN = frozenset(
    {
        b"/.well-known/oauth-authorization-server",
        b"/device",
        b"/managed/settings",
        b"/me",
        b"/me/keys",
    }
)
_OTLP = frozenset({b"/v1/metrics", b"/v1/logs", b"/v1/traces"})
_SPEND_LIMITS = b"/v1/organizations/spend_limits"


def _own_route(raw: bytes, prefix: bytes) -> bool:
    """`raw` is `prefix` itself or below it (not `/v1/organizations/spend_limitsX`)."""
    return len(raw) == len(prefix) or raw[len(prefix) : len(prefix) + 1] == b"/"


async def _not_found(raw: bytes, send: Send) -> None:
    rid = new_request_id()
    shown = bounded(raw.decode("latin-1"), MAX_SHORT_TEXT_CHARS)
    await send_error(send, "not_found_error", f"Not found: {shown}", rid)


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


def create_app(
    settings: Settings | None = None, *, drain: Drain | None = None, tracing: Tracing | None = None
) -> ProxyApp:
    return ProxyApp(settings or Settings(), drain=drain, tracing=tracing)
