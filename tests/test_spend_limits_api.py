"""The Claude apps gateway's spend-limit routes, answered by the proxy, in-process on real
SQLite and PostgreSQL: shapes, errors, credentials, upserts, pagination, the effective
caps per user and the audit events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine

from claude_proxy.admin import build_spend_limits_app
from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenSigner
from claude_proxy.store.audit import list_audit
from claude_proxy.store.people import (
    Limits,
    create_group,
    create_user,
    get_group,
    get_org,
    get_user,
    update_group,
    upsert_oidc_user,
)
from claude_proxy.store.schema import (
    api_keys,
    audit_log,
    groups,
    key_spend,
    org_policy,
    user_groups,
    users,
)
from tests.admin_helpers import (
    BASE_URL,
    DATABASES,
    assert_error,
    client_for,
    emptied,
    migrated_database,
    minted,
    ok,
)
from tests.helpers import add_spend

ADMIN = "admin-key-for-spend-limit-tests-0123456789"
SECRET = "session-secret-for-spend-limit-tests-0123456789"
ISSUER = BASE_URL
BASE = "/v1/organizations/spend_limits"
ADMIN_GROUP = "finops"
REFUSED = "missing or invalid admin credentials"
CLI = "cli:test@host"


@pytest.fixture(scope="module", params=DATABASES)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    with migrated_database(request.param, tmp_path_factory) as eng:
        yield eng


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The module's database, emptied."""
    return emptied(engine, api_keys, key_spend, user_groups, users, groups, org_policy, audit_log)


@pytest.fixture
def people(db: Engine) -> People:
    cache = People(engine=db)
    cache.refresh()
    return cache


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(secret=SECRET, issuer=ISSUER, ttl=600)


@pytest.fixture
def app(db: Engine, people: People, signer: TokenSigner) -> Any:
    return build_spend_limits_app(
        db, ADMIN, signer=signer, people=people, admin_groups=frozenset({ADMIN_GROUP})
    )


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_for(app, {"x-api-key": ADMIN}) as c:
        yield c


ORG: dict[str, str] = {"type": "organization"}


def rbac_group(name: str) -> dict[str, str]:
    return {"type": "rbac_group", "rbac_group_id": name}


def user_scope(user_id: str) -> dict[str, str]:
    return {"type": "user", "user_id": user_id}


async def upsert(
    client: httpx2.AsyncClient, scope: dict[str, str], amount: str | None, period: str | None = None
) -> Any:
    """The spend limit of `scope` set to `amount` (None: removed) per `period` (left out:
    the default); the answer's body."""
    body: dict[str, Any] = {"scope": scope, "amount": amount}
    if period is not None:
        body["period"] = period
    return await ok(client.post(BASE, json=body))


def is_spend_limit(body: dict[str, Any]) -> None:
    assert set(body) == {
        "type",
        "id",
        "created_at",
        "updated_at",
        "scope",
        "amount",
        "currency",
        "period",
    }, body
    assert body["type"] == "spend_limit" and body["currency"] == "USD"
    assert body["id"].startswith("spl_")
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")


# ----------------------------------------------------------------------- auth


async def test_credentials(app: Any, db: Engine, people: People, signer: TokenSigner) -> None:
    admin = upsert_oidc_user(
        db, subject="00u-fin", email="fin@x.io", name="Fin", idp_groups=[ADMIN_GROUP]
    )
    dev = upsert_oidc_user(db, subject="00u-dev", email="dev@x.io", name="Dev", idp_groups=["eng"])
    people.refresh()
    as_admin = minted(signer, admin, [ADMIN_GROUP])
    session = signer.mint_admin_session(
        user_id=admin.id, subject="00u-fin", email="fin@x.io", ttl=600
    )
    refused: list[dict[str, str]] = [
        {},
        {"x-api-key": "wrong"},
        {"x-api-key": ADMIN + "x"},
        minted(signer, dev, ["eng"]),  # signed in, but not an admin
        {"authorization": "Bearer eyJforged"},
        {"authorization": f"Basic {ADMIN}"},
        {"cookie": f"{ADMIN_COOKIE}={session}"},  # the console's session is not for these
    ]
    async with client_for(app) as anon:
        for headers in refused:
            for method, path in (("GET", BASE), ("POST", BASE), ("GET", f"{BASE}/nope")):
                r = await anon.request(method, path, headers=headers, json={})
                assert assert_error(r, 401, "authentication_error") == REFUSED, headers
        for headers in (
            {"x-api-key": ADMIN},
            {"authorization": f"Bearer {ADMIN}"},
            as_admin,
        ):
            body = await ok(anon.get(BASE, headers=headers))
            assert body == {"data": [], "has_more": False, "first_id": None, "last_id": None}
        # A signed-in admin's change is audited under their identity.
        await ok(
            anon.post(
                BASE,
                headers=as_admin,
                json={"scope": {"type": "organization"}, "amount": "100"},
            )
        )
    assert list_audit(db, limit=1)[0].actor == "oidc:00u-fin fin@x.io"


