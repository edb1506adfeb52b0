"""Users, groups, memberships, the org policy, key owners and the audit log, on SQLite,
PostgreSQL and PostgreSQL behind pgbouncer: every change validated, audited in its own
transaction, and seen by `people_version`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

from claude_proxy.store.audit import ACTOR_MAX, list_audit, record_change
from claude_proxy.store.columns import current_period
from claude_proxy.store.keys import (
    KeySpec,
    create_key,
    get_key,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
)
from claude_proxy.store.people import (
    Conflict,
    Limits,
    create_group,
    create_user,
    delete_group,
    disable_user,
    effective_groups,
    enable_user,
    get_group,
    get_org,
    get_user,
    list_groups,
    list_users,
    people_snapshot,
    people_version,
    personal_budget,
    revoke_user_tokens,
    spend_of,
    update_group,
    update_org,
    update_user,
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
from tests.store.conftest import Backend

ACTOR = "test:pytest"
# SQLite and real PostgreSQL (the store's other modules add pgbouncer in front of it).
on_databases = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def engine(backend: Backend) -> Iterator[Engine]:
    """The module's database with no people, keys, spend or audit rows."""
    eng = backend.engine()
    with eng.begin() as conn:
        for table in (audit_log, user_groups, users, groups, org_policy, api_keys, key_spend):
            conn.execute(delete(table))
    yield eng
    backend.close()


def audit(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    return [r.public() for r in list_audit(engine, limit=1000, **where)]


# ---------------------------------------------------------------------------- groups


@on_databases
def test_groups_create_read_update_and_are_audited(engine: Engine) -> None:
    eng = create_group(
        engine,
        name=" eng ",
        actor=ACTOR,
        description="Engineering",
        priority=10,
        limits=Limits(
            models=["claude-sonnet-*"],  # type: ignore[arg-type]  # a list is taken as a tuple
            rpm=60,
            budget_usd=Decimal("100"),
            budget_period="week",
        ),
        member_budget_usd=Decimal("20"),
    )
    assert eng.id.startswith("grp_") and len(eng.id) == 20
    assert eng.name == "eng" and eng.limits.models == ("claude-sonnet-*",)
    assert eng.limits.budget_period == "week" and eng.member_budget_usd == Decimal("20")
    ops = create_group(engine, name="ops", actor=ACTOR)
    assert ops.priority == 100 and ops.limits == Limits()
    assert get_group(engine, "eng") == eng == get_group(engine, eng.id)
    assert get_group(engine, "ENG") is None  # matched exactly, as IdP group names are
    assert [g.name for g in list_groups(engine)] == ["eng", "ops"]  # by priority

    with pytest.raises(Conflict):
        create_group(engine, name="eng", actor=ACTOR)

    changed = update_group(engine, "eng", actor="someone", rpm=None, priority=200, name="dev")
    assert changed is not None and changed.name == "dev" and changed.limits.rpm is None
    assert changed.updated_at >= eng.updated_at
    assert [g.name for g in list_groups(engine)] == ["ops", "dev"]
    assert update_group(engine, "nope", actor=ACTOR, rpm=1) is None
    with pytest.raises(Conflict):
        update_group(engine, "dev", actor=ACTOR, name="ops")

    rows = audit(engine, target_type="group", target_id=eng.id)
    assert [r["action"] for r in rows] == ["group.update", "group.create"]
    upd = rows[0]
    assert upd["actor"] == "someone"
    assert (upd["before"]["rpm"], upd["after"]["rpm"]) == (60, None)
    assert (upd["before"]["name"], upd["after"]["name"]) == ("eng", "dev")
    assert upd["after"]["budget_usd"] == "100.00000000"  # money as an exact string
    assert rows[1]["before"] is None and rows[1]["after"]["member_budget_usd"] == "20.00000000"


@on_databases
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "needs a name"),
        ({"name": "x" * 129}, "at most 128"),
        ({"name": "a\x00b"}, "control characters"),
        ({"name": "a\nb"}, "control characters"),
        ({"description": "d" * 1001}, "at most 1000"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"member_budget_usd": Decimal(5)}, "needs a budget period"),
        ({"limits": Limits(budget_period="day")}, "needs both"),
        ({"member_budget_usd": Decimal("-1"), "limits": Limits(budget_period="day")}, "between"),
    ],
)
def test_group_validation(engine: Engine, kwargs: dict[str, Any], message: str) -> None:
    fields = {"name": "g", "actor": ACTOR, **kwargs}
    with pytest.raises(ValueError, match=message):
        create_group(engine, **fields)
    assert list_groups(engine) == [] and audit(engine) == []


