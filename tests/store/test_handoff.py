"""ProcessSink and the writer process: records cross a process boundary and none is lost,
whether the writer process is killed, stalls, or the proxy shuts down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from claude_proxy.child import WRITER_PROCESS, build_writer
from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store.engine import database_target
from claude_proxy.store.handoff import ProcessSink
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_process import WriterConfig
from tests.helpers import WAIT, spill_lines, wait_until_async
from tests.store.conftest import Backend, make_record


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
    sink = ProcessSink(
        config=cfg,
        fallback=build_writer(cfg, PriceTable.load(None), None),
        capacity=capacity,
        process=WRITER_PROCESS,
    )
    await sink.start()
    return sink


def writer_pid(sink: ProcessSink) -> int:
    pid = sink.stats()["writer_pid"]
    assert isinstance(pid, int)
    return pid


async def test_records_reach_the_database_and_are_confirmed(db: Backend, spill_dir: Path) -> None:
    sink = await started(db, spill_dir)
    recs = [make_record(i) for i in range(300)]
    for r in recs:
        sink.submit(r)
    await wait_until_async(lambda: db.count() == 300, what="300 rows")
    await wait_until_async(lambda: sink.stats()["unacknowledged"] == 0, what="all confirmed")
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
    await wait_until_async(lambda: sink.stats()["writer_pid"] != first, what="a new writer process")
    await wait_until_async(lambda: db.count() >= 400, what="400 rows")
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


def test_the_writer_process_loads_neither_sqlalchemy_nor_prometheus() -> None:
    """The writer process stays small (docs/architecture.md): a plain DB-API connection,
    metrics counted as numbers; what its entry point imports must not pull the rest in."""
    code = (
        "import sys, claude_proxy.child\n"
        "heavy = ('sqlalchemy', 'prometheus_client', 'pydantic', 'alembic', 'fastapi')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
