"""The admin API's people routes in-process (httpx over ASGI) on real SQLite and
PostgreSQL: users, groups, the org policy, the read-only audit log, keys by owner, usage
by user and group, and every way in (the admin key, an admin session cookie, an
admin-group bearer) with the real TokenSigner and the real people cache.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, insert, select

from claude_proxy.admin import build_admin_app
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenSigner
from claude_proxy.store.audit import list_audit
from claude_proxy.store.columns import current_period
from claude_proxy.store.people import upsert_oidc_user
from claude_proxy.store.rows import record_to_row
from claude_proxy.store.schema import (
    api_keys,
    audit_log,
    groups,
    key_spend,
    org_policy,
    request_logs,
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
from tests.store.conftest import make_record

ADMIN = "admin-key-for-people-tests-0123456789"
SECRET = "session-secret-for-people-tests-0123456789abcdef"
ISSUER = BASE_URL
BASE = "/admin/api"
ADMIN_GROUP = "platform-admins"


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
    return emptied(
        engine,
        api_keys,
        key_spend,
        request_logs,
        user_groups,
        users,
        groups,
        org_policy,
        audit_log,
    )


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
    keys = KeyCache(static_keys=[], engine=db)
    return build_admin_app(
        db, keys, ADMIN, signer=signer, people=people, admin_groups=frozenset({ADMIN_GROUP})
    )


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_for(app, {"authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def signed_in(engine: Engine, email: str, groups_: list[str], subject: str | None = None) -> Any:
    """A user as the sign-in makes them: from the IdP's claims."""
    return upsert_oidc_user(
        engine,
        subject=subject or f"sub-{email.split('@')[0]}",
        email=email,
        name=email.split("@")[0].title(),
        idp_groups=groups_,
    )


# ---------------------------------------------------------------------- users


