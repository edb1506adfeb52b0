"""A fast, faithful emulator of the Anthropic HTTP API, with per-request fault injection.

The official SDKs and Claude Code should not be able to tell it from the real API. It is the
upstream in the proxy's tests and benchmarks, so it is a hand-written asyncio HTTP/1.1 server
(see `server.py` for why) and costs little CPU per request.

Public API (used by the CLI and the proxy's demo mode):
- `await start(host, port, api_key=...)` -> `Emulator` (`.host`, `.port`, `.url`, `await close()`)
- `run(host, port, api_key=...)`: blocking; prints `claude-proxy emulator listening on URL`
- `start_in_thread(host, port, api_key=...)` -> `(url, stop)`

`api_key=None` accepts any non-empty credential; otherwise only that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import threading
from collections.abc import Callable

from claude_proxy.emulator.api import EmulatorApp
from claude_proxy.emulator.server import HttpProtocol
from claude_proxy.http.collector import settle_startup_heap

__all__ = ["Emulator", "EmulatorApp", "run", "start", "start_in_thread"]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class Emulator:
    """A running emulator on the current event loop."""

    def __init__(
        self,
        server: asyncio.Server,
        app: EmulatorApp,
        connections: set[HttpProtocol],
        tls: bool = False,
    ) -> None:
        self._server = server
        self._connections = connections
        self.app = app
        sockname = server.sockets[0].getsockname()
        self.host: str = sockname[0]
        self.port: int = sockname[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{_url_host(self.host)}:{self.port}"
        app.base_url = self.url

    async def close(self) -> None:
        self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self._server.wait_closed()


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Emulator:
    """Listen on host:port (0 = any free port) on the running loop; HTTPS with `tls`."""
    app = EmulatorApp(api_key)
    connections: set[HttpProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(app, connections),
        host,
        port,
        backlog=4096,
        reuse_address=True,
        ssl=tls,
    )
    return Emulator(server, app, connections, tls=tls is not None)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context, so the emulator can stand in for https://api.anthropic.com."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(
    host: str, port: int, *, api_key: str | None = None, tls: ssl.SSLContext | None = None
) -> None:
    """Serve until SIGINT/SIGTERM; prints the ready line once listening."""

    async def main() -> None:
        emulator = await start(host, port, api_key=api_key, tls=tls)
        # As the proxy does: the benchmark measures the proxy, not the emulator's collector
        # (its full collections under 1,000 streams stalled every stream for ~35 ms).
        settle_startup_heap()
        print(f"claude-proxy emulator listening on {emulator.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await emulator.close()

    with asyncio.Runner(loop_factory=_new_loop) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main())


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None
) -> tuple[str, Callable[[], None]]:
    """Run an emulator on its own loop in a daemon thread; returns (url, stop)."""
    loop = _new_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["emulator"] = loop.run_until_complete(start(host, port, api_key=api_key))
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="claude-proxy-emulator", daemon=True)
    thread.start()
    ready.wait()
    error = box.get("error")
    if isinstance(error, BaseException):
        raise RuntimeError(f"emulator failed to start on {host}:{port}") from error
    emulator = box["emulator"]
    assert isinstance(emulator, Emulator)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()

        async def shutdown() -> None:
            await emulator.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            thread.join(10)

    return emulator.url, stop
