"""A spill directory shared by every task (an EFS access point in production).

Writers in separate processes share one spill directory, as tasks do that mount the same
volume: any writer replays any other's abandoned files, each file by exactly one writer at
a time, never a file whose writer is still alive, and a replay cut short by a crash is
replayed again without counting spend twice. The processes are real (the locks are the
kernel's), and so are the databases (SQLite, PostgreSQL, PostgreSQL behind pgbouncer).
"""

from __future__ import annotations

import fcntl
import os
import queue
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from claude_proxy.store.engine import database_target
from claude_proxy.store.records import RequestRecord, encode_record
from claude_proxy.store.rows import dump_row, record_to_row
from claude_proxy.store.spill import ClaimedFile, SpillFile, append_quarantine, claim
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_db import DatabaseTarget, WriterDatabase
from tests.helpers import WAIT, spill_files, wait_until
from tests.pg import free_port
from tests.store.conftest import Backend, make_record
from tests.store.test_spend import PRICE, spend_of
from tests.store.test_writer import FAST, wait_stats

REPO = Path(__file__).parents[2]
on_sqlite = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

# A LogWriter in a process of its own, driven over stdin, answering in JSON lines: what
# runs in each task's writer process, with records costed at PRICE.
DRIVER = textwrap.dedent(
    """
    import sys, threading
    from decimal import Decimal
    import orjson
    from claude_proxy.store.records import decode_record
    from claude_proxy.store.writer import LogWriter
    from claude_proxy.store.writer_db import DatabaseTarget, WriterDatabase

    def say(event):
        sys.stdout.buffer.write(orjson.dumps(event) + b"\\n")
        sys.stdout.flush()

    cfg = orjson.loads(sys.argv[1])
    price = Decimal(cfg["price"])
    w = LogWriter(
        WriterDatabase(DatabaseTarget(**cfg["target"])),
        cfg["spill_dir"],
        cost_fn=lambda r: price,
        batch_size=cfg["batch_size"],
        rescan_interval=cfg["rescan_interval"],
        flush_interval=0.05,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    if cfg["hang_after_batches"]:
        insert, committed = w._inserter.insert, []

        def insert_then_hang(rows):
            n = insert(rows)  # committed, key_spend included
            committed.append(n)
            if len(committed) == cfg["hang_after_batches"]:
                say({"hung": len(committed)})
                threading.Event().wait()  # in the middle of a replay, until kill -9
            return n

        w._inserter.insert = insert_then_hang

    say({"ready": True})
    for line in sys.stdin.buffer:
        cmd, _, arg = line.rstrip(b"\\n").partition(b" ")
        if cmd == b"record":
            w.submit(decode_record(arg))
        elif cmd == b"start":
            w.start()
        elif cmd == b"wait":
            key, least = arg.decode().split()
            ok = w.wait_for(lambda s: s[key] >= int(least), 15)
            say({"stats": w.stats(), "ok": ok})
        elif cmd == b"close":
            w.close_sync(float(arg))
            say({"stats": w.stats(), "closed": True})
            break
    """
)


class WriterProcess:
    """One task's writer process: a LogWriter on `target`, spilling to `spill_dir`."""

    def __init__(
        self,
        spill_dir: Path,
        target: DatabaseTarget,
        *,
        batch_size: int = 10,
        rescan_interval: float = 60.0,
        hang_after_batches: int = 0,
    ) -> None:
        cfg = {
            "target": asdict(target),
            "spill_dir": str(spill_dir),
            "price": str(PRICE),
            "batch_size": batch_size,
            "rescan_interval": rescan_interval,
            "hang_after_batches": hang_after_batches,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, orjson.dumps(cfg).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        self.pid = self.proc.pid
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect("ready")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._events.put(orjson.loads(line))
        self._events.put(None)

    def expect(self, key: str) -> dict[str, Any]:
        """The next event the process sends; it must carry `key`."""
        try:
            event = self._events.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"writer process {self.pid} sent nothing for {WAIT}s") from None
        assert event is not None, f"writer process {self.pid} ended: exit {self.proc.wait()}"
        assert key in event, event
        return event

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        self.proc.stdin.flush()

    def submit(self, recs: list[RequestRecord]) -> None:
        self.send(b"".join(b"record " + encode_record(r) for r in recs))

    def start(self) -> None:
        self.send(b"start")

    def wait(self, counter: str, least: int) -> dict[str, Any]:
        """The writer's stats once `counter` has reached `least`."""
        self.send(f"wait {counter} {least}".encode())
        event = self.expect("stats")
        assert event["ok"], f"timed out waiting for {counter} >= {least}: {event['stats']}"
        stats: dict[str, Any] = event["stats"]
        return stats

    def close(self, timeout: float = 2.0) -> dict[str, Any]:
        self.send(f"close {timeout}".encode())
        stats: dict[str, Any] = self.expect("closed")["stats"]
        assert self.proc.wait(WAIT) == 0
        return stats

    def kill(self) -> None:
        """kill -9: no cleanup, no unlock; the kernel closes its files, locks and all."""
        self.proc.kill()
        self.proc.wait(WAIT)


