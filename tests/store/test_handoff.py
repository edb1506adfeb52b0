"""ProcessSink and the writer process: records cross a process boundary and none is lost,
whether the writer process is killed, stalls, or the proxy shuts down."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store.engine import database_target
from claude_proxy.store.handoff import ProcessSink
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_process import WriterConfig, build_writer
from tests.store.conftest import WAIT, Backend, make_record, spill_lines


def config(db: Backend, spill_dir: Path) -> WriterConfig:
    return WriterConfig(
        database=database_target(db.url, connect_timeout=2),
        spill_dir=str(spill_dir),
        prices_file=None,
        statement_timeout=5.0,
        batch_size=50,
        flush_interval=0.05,
        flush_timeout=5.0,
    )


async def started(db: Backend, spill_dir: Path, capacity: int = 10_000) -> ProcessSink:
    cfg = config(db, spill_dir)
    sink = ProcessSink(cfg, build_writer(cfg, PriceTable.load(None), None), capacity=capacity)
    await sink.start()
    return sink


async def until(what: str, predicate: Callable[[], bool]) -> None:
    """Re-check a condition (the database and another process cannot notify us)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def writer_pid(sink: ProcessSink) -> int:
    pid = sink.stats()["writer_pid"]
    assert isinstance(pid, int)
    return pid


async def test_records_reach_the_database_and_are_confirmed(db: Backend, spill_dir: Path) -> None:
    sink = await started(db, spill_dir)
    recs = [make_record(i) for i in range(300)]
    for r in recs:
        sink.submit(r)
    await until("300 rows", lambda: db.count() == 300)
    await until("all confirmed", lambda: sink.stats()["unacknowledged"] == 0)
    await sink.close(5)
    assert sorted(db.ids()) == sorted(r.id for r in recs)
    assert spill_lines(spill_dir) == 0


async def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(
    db: Backend, spill_dir: Path
) -> None:
    sink = await started(db, spill_dir)
    first = writer_pid(sink)
    recs = [make_record(i) for i in range(400)]
    for r in recs[:200]:
        sink.submit(r)
    os.kill(first, signal.SIGKILL)  # with most of those still in flight
    for r in recs[200:]:
        sink.submit(r)
    await until("a new writer process", lambda: sink.stats()["writer_pid"] != first)
    await until("400 rows", lambda: db.count() >= 400)
    await sink.close(5)
    ids = db.ids()
    assert len(ids) == 400 and set(ids) == {r.id for r in recs}
    assert sink.stats()["writer_restarts"] == 1


async def test_a_stalled_writer_process_overflows_to_the_spill_file(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    sink = await started(db, spill_dir, capacity=100)
    pid = writer_pid(sink)
    os.kill(pid, signal.SIGSTOP)  # alive, but it reads and confirms nothing
    try:
        recs = [make_record(i) for i in range(300)]
        for r in recs:
            sink.submit(r)
        stats = sink.stats()
        assert stats["pending"] + stats["unacknowledged"] <= 100
        assert spill_lines(spill_dir) == 200  # the oldest waiting records, at once
    finally:
        os.kill(pid, signal.SIGCONT)
    await sink.close(5)
    # Everything is in the table or the spill file; the next start replays the file.
    w = LogWriter(db.writer_db(), spill_dir, flush_interval=0.05)
    writers.append(w)
    w.start()
    assert w.wait_for(lambda s: s["replayed_files"] >= 1, WAIT), w.stats()
    w.close_sync(2)
    ids = db.ids()
    assert len(ids) == 300 and set(ids) == {r.id for r in recs}
