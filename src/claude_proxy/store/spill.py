"""The spill file: where records go when the database cannot take them.

Each process appends JSON lines (store/rows.py) to its own file in the spill
directory and holds `flock(LOCK_EX)` on it for as long as it may write there,
so a file nobody holds a lock on was left by a process that is gone (crash,
kill -9, or a clean exit during an outage) and is safe to replay. Every append
is one write(2) of whole lines, so a crash can tear at most the last line.

The directory may be shared by every task of a deployment (an NFSv4 mount such as an
EFS access point), and then any writer replays any task's abandoned files. What makes
that safe, locally and over NFS alike:

- Names are unique across tasks: `spill-<host>-<pid>-<random>-<n>.jsonl` (pid alone is
  not: every container's first process is pid 1) and `quarantine-<host>-<pid>-<random>.jsonl`.
  Each file has exactly one writer, which matters since O_APPEND is not atomic between
  NFS clients.
- A new spill file is created under a hidden name, locked, and only then renamed to its
  spill name: no scan ever finds a spill file its writer has not locked yet.
- The lock is the only sign of life. A replayer takes it with LOCK_NB (held: the writer
  is alive, or another replayer has the file: skip it), then checks that the name still
  leads to the file it locked (replayed and deleted meanwhile: skip it), and deletes the
  file only after every row is committed, before it lets the lock go. A crash mid-replay
  leaves the file, unlocked, for the next replayer; inserts are idempotent.
- Over NFS, Linux emulates flock with a POSIX lock on the whole file, held by the server,
  which needs a descriptor open for writing: files are claimed read-write.
- A process's locks end with it (kill -9 too: the kernel closes its files). Those of a
  task that vanished whole end when its NFS lease expires. A writer whose lease expired
  while it lived (a partition) gets EIO on its file: it continues in a new one, and the
  old one, no longer locked, is replayed like any other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
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
# A spill file until it is locked (never matches SPILL_GLOB).
_CREATING_PREFIX = ".creating-"
_MAX_REASON_CHARS = 1024
_MAX_HOST_CHARS = 48
_QUARANTINE_ATTEMPTS = 5
# A write or fsync failing so means the file is lost to this process: NFS returns EIO once
# the lock went with an expired lease, ESTALE once the file is gone from the server; EBADF,
# the descriptor itself is gone. Its rows go to a new file.
_LOST_FILE_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.EBADF})
# A name that led nowhere by the time it was opened, locked or checked.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})


class SpillLost(OSError):
    """The spill file was lost (see _LOST_FILE_ERRNOS) with rows not yet synced: they may be
    gone, so the caller appends them again (to a new file)."""


class SpillFile:
    """This process's append-only spill file; created on first use, locked while open."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._generation = 0  # files opened so far: tells a lost file from its successor
        self._rows = 0
        self._dirty = False
        self._new_entry = False  # a file was created since the directory was last synced
        # A failed write may have left a partial line; the next write starts a fresh one.
        self._torn = False
        self._seq = 0
        self._stem = f"spill-{_host()}-{os.getpid()}-{os.urandom(6).hex()}"

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def rows(self) -> int:
        """Rows appended to the current file since it was opened."""
        return self._rows

    def append(self, lines: bytes, count: int) -> Path:
        """Append complete newline-terminated lines in one write; raises OSError.

        If the current file is lost (see _LOST_FILE_ERRNOS), the lines go to a new one."""
        with self._lock:
            for retry in (False, True):
                fd = self._fd if self._fd is not None else self._open()
                data = b"\n" + lines if self._torn else lines
                try:
                    _write_all(fd, data)
                except OSError as exc:
                    if not retry and exc.errno in _LOST_FILE_ERRNOS:
                        self._abandon(exc)
                        continue
                    self._torn = True
                    raise
                self._torn = False
                self._rows += count
                self._dirty = True
                assert self._path is not None
                return self._path
        raise AssertionError("unreachable")

    def sync(self) -> None:
        """fsync what was appended, so an OS crash loses nothing already spilled.

        The fsync runs on a duplicate descriptor outside the lock: `submit`
        appends under that lock from the event loop and must not wait for a disk.
        Raises SpillLost if the file was lost (append the unsynced rows again), any
        other OSError as it comes.
        """
        with self._lock:
            if self._fd is None or not (self._dirty or self._new_entry):
                return
            fd = os.dup(self._fd)
            generation = self._generation
            dirty, new_entry = self._dirty, self._new_entry
            self._dirty = self._new_entry = False
        try:
            if dirty:
                os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _LOST_FILE_ERRNOS:
                raise
            with self._lock:
                if self._generation == generation and self._fd is not None:
                    self._abandon(exc)  # unless a concurrent append replaced it already
            raise SpillLost(exc.errno, f"spill file lost: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if new_entry:
            _sync_directory(self.directory)

    def detach(self) -> ClaimedFile | None:
        """Hand over the current file (still locked) for replay; later appends open a new one."""
        with self._lock:
            if self._fd is None or self._path is None:
                return None
            fd, path, dirty = self._fd, self._path, self._dirty
            self._fd, self._path, self._rows, self._dirty, self._torn = None, None, 0, False, False
        if dirty:
            try:
                os.fsync(fd)  # it stays on disk if the replay fails
            except OSError as exc:
                # Replayed all the same, from what can be read back: dropping the descriptor
                # here would keep the file locked, and unreplayed, for this process's life.
                log.warning("spill: fsync of %s failed before its replay (%s)", path, exc)
        return ClaimedFile(fd, path)

    def close(self) -> Path | None:
        """fsync and unlock. A non-empty file stays for the next start to replay."""
        try:
            self.sync()
        except OSError as exc:
            log.warning("spill: fsync of %s failed at close (%s)", self._path, exc)
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
        name = f"{self._stem}-{self._seq}.jsonl"
        path = self.directory / name
        creating = self.directory / f"{_CREATING_PREFIX}{name}"
        # Read-write: the same locked descriptor is later read back by `detach` + replay.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(creating, flags, 0o600)
        try:
            # Held until close: other processes skip a file whose writer is alive.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Only now under a spill file's name: a scan never finds it unlocked. (The
            # name is this process's own: host, pid and 48 random bits.)
            os.rename(creating, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                creating.unlink()
            raise
        self._fd, self._path, self._rows = fd, path, 0
        self._generation += 1
        self._new_entry = True
        log.info("spill: opened %s", path)
        return fd

    def _abandon(self, exc: OSError) -> None:
        """Drop a lost file (under the lock); the next append opens a new one. What reached
        the file stays there, for whoever replays it: its lock went with the descriptor."""
        fd, path = self._fd, self._path
        self._fd, self._path, self._rows, self._dirty, self._torn = None, None, 0, False, False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        log.warning("spill: lost %s (%s); spilling to a new file", path, exc)


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
        """Every row is committed: delete the file, then drop the lock (in this order, so
        nobody can claim it in between)."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)

    def release(self) -> None:
        """Keep the file for a later replay and let others claim it."""
        os.close(self.fd)


def spill_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Spill files in `directory`, every process's and every task's, by name."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(d.glob(SPILL_GLOB))


def claim(path: Path) -> ClaimedFile | None:
    """Lock a spill file nobody holds. None if a live process holds it (its writer, or
    another replayer), if it is gone, or if it cannot be locked (logged)."""
    try:
        fd = _open_to_lock(path)
    except OSError as exc:
        if exc.errno not in _GONE_ERRNOS:
            log.warning("replay: cannot open %s (%s); skipped", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Replayed and deleted by another process between our listing and locking?
        if _names(path, fd):
            return ClaimedFile(fd, path)
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno not in _GONE_ERRNOS:
            # ENOLCK, say: an NFS mount without working locks. Replaying without the lock
            # could take a file a live writer still appends to, so it is never done.
            log.warning("replay: cannot lock %s (%s); skipped", path, exc)
    os.close(fd)
    return None


def _open_to_lock(path: Path) -> int:
    """Read-write where possible: over NFS an exclusive flock is a POSIX write lock, which
    needs a descriptor open for writing. A file this process may only read (or one on a
    read-only mount) is opened read-only, which a local flock accepts."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _names(path: Path, fd: int) -> bool:
    """True if `path` still leads to the file open at `fd`: not deleted (or renamed away,
    or replaced) since it was opened."""
    try:
        held = os.fstat(fd)
        named = os.stat(path)
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            return False
        raise
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def append_quarantine(directory: str | os.PathLike[str], lines: bytes) -> Path:
    """Keep rows the database refused even in reduced form (never replayed automatically)
    for a person: `claude-proxy logs quarantine` lists them. Private (0600), fsync'd.

    Each process has its own file, and holds its lock while it appends: a file an operator
    renamed to a spill file's name (to replay it) may be claimed by a replayer at any time,
    and must then receive no more rows, which go to a new quarantine file instead."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{QUARANTINE_PREFIX}{_process_tag()}.jsonl"
    for _ in range(_QUARANTINE_ATTEMPTS):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # renamed since we opened it, and claimed for a replay
            if not _names(path, fd):
                continue  # renamed (or deleted) since we opened it
            _write_all(fd, lines)
            os.fsync(fd)
            return path
        finally:
            os.close(fd)
    raise OSError(errno.EAGAIN, "the quarantine file kept being renamed", str(path))


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


def _sync_directory(directory: Path) -> None:
    """Make a new file's name as durable as its rows (a file's fsync does not cover its
    directory entry). Best effort: some file systems refuse to fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    """This host's name as a file name part: which task a file came from, for a person."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:_MAX_HOST_CHARS]
    return host or "host"


_tag: tuple[int, str] | None = None


def _process_tag() -> str:
    """host-pid-random, the same for the life of this process (and new after a fork)."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        _tag = (pid, f"{_host()}-{pid}-{os.urandom(6).hex()}")
    return _tag[1]