async def test_users_create_show_update_and_effective_policy(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    eng = await ok(
        client.post(
            f"{BASE}/groups",
            json={
                "name": "eng",
                "priority": 10,
                "models": ["claude-sonnet-*"],
                "rpm": 100,
                "budget_usd": "500",
                "budget_period": "month",
                "member_budget_usd": "40",
            },
        ),
        201,
    )
    assert eng["id"].startswith("grp_") and eng["members"] == []
    assert (eng["budget_usd"], eng["member_budget_usd"]) == ("500.00000000", "40.00000000")
    ml = await ok(
        client.post(
            f"{BASE}/groups",
            json={"name": "ml", "priority": 50, "member_budget_usd": 25, "budget_period": "month"},
        ),
        201,
    )
    await ok(
        client.patch(
            f"{BASE}/org", json={"member_budget_usd": "10", "budget_period": "week", "tpm": 9000}
        )
    )

    alice = await ok(
        client.post(
            f"{BASE}/users",
            json={"email": "Alice@Example.com", "name": "Alice", "groups": ["eng", ml["id"]]},
        ),
        201,
    )
    assert alice["id"].startswith("usr_") and alice["email"] == "alice@example.com"
    assert (alice["status"], alice["source"], alice["subject"]) == ("active", "local", None)
    assert [(g["name"], g["via"]) for g in alice["groups"]] == [
        ("eng", ["local"]),
        ("ml", ["local"]),
    ]
    effective = alice["effective"]
    assert effective["policy_group"]["name"] == "eng"  # priority 10 before 50
    # The tightest member budget of her groups (ml's 25), not the policy group's.
    personal = effective["personal_budget"]
    assert (personal["budget_usd"], personal["budget_period"]) == ("25.00000000", "month")
    assert (personal["source"], personal["source_name"]) == ("group", "ml")
    assert [lv["kind"] for lv in effective["levels"]] == ["org", "group", "user"]
    org_level, group_level, user_level = effective["levels"]
    assert org_level["tpm"] == 9000 and org_level["budget_usd"] is None
    assert group_level["models"] == ["claude-sonnet-*"] and group_level["budget_usd"]
    assert user_level["budget_usd"] == "25.00000000"

    # Spend shows at every level and period.
    add_spend(db, alice["id"], "month", "3.5")
    add_spend(db, alice["id"], "total", "7")
    add_spend(db, eng["id"], "month", "120")
    shown = await ok(client.get(f"{BASE}/users/ALICE@example.com"))
    assert shown["spend"]["month"] == "3.50000000" and shown["spend"]["total"] == "7.00000000"
    assert shown["spend"]["day"] == "0.00000000"
    assert shown["effective"]["personal_budget"]["spend_usd"] == "3.50000000"
    assert shown["effective"]["levels"][1]["spend_usd"] == "120.00000000"
    assert shown["effective"]["levels"][1]["spend_period"] == current_period("month")

    # Her own budget wins over every group's.
    changed = await ok(
        client.patch(
            f"{BASE}/users/{alice['id']}",
            json={"budget_usd": "60", "budget_period": "day", "name": "Alice A.", "rpm": 5},
        )
    )
    assert (changed["name"], changed["rpm"], changed["budget_usd"]) == (
        "Alice A.",
        5,
        "60.00000000",
    )
    assert changed["effective"]["personal_budget"]["source"] == "user"
    # null removes it (and its period): back to the groups' cap.
    changed = await ok(client.patch(f"{BASE}/users/{alice['id']}", json={"budget_usd": None}))
    assert (changed["budget_usd"], changed["budget_period"]) == (None, None)
    assert changed["effective"]["personal_budget"]["source_name"] == "ml"
    # groups replaces the local memberships; with none, the org default applies.
    changed = await ok(client.patch(f"{BASE}/users/{alice['id']}", json={"groups": []}))
    assert changed["groups"] == [] and changed["effective"]["policy_group"] is None
    personal = changed["effective"]["personal_budget"]
    assert (personal["source"], personal["budget_period"]) == ("org", "week")

    listed = await ok(client.get(f"{BASE}/users"))
    assert [u["email"] for u in listed["data"]] == ["alice@example.com"]
    assert "effective" not in listed["data"][0]


async def test_user_lists_filter_by_group_and_status(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    await ok(client.post(f"{BASE}/groups", json={"name": "eng"}), 201)
    await ok(client.post(f"{BASE}/users", json={"email": "a@x.io", "groups": ["eng"]}), 201)
    await ok(client.post(f"{BASE}/users", json={"email": "b@x.io"}), 201)
    signed_in(db, "c@x.io", ["eng", "other-idp-group"])  # a member through the IdP
    await ok(client.post(f"{BASE}/users/b@x.io/disable", json={"reason": "left"}))

    async def emails(**params: str) -> list[str]:
        body = await ok(client.get(f"{BASE}/users", params=params))
        return [u["email"] for u in body["data"]]

    assert await emails() == ["a@x.io", "b@x.io", "c@x.io"]
    assert await emails(group="eng") == ["a@x.io", "c@x.io"]
    assert await emails(status="disabled") == ["b@x.io"]
    assert await emails(status="active", group="eng") == ["a@x.io", "c@x.io"]
    c = (await ok(client.get(f"{BASE}/users/c@x.io")))["groups"]
    assert c == [{"id": c[0]["id"], "name": "eng", "via": ["idp"]}]
    assert "nope" in assert_error(
        await client.get(f"{BASE}/users", params={"group": "nope"}), 400, "invalid_request_error"
    )
    assert_error(
        await client.get(f"{BASE}/users", params={"status": "gone"}), 400, "invalid_request_error"
    )

    group = await ok(client.get(f"{BASE}/groups/eng"))
    assert [(m["email"], m["via"]) for m in group["members"]] == [
        ("a@x.io", ["local"]),
        ("c@x.io", ["idp"]),
    ]


async def test_disable_enable_and_revoke_tokens(
    client: httpx2.AsyncClient, db: Engine, people: People
) -> None:
    user = await ok(client.post(f"{BASE}/users", json={"email": "dev@x.io"}), 201)
    disabled = await ok(client.post(f"{BASE}/users/{user['id']}/disable", json={"reason": "left"}))
    assert (disabled["status"], disabled["status_reason"]) == ("disabled", "left")
    assert disabled["tokens_valid_after"] is not None
    # This process's people cache knows it already: no wait for the refresh.
    info = people.user(user["id"])
    assert info is not None and not info.active

    enabled = await ok(client.post(f"{BASE}/users/dev@x.io/enable"))
    assert (enabled["status"], enabled["status_reason"]) == ("active", None)
    info = people.user(user["id"])
    assert info is not None and info.active

    before = enabled["tokens_valid_after"]
    revoked = await ok(client.post(f"{BASE}/users/dev@x.io/revoke-tokens"))
    assert revoked["tokens_valid_after"] >= before
    # No body is needed to disable.
    assert (await ok(client.post(f"{BASE}/users/dev@x.io/disable")))["status_reason"] is None


async def test_user_errors(client: httpx2.AsyncClient) -> None:
    await ok(client.post(f"{BASE}/users", json={"email": "a@x.io"}), 201)
    r = await client.post(f"{BASE}/users", json={"email": "A@X.io"})
    assert "already exists" in assert_error(r, 409, "invalid_request_error")
    for body, needle in (
        ({"email": "not-an-email"}, "email"),
        ({}, "email: Field required"),
        ({"email": "b@x.io", "groups": ["nope"]}, "nope"),
        ({"email": "b@x.io", "budget_usd": 5}, "needs both"),
        ({"email": "b@x.io", "rpm": 0}, "rpm"),
        ({"email": "b@x.io", "budget_period": "year", "budget_usd": 1}, "budget_period"),
        ({"email": "b@x.io", "email_verified": True}, "Extra inputs"),
        ({"email": "x" * 400 + "@x.io"}, "email"),
        ({"email": "b@x.io", "name": "n\x00"}, "NUL"),
    ):
        r = await client.post(f"{BASE}/users", json=body)
        assert needle in assert_error(r, 400, "invalid_request_error"), body
    for method, path in (
        ("GET", "/users/usr_nope"),
        ("PATCH", "/users/nobody@x.io"),
        ("POST", "/users/nobody@x.io/disable"),
        ("POST", "/users/nobody@x.io/enable"),
        ("POST", "/users/usr_nope/revoke-tokens"),
    ):
        body = {"name": "x"} if method == "PATCH" else None
        r = await client.request(method, f"{BASE}{path}", json=body)
        assert_error(r, 404, "not_found_error")
    r = await client.patch(f"{BASE}/users/a@x.io", json={})
    assert "nothing to change" in assert_error(r, 400, "invalid_request_error")
    r = await client.patch(f"{BASE}/users/a@x.io", json={"email": None})
    assert "email" in assert_error(r, 400, "invalid_request_error")


# --------------------------------------------------------------------- groups


async def test_groups_update_delete_and_conflicts(client: httpx2.AsyncClient, db: Engine) -> None:
    group = await ok(
        client.post(
            f"{BASE}/groups",
            json={"name": "ci", "description": "bots", "budget_usd": 5, "budget_period": "day"},
        ),
        201,
    )
    assert group["priority"] == 100 and group["description"] == "bots"
    r = await client.post(f"{BASE}/groups", json={"name": "ci"})
    assert_error(r, 409, "invalid_request_error")

    changed = await ok(
        client.patch(f"{BASE}/groups/ci", json={"priority": 5, "member_budget_usd": "1"})
    )
    assert (changed["priority"], changed["member_budget_usd"]) == (5, "1.00000000")
    # Removing the pool keeps the period for the per-member budget...
    changed = await ok(client.patch(f"{BASE}/groups/{group['id']}", json={"budget_usd": None}))
    assert (changed["budget_usd"], changed["budget_period"]) == (None, "day")
    # ...and removing that too leaves no period behind.
    changed = await ok(client.patch(f"{BASE}/groups/ci", json={"member_budget_usd": None}))
    assert (changed["member_budget_usd"], changed["budget_period"]) == (None, None)
    for body, needle in (
        ({"member_budget_usd": 3}, "period"),
        ({"priority": -1}, "priority"),
        ({"priority": None}, "priority"),
        ({"name": None}, "name"),
        ({"name": "x" * 200}, "name"),
    ):
        r = await client.patch(f"{BASE}/groups/ci", json=body)
        assert needle in assert_error(r, 400, "invalid_request_error"), body

    listed = await ok(client.get(f"{BASE}/groups"))
    assert [g["name"] for g in listed["data"]] == ["ci"]

    key = await ok(client.post(f"{BASE}/keys", json={"name": "ci-bot", "group": "ci"}), 201)
    assert key["group_id"] == group["id"]
    gone = await ok(client.delete(f"{BASE}/groups/ci"))
    assert gone == {"type": "group_deleted", "id": group["id"], "name": "ci"}
    # Its service keys are revoked with it.
    assert (await ok(client.get(f"{BASE}/keys/{key['id']}")))["status"] == "revoked"
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(method, f"{BASE}/groups/ci", json={"priority": 1})
        assert_error(r, 404, "not_found_error")


# ------------------------------------------------------------------------ org


async def test_org_policy(client: httpx2.AsyncClient, db: Engine) -> None:
    org = await ok(client.get(f"{BASE}/org"))
    assert org["budget_usd"] is None and org["updated_at"] is None
    assert org["spend"]["total"] == "0.00000000"
    org = await ok(
        client.patch(
            f"{BASE}/org",
            json={"models": ["claude-*"], "budget_usd": "1000", "budget_period": "month"},
        )
    )
    assert org["models"] == ["claude-*"] and org["budget_usd"] == "1000.00000000"
    assert org["updated_at"] is not None
    add_spend(db, "org", "month", "2")
    assert (await ok(client.get(f"{BASE}/org")))["spend"]["month"] == "2.00000000"
    org = await ok(client.patch(f"{BASE}/org", json={"budget_usd": None}))
    assert (org["budget_usd"], org["budget_period"]) == (None, None)
    for body in ({}, {"rpm": 0}, {"member_budget_usd": 1}, {"id": "org"}):
        assert_error(await client.patch(f"{BASE}/org", json=body), 400, "invalid_request_error")


# ---------------------------------------------------------------------- audit


async def test_every_change_is_audited_and_the_log_is_read_only(
    client: httpx2.AsyncClient, db: Engine
) -> None:
    await ok(client.post(f"{BASE}/groups", json={"name": "eng"}), 201)
    user = await ok(client.post(f"{BASE}/users", json={"email": "a@x.io", "groups": ["eng"]}), 201)
    await ok(client.patch(f"{BASE}/users/a@x.io", json={"rpm": 7}))
    await ok(client.post(f"{BASE}/users/a@x.io/disable", json={"reason": "on leave"}))
    await ok(client.patch(f"{BASE}/org", json={"rpm": 1000}))
    key = await ok(client.post(f"{BASE}/keys", json={"name": "k", "group": "eng"}), 201)
    rotated = await ok(client.post(f"{BASE}/keys/{key['id']}/rotate"))

    log = await ok(client.get(f"{BASE}/audit"))
    assert log["has_more"] is False
    entries = log["data"]
    assert [e["action"] for e in entries] == [
        "key.rotate",
        "key.create",
        "org.update",
        "user.disable",
        "user.update",
        "user.create",
        "group.create",
    ]
    assert {e["actor"] for e in entries} == {"admin-key"}
    update = entries[4]
    assert (update["target_type"], update["target_id"]) == ("user", user["id"])
    assert (update["before"]["rpm"], update["after"]["rpm"]) == (None, 7)
    assert entries[3]["reason"] == "on leave"
    # The display prefix is kept (it tells keys apart); never a secret or a hash.
    assert key["key"] not in str(entries) and rotated["key"] not in str(entries)
    assert "key_hash" not in str(entries)

    # Filters and paging.
    async def actions(**params: Any) -> tuple[list[str], bool]:
        body = await ok(client.get(f"{BASE}/audit", params=params))
        return [e["action"] for e in body["data"]], body["has_more"]

    assert await actions(target_type="user") == (
        ["user.disable", "user.update", "user.create"],
        False,
    )
    assert await actions(target_id=user["id"], action="user.update") == (["user.update"], False)
    assert await actions(limit=2) == (["key.rotate", "key.create"], True)
    assert await actions(limit=2, before_id=entries[1]["id"]) == (
        ["org.update", "user.disable"],
        True,
    )
    assert await actions(limit=3, after_id=entries[3]["id"]) == (
        ["org.update", "key.create", "key.rotate"],
        False,
    )
    for params in ({"limit": 0}, {"limit": 1001}, {"action": "x" * 500}):
        assert_error(await client.get(f"{BASE}/audit", params=params), 400, "invalid_request_error")

    # Never editable through the API: every write method is a 405, and nothing changes.
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/audit", f"/audit/{entries[0]['id']}", "/audit/anything/else"):
            r = await client.request(method, f"{BASE}{path}", json={"action": "x"})
            assert "read-only" in assert_error(r, 405, "invalid_request_error")
            assert r.headers["allow"] == "GET"
    assert len(list_audit(db, limit=1000)) == len(entries)


# ------------------------------------------------------------------ keys, usage


async def test_keys_by_owner(client: httpx2.AsyncClient, db: Engine) -> None:
    await ok(client.post(f"{BASE}/groups", json={"name": "ci"}), 201)
    alice = await ok(client.post(f"{BASE}/users", json={"email": "alice@x.io"}), 201)
    await ok(client.post(f"{BASE}/users", json={"email": "bob@x.io"}), 201)
    mine = await ok(client.post(f"{BASE}/keys", json={"name": "laptop", "user": "ALICE@x.io"}), 201)
    assert (mine["user_id"], mine["group_id"]) == (alice["id"], None)
    bot = await ok(client.post(f"{BASE}/keys", json={"name": "bot", "group": "ci"}), 201)
    loose = await ok(client.post(f"{BASE}/keys", json={"name": "old"}), 201)
    assert (loose["user_id"], loose["group_id"]) == (None, None)

    async def names(**params: str) -> list[str]:
        return [k["name"] for k in (await ok(client.get(f"{BASE}/keys", params=params)))["data"]]

    assert await names() == ["laptop", "bot", "old"]
    assert await names(user="alice@x.io") == ["laptop"]
    assert await names(user=alice["id"]) == ["laptop"]
    assert await names(user="bob@x.io") == []
    assert await names(group="ci") == ["bot"]
    assert bot["group_id"] and (await ok(client.get(f"{BASE}/keys/{bot['id']}")))["group_id"]

    for body, needle in (
        ({"name": "k", "user": "nobody@x.io"}, "user: no user"),
        ({"name": "k", "group": "nope"}, "group: no group"),
        ({"name": "k", "user": "alice@x.io", "group": "ci"}, "not both"),
    ):
        assert needle in assert_error(
            await client.post(f"{BASE}/keys", json=body), 400, "invalid_request_error"
        )
    assert_error(await client.get(f"{BASE}/keys?user=nobody@x.io"), 400, "invalid_request_error")
    # A disabled user gets no new key.
    await ok(client.post(f"{BASE}/users/bob@x.io/disable"))
    r = await client.post(f"{BASE}/keys", json={"name": "k", "user": "bob@x.io"})
    assert "disabled" in assert_error(r, 400, "invalid_request_error")
    with db.connect() as conn:
        assert len(conn.execute(select(api_keys)).all()) == 3


async def test_usage_and_logs_by_user_and_group(client: httpx2.AsyncClient, db: Engine) -> None:
    now = time.time()
    records = [
        make_record(1, user_id="usr_a", group_id="grp_eng", created_at=now - 30),
        make_record(2, user_id="usr_a", group_id="grp_eng", created_at=now - 20),
        make_record(3, user_id="usr_b", group_id="grp_ml", created_at=now - 10),
        make_record(4, key_id="key_unowned", created_at=now - 5),
    ]
    costs = [Decimal("0.25"), Decimal("0.5"), Decimal("1"), Decimal("2")]
    with db.begin() as conn:
        conn.execute(
            insert(request_logs),
            [record_to_row(r, c) for r, c in zip(records, costs, strict=True)],
        )
    by_user = await ok(client.get(f"{BASE}/usage", params={"by": "user", "since": "1d"}))
    assert by_user["by"] == "user"
    assert {(r["bucket"], r["requests"], r["cost_usd"]) for r in by_user["data"]} == {
        ("usr_a", 2, "0.75000000"),
        ("usr_b", 1, "1.00000000"),
        (None, 1, "2.00000000"),
    }
    by_group = await ok(client.get(f"{BASE}/usage?by=group&since=1d"))
    assert {(r["bucket"], r["requests"]) for r in by_group["data"]} == {
        ("grp_eng", 2),
        ("grp_ml", 1),
        (None, 1),
    }
    logs = await ok(client.get(f"{BASE}/logs", params={"user_id": "usr_a"}))
    assert [d["user_id"] for d in logs["data"]] == ["usr_a", "usr_a"]
    assert logs["data"][0]["group_id"] == "grp_eng"
    logs = await ok(client.get(f"{BASE}/logs", params={"group_id": "grp_ml"}))
    assert [d["user_id"] for d in logs["data"]] == ["usr_b"]


# ----------------------------------------------------------------------- auth


async def test_admin_session_cookie_and_admin_group_bearer(
    app: Any, db: Engine, people: People, signer: TokenSigner
) -> None:
    admin = signed_in(db, "root@x.io", [ADMIN_GROUP, "eng"], subject="00u-root")
    dev = signed_in(db, "dev@x.io", ["eng"])
    people.refresh()

    session = signer.mint_admin_session(
        user_id=admin.id, subject="00u-root", email="root@x.io", ttl=600
    )
    async with client_for(app) as browser:
        browser.cookies.set(ADMIN_COOKIE, session)
        await ok(browser.get(f"{BASE}/users"))
        await ok(browser.get(f"{BASE}/openapi.json"))
        # A change from the proxy's own page (same origin) counts, and names the admin.
        await ok(
            browser.post(
                f"{BASE}/groups",
                json={"name": "from-console"},
                headers={"origin": ISSUER, "sec-fetch-site": "same-origin"},
            ),
            201,
        )
        # A forged cross-site one does not.
        for headers in (
            {"origin": "https://evil.example"},
            {"sec-fetch-site": "cross-site"},
            {"origin": ISSUER, "sec-fetch-site": "same-site"},
        ):
            r = await browser.post(f"{BASE}/groups", json={"name": "forged"}, headers=headers)
            assert_error(r, 403, "permission_error")
    entry = list_audit(db, limit=1, action="group.create")[0]
    assert entry.actor == "oidc:00u-root root@x.io"

    async with client_for(app, minted(signer, admin, [ADMIN_GROUP])) as bearer:
        await ok(bearer.post(f"{BASE}/users/dev@x.io/disable", json={"reason": "test"}))
    entry = list_audit(db, limit=1, action="user.disable")[0]
    assert entry.actor == "oidc:00u-root root@x.io"

    # A member of no admin group is signed in, but may not administer.
    await ok(_enable(app, dev.id))
    later = time.time() + 2  # iat has whole seconds: clear of the disable's revocation
    async with client_for(app, minted(signer, dev, ["eng"], now=later)) as c:
        assert "admin group" in assert_error(await c.get(f"{BASE}/users"), 403, "permission_error")
    dev_session = signer.mint_admin_session(
        user_id=dev.id, subject="sub-dev", email="dev@x.io", ttl=600, now=later
    )
    async with client_for(app) as c:
        c.cookies.set(ADMIN_COOKIE, dev_session)
        assert_error(await c.get(f"{BASE}/users"), 403, "permission_error")


async def _enable(app: Any, user_id: str) -> Any:
    async with client_for(app, {"authorization": f"Bearer {ADMIN}"}) as c:
        return await c.post(f"{BASE}/users/{user_id}/enable")


async def test_disabled_or_revoked_admins_are_refused_at_once(
    app: Any, db: Engine, people: People, signer: TokenSigner
) -> None:
    admin = signed_in(db, "root@x.io", [ADMIN_GROUP], subject="00u-root")
    people.refresh()
    session = signer.mint_admin_session(
        user_id=admin.id, subject="00u-root", email="root@x.io", ttl=600
    )
    async with client_for(app, {"authorization": f"Bearer {ADMIN}"}) as key_admin:
        async with client_for(app, minted(signer, admin, [ADMIN_GROUP])) as bearer:
            await ok(bearer.get(f"{BASE}/users"))
            await ok(key_admin.post(f"{BASE}/users/root@x.io/disable"))
            # The people cache was re-read by the change: refused on the very next request.
            assert "disabled" in assert_error(
                await bearer.get(f"{BASE}/users"), 401, "authentication_error"
            )
            async with client_for(app) as browser:
                browser.cookies.set(ADMIN_COOKIE, session)
                assert_error(await browser.get(f"{BASE}/users"), 401, "authentication_error")
            # Enabled again: what was minted before the disable stays dead.
            await ok(key_admin.post(f"{BASE}/users/root@x.io/enable"))
            assert "revoked" in assert_error(
                await bearer.get(f"{BASE}/users"), 401, "authentication_error"
            )
        # iat has whole seconds: a token 2 s on is clear of the revocation's.
        fresh = minted(signer, admin, [ADMIN_GROUP], now=time.time() + 2)
        async with client_for(app, fresh) as bearer:
            await ok(bearer.get(f"{BASE}/users"))  # a new sign-in works
        # Signed out everywhere: an admin's token from before is refused at once.
        ops = signed_in(db, "ops@x.io", [ADMIN_GROUP])
        people.refresh()
        earlier = minted(signer, ops, [ADMIN_GROUP], now=time.time() - 60)
        async with client_for(app, earlier) as bearer:
            await ok(bearer.get(f"{BASE}/users"))
            await ok(key_admin.post(f"{BASE}/users/ops@x.io/revoke-tokens"))
            assert "revoked" in assert_error(
                await bearer.get(f"{BASE}/users"), 401, "authentication_error"
            )
        # Out of the admin group at the IdP: out of the admin API.
        signed_in(db, "root@x.io", ["eng"], subject="00u-root")
        people.refresh()
        later = minted(signer, admin, ["eng"], now=time.time() + 3)
        async with client_for(app, later) as bearer:
            assert_error(await bearer.get(f"{BASE}/users"), 403, "permission_error")


async def test_without_credentials(app: Any, db: Engine, signer: TokenSigner) -> None:
    other = TokenSigner(secret="another-secret-of-at-least-32-chars!!", issuer=ISSUER)
    forged, _ = other.mint(user_id="usr_x", subject="x", email="x@x.io", name=None, groups=[])
    async with client_for(app) as anon:
        # A browser is sent to sign in, and back here afterwards.
        r = await anon.get(f"{BASE}/users?status=active", headers={"accept": "text/html,*/*"})
        assert r.status_code == 302
        assert r.headers["location"] == (
            "/oauth/login?next=%2Fadmin%2Fapi%2Fusers%3Fstatus%3Dactive"
        )
        assert r.headers["cache-control"] == "no-store"
        # So is one with an expired session.
        expired = signer.mint_admin_session(
            user_id="usr_x", subject="x", email="x@x.io", ttl=1, now=time.time() - 3600
        )
        anon.cookies.set(ADMIN_COOKIE, expired)
        r = await anon.get(f"{BASE}/users", headers={"accept": "text/html"})
        assert r.status_code == 302
        anon.cookies.clear()
        # Scripts get a 401; so does anything but a page fetch.
        for method, headers in (
            ("GET", {}),
            ("GET", {"accept": "application/json"}),
            ("POST", {"accept": "text/html"}),
            ("GET", {"authorization": f"Bearer {forged}", "accept": "text/html"}),
            ("GET", {"authorization": "Bearer eyJnot-a-token"}),
            ("GET", {"x-api-key": ADMIN}),  # the spend-limit routes' header, not this API's
        ):
            r = await anon.request(method, f"{BASE}/users", headers=headers)
            assert_error(r, 401, "authentication_error")
            assert r.headers["www-authenticate"].startswith("Bearer")
        # An access token is not a session, nor the reverse.
        token, _ = signer.mint(user_id="usr_x", subject="x", email="x@x.io", name=None, groups=[])
        anon.cookies.set(ADMIN_COOKIE, token)
        assert_error(await anon.get(f"{BASE}/users"), 401, "authentication_error")
        anon.cookies.clear()
        session = signer.mint_admin_session(user_id="usr_x", subject="x", email="x@x.io", ttl=60)
        r = await anon.get(f"{BASE}/users", headers={"authorization": f"Bearer {session}"})
        assert_error(r, 401, "authentication_error")


async def test_sign_in_without_an_admin_key(
    db: Engine, people: People, signer: TokenSigner
) -> None:
    keys = KeyCache(static_keys=[], engine=db)
    app = build_admin_app(
        db, keys, None, signer=signer, people=people, admin_groups=frozenset({ADMIN_GROUP})
    )
    admin = signed_in(db, "root@x.io", [ADMIN_GROUP])
    people.refresh()
    async with client_for(app, minted(signer, admin, [])) as c:
        await ok(c.get(f"{BASE}/users"))
    async with client_for(app, {"authorization": f"Bearer {ADMIN}"}) as c:
        assert_error(await c.get(f"{BASE}/users"), 401, "authentication_error")
    with pytest.raises(ValueError):
        build_admin_app(db, keys, None)
    with pytest.raises(ValueError):
        build_admin_app(db, keys, "", signer=signer)  # no people cache to check admins in
