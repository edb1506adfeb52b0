"""The spill file: where records go when the database cannot take them.

Each process appends JSON lines (store/rows.py) to its own file in the spill
directory and holds `flock(LOCK_EX)` on it for as long as it may write there,
so a file nobody holds a lock on was left by a process that is gone (crash,
kill -9, or a clean exit during an outage) and is safe to replay. Every append
is one write(2) of whole lines, so a crash can tear at most the last line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from claude_proxy.store.records import MAX_SHORT_TEXT_CHARS, bounded
from claude_proxy.store.rows import Row, load_row

log = logging.getLogger("claude_proxy.store")

SPILL_GLOB = "spill-*.jsonl"
QUARANTINE_PREFIX = "quarantine-"
_MAX_REASON_CHARS = 1024


class SpillFile:
    """This process's append-only spill file; created on first use, locked while open."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._rows = 0
        self._dirty = False
        # A failed write may have left a partial line; the next write starts a fresh one.
        self._torn = False
        self._seq = 0
        # pid alone is not unique: in a container every restart is pid 1 again.
        self._stem = f"spill-{os.getpid()}-{os.urandom(4).hex()}"

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def rows(self) -> int:
        """Rows appended to the current file since it was opened."""
        return self._rows

    def append(self, lines: bytes, count: int) -> Path:
        """Append complete newline-terminated lines in one write; raises OSError."""
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            data = b"\n" + lines if self._torn else lines
            try:
                _write_all(fd, data)
            except OSError:
                self._torn = True
                raise
            self._torn = False
            self._rows += count
            self._dirty = True
            assert self._path is not None
            return self._path

    def sync(self) -> None:
        """fsync what was appended, so an OS crash loses nothing already spilled.

        The fsync runs on a duplicate descriptor outside the lock: `submit`
        appends under that lock from the event loop and must not wait for a disk.
        """
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def detach(self) -> ClaimedFile | None:
        """Hand over the current file (still locked) for replay; later appends open a new one."""
        with self._lock:
            if self._fd is None or self._path is None:
                return None
            fd, path, dirty = self._fd, self._path, self._dirty
            self._fd, self._path, self._rows, self._dirty, self._torn = None, None, 0, False, False
        if dirty:
            os.fsync(fd)  # it stays on disk if the replay fails
        return ClaimedFile(fd, path)

    def close(self) -> Path | None:
        """fsync and unlock. A non-empty file stays for the next start to replay."""
        self.sync()
        with self._lock:
            fd, path, rows = self._fd, self._path, self._rows
            self._fd, self._path, self._rows = None, None, 0
        if fd is None or path is None:
            return None
        if rows == 0 and os.fstat(fd).st_size == 0:
            path.unlink(missing_ok=True)
            path = None
        os.close(fd)
        return path

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = self.directory / f"{self._stem}-{self._seq}.jsonl"
        # Read-write: the same locked descriptor is later read back by `detach` + replay.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # Held until close: other processes skip a file whose writer is alive.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path, self._rows = fd, path, 0
        log.info("spill: opened %s", path)
        return fd


class ClaimedFile:
    """A spill file this process holds the lock on, to be replayed and then deleted."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.torn_lines = 0
        self.corrupt_lines = 0

    def batches(self, size: int) -> Iterator[list[Row]]:
        """The file's rows in batches, streamed; unreadable lines are skipped and counted.

        A last line without its newline is a write torn by a crash (`torn_lines`);
        any other unreadable line is counted in `corrupt_lines`.
        """
        self.torn_lines = self.corrupt_lines = 0
        batch: list[Row] = []
        with os.fdopen(os.dup(self.fd), "rb") as f:
            f.seek(0)
            for line in f:
                complete = line.endswith(b"\n")
                if not line.strip():
                    continue
                try:
                    batch.append(load_row(line))
                except ValueError:
                    if complete:
                        self.corrupt_lines += 1
                    else:
                        self.torn_lines += 1
                    continue
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def finish(self) -> None:
        """Every row is committed: delete the file, then drop the lock."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)

    def release(self) -> None:
        """Keep the file for a later replay and let others claim it."""
        os.close(self.fd)


def spill_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Spill files in `directory`, oldest name first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(d.glob(SPILL_GLOB))


def claim(path: Path) -> ClaimedFile | None:
    """Lock a spill file whose writer is gone; None if a live process holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    # Another process may have replayed and deleted it between our listing and locking.
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return ClaimedFile(fd, path)


def append_quarantine(directory: str | os.PathLike[str], lines: bytes) -> Path:
    """Keep rows the database refused even in reduced form (never replayed automatically)
    for a person: `claude-proxy logs quarantine` lists them. Private (0600), fsync'd."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{QUARANTINE_PREFIX}{os.getpid()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, lines)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@dataclass(frozen=True)
class QuarantinedRow:
    """One line of a quarantine file, as `logs quarantine` shows it."""

    id: str | None
    created_at: str | None
    key_id: str | None
    reason: str | None
    quarantined_at: str | None
    file: str


def quarantined_rows(directory: str | os.PathLike[str]) -> tuple[list[QuarantinedRow], int]:
    """Every quarantined row in `directory` (older files named rejected-*.jsonl too), oldest
    file first, and how many lines could not be read. Ids are capped for display; the
    reason is what the writer logged (no SQL, no row values beyond the database's message)."""
    d = Path(directory)
    if not d.is_dir():
        return [], 0
    paths = sorted([*d.glob(f"{QUARANTINE_PREFIX}*.jsonl"), *d.glob("rejected-*.jsonl")])
    out: list[QuarantinedRow] = []
    unreadable = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            unreadable += 1
            continue
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            if not isinstance(doc, dict):
                unreadable += 1
                continue
            out.append(
                QuarantinedRow(
                    id=_shown(doc.get("id")),
                    created_at=_shown(doc.get("created_at")),
                    key_id=_shown(doc.get("key_id")),
                    reason=_shown(doc.get("_reason"), _MAX_REASON_CHARS),
                    quarantined_at=_shown(doc.get("_quarantined_at")),
                    file=path.name,
                )
            )
    return out, unreadable


def _shown(value: object, cap: int = MAX_SHORT_TEXT_CHARS) -> str | None:
    return None if value is None else bounded(str(value), cap)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