# ---------------------------------------------------------------- upsert, CRUD


async def test_organization_scope_upserts_one_period(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    body = await upsert(client, ORG, "50000")
    is_spend_limit(body)
    assert body["id"] == "spl_org" and body["scope"] == {"type": "organization"}
    assert (body["amount"], body["period"]) == ("50000", "monthly")  # the default period
    org = get_org(db)
    assert (org.member_budget_usd, org.limits.budget_period) == (Decimal(500), "month")
    assert org.limits.budget_usd is None  # a per-person cap, not a pool

    # The proxy keeps one period per scope: another period replaces it.
    body = await ok(
        client.post(
            BASE,
            json={
                "scope": {"type": "organization"},
                "amount": "2500",
                "period": "weekly",
                "currency": "USD",
            },
        )
    )
    assert (body["id"], body["amount"], body["period"]) == ("spl_org", "2500", "weekly")
    listed = await ok(client.get(BASE))
    assert [(d["id"], d["period"]) for d in listed["data"]] == [("spl_org", "weekly")]
    shown = await ok(client.get(f"{BASE}/spl_org"))
    assert shown == listed["data"][0]

    # "0" blocks every request; it is a cap, not the absence of one.
    assert (await upsert(client, ORG, "0"))["amount"] == "0"
    # null removes the cap.
    body = await upsert(client, ORG, None)
    assert (body["id"], body["amount"]) == ("spl_org", None)
    assert get_org(db).member_budget_usd is None and get_org(db).limits.budget_period is None
    r = await client.get(f"{BASE}/spl_org")
    assert assert_error(r, 404, "not_found_error") == "spend limit not found"


async def test_group_scope(client: httpx2.AsyncClient, db: Engine) -> None:
    # An IdP group the proxy has no group for yet: one is made, with the cap.
    body = await upsert(client, rbac_group("Data Science"), "1999", "daily")
    is_spend_limit(body)
    group = get_group(db, "Data Science")
    assert group is not None
    assert body["id"] == f"spl_{group.id}"
    assert body["scope"] == {"type": "rbac_group", "rbac_group_id": "Data Science"}
    assert (group.member_budget_usd, group.limits.budget_period) == (Decimal("19.99"), "day")

    # A group with a pool budget: its per-member cap shares the pool's period.
    pooled = create_group(
        db,
        name="eng",
        actor=CLI,
        limits=Limits(budget_usd=Decimal(1000), budget_period="month"),
    )
    r = await client.post(
        BASE,
        json={
            "scope": {"type": "rbac_group", "rbac_group_id": "eng"},
            "amount": "100",
            "period": "weekly",
        },
    )
    assert "month" in assert_error(r, 400, "invalid_request_error")
    body = await upsert(client, rbac_group("eng"), "4000")
    assert body["id"] == f"spl_{pooled.id}" and body["amount"] == "4000"
    # Removing the cap keeps the pool and its period.
    gone = await ok(client.delete(f"{BASE}/spl_{pooled.id}"))
    assert gone == {"type": "spend_limit_deleted", "id": f"spl_{pooled.id}"}
    after = get_group(db, "eng")
    assert after is not None and after.member_budget_usd is None
    assert (after.limits.budget_usd, after.limits.budget_period) == (Decimal(1000), "month")
    assert_error(await client.delete(f"{BASE}/spl_{pooled.id}"), 404, "not_found_error")
    # Removing the cap of a group that does not exist: nothing to remove.
    r = await client.post(
        BASE, json={"scope": {"type": "rbac_group", "rbac_group_id": "ghosts"}, "amount": None}
    )
    assert_error(r, 404, "not_found_error")


async def test_user_scope(client: httpx2.AsyncClient, db: Engine) -> None:
    signed = upsert_oidc_user(db, subject="00u-ann", email="ann@x.io", name="Ann", idp_groups=[])
    local = create_user(db, email="lee@x.io", actor=CLI)
    # The gateway names a user by their IdP subject; a local user by the proxy's id.
    body = await upsert(client, user_scope("00u-ann"), "700")
    is_spend_limit(body)
    assert body["id"] == f"spl_{signed.id}"
    assert body["scope"] == {"type": "user", "user_id": "00u-ann"}
    ann = get_user(db, signed.id)
    assert ann is not None
    assert (ann.limits.budget_usd, ann.limits.budget_period) == (Decimal(7), "month")
    body = await upsert(client, user_scope(local.id), "1", "daily")
    assert body["scope"] == {"type": "user", "user_id": local.id}
    r = await client.post(
        BASE, json={"scope": {"type": "user", "user_id": "00u-nobody"}, "amount": "1"}
    )
    assert_error(r, 404, "not_found_error")
    await upsert(client, user_scope("00u-ann"), None)
    ann = get_user(db, signed.id)
    assert ann is not None and ann.limits.budget_usd is None and ann.limits.budget_period is None


async def test_invalid_bodies_and_ids(client: httpx2.AsyncClient, db: Engine) -> None:
    org = {"type": "organization"}
    for body, needle in (
        ({"scope": org, "amount": "12.5"}, "whole US cents"),
        ({"scope": org, "amount": "-1"}, "whole US cents"),
        ({"scope": org, "amount": "1e5"}, "whole US cents"),
        ({"scope": org, "amount": "9" * 20}, "amount"),
        ({"scope": org, "amount": True}, "amount"),
        ({"scope": org, "amount": "1", "currency": "EUR"}, "currency"),
        ({"scope": org, "amount": "1", "period": "yearly"}, "period"),
        ({"scope": {"type": "team"}, "amount": "1"}, "scope"),
        ({"scope": {"type": "rbac_group"}, "amount": "1"}, "rbac_group_id"),
        ({"scope": {"type": "user", "user_id": ""}, "amount": "1"}, "user_id"),
        ({"amount": "1"}, "scope"),
        ({"scope": org}, "amount"),
        ({"scope": org, "amount": "1", "extra": 1}, "extra"),
    ):
        r = await client.post(BASE, json=body)
        assert needle in assert_error(r, 400, "invalid_request_error"), body
    assert get_org(db).member_budget_usd is None
    for path in ("spl_nope", "spl_grp_0000", "spl_usr_0000", "spl_org"):
        r = await client.get(f"{BASE}/{path}")
        assert assert_error(r, 404, "not_found_error") == "spend limit not found"
        assert_error(await client.delete(f"{BASE}/{path}"), 404, "not_found_error")
    assert_error(await client.get(f"{BASE}/{'x' * 100}"), 400, "invalid_request_error")
    assert_error(await client.put(BASE, json={}), 405, "invalid_request_error")
    assert_error(await client.get("/v1/organizations/api_keys"), 404, "not_found_error")


# ------------------------------------------------------------------ pagination


async def test_list_pages(client: httpx2.AsyncClient, db: Engine) -> None:
    await upsert(client, ORG, "100")
    for name in ("a", "b", "c"):
        await upsert(client, rbac_group(name), "200")
    for subject in ("s1", "s2"):
        upsert_oidc_user(db, subject=subject, email=f"{subject}@x.io", name=None, idp_groups=[])
        await upsert(client, user_scope(subject), "300")
    everything = await ok(client.get(BASE, params={"limit": 1000}))
    ids = [d["id"] for d in everything["data"]]
    assert len(ids) == 6 and ids == sorted(ids) and not everything["has_more"]

    first = await ok(client.get(BASE, params={"limit": 2}))
    assert [d["id"] for d in first["data"]] == ids[:2]
    assert (first["has_more"], first["first_id"], first["last_id"]) == (True, ids[0], ids[1])
    second = await ok(client.get(BASE, params={"limit": 2, "after_id": first["last_id"]}))
    assert [d["id"] for d in second["data"]] == ids[2:4] and second["has_more"]
    last = await ok(client.get(BASE, params={"limit": 2, "after_id": ids[3]}))
    assert [d["id"] for d in last["data"]] == ids[4:] and not last["has_more"]
    back = await ok(client.get(BASE, params={"limit": 2, "before_id": ids[4]}))
    assert [d["id"] for d in back["data"]] == ids[2:4] and back["has_more"]

    async def scoped(kind: str) -> list[str]:
        body = await ok(client.get(BASE, params={"scope_type": kind}))
        return [d["scope"]["type"] for d in body["data"]]

    assert await scoped("rbac_group") == ["rbac_group"] * 3
    assert await scoped("user") == ["user"] * 2
    assert await scoped("organization") == ["organization"]
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"scope_type": "team"},
        {"after_id": ids[0], "before_id": ids[1]},
    ):
        assert_error(await client.get(BASE, params=params), 400, "invalid_request_error")


