"""The writer process: the LogWriter, run in a child of each proxy worker.

Why a process: turning a record into a row, costing it, the access line and
the insert cost ~25 µs of Python per request. In a thread they compete with the
event loop for the GIL (a third less throughput at saturation, and +3 ms at
p99 for every client); in a child they run on another core.

Protocol, over a socketpair the proxy passes as a file descriptor:
- first line: the WriterConfig as JSON; then one JSON array per record
  (records.encode_record), in order;
- back: ASCII counts, "N\\n", each meaning "N more records are safe" (committed,
  or spilled and synced), in the order received. The proxy keeps every record
  until it is counted, and resends the rest to a new child if this one dies;
  inserts are idempotent, so a resent record is never a second row.
- also back, every second and once more at the end: "S" + JSON, the LogWriter's stats
  (for /ready) with, under "metrics", the request metrics counted since the last report
  (telemetry/tally.py; the worker adds them to its Prometheus metrics);
- EOF from the proxy (it closed, or died): flush within `flush_timeout`,
  spill the rest, exit 0. SIGINT and SIGTERM are ignored: the proxy decides.

The request metrics are counted here too: this process sees every record anyway,
and the worker's event loop is spared the work.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from claude_proxy.store.records import decode_record
from claude_proxy.store.writer import DurableFn, LogWriter
from claude_proxy.store.writer_db import DatabaseTarget

log = logging.getLogger("claude_proxy.store")

_REPORT_SECONDS = 1.0
# Between two reads of the socket (see _batches); far below the writer's flush interval.
_READ_PAUSE_SECONDS = 0.02
_READ_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class WriterConfig:
    database: DatabaseTarget
    spill_dir: str
    prices_file: str | None
    statement_timeout: float
    batch_size: int
    flush_interval: float
    flush_timeout: float

    def to_line(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_APPEND_NEWLINE)


# Builds the process's writer once the config has arrived: the writer, and what each
# report adds to the writer's stats (the request metrics counted since the last one).
Report = Callable[[dict[str, Any]], dict[str, Any]]
BuildWriter = Callable[[WriterConfig, DurableFn], tuple[LogWriter, Report]]


def run(fd: int, build: BuildWriter) -> None:
    """The process's life: read the config, then records until EOF; flush, report, exit.

    The entry point (claude_proxy/child.py) supplies how records are costed, logged and
    counted, so the store imports none of it."""
    # The proxy decides when this process ends (by closing the socket), so a Ctrl-C or
    # a SIGTERM sent to the whole process group cannot cut a flush short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    incoming = sock.makefile("rb")
    fields = orjson.loads(incoming.readline())
    cfg = WriterConfig(**(fields | {"database": DatabaseTarget(**fields["database"])}))
    ack_lock = threading.Lock()

    def ack(n: int) -> None:
        with ack_lock, contextlib.suppress(OSError):  # the proxy is gone: nobody to tell
            sock.sendall(b"%d\n" % n)

    writer, with_metrics = build(cfg, ack)
    writer.start()
    stop = threading.Event()

    def send_report() -> None:
        report = with_metrics(writer.stats())
        with ack_lock, contextlib.suppress(OSError):
            sock.sendall(b"S" + orjson.dumps(report) + b"\n")

    def report() -> None:
        while not stop.wait(_REPORT_SECONDS):
            send_report()

    threading.Thread(target=report, name="claude-proxy-writer-report", daemon=True).start()
    try:
        for lines in _batches(incoming):
            for line in lines:
                try:
                    record = decode_record(line)
                except Exception:
                    log.exception("writer process: unreadable record line skipped")
                    ack(1)  # keeps the count aligned; resending it would fail again
                    continue
                writer.submit(record)
    finally:
        writer.close_sync(cfg.flush_timeout)
        stop.set()
        send_report()  # the last counts, before the proxy sees this process end
        writer.db.close()


def _batches(incoming: io.BufferedReader) -> Iterator[list[bytes]]:
    """Record lines as they come, a read at a time, pausing `_READ_PAUSE_SECONDS` between
    reads. The proxy writes each record into the socket the moment its response ends; read
    one by one, every record would wake this process (a system call, a thread hand-over:
    half again the proxy's CPU per request). The pause lets them gather in the kernel's
    socket buffer, where they are as safe from a dying worker as here."""
    partial = b""
    while data := incoming.read1(_READ_BYTES):
        *lines, partial = (partial + data).split(b"\n")
        if lines:
            yield lines
        time.sleep(_READ_PAUSE_SECONDS)
    if partial:
        yield [partial]
