"""The ASGI application: routing, and a lifespan that builds and drains components.

The /v1 relay is raw ASGI on purpose: a framework's routing and response
objects cost more CPU per request than the relay itself (docs/benchmarks.md).
Components are built once in the lifespan and passed in; nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from claude_proxy import __version__
from claude_proxy.auth import KeyStore
from claude_proxy.config import Settings
from claude_proxy.errors import send_error
from claude_proxy.records import LogSink, RecordSink, new_request_id
from claude_proxy.relay import Relay
from claude_proxy.types import Receive, Scope, Send
from claude_proxy.upstream import UpstreamPool

log = logging.getLogger("claude_proxy.app")

_HEALTH_BODY = b'{"status":"ok"}'
_HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTH_BODY)).encode()),
    (b"cache-control", b"no-store"),
]


@dataclass
class Components:
    upstream: UpstreamPool
    relay: Relay


class ProxyApp:
    """ASGI callable; `create_app` is the way to build one."""

    def __init__(self, settings: Settings, sink: RecordSink | None = None) -> None:
        self.settings = settings
        self.sink: RecordSink = sink or LogSink()
        self.keys = KeyStore(settings.client_keys())
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
        upstream = UpstreamPool(self.settings, asyncio.get_running_loop())
        relay = Relay(self.keys, upstream, self.sink, self.settings.max_body_bytes)
        self.components = Components(upstream=upstream, relay=relay)
        if self.settings.listen_url:
            # Tests and scripts wait for this line; it means requests are being served.
            print(f"claude-proxy ready on {self.settings.listen_url}", flush=True)
        log.info(
            "claude-proxy %s started: upstream=%s client_keys=%d demo=%s",
            __version__,
            self.settings.anthropic_base_url,
            len(self.keys),
            self.settings.demo,
        )

    async def shutdown(self) -> None:
        if self.components is not None:
            await self.components.upstream.close()
            self.components = None


def create_app(settings: Settings | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings())
