"""The admin API in-process (httpx over ASGI) on real SQLite and PostgreSQL databases,
with a real KeyCache: a change made here must hold for this process's very next request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from sqlalchemy import Engine, insert, select

from claude_proxy.admin import build_admin_app
from claude_proxy.admin.api import LogEntry
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.store.columns import current_period
from claude_proxy.store.engine import make_engine
from claude_proxy.store.rows import record_to_row
from claude_proxy.store.schema import COLUMNS, api_keys, key_spend, request_logs
from tests.admin_helpers import DATABASES, assert_error, bearer, emptied, migrated_database
from tests.admin_helpers import client_for as admin_client
from tests.store.conftest import make_record

ADMIN = "admin-token-for-tests-0123456789abcdef"
STATIC_PROXY_KEY = "sk-proxy-static-key-for-admin-tests"
BASE = "/admin/api"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=DATABASES)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    with migrated_database(request.param, tmp_path_factory) as eng:
        yield eng


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The module's database, emptied."""
    return emptied(engine, api_keys, key_spend, request_logs)


@pytest.fixture
def keys(db: Engine) -> KeyCache:
    return KeyCache(static_keys=[STATIC_PROXY_KEY], engine=db)


def client_for(app: Any, token: str | None = ADMIN) -> httpx2.AsyncClient:
    return admin_client(app, bearer(token) if token is not None else None)


@pytest.fixture
async def client(db: Engine, keys: KeyCache) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_for(build_admin_app(db, keys, ADMIN)) as c:
        yield c


# ------------------------------------------------------------------ helpers


