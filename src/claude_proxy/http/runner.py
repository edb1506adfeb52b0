"""Running the app: uvicorn with our drain on SIGTERM, in one process or several.

uvicorn's own handling of SIGTERM closes the listener at once (a load balancer that
has not deregistered the task yet then meets a closed port), cancels streams without
a word when its timeout runs out, and re-raises the signal at the end, so the process
does not exit 0. `DrainingServer` follows drain.Drain instead. With `--workers N`, a
small supervisor starts N such servers on the shared socket, forwards SIGTERM to them,
restarts one that dies, and exits 0 when they all did.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

import uvicorn

from claude_proxy.http.asgi import ASGIApp
from claude_proxy.http.drain import Drain
from claude_proxy.http.protocol import ClientProtocol
from claude_proxy.telemetry.metrics import process_gone

log = logging.getLogger("claude_proxy.server")

_STARTUP_FAILURE = 3  # uvicorn's exit code when the app could not start


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Like uvicorn's, without re-raising the signal at the end: a drained
        # shutdown is a clean exit (0), which is what ECS and the tests look for.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.begin(skip_pre_stop=sig == signal.SIGINT):
            return
        if sig == signal.SIGINT:  # a second Ctrl-C: stop now
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain.should_stop_accepting():
            return True
        return await super().on_tick(counter)


def run_server(
    sock: socket.socket,
    app: ASGIApp,
    drain: Drain,
    *,
    protocol: type[ClientProtocol],
    keepalive_seconds: int,
    forwarded_allow_ips: str | None,
) -> None:
    """One server process: uvicorn with our protocol on `sock`, stopping by `drain`."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        log_config=None,
        timeout_keep_alive=keepalive_seconds,
        # The app ends what is left at the drain deadline; this is only a backstop.
        timeout_graceful_shutdown=int(drain.window) + 5,
        # X-Forwarded-For is trusted only from the load balancer's addresses; off otherwise
        # (uvicorn's default trusts 127.0.0.1 and costs a middleware hop per request).
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
    )
    DrainingServer(config, drain).run(sockets=[sock])


# What each worker process runs with the shared socket: picklable (a module-level function,
# or a partial of one with picklable arguments such as the settings), since workers are
# spawned, not forked.
Worker = Callable[[socket.socket], None]


def serve(sock: socket.socket, workers: int, worker: Worker) -> int:
    """Serve until drained; returns the exit code."""
    if workers <= 1:
        worker(sock)
        return 0
    return _Supervisor(sock, workers, worker).run()


class _Supervisor:
    def __init__(self, sock: socket.socket, workers: int, worker: Worker) -> None:
        self.sock = sock
        self.worker = worker
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = [None] * workers
        self.stopping = False

    def _start(self, i: int) -> None:
        p = self.ctx.Process(target=self.worker, args=(self.sock,), name=f"worker-{i}")
        p.start()
        self.procs[i] = p

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        # Workers drain on SIGTERM; a Ctrl-C reaches them from the terminal anyway.
        self.stopping = True
        for p in self.procs:
            if p is not None and p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for i in range(len(self.procs)):
            self._start(i)
        failed = False
        while True:
            alive = [p for p in self.procs if p.is_alive()]
            if not alive and (self.stopping or failed):
                break
            wait([p.sentinel for p in alive], timeout=1.0)
            for i, p in enumerate(self.procs):
                if p.is_alive() or self.stopping or failed:
                    continue
                if p.exitcode == _STARTUP_FAILURE:
                    log.error("worker %d could not start; stopping", p.pid)
                    failed = True
                    self._forward(signal.SIGTERM, None)
                    continue
                log.error("worker %d died (exit code %s); starting another", p.pid, p.exitcode)
                process_gone(p.pid)
                time.sleep(1.0)  # do not spin if it dies at once again
                self._start(i)
        codes = [p.exitcode for p in self.procs]
        return 0 if all(c == 0 for c in codes) and not failed else 1
