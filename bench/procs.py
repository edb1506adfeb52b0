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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
    # Not `& sched_getaffinity(0)`: children inherit this script's own pinning to core 1.
    usable = {c for c in cores if 0 <= c < (os.cpu_count() or 1)}
    if usable:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, usable)


def pin_pid(pid: int, cores: Sequence[int]) -> None:
    """Pin another running process (a child of a server) to `cores`."""
    usable = {c for c in cores if 0 <= c < (os.cpu_count() or 1)}
    if usable:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, usable)


def preexec(cores: Sequence[int] | None) -> Callable[[], None]:
    """What a child runs before exec: the raised fd limit, then its core."""

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


def _clean_environ() -> dict[str, str]:
    """This environment minus the proxy's own settings: the bench sets every one it means."""
    drop = ("CLAUDE_PROXY_", "ANTHROPIC_", "DATABASE_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


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
            env={**_clean_environ(), **(env or {})},
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


def _scan(children: bool = True) -> dict[int, tuple[int, str, float]]:
    """Every process: (parent pid, name:start time, CPU seconds, with reaped children or not).

    The start time tells a reused pid from the process seen before; kernel threads change
    their names as they change work queues, so the name alone cannot.
    """
    out: dict[int, tuple[int, str, float]] = {}
    last = 15 if children else 13
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        lp, rp = stat.find("("), stat.rfind(")")
        fields = stat[rp + 2 :].split()
        # fields[1] is ppid; fields[11..14] are utime, stime, cutime, cstime (stat(5) 14-17).
        cpu = sum(int(x) for x in fields[11:last]) / CLK_TCK
        out[int(entry.name)] = (int(fields[1]), f"{stat[lp + 1 : rp]}:{fields[19]}", cpu)
    return out


def _tree_of(scan: dict[int, tuple[int, str, float]], roots: Iterable[int]) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in scan.items():
        kids.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in scan]
    while todo and len(out) < 100_000:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(kids.get(p, []))
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (uvicorn workers when --workers > 1)."""
    return sorted(_tree_of(_scan(), [pid]))


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, plus children they have already reaped."""
    scan = _scan()
    return sum(scan[p][2] for p in _tree_of(scan, [pid]))


def own_cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` alone (a worker without its writer process)."""
    return _scan(children=False)[pid][2]


def named_pids(name: str) -> list[int]:
    """Every process whose name (comm) is `name`, e.g. the PostgreSQL server's."""
    return sorted(p for p, (_, n, _) in _scan(children=False).items() if n.split(":")[0] == name)


def cpu_of(pids: Iterable[int]) -> float:
    """utime+stime of these processes (those still alive), without their children."""
    scan = _scan(children=False)
    return sum(scan[p][2] for p in pids if p in scan)


def rss_mb(pid: int, pids: Sequence[int] | None = None) -> float:
    """VmRSS of `pid` and its live descendants, in MB (10^6 bytes).

    Finding the descendants scans /proc (about 10 ms); callers that sample often pass `pids`,
    found once with `tree()`, so the sampling does not stall the client's event loop.
    """
    kb = 0
    for p in pids if pids is not None else tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return kb * 1024 / 1e6


def io_bytes(pid: int) -> tuple[int, int]:
    """(bytes read, bytes written) by `pid` through read/write calls, sockets included."""
    rchar = wchar = 0
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                rchar = int(line.split()[1])
            elif line.startswith("wchar:"):
                wchar = int(line.split()[1])
    except OSError:
        pass
    return rchar, wchar


def core_busy_seconds() -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds of each core since boot, from /proc/stat."""
    out: dict[int, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (sum(v) - v[3] - v[4]) / CLK_TCK
    return out


class CpuWatch:
    """CPU used over an interval by each core, by named processes, and by everything else.

    Named pids of 0 mean this process (the stream client). The machine is shared, so the CPU of
    every process outside `ours` (and outside this process's tree) is summed as "others": a slice
    in which other programs were busy can be recognised and measured again.
    """

    def __init__(self, pids: dict[str, int], ours: Iterable[int] = ()) -> None:
        self.pids = pids
        self.ours = [*ours, os.getpid()]
        self.t0 = time.monotonic()
        self.cores0 = core_busy_seconds()
        # Others are counted without their reaped children: a test runner reaping a child
        # would otherwise add that child's whole lifetime at once.
        self.scan0 = _scan(children=False)
        self.procs0 = {k: cpu_seconds(p) if p else self_cpu_seconds() for k, p in pids.items()}
        self.wall = 0.0
        self.cpu: dict[str, float] = {}  # CPU seconds per core, named process and "others"

    def stop(self) -> dict[str, float]:
        """Fill `cpu` and `wall`; return utilisation (1.0 = one core busy the whole time)."""
        self.wall = max(time.monotonic() - self.t0, 1e-9)
        for k, p in self.pids.items():
            self.cpu[k] = (cpu_seconds(p) if p else self_cpu_seconds()) - self.procs0[k]
        scan = _scan(children=False)
        cores = core_busy_seconds()
        for c, busy in cores.items():
            self.cpu[f"core{c}"] = busy - self.cores0.get(c, 0.0)
        mine = _tree_of(scan, self.ours)
        others = 0.0
        for pid, (_, name, cpu) in scan.items():
            if pid in mine or name.startswith("ksoftirqd"):  # softirq work is our traffic
                continue
            before = self.scan0.get(pid)
            same = before is not None and before[1].rsplit(":", 1)[1] == name.rsplit(":", 1)[1]
            others += cpu - (before[2] if before is not None and same else 0.0)
        # Cannot exceed what the cores spent beyond our named processes.
        ours = sum(self.cpu[k] for k in self.pids)
        room = sum(self.cpu[f"core{c}"] for c in cores) - ours
        self.cpu["others"] = max(0.0, min(others, room))
        return self.util()

    def util(self) -> dict[str, float]:
        return {k: round(v / self.wall, 3) for k, v in self.cpu.items()}


def wait_quiet(max_wait: float, busy: float = 0.25) -> dict[str, float]:
    """Wait (at most `max_wait` s) for a second in which no core is busier than `busy`.

    Other programs on the machine inflate latencies, so the run starts in a quiet moment if one
    comes; returns the last second's per-core load either way.
    """
    deadline = time.monotonic() + max_wait
    while True:
        watch = CpuWatch({})
        time.sleep(1.0)
        load = watch.stop()
        if max(load.values(), default=0.0) <= busy or time.monotonic() >= deadline:
            return load


def self_cpu_seconds() -> float:
    """CPU time of this process (the stream client runs in it)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def workdir() -> Path:
    """A temp dir for logs and configs, kept only if the run fails."""
    return Path(tempfile.mkdtemp(prefix="claude-proxy-bench-"))