@pytest.fixture
def processes() -> Iterator[list[WriterProcess]]:
    made: list[WriterProcess] = []
    yield made
    for p in made:
        if p.proc.poll() is None:
            p.kill()


def real_target(db: Backend) -> DatabaseTarget:
    # A generous busy timeout: writers in several processes share one SQLite file.
    return database_target(db.url, connect_timeout=2, sqlite_busy_timeout_ms=5000)


def dead_target(db: Backend, tmp_path: Path) -> DatabaseTarget:
    """A database this writer cannot reach (the others can): it spills and stays alive."""
    if not db.is_pg:
        return DatabaseTarget("sqlite", str(tmp_path))  # a directory: "unable to open"
    return DatabaseTarget("postgresql", f"postgresql://postgres@127.0.0.1:{free_port()}/none")


def keyed_records(n: int, key: str, start: int = 0) -> list[RequestRecord]:
    return [make_record(i, key_id=key) for i in range(start, start + n)]


def abandoned_file(d: Path, recs: list[RequestRecord], name: str) -> Path:
    """A spill file left by a writer that is gone (its rows costed as the writer did)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_bytes(b"".join(dump_row(record_to_row(r, PRICE)) for r in recs))
    return path


def new_key() -> str:
    return f"key_{uuid.uuid4().hex[:10]}"


def lines_of(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def in_process_writer(
    writers: list[LogWriter],
    db: Backend,
    spill_dir: Path,
    db_kw: dict[str, Any] | None = None,
    **kwargs: Any,
) -> LogWriter:
    """Another task's writer, in this process (its own descriptors, so its own locks)."""
    wdb = db.writer_db(**(db_kw or {}))
    w = LogWriter(wdb, spill_dir, cost_fn=lambda r: PRICE, **{**FAST, **kwargs})
    writers.append(w)
    return w


def assert_logged_once(db: Backend, key: str, recs: list[RequestRecord]) -> None:
    """Every record is one row, and its key's spend counts each exactly once."""
    ids = db.ids()
    assert len(ids) == len(set(ids)) == len(recs)
    assert set(ids) == {r.id for r in recs}
    assert spend_of(db, key)["total"] == (PRICE * len(recs), len(recs))


# ------------------------------------------------------------- across tasks


@pytest.mark.parametrize("stop", ["close", "kill -9"])
def test_a_file_left_by_a_stopped_writer_is_replayed_by_another(
    db: Backend,
    spill_dir: Path,
    processes: list[WriterProcess],
    writers: list[LogWriter],
    stop: str,
) -> None:
    """Task A spills through an outage and stops (cleanly, or killed) before the database
    is back; task B, alive all along, replays A's file once the database answers."""
    key = new_key()
    recs = keyed_records(60, key)
    with db.outage():
        a = WriterProcess(spill_dir, database_target(db.url, sqlite_busy_timeout_ms=200))
        processes.append(a)
        a.start()
        a.submit(recs)
        assert a.wait("spilled", 60)["spilled"] == 60
        (a_file,) = spill_files(spill_dir)
        assert f"-{a.pid}-" in a_file.name  # host, pid and a random part: unique per task
        b = in_process_writer(
            writers, db, spill_dir, rescan_interval=0.02, db_kw={"sqlite_busy_timeout_ms": 200}
        )
        b.start()
        wait_stats(b, "B's first scans", lambda s: s["replay_scans"] >= 2)
        assert a_file.exists(), "B took the file of a live writer"
        if stop == "close":
            stats = a.close(0.5)
            assert stats["spilled"] == 60 and stats["written"] == 0
        else:
            a.kill()
        assert lines_of(a_file) == 60
    stats = wait_stats(b, "A's file replayed", lambda s: s["replayed_files"] == 1)
    assert (stats["replayed"], stats["replay_duplicates"], stats["torn_lines"]) == (60, 0, 0)
    assert_logged_once(db, key, recs)
    wait_until(lambda: spill_files(spill_dir) == [], what="A's file deleted")


