"""LogWriter: batches, never blocks, and loses nothing through outages, overloads and crashes."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from claude_proxy.store.records import RequestRecord
from claude_proxy.store.rows import dump_row, record_to_row
from claude_proxy.store.writer import LogWriter
from tests.helpers import WAIT, spill_files, spill_lines, wait_until
from tests.store.conftest import Backend, make_record

FAST = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.2}


def new_writer(
    made: list[LogWriter],
    db: Backend,
    spill_dir: Path,
    db_kw: dict[str, Any] | None = None,
    **kwargs: Any,
) -> LogWriter:
    w = LogWriter(db.writer_db(**(db_kw or {})), spill_dir, **{**FAST, **kwargs})
    made.append(w)
    return w


def wait_stats(w: LogWriter, what: str, pred: Any) -> dict[str, Any]:
    assert w.wait_for(pred, WAIT), f"timed out waiting for {what}: {w.stats()}"
    return w.stats()


def records(n: int, start: int = 0) -> list[RequestRecord]:
    return [make_record(i) for i in range(start, start + n)]


def write_spill_file(
    d: Path, recs: list[RequestRecord], name: str = "spill-9-dead-1.jsonl"
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_bytes(b"".join(dump_row(record_to_row(r, None)) for r in recs))
    return path


# ------------------------------------------------------------------- writes


def test_writes_records_in_batches_with_cost(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(1200)
    w = new_writer(writers, db, spill_dir, batch_size=500, cost_fn=lambda r: Decimal("0.0015"))
    for r in recs:  # all queued before the thread starts: batches are 500, 500, 200
        w.submit(r)
    w.start()
    stats = wait_stats(w, "1200 written", lambda s: s["written"] == 1200)
    assert stats["batches"] == 3
    assert stats["spilled"] == 0 and stats["failed_batches"] == 0
    assert sorted(db.ids()) == sorted(r.id for r in recs)
    w.close_sync(5)
    assert spill_files(spill_dir) == []
    with db.engine().connect() as conn:
        from sqlalchemy import func, select

        from claude_proxy.store.schema import request_logs

        total = conn.execute(select(func.sum(request_logs.c.cost_usd))).scalar_one()
    assert Decimal(total) == Decimal("1.8")


def test_a_record_written_twice_is_one_row(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    rec = make_record(1)
    w = new_writer(writers, db, spill_dir)
    w.start()
    w.submit(rec)
    wait_stats(w, "written", lambda s: s["written"] == 1)
    w.submit(rec)
    wait_stats(w, "duplicate", lambda s: s["duplicates"] == 1)
    assert db.count() == 1


# ------------------------------------------------------------ never blocks


def test_full_queue_spills_from_submit_without_waiting(
    db: Backend, spill_dir: Path, writers: list[LogWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claude_proxy.store")
    recs = records(300)
    w = new_writer(writers, db, spill_dir, queue_size=20)
    with db.stuck():  # the database would make any caller wait: submit must not
        slowest = 0.0
        for r in recs:
            t0 = time.perf_counter()
            w.submit(r)
            slowest = max(slowest, time.perf_counter() - t0)
        assert slowest < 0.05, f"submit took {slowest * 1000:.1f} ms"
        stats = w.stats()
        assert stats["queue_depth"] == 20
        assert stats["spilled_queue_full"] == stats["spilled"] == 280
        assert spill_lines(spill_dir) == 280
        # This process holds the lock on its own spill file.
        (own,) = spill_files(spill_dir)
        fd = os.open(own, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    w.start()
    wait_stats(
        w,
        "queue written and spill replayed",
        lambda s: s["written"] + s["replayed"] == 300 and s["replayed_files"] >= 1,
    )
    assert sorted(db.ids()) == sorted(r.id for r in recs)
    wait_until(lambda: spill_files(spill_dir) == [], what="spill file deleted after replay")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "spill" in messages and "replay" in messages


def test_unbounded_queue_keeps_every_record_and_reports_no_capacity(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """The writer process's queue (bounded by the proxy instead) never spills for size, and
    its stats say "no limit" rather than a huge number in every shutdown line and scrape."""
    recs = records(300)
    w = new_writer(writers, db, spill_dir, queue_size=None)
    with db.stuck():
        for r in recs:
            w.submit(r)
        stats = w.stats()
        assert stats["queue_depth"] == 300 and stats["spilled"] == 0
        assert stats["queue_capacity"] is None
    w.start()
    wait_stats(w, "queue written", lambda s: s["written"] == 300)
    assert sorted(db.ids()) == sorted(r.id for r in recs)


async def test_submit_on_the_event_loop_while_the_database_hangs(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(500)
    w = new_writer(
        writers,
        db,
        spill_dir,
        queue_size=50,
        batch_size=20,
        statement_timeout=1.0,
        db_kw={"sqlite_busy_timeout_ms": 1000},
    )
    w.start()
    with db.stuck():
        loop = asyncio.get_running_loop()
        slowest = 0.0
        for r in recs:
            t0 = loop.time()
            w.submit(r)
            slowest = max(slowest, loop.time() - t0)
            await asyncio.sleep(0)  # let the loop run between requests, as a server would
        assert slowest < 0.05
        await asyncio.to_thread(w.close_sync, 0.2)  # the database still hangs: the rest spills
    assert w.stats()["spilled"] > 0
    # A restart replays whatever the first writer could not write; exactly once each.
    w2 = new_writer(writers, db, spill_dir)
    w2.start()
    wait_until(lambda: db.count() == 500, what="500 rows after replay")
    wait_until(lambda: w._thread is not None and not w._thread.is_alive(), what="old thread done")
    wait_until(lambda: db.count() == 500 and spill_files(spill_dir) == [], what="no leftovers")
    w2.close_sync(5)
    assert sorted(db.ids()) == sorted(r.id for r in recs)


# -------------------------------------------------------------- outages


def test_database_outage_spills_then_replays_exactly_once(
    db: Backend, spill_dir: Path, writers: list[LogWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claude_proxy.store")
    recs = records(2000)
    w = new_writer(writers, db, spill_dir, batch_size=100)
    w.start()
    for r in recs[:700]:
        w.submit(r)
    wait_stats(w, "700 written", lambda s: s["written"] == 700)
    with db.outage():
        for r in recs[700:1300]:
            w.submit(r)
        stats = wait_stats(w, "600 spilled", lambda s: s["spilled"] == 600)
        assert stats["failed_batches"] >= 1 and not stats["healthy"]
        assert spill_lines(spill_dir) == 600
    for r in recs[1300:]:
        w.submit(r)
    wait_stats(
        w,
        "all 2000 in, spill replayed",
        lambda s: (
            s["written"] + s["replayed"] - s["replay_duplicates"] == 2000
            and s["replayed_files"] >= 1
            and s["healthy"]
        ),
    )
    ids = db.ids()
    assert len(ids) == len(set(ids)) == 2000
    assert set(ids) == {r.id for r in recs}
    wait_until(lambda: spill_files(spill_dir) == [], what="spill files deleted")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("spill: database write failed") for m in messages)
    assert any(m.startswith("replay: ") and " records from " in m for m in messages)
    assert not any(r.id in m for m in messages for r in recs[:5])  # no per-row logs


def test_database_down_at_startup_then_back(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(120)
    left = write_spill_file(spill_dir, recs[:20])  # also left behind by a crash
    with db.outage():
        w = new_writer(writers, db, spill_dir, batch_size=25)
        w.start()
        for r in recs[20:]:
            w.submit(r)
        wait_stats(w, "100 spilled", lambda s: s["spilled"] == 100)
        assert left.exists()
    wait_until(lambda: db.count() == 120, what="120 rows once the database is back")
    assert set(db.ids()) == {r.id for r in recs}
    wait_until(lambda: spill_files(spill_dir) == [], what="spill files deleted")


# --------------------------------------------------------------- replays


def test_replay_is_idempotent(db: Backend, spill_dir: Path, writers: list[LogWriter]) -> None:
    recs = records(130)
    path = write_spill_file(spill_dir, recs)
    backup = spill_dir.parent / "backup.jsonl"
    shutil.copy(path, backup)

    w1 = new_writer(writers, db, spill_dir, batch_size=50)
    w1.start()
    s1 = wait_stats(w1, "file replayed", lambda s: s["replayed_files"] == 1)
    assert (s1["replayed"], s1["replay_duplicates"]) == (130, 0)
    assert not path.exists()
    w1.close_sync(5)

    shutil.copy(backup, path)  # the same file again, e.g. a crash just before the delete
    w2 = new_writer(writers, db, spill_dir, batch_size=50)
    w2.start()
    s2 = wait_stats(w2, "file replayed again", lambda s: s["replayed_files"] == 1)
    assert (s2["replayed"], s2["replay_duplicates"]) == (130, 130)
    assert db.count() == 130
    assert not path.exists()


def test_a_file_holding_the_same_row_twice_inserts_it_once(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    # A batch spilled by close() while its insert was still running can be spilled
    # again by the writer thread when that insert fails: same rows, same file.
    recs = records(3)
    write_spill_file(spill_dir, recs + recs[:2])
    w = new_writer(writers, db, spill_dir)
    w.start()
    stats = wait_stats(w, "file replayed", lambda s: s["replayed_files"] == 1)
    assert (stats["replayed"], stats["replay_duplicates"]) == (5, 2)
    assert sorted(db.ids()) == sorted(r.id for r in recs)


def test_torn_last_line_is_skipped_and_counted(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(10)
    path = write_spill_file(spill_dir, recs)
    torn = dump_row(record_to_row(make_record(99), None))
    with path.open("ab") as f:
        f.write(torn[: len(torn) // 2])  # the process died in the middle of this write
    w = new_writer(writers, db, spill_dir)
    w.start()
    stats = wait_stats(w, "file replayed", lambda s: s["replayed_files"] == 1)
    assert (stats["replayed"], stats["torn_lines"], stats["corrupt_lines"]) == (10, 1, 0)
    assert set(db.ids()) == {r.id for r in recs}
    assert not path.exists()


CRASHER = textwrap.dedent(
    """
    import sys
    from claude_proxy.store.rows import dump_row, record_to_row
    from claude_proxy.store.spill import SpillFile
    from tests.store.conftest import make_record

    spill = SpillFile(sys.argv[1])
    recs = [make_record(i) for i in range(int(sys.argv[2]))]
    spill.append(b"".join(dump_row(record_to_row(r, None)) for r in recs), len(recs))
    spill.sync()
    line = dump_row(record_to_row(make_record(10_000), None))
    spill.append(line[:10], 0)  # torn: killed in the middle of a write
    print("\\n".join(r.id for r in recs), flush=True)
    print("ready", flush=True)
    sys.stdin.read()  # stay alive, holding the lock, until killed
    """
)


def test_spill_file_of_a_killed_process_is_replayed_but_never_a_live_ones(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(spill_dir), "40"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    ) as proc:
        try:
            assert proc.stdout is not None
            ids = []
            for line in proc.stdout:
                if line.strip() == "ready":
                    break
                ids.append(line.strip())
            assert len(ids) == 40, "the crasher did not start"
            w = new_writer(writers, db, spill_dir, rescan_interval=0.05)
            w.start()
            # Scans run, but the file is locked by a live process: it must stay untouched.
            wait_stats(w, "two scans", lambda s: s["replay_scans"] >= 2)
            assert db.count() == 0 and len(spill_files(spill_dir)) == 1
            proc.kill()  # kill -9: no cleanup, no unlock call; the kernel drops the lock
            proc.wait(10)
            stats = wait_stats(w, "crash file replayed", lambda s: s["replayed_files"] == 1)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert stats["torn_lines"] == 1 and stats["replayed"] == 40
    assert set(db.ids()) == set(ids)
    assert spill_files(spill_dir) == []


# --------------------------------------------------------------- shutdown


def test_shutdown_flushes_the_queue_within_the_window(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(700)
    w = new_writer(writers, db, spill_dir, flush_interval=30.0, batch_size=500)
    w.start()
    for r in recs:
        w.submit(r)
    t0 = time.monotonic()
    w.close_sync(timeout=10)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"close took {elapsed:.1f}s (it must not wait for flush_interval)"
    stats = w.stats()
    assert stats["written"] == 700 and stats["spilled"] == 0
    assert db.count() == 700
    assert spill_files(spill_dir) == []
    # After close, a late record still is not lost: it goes to the spill file.
    late = make_record(10_000)
    w.submit(late)
    assert spill_lines(spill_dir) == 1


def test_shutdown_while_the_database_hangs_spills_the_rest_in_time(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    recs = records(60)
    w = new_writer(
        writers,
        db,
        spill_dir,
        batch_size=20,
        statement_timeout=2.0,
        db_kw={"sqlite_busy_timeout_ms": 2000},
    )
    w.start()
    with db.stuck():
        for r in recs:
            w.submit(r)
        wait_stats(w, "a batch in flight", lambda s: s["inflight"] > 0)
        t0 = time.monotonic()
        w.close_sync(timeout=0.3)
        assert time.monotonic() - t0 < 1.5
        # Everything is on disk now, including the batch still waiting on the database.
        assert spill_lines(spill_dir) >= 60
    wait_until(lambda: w.stats()["inflight"] == 0, what="the stuck batch returned")
    # The next start replays: duplicates (the stuck batch may have committed) are harmless.
    w2 = new_writer(writers, db, spill_dir)
    w2.start()
    wait_until(lambda: db.count() == 60 and spill_files(spill_dir) == [], what="60 rows, no spill")
    assert set(db.ids()) == {r.id for r in recs}
