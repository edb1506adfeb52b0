"""uvicorn's HTTP/1.1 protocol, with a bounded write buffer per client connection.

uvloop lets 64 KiB queue in user space per connection before it tells uvicorn to
wait; with the upstream's own read-ahead that made each stream to a slow client
hold ~400 KB of the proxy's memory. 4 KiB is still many SSE events ahead of the
client (the kernel's send buffer, often megabytes, comes on top), and bounds the
memory per stream: 100 slow readers cost ~3 MB (docs/benchmarks.md).

It also counts open connections, for the ActiveConnections metric: the app's
lifespan puts its Telemetry in the state uvicorn shares with every connection.

And it sends a response's head together with its body: uvicorn writes the status
line and headers as soon as the app starts the response, then the body, so every
non-streaming response cost two write(2) calls and two segments, each waking the
client. `_HeadWithBody` holds the head back until the body's first write in the same
turn of the event loop, or until that turn ends (a stream's head is not delayed
behind its first event): one syscall instead of two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TELEMETRY_STATE_KEY = "claude_proxy.telemetry"

CLIENT_WRITE_HIGH_WATER = 4 * 1024


class _HeadWithBody:
    """The transport uvicorn's request cycles write to: a response head waits for the
    next write, at most until the event loop's current turn ends. Hand-written because
    it sits on the hot path; everything but write/close/abort goes to the transport."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 "):  # a head (uvicorn writes it in one piece)
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ClientProtocol(HttpToolsProtocol):
    _telemetry: Any = None
    _writer: _HeadWithBody | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        self._writer = _HeadWithBody(transport, self.loop)
        telemetry = self.app_state.get(TELEMETRY_STATE_KEY)
        if telemetry is not None:
            self._telemetry = telemetry
            telemetry.connection_opened()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None and self._writer is not None:
            self.cycle.transport = self._writer  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._telemetry is not None:
            self._telemetry.connection_closed()
            self._telemetry = None
