"""LogWriter: records into the database in batches, off the event loop, losing none.

`submit` runs on the event loop for every request, so all it does is append
to a bounded queue (a deque, checked by length). One dedicated thread turns records into
rows (cost included), and inserts them in batches with ON CONFLICT (id) DO
NOTHING, so writing the same record twice is harmless. That idempotence is
what makes the rest simple:

- the database fails: the batch goes to the spill file, and the writer backs off;
- the queue is full: `submit` appends the record to the spill file itself;
- the database is back, or the process starts, or every `rescan_interval`: spill files
  nobody holds are replayed, then deleted once every row is committed. The spill
  directory may be shared by every task (store/spill.py): then any writer replays any
  task's abandoned files, one writer per file, and never a live writer's;
- shutdown: the queue is flushed within the drain window, the rest spilled;
- the database refuses a row for its content (store/writer_db.py `fault`): the batch is
  split until the row is alone, the row is written again in its reduced form (its spend
  still counts), and only if that is refused too is it quarantined. A bad row never
  holds back its batch, never marks the database unhealthy.

A row may be written twice (spilled after a commit whose reply was lost, say),
never lost. Counters are in `stats()`; spill and replay events are logged.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from claude_proxy.store.inserts import BatchInserter
from claude_proxy.store.records import MAX_SHORT_TEXT_CHARS, RequestRecord, bounded
from claude_proxy.store.rows import Row, dump_row, record_to_row, reduced_row
from claude_proxy.store.spill import (
    ClaimedFile,
    SpillFile,
    SpillLost,
    append_quarantine,
    claim,
    spill_files,
)
from claude_proxy.store.writer_db import WriterDatabase, why

log = logging.getLogger("claude_proxy.store")
# Where the JSON log formatter (telemetry/logs.py) looks for a line's structured fields.
_LOG_FIELDS = "fields"

CostFn = Callable[[RequestRecord], Decimal | None]
DurableFn = Callable[[int], None]

_REPORT_INTERVAL = 10.0  # seconds between "spill: ..." summaries during an outage
_MAX_LOGGED_RECORD_CHARS = 2048  # an unconvertible record's repr in its ERROR line

_COUNTERS = (
    "batches",  # batches from the queue committed
    "written",  # rows inserted from the queue
    "duplicates",  # rows already present (an earlier write whose reply was lost)
    "spilled",  # rows appended to the spill file, for any reason
    "spilled_queue_full",  # ... of which by submit() because the queue was full
    "replayed",  # spill rows committed by a replay (new or already present)
    "replay_duplicates",  # ... of which were already in the table
    "replayed_files",  # spill files replayed and deleted
    "replay_scans",  # completed scans of the spill directory for files to replay
    "failed_batches",  # database writes that failed (then spilled)
    "torn_lines",  # incomplete last lines skipped in spill files (crash mid-write)
    "corrupt_lines",  # other unreadable spill lines skipped
    "reduced",  # rows the database refused whole, written in their reduced form
    "quarantined",  # rows refused even reduced, kept in quarantine-<host>-<pid>-*.jsonl
    "spill_errors",  # rows neither written nor spilled (disk full): logged at ERROR instead
)


class LogWriter:
    """The database `RecordSink`: `start()`, `submit()` many times, then `close_sync()`."""

    def __init__(
        self,
        db: WriterDatabase,
        spill_dir: str | os.PathLike[str],
        *,
        cost_fn: CostFn | None = None,
        on_record: Callable[[RequestRecord, Decimal | None], None] | None = None,
        on_durable: DurableFn | None = None,
        queue_size: int | None = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        rescan_interval: float = 60.0,
        statement_timeout: float = 15.0,
    ) -> None:
        self.db = db
        self.spill_dir = Path(spill_dir)
        self._cost_fn = cost_fn
        # Per-record work that must stay off the event loop (the access log line).
        self._on_record = on_record
        # Told how many more submitted records are safe (committed, or spilled and
        # synced), in submit order: the writer process acknowledges to the proxy with it.
        self._on_durable = on_durable
        self._pending: deque[RequestRecord] = deque()
        self._wake = threading.Event()  # set when a batch is ready, or to stop
        # None: never spill for a full queue (stats report no capacity)
        self._queue_limit = sys.maxsize if queue_size is None else queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rescan_interval = rescan_interval
        self._inserter = BatchInserter(db, statement_timeout)
        self._spill = SpillFile(self.spill_dir)

        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._gate = threading.Lock()  # orders submit() against close_sync()
        self._closed = False
        self._inflight: list[Row] | None = None

        self._healthy = True
        self._backoff = 0.0
        self._retry_at = 0.0
        self._replay_due = True  # at startup: whatever a crash left behind
        self._next_rescan = 0.0
        self._cost_warned = False
        self._last_write_at: float | None = None  # unix time of the last committed batch
        self._reported_spilled = 0
        self._reported_at = float("-inf")

        self._cond = threading.Condition()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        """Start the writer thread; it first replays spill files left by dead processes."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="claude-proxy-log-writer")
        self._thread.daemon = True  # close_sync() is the clean way out; never hang an exit
        self._thread.start()
        # A safety net if the owner never calls close_sync(): flush briefly at exit.
        atexit.register(self._close_at_exit)

    def submit(self, record: RequestRecord) -> None:
        """Hand a finished record over; never blocks, never touches the database.

        A deque append, not queue.Queue: a Queue wakes the writer thread for every
        record, each wake-up a GIL hand-over. Here it wakes once per batch, or every
        flush interval.
        """
        with self._gate:
            pending = self._pending
            if not self._closed and len(pending) < self._queue_limit:
                pending.append(record)
                if len(pending) >= self._batch_size and not self._wake.is_set():
                    self._wake.set()  # once: each set() takes a lock and notifies
                return
        # Overload (or after close): append to the spill file from here. A buffered
        # write(2) of one line costs microseconds; waiting for the queue, or dropping
        # the record, are both worse. This path only runs while the writer is behind.
        rows = self._to_rows([record])
        if rows:
            self._spill_rows(rows, queue_full=True)
        self._durable(1, after_close=True)

    def spill_records(self, records: list[RequestRecord], *, queue_full: bool = False) -> None:
        """Spill records straight to the file: the proxy's fallback when its writer
        process cannot take them (queue_full: counted so, and fsync left to close_sync())."""
        rows = self._to_rows(records)
        if rows:
            self._spill_rows(rows, queue_full=queue_full)

    def close_sync(self, timeout: float = 10.0) -> None:
        """Flush what is queued within `timeout` seconds; whatever is left is spilled."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._gate:
            self._closed = True
        # Whatever the thread did not get to: it ran out of time, or is stuck in a
        # database call (then its batch is spilled too; a later commit of it would
        # only make the replay find duplicates).
        records = self._drain_queue()
        leftovers = self._to_rows(records)
        inflight = self._inflight
        if inflight:
            leftovers.extend(inflight)
        if leftovers:
            self._spill_rows(leftovers)
        # The in-flight batch is counted here; its own late ack is then suppressed.
        self._durable(len(records) + (len(inflight) if inflight else 0), after_close=True)
        self._report_spills(force=True)
        atexit.unregister(self._close_at_exit)
        kept = self._spill.close()
        if kept is not None:
            log.info("spill: %s kept for replay at next start", kept)
        log.info("log writer closed", extra={_LOG_FIELDS: self.stats()})

    def _close_at_exit(self) -> None:
        if not self._closed:
            self.close_sync(timeout=5.0)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and logs (see _COUNTERS), plus queue depth and health."""
        with self._cond:
            out: dict[str, Any] = dict(self._counts)
        out["queue_depth"] = len(self._pending)
        limit = self._queue_limit
        out["queue_capacity"] = None if limit == sys.maxsize else limit
        inflight = self._inflight
        out["inflight"] = len(inflight) if inflight else 0
        out["healthy"] = self._healthy
        out["last_write_at"] = self._last_write_at
        out["spill_file"] = str(self._spill.path) if self._spill.path else None
        return out

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until `predicate(stats())` holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self.stats()):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Queue depth changes without a notification: re-check now and then.
                self._cond.wait(min(remaining, 0.05))

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            try:
                batch = self._collect()
                if batch:
                    self._write_live(self._to_rows(batch))
                    self._durable(len(batch))
                if self._stopping.is_set():
                    if not self._pending:
                        break
                else:
                    self._maybe_replay()
                self._report_spills()
            except Exception:  # a bug here must not silently end all logging
                log.exception("log writer loop error")
                self._spill.sync()
        self._spill.sync()

    def _collect(self) -> list[RequestRecord]:
        """Up to batch_size records; waits up to flush_interval for a full batch first."""
        pending = self._pending
        if len(pending) < self._batch_size and not self._stopping.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()  # a set() racing this is harmless: pending is read next
        batch: list[RequestRecord] = []
        with contextlib.suppress(IndexError):  # close_sync() may drain it concurrently
            while pending and len(batch) < self._batch_size:
                batch.append(pending.popleft())
        return batch

    def _write_live(self, rows: list[Row]) -> None:
        now = time.monotonic()
        if now > self._deadline or (not self._healthy and now < self._retry_at):
            self._spill_rows(rows)  # out of time, or backing off: don't wait on the database
            return
        self._inflight = rows
        try:
            inserted = self._insert_batch(rows)
        except Exception as exc:
            self._on_failure(exc)
            self._spill_rows(rows)
            return
        finally:
            self._inflight = None
        self._on_success()
        self._last_write_at = time.time()
        self._bump(batches=1, written=inserted, duplicates=len(rows) - inserted)

    def _maybe_replay(self) -> None:
        now = time.monotonic()
        if not self._healthy and now < self._retry_at:
            return
        if not (self._replay_due or self._spill.rows or now >= self._next_rescan):
            return
        if not self._healthy:
            # Probe first: replaying our own file detaches it, and a failure then
            # would leave one more file behind per retry during a long outage.
            # Health itself is only restored by a committed write.
            try:
                self.db.ping()
            except Exception as exc:
                self._on_failure(exc)
                return
        self._replay_due = False
        self._next_rescan = now + self._rescan_interval
        own = self._spill.detach() if self._spill.rows else None
        if own is not None and not self._replay_file(own):
            return
        for path in spill_files(self.spill_dir):
            if self._stopping.is_set():
                return
            claimed = claim(path)
            if claimed is not None and not self._replay_file(claimed):
                return
        self._bump(replay_scans=1)

    def _replay_file(self, f: ClaimedFile) -> bool:
        """Insert every row of a claimed file, then delete it; False (file kept) on failure."""
        rows = new = 0
        try:
            for batch in f.batches(self._batch_size):
                inserted = self._insert_batch(batch)
                rows += len(batch)
                new += inserted
                self._bump(replayed=len(batch), replay_duplicates=len(batch) - inserted)
                self._write_pending_live()
                if self._stopping.is_set():
                    raise _Interrupted
        except _Interrupted:
            f.release()
            self._replay_due = True
            return False
        except Exception as exc:
            f.release()
            self._on_failure(exc)
            self._replay_due = True
            return False
        f.finish()
        self._on_success()
        log.info(
            "replay: %d records from %s (%d new, %d already present, %d torn and %d corrupt "
            "lines skipped)",
            rows,
            f.path.name,
            new,
            rows - new,
            f.torn_lines,
            f.corrupt_lines,
        )
        # Last, so whoever waits on these counters sees the rest already done.
        self._bump(replayed_files=1, torn_lines=f.torn_lines, corrupt_lines=f.corrupt_lines)
        return True

    def _write_pending_live(self) -> None:
        """During a long replay, keep live records flowing once a full batch is waiting."""
        if len(self._pending) >= self._batch_size:
            batch = self._collect()
            if batch:
                self._write_live(self._to_rows(batch))
                self._durable(len(batch))

    # --------------------------------------------------------- database side

    def _insert_batch(self, rows: list[Row]) -> int:
        """Insert idempotently; returns how many rows were new. Raises on database failure.

        A batch the database refuses for a row's content (a constraint, a value out of
        range, an index entry too big) would fail forever and stall everything behind
        it, so it is split in halves until each refused row is alone (a few statements
        for one bad row in 500, not 500), and that row goes to `_insert_refused`.
        """
        try:
            return self._inserter.insert(rows)
        except Exception as exc:
            if not self.db.is_data_error(exc):
                raise
            if len(rows) == 1:
                return self._insert_refused(rows[0], exc)
        half = len(rows) // 2
        return self._insert_batch(rows[:half]) + self._insert_batch(rows[half:])

    def _insert_refused(self, row: Row, refused: BaseException) -> int:
        """A row the database refused alone: write its reduced form (accounting kept, client
        texts dropped), or, if that is refused too, quarantine the row. Raises only when
        the database itself fails."""
        try:
            new = self._inserter.insert([reduced_row(row)])
        except Exception as exc:
            if not self.db.is_data_error(exc):
                raise
            self._quarantine(row, f"{why(refused)}; reduced form: {why(exc)}")
            return 0
        log.warning(
            "database refused record %s (%s); stored it reduced, without its client texts",
            _shown_id(row),
            why(refused),
        )
        self._bump(reduced=1)
        return new

    def _quarantine(self, row: Row, reason: str) -> None:
        extra = {"_reason": reason, "_quarantined_at": datetime.now(UTC).isoformat()}
        try:
            path = append_quarantine(self.spill_dir, dump_row(row, extra))
        except OSError as err:
            self._last_resort([row], err)
            return
        log.error(
            "database refused record %s even reduced (%s); quarantined in %s "
            "(claude-proxy logs quarantine lists it)",
            _shown_id(row),
            reason,
            path,
        )
        self._bump(quarantined=1)

    def _on_failure(self, exc: BaseException) -> None:
        self._bump(failed_batches=1)
        first = self._healthy
        self._healthy = False
        self._backoff = (
            self._backoff_initial if first else min(self._backoff * 2, self._backoff_max)
        )
        self._retry_at = time.monotonic() + self._backoff
        log.warning(
            "spill: database write failed (%s); records go to the spill file, retry in %.1fs",
            why(exc),
            self._backoff,
        )

    def _on_success(self) -> None:
        if not self._healthy:
            log.info("replay: database is back; replaying spilled records")
            self._healthy = True
            self._replay_due = True
        self._backoff = 0.0

    # ------------------------------------------------------------ spill side

    def _spill_rows(self, rows: list[Row], *, queue_full: bool = False) -> None:
        lines = b"".join(dump_row(r) for r in rows)
        try:
            self._spill.append(lines, len(rows))
            if not queue_full:  # the writer thread fsyncs; submit() leaves it to it
                try:
                    self._spill.sync()
                except SpillLost:
                    # The file was lost before these reached the disk (an NFS lock gone
                    # with its lease, say): once more, into a new file.
                    self._spill.append(lines, len(rows))
                    self._spill.sync()
        except OSError as exc:
            self._last_resort(rows, exc)
            return
        if queue_full:
            self._bump(spilled=len(rows), spilled_queue_full=len(rows))
        else:
            self._bump(spilled=len(rows))

    def _report_spills(self, *, force: bool = False) -> None:
        spilled = self._counts["spilled"]
        if spilled == self._reported_spilled:
            return
        now = time.monotonic()
        # The first spill of an episode is logged at once, then a summary every 10 s.
        quiet = self._reported_spilled != 0 and now - self._reported_at < _REPORT_INTERVAL
        if quiet and not force:
            return
        self._spill.sync()  # covers rows submit() appended on a full queue
        log.info(
            "spill: %d records spilled to %s (total %d, %d because the queue was full)",
            spilled - self._reported_spilled,
            self._spill.path or self.spill_dir,
            spilled,
            self._counts["spilled_queue_full"],
        )
        self._reported_spilled = spilled
        self._reported_at = now

    def _last_resort(self, rows: list[Row], exc: BaseException) -> None:
        # The disk refused too: the log stream is the only place left for these rows.
        self._bump(spill_errors=len(rows))
        for row in rows:
            log.error("spill failed (%s); record=%s", exc, dump_row(row).decode().rstrip())

    # ----------------------------------------------------------------- misc

    def _to_row(self, record: RequestRecord) -> Row:
        cost: Decimal | None = None
        if self._cost_fn is not None:
            try:
                cost = self._cost_fn(record)
            except Exception:
                if not self._cost_warned:
                    self._cost_warned = True
                    log.exception("cost computation failed; cost_usd left NULL")
        if self._on_record is not None:
            try:
                self._on_record(record, cost)
            except Exception:
                log.exception("on_record hook failed")
        return record_to_row(record, cost)

    def _to_rows(self, records: list[RequestRecord]) -> list[Row]:
        rows: list[Row] = []
        for record in records:
            try:
                rows.append(self._to_row(record))
            except Exception:  # a malformed record must not take its batch down with it
                self._bump(spill_errors=1)
                shown = bounded(repr(record), _MAX_LOGGED_RECORD_CHARS)
                log.exception("cannot convert record; record=%s", shown)
        return rows

    def _drain_queue(self) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        with contextlib.suppress(IndexError):
            while self._pending:
                out.append(self._pending.popleft())
        return out

    def _durable(self, n: int, *, after_close: bool = False) -> None:
        if self._on_durable is None or n == 0:
            return
        with self._gate:
            if self._closed and not after_close:
                return  # close_sync() counted this batch already (as in flight, spilled)
        try:
            self._on_durable(n)
        except Exception:
            log.exception("on_durable hook failed")

    def _bump(self, **deltas: int) -> None:
        with self._cond:
            for k, v in deltas.items():
                self._counts[k] += v
            self._cond.notify_all()


def _shown_id(row: Row) -> str:
    """A row's id for a log line: ids are the proxy's, but one from a damaged spill file
    could be anything."""
    return bounded(str(row.get("id")), MAX_SHORT_TEXT_CHARS)


class _Interrupted(Exception):
    """Shutdown began during a replay: the queue comes first, the file waits."""