def stored(engine: Engine, key_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().one()
    return dict(row)


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create(client: httpx2.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post(f"{BASE}/keys", json={"name": "test", **body})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


# ---------------------------------------------------------------------- auth


async def test_every_request_needs_the_admin_key(db: Engine, keys: KeyCache) -> None:
    app = build_admin_app(db, keys, ADMIN)
    async with client_for(app) as admin:
        db_key = await create(admin)
    attempts: list[dict[str, str]] = [
        {},
        {"authorization": "Bearer wrong-token"},
        {"authorization": f"Bearer {ADMIN}x"},
        {"authorization": "Bearer "},
        {"authorization": f"Basic {ADMIN}"},
        {"authorization": ADMIN},
        {"x-api-key": ADMIN},
        {"authorization": f"Bearer {STATIC_PROXY_KEY}"},  # a proxy key is not an admin key
        {"authorization": f"Bearer {db_key['key']}"},
    ]
    async with client_for(app, token=None) as anon:
        for headers in attempts:
            for method, path in (
                ("GET", f"{BASE}/keys"),
                ("POST", f"{BASE}/keys"),
                ("GET", f"{BASE}/openapi.json"),  # the schema needs the key too
                ("GET", f"{BASE}/no-such-route"),  # 401 before routing: nothing to enumerate
                ("DELETE", f"{BASE}/keys/{db_key['id']}"),
            ):
                r = await anon.request(method, path, headers=headers, json={"name": "x"})
                assert_error(r, 401, "authentication_error")
                assert r.headers["www-authenticate"].startswith("Bearer")
        # Nothing happened: one key, still active.
        async with client_for(app) as admin:
            listed = (await admin.get(f"{BASE}/keys")).json()["data"]
    assert [(k["id"], k["status"]) for k in listed] == [(db_key["id"], "active")]
    # The bearer scheme is case-insensitive, as HTTP says.
    async with client_for(app, token=None) as anon:
        r = await anon.get(f"{BASE}/keys", headers={"authorization": f"bearer {ADMIN}"})
        assert r.status_code == 200


def test_an_empty_admin_token_is_refused(db: Engine, keys: KeyCache) -> None:
    with pytest.raises(ValueError):
        build_admin_app(db, keys, "")


# ---------------------------------------------------------------------- keys


async def test_create_shows_the_secret_once_and_the_cache_knows_it_at_once(
    client: httpx2.AsyncClient, keys: KeyCache, db: Engine
) -> None:
    r = await client.post(
        f"{BASE}/keys",
        json={
            "name": "ci",
            "models": ["claude-sonnet-4-6", "claude-haiku-*"],
            "rpm": 60,
            "tpm": 100000,
            "budget_usd": 12.5,
            "budget_period": "month",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["request-id"].startswith("cpr_")
    body = r.json()
    secret = body["key"]
    assert secret.startswith("sk-proxy-") and len(secret) > 40
    assert body["id"].startswith("key_") and body["status"] == "active"
    assert body["models"] == ["claude-sonnet-4-6", "claude-haiku-*"]
    assert (body["rpm"], body["tpm"]) == (60, 100000)
    assert (body["budget_usd"], body["budget_period"]) == ("12.50000000", "month")
    assert (body["spend_usd"], body["spend_period"]) == ("0.00000000", current_period("month"))
    assert "key_hash" not in body and secret.startswith(body["prefix"])

    row = stored(db, body["id"])
    assert row["key_hash"] == sha(secret)
    assert all(secret not in str(v) for v in row.values())

    info = keys.cached(secret.encode())  # no refresh, no lookup: apply() did it
    assert info is not None
    assert info.key_id == body["id"] and info.level.name == "ci" and not info.revoked
    lv = info.level
    assert (lv.rpm, lv.tpm, lv.budget_usd, lv.budget_period) == (60, 100000, 12.5, "month")
    assert lv.models == ("claude-sonnet-4-6", "claude-haiku-*")
    assert lv.allows_model("claude-haiku-4-5") and not lv.allows_model("claude-opus-4-1")

    # Shown once: neither GET nor the list has the secret or the hash.
    for path in (f"{BASE}/keys/{body['id']}", f"{BASE}/keys", f"{BASE}/keys?include_revoked=true"):
        r = await client.get(path)
        assert r.status_code == 200
        assert secret not in r.text and row["key_hash"] not in r.text
        assert '"key"' not in r.text and "key_hash" not in r.text
    shown = (await client.get(f"{BASE}/keys/{body['id']}")).json()
    assert {k: v for k, v in shown.items() if k != "updated_at"} == {
        k: v for k, v in body.items() if k not in ("key", "updated_at")
    }


async def test_revoke_takes_effect_at_once(
    client: httpx2.AsyncClient, keys: KeyCache, db: Engine
) -> None:
    a = await create(client, name="a")
    b = await create(client, name="b")
    r = await client.post(f"{BASE}/keys/{a['id']}/revoke")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked" and r.json()["revoked_at"]
    info = keys.cached(a["key"].encode())
    assert info is not None and info.revoked

    # DELETE is the same as revoke.
    r = await client.delete(f"{BASE}/keys/{b['id']}")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    info = keys.cached(b["key"].encode())
    assert info is not None and info.revoked

    # Revoking again keeps the first time.
    first = stored(db, a["id"])["revoked_at"]
    r = await client.post(f"{BASE}/keys/{a['id']}/revoke")
    assert r.status_code == 200 and stored(db, a["id"])["revoked_at"] == first

    assert (await client.get(f"{BASE}/keys")).json()["data"] == []
    listed = (await client.get(f"{BASE}/keys", params={"include_revoked": "true"})).json()
    assert {k["id"]: k["status"] for k in listed["data"]} == {
        a["id"]: "revoked",
        b["id"]: "revoked",
    }


async def test_rotate_swaps_the_secret_at_once(
    client: httpx2.AsyncClient, keys: KeyCache, db: Engine
) -> None:
    old = await create(client, rpm=5)
    r = await client.post(f"{BASE}/keys/{old['id']}/rotate")
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["id"] == old["id"] and new["rpm"] == 5
    assert new["key"].startswith("sk-proxy-") and new["key"] != old["key"]
    assert new["prefix"] == new["key"][: len(new["prefix"])]
    assert keys.cached(old["key"].encode()) is None
    info = keys.cached(new["key"].encode())
    assert info is not None and info.key_id == old["id"] and info.level.rpm == 5
    assert stored(db, old["id"])["key_hash"] == sha(new["key"])

    # A revoked key cannot be rotated back to life.
    await client.post(f"{BASE}/keys/{old['id']}/revoke")
    message = assert_error(
        await client.post(f"{BASE}/keys/{old['id']}/rotate"), 400, "invalid_request_error"
    )
    assert "revoked" in message
    assert stored(db, old["id"])["key_hash"] == sha(new["key"])


async def test_patch_changes_limits_and_null_clears_them(
    client: httpx2.AsyncClient, keys: KeyCache, db: Engine
) -> None:
    key = await create(client, name="a", rpm=10)
    expires = datetime.now(UTC) + timedelta(days=1)
    r = await client.patch(
        f"{BASE}/keys/{key['id']}",
        json={
            "name": "renamed",
            "rpm": 100,
            "tpm": 5000,
            "models": ["claude-haiku-*"],
            "budget_usd": "3",
            "budget_period": "day",
            "expires_at": expires.isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["rpm"], body["tpm"]) == ("renamed", 100, 5000)
    assert (body["budget_usd"], body["budget_period"]) == ("3.00000000", "day")
    assert body["models"] == ["claude-haiku-*"]
    assert abs(datetime.fromisoformat(body["expires_at"]) - expires) < timedelta(seconds=1)
    info = keys.cached(key["key"].encode())
    assert info is not None
    lv = info.level
    assert (lv.name, lv.rpm, lv.tpm, lv.budget_usd) == ("renamed", 100, 5000, 3.0)
    assert info.expires_at is not None and abs(info.expires_at - expires.timestamp()) < 1

    # Only the fields sent change; null removes a limit (and a null budget its period).
    r = await client.patch(
        f"{BASE}/keys/{key['id']}",
        json={"rpm": None, "budget_usd": None, "models": None, "expires_at": None},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["rpm"], body["tpm"], body["name"]) == (None, 5000, "renamed")
    assert (body["budget_usd"], body["budget_period"], body["models"]) == (None, None, None)
    assert body["expires_at"] is None
    info = keys.cached(key["key"].encode())
    assert info is not None
    lv = info.level
    assert (lv.rpm, lv.tpm, lv.budget_usd, lv.models, info.expires_at) == (
        None,
        5000,
        None,
        None,
        None,
    )
    row = stored(db, key["id"])
    assert (row["rpm"], row["budget_usd"], row["budget_period"], row["models"]) == (
        None,
        None,
        None,
        None,
    )

    # Refused changes change nothing.
    before = stored(db, key["id"])
    for patch, needle in (
        ({}, "nothing to change"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"rpm": 0}, "rpm"),
        ({"budget_period": "day"}, "needs both"),
        ({"budget_usd": 5}, "needs both"),
        ({"models": []}, "models"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "future"),
        ({"rmp": 5}, "rmp"),
    ):
        r = await client.patch(f"{BASE}/keys/{key['id']}", json=patch)
        message = assert_error(r, 400, "invalid_request_error")
        assert needle in message, (patch, message)
    assert stored(db, key["id"]) == before


async def test_validation_errors_are_400_and_create_nothing(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    bodies: list[tuple[Any, str]] = [
        ({"name": "a", "rpm": 0}, "rpm: Input should be greater than or equal to 1"),
        ({"name": "a", "tpm": -5}, "tpm"),
        ({"name": "a", "rpm": 2**31}, "rpm"),
        ({"name": "a", "budget_usd": 5}, "needs both"),
        ({"name": "a", "budget_period": "month"}, "needs both"),
        ({"name": "a", "budget_usd": -1, "budget_period": "day"}, "budget_usd"),
        ({"name": "a", "budget_usd": "1.123456789", "budget_period": "day"}, "decimal places"),
        ({"name": "a", "budget_usd": "NaN", "budget_period": "day"}, "budget_usd"),
        ({"name": "a", "budget_usd": 1, "budget_period": "year"}, "budget_period"),
        ({"name": "a", "models": []}, "models"),
        ({"name": "a", "models": ["ok", " "]}, "models"),
        ({"name": "a", "expires_at": "2001-01-01"}, "future"),
        ({"name": "a", "expires_at": "someday"}, "expires_at"),
        ({"name": "   "}, "name"),
        ({}, "name: Field required"),
        ({"name": "a", "budget": 5}, "budget: Extra inputs are not permitted"),
        (["name"], "JSON object"),
    ]
    for body, needle in bodies:
        r = await client.post(f"{BASE}/keys", json=body)
        message = assert_error(r, 400, "invalid_request_error")
        assert needle in message, (body, message)
    r = await client.post(
        f"{BASE}/keys", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_error(r, 400, "invalid_request_error")
    r = await client.post(f"{BASE}/keys")
    assert "body is required" in assert_error(r, 400, "invalid_request_error")
    r = await client.post(f"{BASE}/keys", content=b"x" * 100_000)
    assert_error(r, 413, "request_too_large")
    for query in ("by=week", "since=yesterday", "until=later"):
        assert_error(await client.get(f"{BASE}/usage?{query}"), 400, "invalid_request_error")
    for query in ("limit=0", "limit=1001", "status_code=abc", "errors=maybe"):
        assert_error(await client.get(f"{BASE}/logs?{query}"), 400, "invalid_request_error")
    with db.connect() as conn:
        assert conn.execute(select(api_keys)).first() is None


# Every one of these answered 500 once: NUL reached PostgreSQL (which refuses it in text),
# or a duration or an offset took a time outside the years 1-9999 a datetime can hold.
BAD_QUERIES: list[tuple[str, dict[str, str], str]] = [
    ("logs", {"key_id": "\x00"}, "key_id"),
    ("logs", {"model": "claude-\x00"}, "model"),
    ("logs", {"error_type": "\x00api_error"}, "error_type"),
    ("logs", {"refusal": "rpm\x00"}, "refusal"),
    ("logs", {"limit": "9" * 30}, "limit"),
    ("logs", {"limit": "-1"}, "limit"),
    ("logs", {"status_code": "9" * 30}, "status_code"),
    ("logs", {"include_bodies": "\x00"}, "include_bodies"),
    ("usage", {"since": "99999999999d"}, "since"),
    ("usage", {"since": "999999999w"}, "since"),
    ("usage", {"until": "99999999999d"}, "until"),
    ("usage", {"since": "9" * 5000 + "d"}, "since"),
    ("usage", {"since": "9999-12-31T23:59:59-05:00"}, "since"),
    ("usage", {"until": "0001-01-01T00:00:00+01:00"}, "until"),
    ("usage", {"since": "2026-13-45"}, "since"),
    ("usage", {"since": "7d\x00"}, "since"),
    ("usage", {"by": "\x00"}, "by"),
    ("keys", {"include_revoked": "\x00"}, "include_revoked"),
]


@pytest.mark.parametrize(("route", "params", "named"), BAD_QUERIES)
async def test_bad_query_values_are_400_naming_the_parameter(
    client: httpx2.AsyncClient, route: str, params: dict[str, str], named: str
) -> None:
    r = await client.get(f"{BASE}/{route}", params=params)
    message = assert_error(r, 400, "invalid_request_error")
    assert message.startswith(f"{named}:"), message
    assert "\x00" not in message  # a NUL is never echoed back raw


async def test_nul_in_a_path_or_a_body_is_400_and_changes_nothing(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    key = await create(client, name="kept")
    before = stored(db, key["id"])
    for r in (
        await client.get(f"{BASE}/keys/%00"),
        await client.get(f"{BASE}/keys/{key['id']}%00"),
        await client.patch(f"{BASE}/keys/%00", json={"rpm": 5}),
        await client.delete(f"{BASE}/keys/%00"),
        await client.post(f"{BASE}/keys/{key['id']}%00/revoke"),
        await client.post(f"{BASE}/keys/{key['id']}%00/rotate"),
    ):
        assert "path" in assert_error(r, 400, "invalid_request_error")
    bodies: list[tuple[dict[str, Any], str]] = [
        ({"name": "bad\x00name"}, "name: must not contain a NUL character"),
        ({"name": "a", "models": ["claude-\x00"]}, "models.0: must not contain a NUL"),
        ({"name": "a", "expires_at": "9999-12-31T23:59:59-05:00"}, "expires_at: is out of range"),
    ]
    for body, needle in bodies:
        r = await client.post(f"{BASE}/keys", json=body)
        assert needle in assert_error(r, 400, "invalid_request_error"), body
        r = await client.patch(f"{BASE}/keys/{key['id']}", json=body)
        assert needle in assert_error(r, 400, "invalid_request_error"), body
    assert stored(db, key["id"]) == before
    with db.connect() as conn:
        assert len(conn.execute(select(api_keys)).all()) == 1


async def test_unknown_ids_and_routes_are_404(client: httpx2.AsyncClient) -> None:
    path = f"{BASE}/keys/key_nope"
    for r in (
        await client.get(path),
        await client.patch(path, json={"rpm": 5}),
        await client.delete(path),
        await client.post(f"{path}/revoke"),
        await client.post(f"{path}/rotate"),
    ):
        assert "key_nope" in assert_error(r, 404, "not_found_error")
    assert_error(await client.get(f"{BASE}/nothing-here"), 404, "not_found_error")
    assert_error(await client.get(f"{BASE}/docs"), 404, "not_found_error")  # no CDN-backed UI
    assert_error(await client.put(f"{BASE}/keys"), 405, "invalid_request_error")


async def test_money_is_an_exact_string(client: httpx2.AsyncClient, db: Engine) -> None:
    key = await create(client, budget_usd="0.1", budget_period="day")
    assert key["budget_usd"] == "0.10000000"
    with db.begin() as conn:
        conn.execute(
            insert(key_spend),
            [
                {
                    "key_id": key["id"],
                    "period": current_period("day"),
                    "cost_usd": Decimal("0.00000001"),
                    "requests": 1,
                },
                {"key_id": key["id"], "period": "total", "cost_usd": Decimal("9"), "requests": 9},
            ],
        )
    shown = (await client.get(f"{BASE}/keys/{key['id']}")).json()
    assert (shown["spend_usd"], shown["spend_period"]) == ("0.00000001", current_period("day"))
    listed = (await client.get(f"{BASE}/keys")).json()["data"]
    assert listed[0]["spend_usd"] == "0.00000001"


# ---------------------------------------------------------------- usage, logs


def insert_logs(engine: Engine) -> list[dict[str, Any]]:
    now = time.time()
    records = [
        make_record(1, key_id="key_a", model="claude-sonnet-4-5", created_at=now - 30),
        make_record(2, key_id="key_a", model="claude-haiku-4-5", created_at=now - 20),
        make_record(
            3,
            key_id="key_b",
            model="claude-sonnet-4-5",
            created_at=now - 10,
            status_code=429,
            error_type="rate_limit_error",
            refusal="rpm",
        ),
        make_record(4, key_id="key_b", model="claude-sonnet-4-5", created_at=now - 5),
        make_record(
            5,
            key_id="key_a",
            model="claude-sonnet-4-5",
            created_at=now - 3 * 86400,  # outside since=1d
            request_body='{"secret prompt": 1}',
            response_body='{"answer": 2}',
        ),
    ]
    costs = [Decimal("0.001"), Decimal("0.0005"), None, Decimal("0.002"), Decimal("1")]
    rows = [record_to_row(r, c) for r, c in zip(records, costs, strict=True)]
    with engine.begin() as conn:
        conn.execute(insert(request_logs), rows)
    return rows


async def test_usage(client: httpx2.AsyncClient, db: Engine) -> None:
    insert_logs(db)
    r = await client.get(f"{BASE}/usage", params={"by": "model", "since": "1d"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["by"] == "model" and body["until"] is None
    by_model = {row["bucket"]: row for row in body["data"]}
    assert set(by_model) == {"claude-sonnet-4-5", "claude-haiku-4-5"}
    sonnet = by_model["claude-sonnet-4-5"]
    assert (sonnet["requests"], sonnet["errors"], sonnet["unpriced"]) == (3, 1, 1)
    assert sonnet["cost_usd"] == "0.00300000"
    assert sonnet["input_tokens"] == 101 + 103 + 104
    assert sonnet["latency_ms_p50"] == pytest.approx(103.0)

    by_key = (await client.get(f"{BASE}/usage?by=key&since=7d")).json()["data"]
    assert {(row["bucket"], row["requests"]) for row in by_key} == {("key_a", 3), ("key_b", 2)}
    assert {row["bucket"]: row["cost_usd"] for row in by_key}["key_a"] == "1.00150000"

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    by_day = (await client.get(f"{BASE}/usage?by=day&since=1d")).json()["data"]
    assert sum(row["requests"] for row in by_day) == 4 and today in {r["bucket"] for r in by_day}

    # An ISO `until` closes the window.
    until = (datetime.now(UTC) - timedelta(seconds=15)).isoformat()
    windowed = await client.get(f"{BASE}/usage", params={"since": "1d", "until": until})
    assert sum(row["requests"] for row in windowed.json()["data"]) == 2


async def test_logs(client: httpx2.AsyncClient, db: Engine) -> None:
    rows = insert_logs(db)
    r = await client.get(f"{BASE}/logs")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["id"] for d in data] == [rows[i]["id"] for i in (4, 0, 1, 2, 3)]  # oldest first
    assert data[1]["cost_usd"] == "0.00100000" and data[3]["cost_usd"] is None
    assert data[3]["refusal"] == "rpm" and data[3]["status_code"] == 429
    assert data[1]["created_at"].endswith("Z") and data[1]["logged_at"]
    assert all(d["request_body"] is None and d["response_body"] is None for d in data)
    assert "secret prompt" not in r.text

    async def ids(**params: Any) -> list[str]:
        r = await client.get(f"{BASE}/logs", params=params)
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()["data"]]

    assert await ids(key_id="key_b") == [rows[2]["id"], rows[3]["id"]]
    assert await ids(model="claude-haiku-4-5") == [rows[1]["id"]]
    assert await ids(limit=2) == [rows[2]["id"], rows[3]["id"]]  # the latest two
    assert await ids(errors="true") == [rows[2]["id"]]
    assert await ids(status_code=429) == [rows[2]["id"]]
    assert await ids(error_type="rate_limit_error", key_id="key_b") == [rows[2]["id"]]
    assert await ids(error_type="api_error") == []
    assert await ids(refusal="rpm") == [rows[2]["id"]]
    assert await ids(refusal="budget") == []
    assert await ids(key_id="key_a", model="claude-sonnet-4-5", limit=1) == [rows[0]["id"]]

    r = await client.get(f"{BASE}/logs", params={"include_bodies": "true", "key_id": "key_a"})
    first = r.json()["data"][0]
    assert first["request_body"] == '{"secret prompt": 1}'
    assert first["response_body"] == '{"answer": 2}'


def test_log_entries_carry_every_column() -> None:
    """A column added to request_logs must be added to the API's LogEntry too."""
    assert set(LogEntry.model_fields) == set(COLUMNS)


# -------------------------------------------------------------- openapi, 500


async def test_openapi_lists_every_route(client: httpx2.AsyncClient) -> None:
    r = await client.get(f"{BASE}/openapi.json")
    assert r.status_code == 200, r.text
    schema = r.json()
    paths = {path: set(ops) for path, ops in schema["paths"].items()}
    assert paths == {
        f"{BASE}/keys": {"get", "post"},
        f"{BASE}/keys/{{key_id}}": {"get", "patch", "delete"},
        f"{BASE}/keys/{{key_id}}/revoke": {"post"},
        f"{BASE}/keys/{{key_id}}/rotate": {"post"},
        f"{BASE}/users": {"get", "post"},
        f"{BASE}/users/{{user}}": {"get", "patch"},
        f"{BASE}/users/{{user}}/disable": {"post"},
        f"{BASE}/users/{{user}}/enable": {"post"},
        f"{BASE}/users/{{user}}/revoke-tokens": {"post"},
        f"{BASE}/groups": {"get", "post"},
        f"{BASE}/groups/{{group}}": {"get", "patch", "delete"},
        f"{BASE}/org": {"get", "patch"},
        f"{BASE}/audit": {"get"},
        f"{BASE}/usage": {"get"},
        f"{BASE}/logs": {"get"},
    }
    assert schema["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    assert schema["components"]["securitySchemes"]["adminSession"]["in"] == "cookie"
    assert schema["security"] == [{"adminKey": []}, {"adminSession": []}]
    for ops in schema["paths"].values():
        for op in ops.values():
            assert "422" not in op["responses"]
            assert {"400", "401", "404", "500"} <= set(op["responses"])
    out = schema["components"]["schemas"]
    assert out["KeyOut"]["properties"]["budget_usd"]["anyOf"][0]["type"] == "string"
    assert "key" in out["CreatedKey"]["properties"] and "key" not in out["KeyOut"]["properties"]
    assert "key_hash" not in orjson.dumps(schema).decode()


async def test_internal_errors_are_anthropic_shaped_and_logged_without_parameters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables
    try:
        app = build_admin_app(engine, KeyCache(static_keys=[], engine=engine), ADMIN)
        async with client_for(app) as c:
            with caplog.at_level(logging.ERROR, logger="claude_proxy.admin"):
                r = await c.get(f"{BASE}/keys")
                message = assert_error(r, 500, "api_error")
                assert "api_keys" not in message and "SELECT" not in message
                assert r.headers["request-id"] in message
                r = await c.post(f"{BASE}/keys", json={"name": "x"})
                assert_error(r, 500, "api_error")
    finally:
        engine.dispose()
    logged = caplog.text
    assert "admin API error: GET /admin/api/keys" in logged
    assert "no such table" in logged
    # A failed INSERT's parameters (the new key's hash) stay out of the log.
    assert "INSERT INTO api_keys" in logged and "hide_parameters" in logged
    assert "sk-proxy-" not in logged
