"""People: the levels a request must pass, resolved from memory, on every backend.

Which group governs a person in several groups, which per-person budget applies, what a
group's service key and an unowned key pass, and how a disabled user, a revoked token and
an owner made a moment ago on another replica are answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from claude_proxy.gateway.errors import ProxyError
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.people import Caller, People
from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.store.people import (
    Limits,
    create_group,
    create_user,
    disable_user,
    revoke_user_tokens,
    update_org,
    update_user,
    upsert_oidc_user,
)
from tests.helpers import make_key
from tests.store.conftest import Backend

SECRET = "s" * 40


@pytest.fixture
def engine(db: Backend) -> Iterator[Engine]:
    yield db.engine()


def caller(people: People, cache: KeyCache, secret: str) -> Caller:
    cache.refresh()
    info = cache.cached(secret.encode())
    assert info is not None
    found = people.caller_for_key(info)
    assert isinstance(found, Caller), found
    return found


def kinds(c: Caller) -> list[tuple[str, str]]:
    return [(level.kind, level.name) for level in c.levels]


async def test_levels_policy_group_and_member_budget(engine: Engine) -> None:
    update_org(engine, actor="test", rpm=1000, budget_period="month", member_budget_usd=Decimal(50))
    create_group(
        engine,
        name="research",
        actor="test",
        priority=10,
        limits=Limits(models=("claude-opus-*",), budget_usd=Decimal(500), budget_period="month"),
        member_budget_usd=Decimal(40),
    )
    create_group(
        engine,
        name="everyone",
        actor="test",
        limits=Limits(tpm=100_000, budget_period="day"),
        member_budget_usd=Decimal(5),
    )
    both = create_user(
        engine, email="Both@Example.com", groups=["everyone", "research"], actor="test"
    )
    plain = create_user(engine, email="plain@example.com", actor="test")
    people = People(engine=engine)
    people.refresh()
    cache = KeyCache(static_keys=["unowned-static"], engine=engine)

    # In two groups: the lower priority number governs (research), and is charged; the
    # per-person cap is the tightest of the groups' (everyone's $5 a day).
    _, secret = make_key(engine, "laptop", user_id=both.id, rpm=10)
    c = caller(people, cache, secret)
    assert c.user_id == both.id and c.group_id == people.user(both.id).policy_group_id  # type: ignore[union-attr]
    assert kinds(c) == [
        ("org", "organisation"),
        ("group", "research"),
        ("user", "both@example.com"),
        ("key", "laptop"),
    ]
    user_level = c.levels[2]
    assert user_level.budget_usd == 5.0 and user_level.budget_period == "day"
    assert c.levels[1].models == ("claude-opus-*",) and c.levels[1].budget_usd == 500.0
    assert people.allowed_models(both.id) == ("claude-opus-*",)

    # No group: the organisation's per-person default.
    _, secret = make_key(engine, "plain", user_id=plain.id)
    c = caller(people, cache, secret)
    assert kinds(c) == [("org", "organisation"), ("user", "plain@example.com")]
    assert c.levels[1].budget_usd == 50.0 and c.group_id is None

    # The user's own budget wins over every default.
    update_user(engine, plain.id, actor="test", budget_usd=Decimal(7), budget_period="week")
    people.refresh()
    c = caller(people, cache, secret)
    assert (c.levels[1].budget_usd, c.levels[1].budget_period) == (7.0, "week")

    # A group's service key: the organisation, the group's pool, the key.
    group = people.user(both.id).policy_group_id  # type: ignore[union-attr]
    _, service = make_key(engine, "ci", group_id=group)
    c = caller(people, cache, service)
    assert c.user_id is None and c.group_id == group
    assert kinds(c) == [("org", "organisation"), ("group", "research")]

    # An unowned key passes the organisation's level and its own.
    static = cache.cached(b"unowned-static")
    assert static is not None
    c = people.caller_for_key(static)  # type: ignore[assignment]
    assert isinstance(c, Caller) and kinds(c) == [("org", "organisation")]
    assert set(people.budgets()) >= {group, both.id, plain.id}


async def test_idp_groups_count_as_memberships_by_exact_name(engine: Engine) -> None:
    create_group(engine, name="Platform", actor="test", limits=Limits(rpm=5))
    user = upsert_oidc_user(
        engine, subject="idp|1", email="ida@example.com", name="Ida", idp_groups=["Platform", "x"]
    )
    other = upsert_oidc_user(
        engine, subject="idp|2", email="ola@example.com", name="Ola", idp_groups=["platform"]
    )
    people = People(engine=engine)
    people.refresh()
    info = people.user(user.id)
    assert info is not None and info.policy_group_id is not None
    assert info.groups == ("Platform", "x")
    groups = [lv.name for lv in people.levels_for_user(user.id) if lv.kind == "group"]
    assert groups == ["Platform"]
    assert people.user(other.id).policy_group_id is None  # type: ignore[union-attr]


async def test_disabled_users_keys_and_tokens_stop_and_revoked_tokens_too(engine: Engine) -> None:
    user = create_user(engine, email="leaver@example.com", actor="test")
    _, secret = make_key(engine, "laptop", user_id=user.id)
    people = People(engine=engine)
    people.refresh()
    cache = KeyCache(static_keys=[], engine=engine)
    signer = TokenSigner(secret=SECRET, issuer="http://proxy.test")
    token, _ = signer.mint(
        user_id=user.id,
        subject=user.id,
        email=user.email,
        name=None,
        groups=[],
        now=time.time() - 5,
    )
    claims = signer.verify(token.encode())
    assert claims is not None and isinstance(people.caller_for_token(claims), Caller)
    assert isinstance(caller(people, cache, secret), Caller)

    revoke_user_tokens(engine, user.id, actor="test")
    people.refresh()
    refused = people.caller_for_token(claims)
    assert isinstance(refused, ProxyError) and refused.status == 401
    assert isinstance(caller(people, cache, secret), Caller)  # keys are not tokens

    disable_user(engine, user.id, actor="test", reason="left the company")
    people.refresh()
    cache.refresh()
    info = cache.cached(secret.encode())
    assert info is not None
    refused = people.caller_for_key(info)
    assert isinstance(refused, ProxyError) and refused.error_type == "authentication_error"


async def test_an_owner_made_elsewhere_is_caught_up_with_once(engine: Engine) -> None:
    people = People(engine=engine)
    people.refresh()
    cache = KeyCache(static_keys=[], engine=engine)
    user = create_user(engine, email="new@example.com", actor="test")  # "another replica"
    _, secret = make_key(engine, "fresh", user_id=user.id)
    cache.refresh()
    info = cache.cached(secret.encode())
    assert info is not None
    assert people.caller_for_key(info) is None  # not known here yet
    await people.catch_up()
    found = people.caller_for_key(info)
    assert isinstance(found, Caller) and found.user_id == user.id