def test_writers_racing_for_the_same_files_replay_each_exactly_once(
    db: Backend, spill_dir: Path, processes: list[WriterProcess]
) -> None:
    """Twelve abandoned files, two writers starting at the same moment: every file is
    replayed by exactly one of them (a second replay would show as duplicates)."""
    key = new_key()
    recs = keyed_records(360, key)
    for n in range(12):
        abandoned_file(spill_dir, recs[n * 30 : (n + 1) * 30], f"spill-gone-{n}-x-{n:02d}.jsonl")
    racers = [WriterProcess(spill_dir, real_target(db), batch_size=10) for _ in range(2)]
    processes.extend(racers)
    for p in racers:  # both are up before either starts: they scan together
        p.start()
    # A completed scan went over every file: each one was replayed, or held by the other.
    finals = [p.wait("replay_scans", 1) for p in racers]
    assert sum(s["replayed_files"] for s in finals) == 12
    assert sum(s["replayed"] for s in finals) == 360
    assert [s["replay_duplicates"] for s in finals] == [0, 0]
    assert spill_files(spill_dir) == []
    assert_logged_once(db, key, recs)


def test_a_live_writers_file_is_never_taken(
    db: Backend,
    spill_dir: Path,
    tmp_path: Path,
    processes: list[WriterProcess],
    writers: list[LogWriter],
) -> None:
    """Writer A cannot reach the database and keeps appending to its file; writer B can,
    and scans the shared directory again and again, but leaves A's file alone until A is
    gone (kill -9, holding the lock): then it replays all of it, later appends included."""
    key = new_key()
    recs = keyed_records(40, key)
    a = WriterProcess(spill_dir, dead_target(db, tmp_path))
    processes.append(a)
    a.start()
    a.submit(recs[:20])
    a.wait("spilled", 20)
    (a_file,) = spill_files(spill_dir)
    b = in_process_writer(writers, db, spill_dir, rescan_interval=0.02)
    b.start()
    scans = wait_stats(b, "B's scans", lambda s: s["replay_scans"] >= 3)["replay_scans"]
    a.submit(recs[20:])  # A is alive, and still appending
    a.wait("spilled", 40)
    wait_stats(b, "more scans", lambda s: s["replay_scans"] >= scans + 3)
    assert spill_files(spill_dir) == [a_file] and lines_of(a_file) == 40
    assert db.count() == 0 and b.stats()["replayed_files"] == 0
    a.kill()
    stats = wait_stats(b, "A's file replayed", lambda s: s["replayed_files"] == 1)
    assert (stats["replayed"], stats["replay_duplicates"], stats["torn_lines"]) == (40, 0, 0)
    assert_logged_once(db, key, recs)
    assert spill_files(spill_dir) == []


def test_a_replay_cut_by_a_crash_is_replayed_again_and_spend_counts_once(
    db: Backend, spill_dir: Path, processes: list[WriterProcess], writers: list[LogWriter]
) -> None:
    """Writer C commits two batches of a file's five, then hangs holding the file: B skips
    it meanwhile. C is killed (kill -9): B replays the whole file; the rows C committed are
    duplicates, which add no spend (B's batches straddle C's: 25 rows, 20 of them C's)."""
    key = new_key()
    recs = keyed_records(50, key)
    path = abandoned_file(spill_dir, recs, "spill-gone-1-x-1.jsonl")
    c = WriterProcess(spill_dir, real_target(db), batch_size=10, hang_after_batches=2)
    processes.append(c)
    c.start()
    assert c.expect("hung")["hung"] == 2
    assert db.count() == 20 and spend_of(db, key)["total"] == (PRICE * 20, 20)
    b = in_process_writer(writers, db, spill_dir, batch_size=25, rescan_interval=0.02)
    b.start()
    wait_stats(b, "B's scans", lambda s: s["replay_scans"] >= 3)
    assert path.exists() and b.stats()["replayed"] == 0, "B replayed a file C holds"
    c.kill()
    stats = wait_stats(b, "the file replayed again", lambda s: s["replayed_files"] == 1)
    assert (stats["replayed"], stats["replay_duplicates"]) == (50, 20)
    assert_logged_once(db, key, recs)
    assert spill_files(spill_dir) == []


# --------------------------------------------------------- the file itself