# ------------------------------------------------------------------- effective


async def test_effective_caps_per_user(client: httpx2.AsyncClient, db: Engine) -> None:
    await upsert(client, ORG, "500", "weekly")
    await upsert(client, rbac_group("eng"), "4000")
    await upsert(client, rbac_group("ml"), "3000")
    eng = get_group(db, "eng")
    assert eng is not None
    # Alice is in both through the IdP: the tightest per-member cap wins (ml's $30).
    alice = upsert_oidc_user(
        db, subject="00u-alice", email="alice@x.io", name="Alice", idp_groups=["eng", "ml", "x"]
    )
    bob = upsert_oidc_user(db, subject="00u-bob", email="bob@x.io", name="Bob", idp_groups=["eng"])
    carol = create_user(db, email="carol@x.io", actor=CLI)  # no group, no sign-in yet
    await upsert(client, user_scope("00u-bob"), "1000", "daily")
    add_spend(db, alice.id, "month", "12.3456")
    add_spend(db, bob.id, "day", "2")
    add_spend(db, carol.id, "week", "0.0001")

    body = await ok(client.get(f"{BASE}/effective"))
    assert body["next_page"] is None
    rows = {r["actor"]["email_address"]: r for r in body["data"]}
    assert list(rows) == ["alice@x.io", "bob@x.io", "carol@x.io"]
    a = rows["alice@x.io"]
    ml = get_group(db, "ml")
    assert ml is not None
    assert a == {
        "scope": {"type": "user", "user_id": "00u-alice"},
        "groups": ["eng", "ml", "x"],
        "actor": {
            "type": "user_actor",
            "user_id": "00u-alice",
            "name": "Alice",
            "email_address": "alice@x.io",
            "deleted": False,
        },
        "amount": "3000",
        "currency": "USD",
        "period": "monthly",
        "source": {"type": "rbac_group", "rbac_group_id": "ml"},
        "spend_limit_id": f"spl_{ml.id}",
        "period_to_date_spend": "1234.56",
    }
    b = rows["bob@x.io"]
    assert (b["amount"], b["period"], b["source"]) == (
        "1000",
        "daily",
        {"type": "user", "user_id": "00u-bob"},
    )
    assert (b["spend_limit_id"], b["period_to_date_spend"]) == (f"spl_{bob.id}", "200")
    c = rows["carol@x.io"]
    assert c["scope"] == {"type": "user", "user_id": carol.id}
    assert (c["amount"], c["period"], c["source"]) == ("500", "weekly", {"type": "organization"})
    assert (c["spend_limit_id"], c["period_to_date_spend"]) == ("spl_org", "0.01")

    # Asked for a period the user's cap is not in: no cap there, and that period's spend.
    body = await ok(
        client.get(
            f"{BASE}/effective",
            params={"user_ids[]": "00u-alice", "period[]": ["daily", "monthly"]},
        )
    )
    assert [(r["period"], r["amount"], r["source"] is None) for r in body["data"]] == [
        ("daily", None, True),
        ("monthly", "3000", False),
    ]
    assert body["data"][0]["period_to_date_spend"] == "0"

    # By several ids (a subject, a local user's id), by search, sorted, paged.
    body = await ok(
        client.get(f"{BASE}/effective", params={"user_ids[]": ["00u-bob", carol.id, "nobody"]})
    )
    assert [r["actor"]["email_address"] for r in body["data"]] == ["bob@x.io", "carol@x.io"]
    body = await ok(client.get(f"{BASE}/effective", params={"q": "ALI"}))
    assert [r["actor"]["email_address"] for r in body["data"]] == ["alice@x.io"]
    body = await ok(client.get(f"{BASE}/effective", params={"sort": "spend_desc", "limit": 2}))
    assert [r["actor"]["email_address"] for r in body["data"]] == ["alice@x.io", "bob@x.io"]
    assert body["next_page"] is not None
    rest = await ok(
        client.get(
            f"{BASE}/effective",
            params={"sort": "spend_desc", "limit": 2, "page": body["next_page"]},
        )
    )
    assert [r["actor"]["email_address"] for r in rest["data"]] == ["carol@x.io"]
    assert rest["next_page"] is None
    for params in (
        {"period[]": "yearly"},
        {"sort": "name"},
        {"page": "abc"},
        {"user_ids[]": [f"u{i}" for i in range(101)]},
        {"limit": 0},
    ):
        assert_error(
            await client.get(f"{BASE}/effective", params=params), 400, "invalid_request_error"
        )