def test_limits_validate_like_keys() -> None:
    for bad, message in (
        ({"rpm": 0}, "rpm"),
        ({"tpm": 2**63}, "tpm"),
        ({"budget_usd": Decimal(1)}, "needs both"),
        ({"budget_usd": Decimal(1), "budget_period": "year"}, "day, week, month or total"),
        ({"budget_usd": Decimal("1.123456789"), "budget_period": "day"}, "8 decimal places"),
        ({"budget_usd": Decimal("1e11"), "budget_period": "day"}, "between"),
        ({"models": ()}, "at least one"),
        ({"models": ("x" * 201,)}, "at most 200"),
        ({"models": tuple(f"m{i}" for i in range(101))}, "at most 100"),
    ):
        with pytest.raises(ValueError, match=message):
            Limits(**bad)
    assert Limits(budget_usd=Decimal(0), budget_period="week").budget_period == "week"
    # The same rules for a key, week included.
    assert KeySpec(name="k", budget_usd=Decimal(1), budget_period="week").budget_period == "week"
    with pytest.raises(ValueError, match="needs both"):
        KeySpec(name="k", budget_period="week")
    with pytest.raises(ValueError, match="at most 200"):
        KeySpec(name="k" * 201)


@on_databases
def test_update_group_keeps_the_period_for_the_member_budget(engine: Engine) -> None:
    create_group(
        engine,
        name="g",
        actor=ACTOR,
        limits=Limits(budget_usd=Decimal(10), budget_period="month"),
        member_budget_usd=Decimal(2),
    )
    only_member = update_group(engine, "g", actor=ACTOR, budget_usd=None)
    assert only_member is not None and only_member.limits.budget_period == "month"
    with pytest.raises(ValueError, match="per-member budget needs a budget period"):
        update_group(engine, "g", actor=ACTOR, budget_period=None)
    with pytest.raises(ValueError, match="cannot change"):
        update_group(engine, "g", actor=ACTOR, colour="red")
    cleared = update_group(engine, "g", actor=ACTOR, member_budget_usd=None, budget_period=None)
    assert cleared is not None and cleared.member_budget_usd is None
    assert cleared.limits.budget_period is None


# ----------------------------------------------------------------------------- users


@on_databases
def test_users_create_with_groups_and_update_memberships(engine: Engine) -> None:
    eng = create_group(engine, name="eng", actor=ACTOR)
    ops = create_group(engine, name="ops", actor=ACTOR)
    alice = create_user(
        engine, email="  Alice@Example.COM ", actor=ACTOR, name=" Alice ", groups=["eng"]
    )
    assert alice.id.startswith("usr_") and len(alice.id) == 20
    assert (alice.email, alice.name, alice.source, alice.status) == (
        "alice@example.com",
        "Alice",
        "local",
        "active",
    )
    assert alice.local_group_ids == (eng.id,) and alice.subject is None
    assert get_user(engine, "ALICE@example.com") == alice == get_user(engine, alice.id)
    odd = create_user(engine, email="usr_1@example.com", actor=ACTOR)  # an email, not an id
    assert get_user(engine, "usr_1@example.com") == odd
    with pytest.raises(Conflict):
        create_user(engine, email="alice@example.com", actor=ACTOR)
    with pytest.raises(ValueError, match="no group named 'nope'"):
        create_user(engine, email="bob@example.com", actor=ACTOR, groups=["nope"])
    assert get_user(engine, "bob@example.com") is None

    moved = update_user(engine, alice.email, actor=ACTOR, groups=[ops.id, "eng"], rpm=5)
    assert moved is not None and set(moved.local_group_ids) == {eng.id, ops.id}
    assert moved.limits.rpm == 5 and moved.updated_at > alice.updated_at
    only_ops = update_user(engine, alice.id, actor=ACTOR, groups=["ops"])
    assert only_ops is not None and only_ops.local_group_ids == (ops.id,)
    assert only_ops.updated_at > moved.updated_at  # a membership change stamps the user
    with engine.connect() as conn:
        assert conn.execute(select(user_groups.c.group_id)).scalars().all() == [ops.id]
    assert update_user(engine, "nobody@example.com", actor=ACTOR, name="x") is None
    with pytest.raises(ValueError, match="needs both"):
        update_user(engine, alice.id, actor=ACTOR, budget_period="day")
    with pytest.raises(ValueError, match="cannot change"):
        update_user(engine, alice.id, actor=ACTOR, status="disabled")

    rows = audit(engine, target_type="user", target_id=alice.id)
    assert [r["action"] for r in rows] == ["user.update", "user.update", "user.create"]
    assert rows[0]["before"]["local_group_ids"] == sorted([eng.id, ops.id])
    assert rows[0]["after"]["local_group_ids"] == [ops.id]
    assert (rows[1]["before"]["rpm"], rows[1]["after"]["rpm"]) == (None, 5)