def test_a_new_spill_file_is_locked_before_it_has_a_spill_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan that listed a new file before its writer locked it would replay it (empty)
    and delete it under the writer: it is created under a hidden name, locked, renamed."""
    d = tmp_path / "spill"
    seen: list[list[Path]] = []
    real_flock = fcntl.flock

    def watching_flock(fd: int, op: int) -> None:
        seen.append(spill_files(d))
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", watching_flock)
    f = SpillFile(d)
    path = f.append(dump_row(record_to_row(make_record(1), None)), 1)
    assert seen == [[]], "the file had its spill name before its lock"
    assert os.listdir(d) == [path.name]  # nothing left under the hidden name
    assert f"-{os.getpid()}-" in path.name
    assert claim(path) is None  # locked by its writer
    f.close()
    claimed = claim(path)
    assert claimed is not None
    claimed.release()


def test_a_file_replayed_between_anothers_listing_and_lock_is_not_replayed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer B has listed and opened a file; before B's lock, writer A claims it, replays
    it, deletes it and lets go. B's lock then succeeds, on a file that has no name any
    more: B must leave it, even with a new file under the same name by then."""
    d = tmp_path / "spill"
    path = abandoned_file(d, [make_record(1)], "spill-gone-1-x-1.jsonl")
    newer = make_record(2)
    by_a: list[ClaimedFile | None] = []
    real_flock = fcntl.flock

    def a_goes_first(fd: int, op: int) -> None:
        if not by_a:
            by_a.append(None)  # first: A's own claim locks through here too
            by_a[0] = claim(path)
            assert by_a[0] is not None
            by_a[0].finish()
            abandoned_file(d, [newer], path.name)  # a new file, the same name
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", a_goes_first)
    assert claim(path) is None  # B: opened before A's delete, locked after it
    again = claim(path)  # the new file is another matter
    assert again is not None
    assert [row["id"] for batch in again.batches(10) for row in batch] == [newer.id]
    again.release()


@on_sqlite
def test_a_writer_whose_lock_was_lost_continues_in_a_new_file(
    db: Backend, spill_dir: Path, tmp_path: Path, writers: list[LogWriter]
) -> None:
    """Over NFS a writer cut off longer than its lease loses its lock, and its descriptor
    then fails (EIO). Here the descriptor is swapped for one that cannot write (EBADF), which
    drops the lock the same way: another writer replays the old file, the first one spills
    on into a new file, and every row lands once."""
    key = new_key()
    recs = keyed_records(20, key)
    a = LogWriter(
        WriterDatabase(dead_target(db, tmp_path)),
        spill_dir,
        cost_fn=lambda r: PRICE,
        flush_interval=0.05,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    writers.append(a)
    a.start()
    for r in recs[:10]:
        a.submit(r)
    wait_stats(a, "10 spilled", lambda s: s["spilled"] == 10)
    (first,) = spill_files(spill_dir)
    fd = a._spill._fd
    assert fd is not None
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)  # the file's descriptor, and with it the lock, is gone
    os.close(null)
    b = in_process_writer(writers, db, spill_dir, rescan_interval=0.02)
    b.start()
    wait_stats(b, "the lost file replayed", lambda s: s["replayed_files"] == 1)
    for r in recs[10:]:
        a.submit(r)
    wait_stats(a, "10 more spilled", lambda s: s["spilled"] == 20 and s["spill_errors"] == 0)
    (second,) = spill_files(spill_dir)
    assert second != first and lines_of(second) == 10
    a.close_sync(1)
    wait_stats(b, "the new file replayed", lambda s: s["replayed_files"] == 2)
    assert b.stats()["replay_duplicates"] == 0
    assert_logged_once(db, key, recs)


def test_quarantine_files_are_per_process_and_never_grow_once_renamed_for_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process quarantines into a file of its own (O_APPEND is not atomic between NFS
    clients). A quarantine file an operator renamed to a spill file's name, and a replayer
    then claimed, between the writer's open and its lock, gets no more rows: they go to a
    new quarantine file."""
    d = tmp_path / "spill"
    ours = append_quarantine(d, b'{"id": "cpr_1"}\n')
    assert f"-{os.getpid()}-" in ours.name
    theirs = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from claude_proxy.store.spill import append_quarantine; "
            'print(append_quarantine(sys.argv[1], b\'{"id": "cpr_2"}\\n\'))',
            str(d),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(theirs).parent == d and Path(theirs) != ours

    renamed = d / f"spill-{ours.name}"
    held: list[ClaimedFile | None] = []
    real_flock = fcntl.flock

    def rename_and_claim_first(fd: int, op: int) -> None:
        if not held:
            # The operator's rename, and a replayer's claim, land between open and lock.
            held.append(None)  # first: claim() locks through here too
            ours.rename(renamed)
            held[0] = claim(renamed)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", rename_and_claim_first)
    assert append_quarantine(d, b'{"id": "cpr_3"}\n') == ours
    (claimed,) = held
    assert claimed is not None
    assert renamed.read_bytes() == b'{"id": "cpr_1"}\n'
    assert ours.read_bytes() == b'{"id": "cpr_3"}\n'
    claimed.release()
