"""ProcessSink: the proxy's side of the request log. Records go to a writer process.

`submit` encodes the record (~1 µs) and writes the line into the socket to the
writer process at once: the relay submits before the client can see its response
end, so a record the client saw complete is already in the kernel's socket buffer,
which outlives this worker (an OOM kill, the SIGKILL after ECS's stop timeout).
Only while the writer process is not reading (or is being restarted) do lines wait
here, and go in one write every 50 ms (or every 256 records). Lines are kept as
bytes, not objects: bytes are not tracked by the garbage collector, so a thousand
records in flight do not make its collections longer. The process counts back the
records it has made safe (store/writer_process.py), and until then each one stays
here, so nothing is lost when the writer process dies:

- the writer process exits or is killed: a new one starts after a second and
  gets every record not yet counted (inserts are idempotent, so a record sent
  twice is still one row);
- more than `capacity` records wait (the process is gone, or cannot keep up):
  the oldest waiting ones are spilled from here, through a LogWriter used only
  for its spill file;
- shutdown: the process flushes within the window; whatever it did not count
  back is spilled from here.

Every second the process also sends a report line ("S" + JSON: rows written,
spilled, replayed, last write time), which /ready shows, with the request metrics
it counted since the last one, which `on_report` hands to the worker's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from claude_proxy.store.records import RequestRecord, decode_record, encode_record
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_process import WriterConfig

log = logging.getLogger("claude_proxy.store")

_SHIP_SECONDS = 0.05  # how long a record may wait before it is sent
_SHIP_BATCH = 256  # ... or how many, whichever comes first
_RESTART_SECONDS = 1.0
_SOCKET_BUFFER_BYTES = 4 << 20


class ProcessSink:
    """The `RecordSink` the app uses: `await start()`, `submit()` often, `await close()`."""

    def __init__(
        self,
        *,
        config: WriterConfig,
        fallback: LogWriter,
        capacity: int,
        process: Sequence[str],
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        """`process`: the command that runs the writer process, given the socket's file
        descriptor as its last argument; `on_exit` is told the pid of each one that ends."""
        self._config = config
        self._process = tuple(process)
        self._on_exit = on_exit
        self._fallback = fallback
        self._capacity = capacity
        self._loop = asyncio.get_running_loop()
        self._pending: deque[bytes] = deque()  # encoded records not yet sent
        self._unacked: deque[bytes] = deque()  # sent, not yet counted back
        self._proc: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._closed = False
        self._child_gone = asyncio.Event()
        self.restarts = 0
        self.writer_stats: dict[str, Any] = {}  # the writer process's latest report
        # Told each report's metrics: what the writer process counted since the last one.
        self.on_report: Callable[[dict[str, Any]], None] | None = None

    async def start(self) -> None:
        await self._spawn()

    def submit(self, record: RequestRecord) -> None:
        if self._closed:
            self._fallback.spill_records([record])
            return
        line = encode_record(record)
        pending = self._pending
        transport = self._transport
        if (
            transport is not None
            and not self._write_paused
            and not pending
            and len(self._unacked) < self._capacity  # else the process is stalled
        ):
            transport.write(line)
            self._unacked.append(line)
            return
        pending.append(line)
        if len(pending) >= _SHIP_BATCH:
            self._ship()
        elif self._timer is None:
            self._timer = self._loop.call_later(_SHIP_SECONDS, self._ship)
        if len(pending) + len(self._unacked) > self._capacity:
            self._overflow()

    def stats(self) -> dict[str, Any]:
        return {
            "pending": len(self._pending),
            "unacknowledged": len(self._unacked),
            "writer_pid": self._proc.pid if self._proc else None,
            "writer_restarts": self.restarts,
            "writer": self.writer_stats,
        }

    async def close(self, timeout: float) -> None:
        """Let the writer process flush within `timeout`; spill what it did not count back."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._ship(force=True)
            self._transport.write_eof()
            # The process has `timeout` for its own flush; a little more for it to exit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._child_gone.wait(), timeout + 2.0)
        self._closed = True
        leftovers = list(self._unacked) + list(self._pending)
        self._unacked.clear()
        self._pending.clear()
        if leftovers:
            log.warning("writer process did not confirm %d records; spilling them", len(leftovers))
            self._fallback.spill_records(_decoded(leftovers))
        if self._transport is not None:
            self._transport.abort()
        await asyncio.to_thread(self._reap, 1.0)
        self._fallback.close_sync(0)

    # --- the writer process -------------------------------------------------------------

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        # Room for the records the writer process lets gather between its reads (as much
        # as net.core.wmem_max allows): they are written here as each response ends.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
        try:
            self._proc = subprocess.Popen(
                [*self._process, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
            )
        except OSError as exc:
            ours.close()
            log.error("cannot start the writer process (%s); retrying", exc)
            self._loop.call_later(_RESTART_SECONDS, self._restart)
            return
        finally:
            theirs.close()
        self._child_gone.clear()
        transport, _ = await self._loop.create_unix_connection(lambda: _Link(self), sock=ours)
        self._transport = transport
        self._write_paused = False
        transport.write(self._config.to_line())
        if self._unacked:  # the previous process did not count these back: send again
            self._pending.extendleft(reversed(self._unacked))
            self._unacked.clear()
        self._ship()
        log.info("writer process %d started", self._proc.pid)

    def _restart(self) -> None:
        if self._closing:
            return
        self.restarts += 1
        self._loop.create_task(self._respawn())

    async def _respawn(self) -> None:
        await asyncio.to_thread(self._reap, 5.0)
        if not self._closing:
            await self._spawn()

    def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _lost(self) -> None:
        self._transport = None
        self._child_gone.set()
        if self._proc is not None and self._on_exit is not None:
            self._on_exit(self._proc.pid)
        if self._closing:
            return
        code = self._proc.poll() if self._proc else None
        log.error(
            "writer process exited (code %s) with %d records unconfirmed; restarting it",
            code,
            len(self._unacked),
        )
        self._loop.call_later(_RESTART_SECONDS, self._restart)

    # --- records ------------------------------------------------------------------------

    def _ship(self, force: bool = False) -> None:
        self._timer = None
        pending = self._pending
        if self._transport is None or not pending:
            return
        if self._write_paused and not force:
            # The process is not reading; try again shortly (the capacity check spills).
            self._timer = self._loop.call_later(_SHIP_SECONDS, self._ship)
            return
        self._transport.write(b"".join(pending))
        self._unacked.extend(pending)
        pending.clear()

    def _reported(self, report: dict[str, Any]) -> None:
        tally = report.pop("metrics", None) or {}
        self.writer_stats = report
        if self.on_report is not None:
            try:
                self.on_report(tally)
            except Exception:  # metrics must never break the log pipeline
                log.exception("applying the writer process's report failed")

    def _acked(self, n: int) -> None:
        unacked = self._unacked
        for _ in range(min(n, len(unacked))):
            unacked.popleft()

    def _overflow(self) -> None:
        over = len(self._pending) + len(self._unacked) - self._capacity
        if over <= 0 or not self._pending:
            return
        spill = [self._pending.popleft() for _ in range(min(over, len(self._pending)))]
        self._fallback.spill_records(_decoded(spill), queue_full=True)


def _decoded(lines: list[bytes]) -> list[RequestRecord]:
    return [decode_record(line) for line in lines]


class _Link(asyncio.Protocol):
    """The proxy's end of the socket: counts coming back, flow control, the process's end."""

    def __init__(self, sink: ProcessSink) -> None:
        self._sink = sink
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        acked = 0
        for line in lines:
            if line.startswith(b"S"):  # the writer's periodic report
                with contextlib.suppress(ValueError):
                    self._sink._reported(orjson.loads(line[1:]))
            elif line:
                acked += int(line)
        self._sink._acked(acked)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._sink._write_paused = True

    def resume_writing(self) -> None:
        self._sink._write_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink._lost()
