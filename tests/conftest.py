"""Shared fixtures: real processes over real sockets.

The emulator and the proxy run as subprocesses, exactly as a user starts them.
Readiness is an event (the process prints its ready line), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import SECRETS

READY_TIMEOUT = 20.0
UPSTREAM_KEY = "sk-ant-api03-upstream-secret-0123456789"
PROXY_KEY = "sk-proxy-test-client-key-abcdef"

# Every secret the suite uses (more are registered as tests make them), and every server it
# started: at the end of the session no server's output may contain any of them (see
# `no_secret_in_any_server_output`).
SECRETS.update({UPSTREAM_KEY, PROXY_KEY, "sk-wrong"})
SERVERS: list[Process] = []


@contextlib.contextmanager
def cyclic_garbage(*types: type) -> Iterator[list[str]]:
    """The names of objects of `types` that the block left for the cyclic collector.

    Reference counting frees what is not in a cycle the moment it is dropped; whatever is
    in one waits for a collection, and full collections stall every open stream.
    """
    found: list[str] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to look at it
    try:
        yield found
        gc.collect()
        found += [type(o).__name__ for o in gc.garbage if isinstance(o, types)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def within_loop_turns(what: str, done: Callable[[], bool], turns: int = 1000) -> None:
    """Let the event loop run until `done()` holds, as a transport's close reaches the
    protocol a few loop turns later (connection_lost is scheduled, not called)."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"still waiting for {what} after {turns} loop turns")


@dataclass
class Process:
    """A child process whose merged output is captured line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
            with self._cond:
                self._cond.notify_all()

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(
        self, pattern: str, timeout: float = READY_TIMEOUT, count: int = 1
    ) -> re.Match[str]:
        """Block until the `count`-th line matching `pattern` is printed; fail with the output.

        The deadline is overall: a process printing other lines (an access line per request,
        haproxy's per request) does not extend it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        found = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        found += 1
                        if found == count:
                            return m
                seen = len(self.lines)
                if self.proc.poll() is not None and seen == len(self.lines):
                    raise AssertionError(f"process exited; output:\n{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {pattern!r}; "
                        f"output:\n{self.output()}"
                    )

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
    """Run `python -m claude_proxy ARGS` in `cwd` (default: a fresh temp dir, so a default
    SQLite file or spill dir never lands in the repository)."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_PROXY_"))
    }
    full_env["PYTHONUNBUFFERED"] = "1"
    # No load balancer to wait for: stopping a test proxy skips the 10 s pre-stop delay.
    full_env["CLAUDE_PROXY_PRE_STOP_SECONDS"] = "0"
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "claude_proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=cwd or tempfile.mkdtemp(prefix="claude-proxy-cwd-"),
    )
    p = Process(proc)
    p.start_reader()
    if args and args[0] in ("serve", "emulator"):
        SERVERS.append(p)
    return p


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_server_output() -> Iterator[None]:
    """After the whole suite: no key, upstream or client, appears in anything a proxy or
    emulator printed (logs, access lines, errors). Only key ids and short prefixes may."""
    yield
    leaks = []
    for server in SERVERS:
        out = server.output()
        leaks.extend(
            f"{server.proc.args[3]}: ...{secret[-6:]}" for secret in SECRETS if secret in out
        )
    assert not leaks, f"secrets leaked into server output: {leaks}"


@dataclass
class Emulator:
    process: Process
    url: str
    upstream_key: str = UPSTREAM_KEY

    def requests(self) -> list[dict[str, Any]]:
        """What the emulator received (method, path, query, headers, outcome), oldest first."""
        with urllib.request.urlopen(f"{self.url}/_emulator/requests") as r:
            data: list[dict[str, Any]] = orjson.loads(r.read())["data"]
            return data

    def wait_request(self, request_id: str, state: str, timeout: float = 5.0) -> dict[str, Any]:
        """Long-poll until the emulator request `request_id` reaches `state`."""
        url = f"{self.url}/_emulator/wait?request_id={request_id}&state={state}&timeout={timeout}"
        with urllib.request.urlopen(url, timeout=timeout + 5) as r:
            data: dict[str, Any] = orjson.loads(r.read())
            return data


def start_emulator(extra_args: list[str] | None = None) -> Emulator:
    p = spawn(
        [
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            UPSTREAM_KEY,
            *(extra_args or []),
        ]
    )
    m = p.wait_for(r"listening on (https?://\S+)")
    return Emulator(process=p, url=m.group(1))


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    emu = start_emulator()
    yield emu
    emu.process.stop()


@dataclass
class Proxy:
    process: Process
    url: str
    env: dict[str, str] = field(default_factory=dict)
    key: str = PROXY_KEY

    def output(self) -> str:
        return self.process.output()


def start_proxy(
    upstream_url: str, env: dict[str, str] | None = None, tmp: Path | None = None
) -> Proxy:
    """A proxy with its own SQLite file and spill dir (in `tmp`), unless `env` says otherwise."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix="claude-proxy-test-"))
    base_env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": upstream_url,
        "CLAUDE_PROXY_API_KEYS": PROXY_KEY,
        "DATABASE_URL": f"sqlite:///{tmp / 'proxy.db'}",
        "CLAUDE_PROXY_SPILL_DIR": str(tmp / "spill"),
    }
    base_env.update(env or {})
    p = spawn(["serve", "--host", "127.0.0.1", "--port", "0"], base_env)
    m = p.wait_for(r"claude-proxy ready on (http://[^\s\"]+)")
    return Proxy(process=p, url=m.group(1), env=base_env)


@pytest.fixture(scope="session")
def proxy(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    px = start_proxy(emulator.url, tmp=tmp_path_factory.mktemp("proxy"))
    yield px
    px.process.stop()
    # Everything the proxy printed during the whole session: no secret may appear in it.
    out = px.output()
    assert '"message":"request"' in out, "the access log is missing"
    for secret in (UPSTREAM_KEY, PROXY_KEY, "sk-wrong"):
        assert secret not in out, "a key leaked into the proxy's output"
