"""KeyCache.lookup under bursts: a key created a moment ago (after the cache's last refresh)
is never answered "unknown", however many first requests arrive at once, and they cost the
database one read; over the lookup rate, lookups wait for their turn instead of failing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event

from claude_proxy.gateway.keys import KeyCache, KeyStoreUnavailable
from claude_proxy.store.keys import KeySpec, create_key
from tests.store.conftest import Backend

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


class ReadCounter:
    """Counts the statements that look a key up by its hash (KeyCache's miss path)."""

    def __init__(self, engine: Engine) -> None:
        self.lookups = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_keys" in statement and "key_hash =" in statement:
            self.lookups += 1


@pytest.fixture
def engine(db: Backend) -> Iterator[Engine]:
    yield db.engine()


async def test_a_burst_of_first_requests_for_a_new_key_all_succeed_with_one_read(
    engine: Engine,
) -> None:
    # A small lookup rate, so that the old behaviour (answer "unknown" once the rate is
    # spent) would have refused most of the burst.
    cache = KeyCache(static_keys=[], engine=engine, miss_lookups_per_second=2)
    await cache.start()
    try:
        row, secret = create_key(
            engine, KeySpec(name="fresh"), actor="test"
        )  # after the cache loaded
        reads = ReadCounter(engine)
        results = await asyncio.gather(*(cache.lookup(secret.encode()) for _ in range(200)))
        assert all(info is not None and info.key_id == row.id for info in results)
        assert reads.lookups == 1
        assert cache.cached(secret.encode()) is not None  # no lookup at all from now on
    finally:
        await cache.close()


async def test_new_keys_over_the_lookup_rate_wait_for_their_turn(engine: Engine) -> None:
    rate = 10
    cache = KeyCache(static_keys=[], engine=engine, miss_lookups_per_second=rate)
    cache.refresh()
    made = [create_key(engine, KeySpec(name=f"k{i}"), actor="test") for i in range(rate + 3)]
    reads = ReadCounter(engine)
    started = time.monotonic()
    results = await asyncio.gather(*(cache.lookup(secret.encode()) for _, secret in made))
    elapsed = time.monotonic() - started
    assert [info.key_id if info else None for info in results] == [row.id for row, _ in made]
    assert reads.lookups == rate + 3
    # The first `rate` go at once, the three after them one slot (0.1 s) apart: the rate
    # still holds.
    assert elapsed >= 3 / rate - 0.05


async def test_unknown_keys_stay_cheap_and_a_full_queue_says_retry_not_unknown(
    engine: Engine,
) -> None:
    cache = KeyCache(static_keys=[], engine=engine, miss_lookups_per_second=1, miss_max_wait=0.5)
    cache.refresh()
    reads = ReadCounter(engine)
    guess = b"sk-proxy-guess-0"
    assert await cache.lookup(guess) is None  # asked once...
    assert await cache.lookup(guess) is None  # ...then remembered as unknown
    assert reads.lookups == 1
    # The rate's one slot is spent and the next is 1 s away, more than the 0.5 s a lookup
    # may wait: the answer is "try again" (a 503 for the client), never "unknown" (401),
    # for the key may exist; and the database is not asked.
    _, secret = create_key(engine, KeySpec(name="later"), actor="test")
    with pytest.raises(KeyStoreUnavailable):
        await cache.lookup(secret.encode())
    assert reads.lookups == 1


async def test_a_client_leaving_does_not_cancel_the_lookup_others_wait_for(
    engine: Engine,
) -> None:
    cache = KeyCache(static_keys=[], engine=engine, miss_lookups_per_second=1)
    cache.refresh()
    assert await cache.lookup(b"sk-proxy-spend-the-slot") is None
    row, secret = create_key(engine, KeySpec(name="shared"), actor="test")
    first = asyncio.create_task(cache.lookup(secret.encode()))  # waits ~1 s for its slot
    second = asyncio.create_task(cache.lookup(secret.encode()))
    await asyncio.sleep(0)  # both are waiting on the one lookup
    first.cancel()
    info = await second
    assert info is not None and info.key_id == row.id
    assert first.cancelled()
