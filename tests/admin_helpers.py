"""What the admin API's in-process tests share (tests/test_admin_api.py,
tests/test_admin_people_api.py, tests/test_spend_limits_api.py): a migrated database of
their own on SQLite or PostgreSQL, emptied between tests, an httpx client over ASGI, and
the checks of an answer. Plain functions; the fixtures stay in the modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, Table, delete

from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.store.engine import make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.people import UserRow
from tests.pg import create_database, drop_database, pg_url

BASE_URL = "http://proxy.test"
DATABASES = ["sqlite", "postgres"]  # a module's `engine` fixture runs on each


@contextmanager
def migrated_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated database for one test module: a fresh SQLite file (`kind` "sqlite") or a
    fresh PostgreSQL database ("postgres"), dropped afterwards."""
    name: str | None = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('admin') / 'admin.db'}"
    else:
        name = create_database()
        url = pg_url(name)
    engine = make_engine(url, pool_size=2, max_overflow=2)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        if name is not None:
            drop_database(name)


def emptied(engine: Engine, *tables: Table) -> Engine:
    """`engine`, with every row of `tables` deleted (in that order)."""
    with engine.begin() as conn:
        for table in tables:
            conn.execute(delete(table))
    return engine


def client_for(app: Any, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """An httpx client calling `app` in this process, sending `headers` on every request."""
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url=BASE_URL, headers=headers or {}
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def minted(
    signer: TokenSigner, user: UserRow, groups: list[str], *, now: float | None = None
) -> dict[str, str]:
    """The header of an access token for `user`, signed in (at `now`) as a member of
    `groups`, as the sign-in mints it."""
    assert user.subject is not None, "a signed-in user has the IdP's subject"
    token, _ = signer.mint(
        user_id=user.id, subject=user.subject, email=user.email, name=None, groups=groups, now=now
    )
    return bearer(token)


async def ok(r: Any, status: int = 200) -> Any:
    """The JSON body of the awaited response `r`, which must have `status`, a request id and
    no-store."""
    response = await r
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["request-id"].startswith("cpr_")
    return response.json()


def assert_error(r: httpx2.Response, status: int, error_type: str) -> str:
    """An Anthropic-shaped error with a request id in the body and the header; its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"].startswith("cpr_")
    assert r.headers["request-id"] == body["request_id"]
    assert r.headers["cache-control"] == "no-store"
    message: str = body["error"]["message"]
    return message