@on_databases
@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("no-at-sign", "not an email"),
        ("a b@example.com", "not an email"),
        ("@example.com", "not an email"),
        ("x" * 250 + "@e.io", "at most 254"),
        ("a\x00@example.com", "control"),
    ],
)
def test_user_emails_are_checked(engine: Engine, email: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_user(engine, email=email, actor=ACTOR)


@on_databases
def test_user_names_are_bounded(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at most 200"):
        create_user(engine, email="a@example.com", actor=ACTOR, name="n" * 201)
    with pytest.raises(ValueError, match="control"):
        create_user(engine, email="a@example.com", actor=ACTOR, name="a\x1bb")
    assert list_users(engine) == []


@on_databases
def test_list_users_by_group_counts_local_and_idp_members(engine: Engine) -> None:
    eng = create_group(engine, name="eng", actor=ACTOR)
    create_user(engine, email="local@example.com", actor=ACTOR, groups=["eng"])
    upsert_oidc_user(
        engine, subject="s-idp", email="idp@example.com", name=None, idp_groups=["eng", "x"]
    )
    create_user(engine, email="none@example.com", actor=ACTOR)
    disable_user(engine, "none@example.com", actor=ACTOR)
    assert [u.email for u in list_users(engine, group="eng")] == [
        "idp@example.com",
        "local@example.com",
    ]
    assert [u.email for u in list_users(engine, group=eng.id)] == [
        "idp@example.com",
        "local@example.com",
    ]
    assert list_users(engine, group="unknown") == []
    assert [u.email for u in list_users(engine, status="disabled")] == ["none@example.com"]
    assert len(list_users(engine, status="active")) == 2
    with pytest.raises(ValueError, match="status"):
        list_users(engine, status="gone")


@on_databases
def test_disable_enable_and_revoke_tokens(engine: Engine) -> None:
    user = create_user(engine, email="a@example.com", actor=ACTOR)
    assert user.tokens_valid_after is None
    off = disable_user(engine, user.id, actor=ACTOR, reason="left the company")
    assert off is not None and off.status == "disabled" and not off.active
    assert off.status_reason == "left the company" and off.tokens_valid_after is not None
    on = enable_user(engine, "A@example.com", actor=ACTOR)
    assert on is not None and on.active and on.status_reason is None
    assert on.tokens_valid_after == off.tokens_valid_after  # old tokens stay dead
    out = revoke_user_tokens(engine, user.id, actor=ACTOR)
    assert out is not None and out.tokens_valid_after is not None
    assert out.tokens_valid_after >= off.tokens_valid_after
    assert disable_user(engine, "nobody@example.com", actor=ACTOR) is None
    with pytest.raises(ValueError, match="at most 500"):
        disable_user(engine, user.id, actor=ACTOR, reason="r" * 501)
    actions = [r["action"] for r in audit(engine, target_id=user.id)]
    assert actions == ["user.revoke_tokens", "user.enable", "user.disable", "user.create"]
    disabled = audit(engine, action="user.disable")[0]
    assert disabled["reason"] == "left the company"
    assert (disabled["before"]["status"], disabled["after"]["status"]) == ("active", "disabled")


@on_databases
def test_delete_group_removes_memberships_and_revokes_its_service_keys(engine: Engine) -> None:
    eng = create_group(engine, name="eng", actor=ACTOR)
    alice = create_user(engine, email="a@example.com", actor=ACTOR, groups=["eng"])
    service, _ = create_key(engine, KeySpec(name="ci"), actor=ACTOR, group_id=eng.id)
    personal, _ = create_key(engine, KeySpec(name="laptop"), actor=ACTOR, user_id=alice.id)
    deleted = delete_group(engine, "eng", actor="admin")
    assert deleted is not None and deleted.id == eng.id
    assert get_group(engine, eng.id) is None
    after = get_user(engine, alice.id)
    assert after is not None and after.local_group_ids == ()
    assert after.updated_at > alice.updated_at
    gone = get_key(engine, service.id)
    assert gone is not None and gone.status == "revoked"
    still = get_key(engine, personal.id)
    assert still is not None and still.status == "active"
    assert delete_group(engine, "eng", actor=ACTOR) is None
    group_rows = audit(engine, target_type="group", target_id=eng.id)
    assert [r["action"] for r in group_rows] == ["group.delete", "group.create"]
    assert group_rows[0]["after"] is None
    assert group_rows[0]["before"]["local_member_ids"] == [alice.id]
    (revoked,) = audit(engine, action="key.revoke")
    assert revoked["target_id"] == service.id and revoked["actor"] == "admin"
    assert revoked["reason"] == "group eng deleted"
    assert revoked["after"]["revoked_at"] is not None


# ------------------------------------------------------------------------- sign-in


@on_databases
def test_upsert_oidc_user_creates_links_and_follows_the_idp(engine: Engine) -> None:
    first = upsert_oidc_user(
        engine, subject="sub-1", email="New@Example.com", name="New", idp_groups=["eng"]
    )
    assert (first.subject, first.email, first.source, first.idp_groups) == (
        "sub-1",
        "new@example.com",
        "oidc",
        ("eng",),
    )
    assert first.last_login_at is not None
    (created,) = audit(engine, target_id=first.id)
    assert created["action"] == "user.create" and created["actor"] == "system"

    # The same identity again, nothing changed: no audit row, no stamp, a new login time.
    again = upsert_oidc_user(
        engine, subject="sub-1", email="new@example.com", name="New", idp_groups=["eng"]
    )
    assert again.id == first.id and again.updated_at == first.updated_at
    assert again.last_login_at is not None and first.last_login_at is not None
    assert again.last_login_at >= first.last_login_at
    assert len(audit(engine, target_id=first.id)) == 1

    # Groups follow the IdP: audited, stamped.
    moved = upsert_oidc_user(
        engine, subject="sub-1", email="new@example.com", name="New", idp_groups=["ops", "ops"]
    )
    assert moved.idp_groups == ("ops",) and moved.updated_at > first.updated_at
    synced = audit(engine, target_id=first.id)[0]
    assert synced["action"] == "user.sync"
    assert (synced["before"]["idp_groups"], synced["after"]["idp_groups"]) == (["eng"], ["ops"])

    # A user an admin made first is linked at their first sign-in, limits kept.
    pre = create_user(engine, email="pre@example.com", actor=ACTOR, limits=Limits(rpm=3))
    linked = upsert_oidc_user(
        engine, subject="sub-2", email="PRE@example.com", name="Pre", idp_groups=[]
    )
    assert linked.id == pre.id and linked.subject == "sub-2" and linked.limits.rpm == 3
    assert linked.source == "oidc" and linked.name == "Pre"

    # That email now belongs to sub-2: another identity cannot take the row.
    with pytest.raises(Conflict, match="another identity"):
        upsert_oidc_user(engine, subject="sub-3", email="pre@example.com", name=None, idp_groups=[])

    # A disabled user stays disabled.
    disable_user(engine, pre.id, actor=ACTOR)
    back = upsert_oidc_user(
        engine, subject="sub-2", email="pre@example.com", name="Pre", idp_groups=[]
    )
    assert back.status == "disabled"


@on_databases
def test_upsert_oidc_user_bounds_what_the_idp_sends(engine: Engine) -> None:
    many = [f"g{i}" for i in range(1500)] + ["x" * 129, "bad\x00", ""]
    row = upsert_oidc_user(engine, subject="s", email="a@example.com", name=None, idp_groups=many)
    assert row.idp_groups is not None and len(row.idp_groups) == 1000
    assert all(len(g) <= 128 and "\x00" not in g and g for g in row.idp_groups)
    for bad in ("", "s" * 256, "a\x00b"):
        with pytest.raises(ValueError):
            upsert_oidc_user(engine, subject=bad, email="b@example.com", name=None, idp_groups=[])


@on_databases
def test_concurrent_first_sign_ins_make_one_user(backend: Backend, engine: Engine) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def sign_in() -> None:
        try:
            row = upsert_oidc_user(
                backend.engine(), subject="same", email="same@example.com", name=None, idp_groups=[]
            )
            results.append(row.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign_in) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if backend.name == "sqlite":  # a writer may find the file busy; none may make a second row
        errors = [e for e in errors if "locked" not in str(e)]
    assert errors == []
    assert len(set(results)) == 1
    assert len(list_users(engine)) == 1


# ---------------------------------------------------------------------------- org


@on_databases
def test_org_policy(engine: Engine) -> None:
    empty = get_org(engine)
    assert empty.limits == Limits() and empty.member_budget_usd is None
    assert empty.updated_at is None
    org = update_org(
        engine, actor=ACTOR, member_budget_usd=Decimal("25"), budget_period="month", rpm=1000
    )
    assert org.member_budget_usd == Decimal("25") and org.limits.budget_usd is None
    assert org.updated_at is not None and get_org(engine) == org
    capped = update_org(engine, actor=ACTOR, budget_usd=Decimal("5000"))
    assert capped.limits.budget_usd == Decimal("5000") and capped.limits.rpm == 1000
    with pytest.raises(ValueError, match="per-member budget needs a budget period"):
        update_org(engine, actor=ACTOR, budget_usd=None, budget_period=None)
    with pytest.raises(ValueError, match="cannot change"):
        update_org(engine, actor=ACTOR, name="acme")
    rows = audit(engine, target_type="org")
    assert [r["action"] for r in rows] == ["org.update", "org.update"]
    assert rows[1]["before"]["member_budget_usd"] is None
    assert rows[1]["after"]["member_budget_usd"] == "25.00000000"
    with engine.connect() as conn:
        assert conn.execute(select(org_policy.c.id)).scalars().all() == ["org"]


# ----------------------------------------------------------------- the proxy's cache


@on_databases
def test_people_version_changes_on_every_kind_of_change(engine: Engine) -> None:
    seen = [people_version(engine)]

    def changed() -> None:
        now = people_version(engine)
        assert now not in seen, "people_version did not change"
        seen.append(now)

    assert people_version(engine) == seen[0]  # stable while nothing changes
    create_group(engine, name="eng", actor=ACTOR)
    changed()
    create_group(engine, name="ops", actor=ACTOR)
    changed()
    user = create_user(engine, email="a@example.com", actor=ACTOR, groups=["eng"])
    changed()
    update_user(engine, user.id, actor=ACTOR, groups=["ops"])  # same count, other group
    changed()
    update_user(engine, user.id, actor=ACTOR, groups=[])
    changed()
    update_group(engine, "eng", actor=ACTOR, rpm=5)
    changed()
    update_org(engine, actor=ACTOR, rpm=9)
    changed()
    update_org(engine, actor=ACTOR, rpm=10)
    changed()
    disable_user(engine, user.id, actor=ACTOR)
    changed()
    upsert_oidc_user(engine, subject="s", email="a@example.com", name=None, idp_groups=["eng"])
    changed()
    update_user(engine, user.id, actor=ACTOR, groups=["eng"])
    changed()
    delete_group(engine, "eng", actor=ACTOR)
    changed()
    with engine.begin() as conn:  # a row deleted by hand, too
        conn.execute(delete(users))
    changed()
    assert people_version(engine) == seen[-1]


@on_databases
def test_people_version_sees_a_change_committed_after_a_later_one(
    backend: Backend, engine: Engine
) -> None:
    """PostgreSQL's now() is the transaction's start: a change that started first but
    commits last has the older stamp, which max(updated_at) alone would never show.
    (SQLite has one writer at a time, so there the late change simply comes last.)"""
    a = create_user(engine, email="a@example.com", actor=ACTOR)
    b = create_user(engine, email="b@example.com", actor=ACTOR)
    slow = backend.engine()
    with slow.connect() as conn:
        tx = conn.begin()
        if backend.is_pg:
            conn.execute(text("SELECT 1"))  # the transaction (and its now()) starts here
        update_user(engine, b.id, actor=ACTOR, name="later")  # a later stamp, committed now
        before = people_version(engine)
        stamp = text("now()") if backend.is_pg else text("strftime('%Y-%m-%d %H:%M:%f000', 'now')")
        conn.execute(update(users).where(users.c.id == a.id).values(name="x", updated_at=stamp))
        tx.commit()
    assert people_version(engine) != before


@on_databases
def test_people_snapshot(engine: Engine) -> None:
    eng = create_group(engine, name="eng", actor=ACTOR, priority=5)
    ops = create_group(engine, name="ops", actor=ACTOR)
    a = create_user(engine, email="a@example.com", actor=ACTOR, groups=["eng", "ops"])
    b = create_user(engine, email="b@example.com", actor=ACTOR)
    update_org(engine, actor=ACTOR, rpm=7)
    snap = people_snapshot(engine)
    assert [u.id for u in snap.users] == [a.id, b.id]
    assert [g.id for g in snap.groups] == [eng.id, ops.id]
    assert snap.memberships == sorted([(a.id, eng.id), (a.id, ops.id)])
    assert snap.org.limits.rpm == 7


def test_effective_groups_and_the_personal_budget() -> None:
    now = datetime.now(UTC)

    def group(gid: str, name: str, priority: int, member: str | None) -> Any:
        from claude_proxy.store.people import GroupRow

        return GroupRow(
            id=gid,
            name=name,
            description=None,
            priority=priority,
            limits=Limits(budget_period="month") if member else Limits(),
            member_budget_usd=Decimal(member) if member else None,
            created_at=now,
            updated_at=now,
        )

    from claude_proxy.store.people import OrgPolicy, UserRow

    groups_ = [
        group("grp_a", "zeta", 1, "50"),
        group("grp_b", "alpha", 5, "10"),
        group("grp_c", "beta", 5, None),
    ]
    user = UserRow(
        id="usr_1",
        email="a@example.com",
        name=None,
        subject=None,
        status="active",
        status_reason=None,
        source="oidc",
        idp_groups=("beta", "alpha"),
        limits=Limits(),
        local_group_ids=("grp_a",),
        tokens_valid_after=None,
        last_login_at=None,
        created_at=now,
        updated_at=now,
    )
    mine = effective_groups(user, groups_)
    assert [g.name for g in mine] == ["zeta", "alpha", "beta"]  # priority, then name
    org = OrgPolicy(limits=Limits(budget_period="day"), member_budget_usd=Decimal(1))
    assert personal_budget(user, mine, org) == (Decimal(10), "month")  # the tightest group's
    assert personal_budget(user, [], org) == (Decimal(1), "day")  # else the org's
    assert personal_budget(user, [], OrgPolicy()) is None
    own = replace(user, limits=Limits(budget_usd=Decimal(99), budget_period="week"))
    assert personal_budget(own, mine, org) == (Decimal(99), "week")  # their own wins


@on_databases
def test_spend_of_reads_the_current_period(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(key_spend),
            [
                {
                    "key_id": "usr_x",
                    "period": current_period("week"),
                    "cost_usd": Decimal("1.5"),
                    "requests": 1,
                },
                {
                    "key_id": "usr_x",
                    "period": "week:2000-W01",
                    "cost_usd": Decimal("9"),
                    "requests": 1,
                },
                {"key_id": "org", "period": "total", "cost_usd": Decimal("3"), "requests": 2},
            ],
        )
    assert spend_of(engine, ["usr_x", "grp_none"], "week") == {
        "usr_x": Decimal("1.5"),
        "grp_none": Decimal(0),
    }
    assert spend_of(engine, ["org"], "total") == {"org": Decimal(3)}
    assert spend_of(engine, [], "day") == {}
    with pytest.raises(ValueError):
        spend_of(engine, ["org"], "year")


# ----------------------------------------------------------------------------- keys


@on_databases
def test_keys_have_owners_and_every_change_is_audited(engine: Engine) -> None:
    eng = create_group(engine, name="eng", actor=ACTOR)
    alice = create_user(engine, email="a@example.com", actor=ACTOR)
    mine, _ = create_key(engine, KeySpec(name="laptop"), actor="me", user_id=alice.id)
    ci, _ = create_key(engine, KeySpec(name="ci"), actor=ACTOR, group_id=eng.id)
    loose, _ = create_key(engine, KeySpec(name="old"), actor=ACTOR)
    assert (mine.user_id, mine.group_id) == (alice.id, None)
    assert mine.public()["user_id"] == alice.id and ci.public()["group_id"] == eng.id
    assert [k.id for k in list_keys(engine, user_id=alice.id)] == [mine.id]
    assert [k.id for k in list_keys(engine, group_id=eng.id)] == [ci.id]
    assert {k.id for k in list_keys(engine)} == {mine.id, ci.id, loose.id}

    for owner, message in (
        ({"user_id": "usr_nope"}, "no user"),
        ({"group_id": "grp_nope"}, "no group"),
        ({"user_id": alice.id, "group_id": eng.id}, "not both"),
    ):
        with pytest.raises(ValueError, match=message):
            create_key(engine, KeySpec(name="x"), actor=ACTOR, **owner)
    disable_user(engine, alice.id, actor=ACTOR)
    with pytest.raises(ValueError, match="disabled"):
        create_key(engine, KeySpec(name="x"), actor=ACTOR, user_id=alice.id)
    assert len(list_keys(engine)) == 3

    update_key(engine, mine.id, actor="me", rpm=5)
    with pytest.raises(ValueError):
        update_key(engine, mine.id, actor="me", rpm=0)
    rotated = rotate_key(engine, mine.id, actor="me")
    assert rotated is not None
    revoke_key(engine, mine.id, actor="me", reason="lost laptop")
    revoke_key(engine, mine.id, actor="me")  # nothing changes: no second row
    assert rotate_key(engine, mine.id, actor="me") is None
    rows = audit(engine, target_type="key", target_id=mine.id)
    assert [r["action"] for r in rows] == ["key.revoke", "key.rotate", "key.update", "key.create"]
    assert all(r["actor"] == "me" for r in rows)
    assert rows[0]["reason"] == "lost laptop"
    assert (rows[2]["before"]["rpm"], rows[2]["after"]["rpm"]) == (None, 5)
    assert rows[1]["before"]["prefix"] != rows[1]["after"]["prefix"]
    assert rows[3]["after"]["user_id"] == alice.id
    for r in rows:  # never the secret nor its hash
        for side in (r["before"], r["after"]):
            assert side is None or ("key_hash" not in side and "key" not in side)


# ---------------------------------------------------------------------------- audit


@on_databases
def test_audit_log_pages_filters_and_bounds(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = [
            record_change(
                conn,
                actor="a" * 400 if i == 0 else f"actor-{i}",
                action="thing.do" if i % 2 else "thing.other",
                target_type="budget",
                target_id=f"t{i % 3}",
                before={"n": i},
                after={"n": i + 1, "usd": Decimal("1.5")},
                reason="r\x00eason" if i == 0 else None,
            )
            for i in range(7)
        ]
    assert ids == sorted(ids)  # time-ordered
    newest = list_audit(engine, limit=3)
    assert [r.id for r in newest] == ids[:-4:-1]
    older = list_audit(engine, limit=3, before_id=newest[-1].id)
    assert [r.id for r in older] == ids[-4:-7:-1]
    forward = list_audit(engine, limit=2, after_id=ids[1])
    assert [r.id for r in forward] == ids[2:4]  # oldest first, to page forward
    assert [r.id for r in list_audit(engine, target_id="t1")] == [ids[4], ids[1]]
    assert {r.action for r in list_audit(engine, action="thing.do")} == {"thing.do"}
    first = list_audit(engine, limit=1000)[-1]
    assert len(first.actor) == ACTOR_MAX and first.reason == "reason"
    assert first.after == {"n": 1, "usd": "1.50000000"}
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            list_audit(engine, limit=bad)
    with engine.begin() as conn, pytest.raises(ValueError):
        record_change(
            conn, actor="", action="x", target_type="x", target_id=None, before=None, after=None
        )


@on_databases
def test_a_failed_change_writes_no_audit_row(engine: Engine) -> None:
    create_group(engine, name="eng", actor=ACTOR)
    create_user(engine, email="a@example.com", actor=ACTOR, groups=["eng"])
    count = len(audit(engine))
    with pytest.raises(ValueError):
        update_group(engine, "eng", actor=ACTOR, rpm=-1)
    with pytest.raises(Conflict):
        create_user(engine, email="A@example.com", actor=ACTOR)
    with pytest.raises(ValueError):
        update_user(engine, "a@example.com", actor=ACTOR, groups=["eng", "missing"])
    assert len(audit(engine)) == count
    user = get_user(engine, "a@example.com")
    assert user is not None and len(user.local_group_ids) == 1
