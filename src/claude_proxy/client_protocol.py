"""uvicorn's HTTP/1.1 protocol, with a bounded write buffer per client connection.

uvloop lets 64 KiB queue in user space per connection before it tells uvicorn to
wait; with the upstream's own read-ahead that made each stream to a slow client
hold ~400 KB of the proxy's memory. 4 KiB is still many SSE events ahead of the
client (the kernel's send buffer, often megabytes, comes on top), and bounds the
memory per stream: 100 slow readers cost ~3 MB (docs/benchmarks.md).

It also counts open connections, for the ActiveConnections metric: the app's
lifespan puts its Telemetry in the state uvicorn shares with every connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TELEMETRY_STATE_KEY = "claude_proxy.telemetry"

CLIENT_WRITE_HIGH_WATER = 4 * 1024


class ClientProtocol(HttpToolsProtocol):
    _telemetry: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        telemetry = self.app_state.get(TELEMETRY_STATE_KEY)
        if telemetry is not None:
            self._telemetry = telemetry
            telemetry.connection_opened()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._telemetry is not None:
            self._telemetry.connection_closed()
            self._telemetry = None
