"""Fixtures of the in-process tests: one event loop for the whole folder, the emulator and
one proxy app started once on it, and fresh apps for the tests that need other settings
(another upstream, a breaker that opens).

Every test here runs on the package's loop: `pytestmark = PACKAGE_LOOP` (harness.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from claude_proxy import emulator as emulator_module
from claude_proxy.emulator import Emulator
from tests.inprocess.harness import UPSTREAM_KEY, Stack, StartStack, Tap, running_stack


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def emulator() -> AsyncIterator[Emulator]:
    emu = await emulator_module.start("127.0.0.1", 0, api_key=UPSTREAM_KEY)
    yield emu
    await emu.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def tap(emulator: Emulator) -> AsyncIterator[Tap]:
    t = await Tap(emulator.host, emulator.port).start()
    yield t
    await t.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stack(
    emulator: Emulator, tap: Tap, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The proxy most tests share, its upstream the emulator (through the tap)."""
    workdir = tmp_path_factory.mktemp("inprocess")
    async with running_stack(tap.url, emulator.url, workdir, tap) as s:
        yield s


@pytest.fixture
def start_stack(emulator: Emulator, stack: Stack, tmp_path: Path) -> StartStack:
    """Starts a proxy of the test's own: `async with start_stack(upstream_url, **settings)`
    (upstream default: the emulator). It shares the database of `stack`, as replicas do,
    which is migrated already, and records nothing unless told (log_requests=True): no
    migration or writer process to wait for, so it starts and stops in milliseconds. The
    request log is tested on `stack`."""
    made = 0

    def start(
        upstream_url: str | None = None, **overrides: Any
    ) -> AbstractAsyncContextManager[Stack]:
        nonlocal made
        made += 1
        workdir = tmp_path / f"stack-{made}"
        workdir.mkdir()
        overrides.setdefault("database_url", stack.settings.database_url)
        overrides.setdefault("log_requests", False)
        return running_stack(upstream_url or emulator.url, emulator.url, workdir, **overrides)

    return start
