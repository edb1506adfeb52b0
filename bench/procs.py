"""Child processes for the benchmark, and what /proc says about them.

Every process is started in its own session with stdout in a file (so a chatty access log can never
block on a full pipe), pinned to a core, with a raised open-file limit, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NOFILE = 65536
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE so 1,000 streams (2 fds each through a proxy) fit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), max(hard, target)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cores: Sequence[int] | None) -> None:
    """Pin the calling process to `cores` (no-op when None or the cores do not exist)."""
    if not cores:
        return
    usable = set(cores) & os.sched_getaffinity(0)
    if usable:
        os.sched_setaffinity(0, usable)


def preexec(cores: Sequence[int] | None) -> Callable[[], None]:
    def run() -> None:
        raise_nofile()
        pin(cores)

    return run


@dataclass
class Proc:
    """A started child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the exit code and log tail if the process has died."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group (it has its own session), then SIGKILL after `timeout`."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cores: Sequence[int] | None = None,
    ready: re.Pattern[str] | None = None,
    workdir: Path,
    timeout: float = 30.0,
) -> Proc:
    """Start `argv` and wait (bounded) until its log matches `ready`; group 1 becomes `url`."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(REPO),
            start_new_session=True,
            preexec_fn=preexec(cores),
        )
    proc = Proc(name, popen, log_path)
    if ready is None:
        return proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ready.search(log_path.read_text(errors="replace"))
        if m:
            proc.url = m.group(1) if m.groups() else ""
            return proc
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{name} did not become ready:\n{proc.log_tail()}")


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (uvicorn workers when --workers > 1)."""
    kids = _children_of()
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, plus children it has already reaped."""
    total = 0
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[11..14] are utime, stime, cutime, cstime (stat(5) fields 14-17).
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` and its live descendants, in MB (10^6 bytes)."""
    kb = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return kb * 1024 / 1e6


def self_cpu_seconds() -> float:
    """CPU time of this process (the stream client runs in it)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def workdir() -> Path:
    """A temp dir for logs and configs, kept only if the run fails."""
    return Path(tempfile.mkdtemp(prefix="claude-proxy-bench-"))
