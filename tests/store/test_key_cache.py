"""KeyCache: database keys resolved from memory, changes picked up by refresh, unknown keys
looked up at a bounded rate, and a retryable answer when the database cannot be asked."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from claude_proxy.gateway.keys import BadKeyThrottle, KeyCache, KeyStoreUnavailable, key_digest
from claude_proxy.store.keys import KeySpec, create_key, revoke_key, rotate_key, update_key
from tests.store.conftest import Backend


@pytest.fixture
def engine(db: Backend) -> Iterator[Engine]:
    yield db.engine()


async def test_refresh_sees_changes_made_elsewhere(engine: Engine) -> None:
    cache = KeyCache(static_keys=["static-secret"], engine=engine)
    row, secret = create_key(engine, KeySpec(name="a", rpm=5), actor="test")
    assert cache.cached(secret.encode()) is None  # not loaded yet
    cache.refresh()
    info = cache.cached(secret.encode())
    assert info is not None and info.key_id == row.id and info.level.rpm == 5
    assert cache.cached(b"static-secret") is not None

    update_key(engine, row.id, rpm=None, models=("claude-haiku-*",), actor="test")
    cache.refresh()
    info = cache.cached(secret.encode())
    assert info is not None and info.level.rpm is None and info.level.models == ("claude-haiku-*",)

    rotated = rotate_key(engine, row.id, actor="test")
    assert rotated is not None
    cache.refresh()
    assert cache.cached(secret.encode()) is None  # the old secret is gone
    new_info = cache.cached(rotated[1].encode())
    assert new_info is not None and new_info.key_id == row.id

    revoke_key(engine, row.id, actor="test")
    cache.refresh()
    new_info = cache.cached(rotated[1].encode())
    assert new_info is not None and new_info.revoked


async def test_unknown_keys_are_looked_up_at_a_bounded_rate(engine: Engine) -> None:
    cache = KeyCache(static_keys=[], engine=engine, miss_lookups_per_second=10)
    cache.refresh()
    row, secret = create_key(engine, KeySpec(name="new"), actor="test")
    info = await cache.lookup(secret.encode())  # created after the refresh: one lookup
    assert info is not None and info.key_id == row.id
    assert cache.cached(secret.encode()) == info  # and cached from then on
    # Guesses spend the rest of the bucket (10 lookups at once)...
    for i in range(9):
        assert await cache.lookup(f"sk-proxy-guess-{i}".encode()) is None
    # ...and a key created since then waits for the next slot (0.1 s): over the rate it
    # is still found, never called unknown (tests/store/test_key_lookups.py: bursts).
    _, late = create_key(engine, KeySpec(name="late"), actor="test")
    assert await cache.lookup(late.encode()) is not None


# SQLite's "outage" here is a write lock, and key lookups are reads: nothing to test there.
@pytest.mark.parametrize("backend", ["postgres", "pgbouncer"], indirect=True)
async def test_unknown_key_with_the_database_down_is_retryable(db: Backend) -> None:
    cache = KeyCache(static_keys=[], engine=db.engine(connect_timeout=2))
    cache.refresh()
    _, known = create_key(db.engine(), KeySpec(name="known"), actor="test")
    cache.refresh()
    with db.outage():
        with pytest.raises(KeyStoreUnavailable):
            await cache.lookup(b"sk-proxy-never-seen")
        assert cache.cached(known.encode()) is not None  # known keys still work


def test_the_cache_holds_digests_not_keys() -> None:
    cache = KeyCache(static_keys=["sk-proxy-static-one"])
    assert cache.cached(b"sk-proxy-static-one") is not None
    assert cache.cached(b"sk-proxy-static-on") is None
    assert set(cache._by_digest) == {key_digest("sk-proxy-static-one")}
    assert "sk-proxy-static-one" not in repr(vars(cache))


def test_bad_key_throttle_is_per_address() -> None:
    throttle = BadKeyThrottle(burst=3, per_minute=6)  # then one per 10 s
    now = time.monotonic()
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1", now) is None
        throttle.failed("10.0.0.1", now)
    assert throttle.retry_after("10.0.0.1", now) == 10
    assert throttle.retry_after("10.0.0.2", now) is None  # another address is unaffected
    assert throttle.retry_after("10.0.0.1", now + 10) is None  # one more try after 10 s