# ----------------------------------------------------------------------- audit


async def test_audit_events(client: httpx2.AsyncClient, db: Engine) -> None:
    await upsert(client, ORG, "100")
    await upsert(client, ORG, "250", "daily")
    group = create_group(db, name="eng", actor=CLI)
    update_group(db, group.id, actor=CLI, rpm=10)  # not a spend limit: not an event
    await upsert(client, rbac_group("eng"), "900")
    await ok(client.delete(f"{BASE}/spl_org"))

    body = await ok(client.get(f"{BASE}/audit"))
    assert body["has_more"] is False
    events = body["data"]
    assert [(e["action"], e["target_id"]) for e in events] == [
        ("spend_limit.delete", "spl_org"),
        ("spend_limit.create", f"spl_{group.id}"),
        ("spend_limit.update", "spl_org"),
        ("spend_limit.create", "spl_org"),
    ]
    for event in events:
        assert set(event) == {
            "type",
            "id",
            "created_at",
            "actor",
            "action",
            "target_id",
            "before",
            "after",
            "reason",
        }
        assert event["type"] == "audit_event" and event["actor"] == "admin-key"
        assert event["id"].startswith("aud_") and event["created_at"].endswith("Z")
    assert events[0]["before"] == {
        "scope": {"type": "organization"},
        "amount": "250",
        "currency": "USD",
        "period": "daily",
    }
    assert events[0]["after"] is None
    assert events[1]["after"]["scope"] == {"type": "rbac_group", "rbac_group_id": "eng"}
    assert events[2]["before"]["amount"] == "100" and events[2]["after"]["amount"] == "250"
    assert events[3]["before"] is None

    page = await ok(client.get(f"{BASE}/audit", params={"limit": 2}))
    assert [e["id"] for e in page["data"]] == [e["id"] for e in events[:2]] and page["has_more"]
    page = await ok(client.get(f"{BASE}/audit", params={"limit": 2, "after_id": events[1]["id"]}))
    assert [e["id"] for e in page["data"]] == [e["id"] for e in events[2:]]
    assert not page["has_more"]
    assert_error(
        await client.get(f"{BASE}/audit", params={"limit": 0}), 400, "invalid_request_error"
    )


async def test_a_change_holds_for_this_process_at_once(
    client: httpx2.AsyncClient, db: Engine, people: People
) -> None:
    user = upsert_oidc_user(db, subject="00u-z", email="z@x.io", name=None, idp_groups=[])
    people.refresh()
    assert people.budgets().get(user.id) is None
    await upsert(client, user_scope("00u-z"), "5")
    assert people.budgets()[user.id] == "month"  # no wait for the background refresh
