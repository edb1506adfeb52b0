"""The admin API's people routes: users, groups, the organisation's policy, the audit log.

Every change goes through the store (store/people.py), which validates it and writes
its audit row in the same transaction, naming the actor that made it. After a change
this process's people cache is re-read at once, so the change holds for its very next
request; other replicas see it at their next refresh (2 s). The audit log is read-only
here: every write method on it is a 405.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from claude_proxy.admin.common import (
    ERROR_RESPONSES,
    ApiError,
    MoneyIn,
    MoneyOut,
    Period,
    Text,
    actor,
    bad_request,
    changes_of,
    db,
    not_found,
    store_change,
)
from claude_proxy.admin.keys import LimitFields
from claude_proxy.gateway.people import People
from claude_proxy.store.audit import AUDIT_PAGE_MAX, REASON_MAX, AuditRow, list_audit
from claude_proxy.store.columns import ORG_LEVEL, current_period
from claude_proxy.store.keys import drop_orphan_period
from claude_proxy.store.people import (
    DESCRIPTION_MAX,
    EMAIL_MAX,
    GROUP_NAME_MAX,
    GROUPS_PER_USER_MAX,
    PRIORITY_MAX,
    USER_NAME_MAX,
    GroupRow,
    Limits,
    OrgPolicy,
    UserRow,
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
    personal_budget,
    revoke_user_tokens,
    spend_of,
    update_group,
    update_org,
    update_user,
)

log = logging.getLogger("claude_proxy.admin")

# What an admin may type to name a user (an email or an id) or a group (a name or an id).
REF_MAX = max(EMAIL_MAX, GROUP_NAME_MAX)
_AUDIT_TEXT_MAX = 200
SPEND_PERIODS = ("day", "week", "month", "total")
Refresh = Callable[[], Awaitable[None]]
# Module level: FastAPI resolves a route's annotations by name in this module.
Who = Annotated[str, Depends(actor)]
Ref = Annotated[str, Path(max_length=REF_MAX, description="An id, an email or a name.")]


def text_query(description: str) -> Any:
    """A bounded text query parameter."""
    return Query(max_length=_AUDIT_TEXT_MAX, description=description)


# --------------------------------------------------------------------------- models


class GroupRef(BaseModel):
    id: str
    name: str
    via: list[Literal["local", "idp"]] = Field(
        description="How the user is in it: a local membership, the IdP's groups claim, or both."
    )


class LevelOut(BaseModel):
    """One level of policy a user's requests must pass, broadest first."""

    kind: Literal["org", "group", "user"]
    id: str
    name: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None = Field(
        description="org, group: the pool everyone under it spends together; user: the "
        "per-person cap (their own, else their groups' tightest per-member budget, else "
        "the organisation's)."
    )
    budget_period: Period | None
    spend_usd: MoneyOut = Field(description="Spend of this level in spend_period.")
    spend_period: str


class PersonalBudget(BaseModel):
    budget_usd: MoneyOut
    budget_period: Period
    source: Literal["user", "group", "org"]
    source_id: str
    source_name: str
    spend_usd: MoneyOut
    spend_period: str


class Effective(BaseModel):
    policy_group: GroupRef | None = Field(
        description="The group whose policy governs the user and which their requests are "
        "charged to: the first of their groups by priority, then name."
    )
    personal_budget: PersonalBudget | None
    levels: list[LevelOut]


class Spend(BaseModel):
    """Spend in the current UTC day, ISO week, month, and in total."""

    day: MoneyOut
    week: MoneyOut
    month: MoneyOut
    total: MoneyOut


class UserOut(BaseModel):
    id: str = Field(examples=["usr_3f9a0c2b7d1e4a56"])
    email: str
    name: str | None
    subject: str | None = Field(description="The IdP's `sub`; null until the first sign-in.")
    status: Literal["active", "disabled"]
    status_reason: str | None
    source: Literal["local", "oidc"]
    idp_groups: list[str] | None = Field(
        description="The IdP's groups at the last sign-in or refresh."
    )
    local_group_ids: list[str]
    groups: list[GroupRef] = Field(description="The proxy groups the user is in, policy order.")
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None = Field(description="The user's own per-person cap.")
    budget_period: Period | None
    tokens_valid_after: datetime | None
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class UserDetail(UserOut):
    effective: Effective
    spend: Spend


class UserList(BaseModel):
    data: list[UserOut]


class UserCreate(LimitFields):
    """A local user: their first sign-in with the same email links their IdP identity."""

    email: Text = Field(max_length=EMAIL_MAX)
    name: Text | None = Field(default=None, max_length=USER_NAME_MAX)
    groups: list[Annotated[Text, Field(max_length=REF_MAX)]] = Field(
        default_factory=list,
        max_length=GROUPS_PER_USER_MAX,
        description="Local memberships: group names or ids.",
    )


class UserUpdate(LimitFields):
    """Only the fields present change. `groups` replaces the local memberships (the IdP's
    stay the IdP's). `budget_usd: null` removes the user's own cap."""

    email: Text | None = Field(default=None, max_length=EMAIL_MAX)
    name: Text | None = Field(default=None, max_length=USER_NAME_MAX)
    groups: list[Annotated[Text, Field(max_length=REF_MAX)]] | None = Field(
        default=None, max_length=GROUPS_PER_USER_MAX
    )


class DisableBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text | None = Field(default=None, max_length=REASON_MAX)


class MemberOut(BaseModel):
    id: str
    email: str
    name: str | None
    status: Literal["active", "disabled"]
    via: list[Literal["local", "idp"]]


class GroupOut(BaseModel):
    id: str = Field(examples=["grp_3f9a0c2b7d1e4a56"])
    name: str = Field(description="Matched exactly, case-sensitively, to IdP group names.")
    description: str | None
    priority: int = Field(description="Lowest first: which group governs a user in several.")
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None = Field(description="The pool the members spend together.")
    budget_period: Period | None
    member_budget_usd: MoneyOut | None = Field(
        description="Each member's cap unless the user has their own; same period."
    )
    created_at: datetime
    updated_at: datetime


class GroupDetail(GroupOut):
    members: list[MemberOut]
    spend: Spend


class GroupList(BaseModel):
    data: list[GroupOut]


class _GroupFields(LimitFields):
    description: Text | None = Field(default=None, max_length=DESCRIPTION_MAX)
    priority: int | None = Field(default=None, ge=0, le=PRIORITY_MAX)
    member_budget_usd: MoneyIn | None = None


class GroupCreate(_GroupFields):
    name: Text = Field(min_length=1, max_length=GROUP_NAME_MAX)


class GroupUpdate(_GroupFields):
    """Only the fields present change; null removes a limit. Renaming changes which IdP
    group it matches."""

    name: Text | None = Field(default=None, min_length=1, max_length=GROUP_NAME_MAX)


class GroupDeleted(BaseModel):
    type: Literal["group_deleted"] = "group_deleted"
    id: str
    name: str


class OrgOut(BaseModel):
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None = Field(description="The whole organisation's cap.")
    budget_period: Period | None
    member_budget_usd: MoneyOut | None = Field(description="Each person's default cap.")
    updated_at: datetime | None
    spend: Spend


class OrgUpdate(LimitFields):
    member_budget_usd: MoneyIn | None = None


class AuditEntry(BaseModel):
    id: str = Field(description="Time-ordered: a later change has a greater id.")
    created_at: datetime
    actor: str = Field(
        examples=["admin-key", "cli:alice@build-01", "oidc:00u1ab alice@example.com", "system"]
    )
    action: str = Field(examples=["user.disable", "group.update", "key.create"])
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None


class AuditList(BaseModel):
    data: list[AuditEntry] = Field(description="Newest first (oldest first with after_id).")
    has_more: bool


# -------------------------------------------------------------------------- helpers


def people_refresher(people: People | None) -> Refresh:
    """Re-read this process's people cache after a change made here, so the change holds
    for the very next request (other replicas: at their next refresh). A failed re-read
    is only logged: the change is committed, and the background refresh retries."""

    async def refresh() -> None:
        if people is None:
            return
        try:
            await asyncio.to_thread(people.refresh)
        except Exception as exc:
            log.warning("people cache refresh after an admin change failed: %s", exc)

    return refresh


def _via(user: UserRow, group: GroupRow) -> list[Literal["local", "idp"]]:
    via: list[Literal["local", "idp"]] = []
    if group.id in user.local_group_ids:
        via.append("local")
    if group.name in (user.idp_groups or ()):
        via.append("idp")
    return via


def _user_fields(user: UserRow, mine: Sequence[GroupRow]) -> dict[str, Any]:
    fields = user.public()
    fields["groups"] = [GroupRef(id=g.id, name=g.name, via=_via(user, g)) for g in mine]
    return fields


def user_out(user: UserRow, all_groups: Sequence[GroupRow]) -> UserOut:
    return UserOut(**_user_fields(user, effective_groups(user, all_groups)))


def _spend(engine: Engine, level_id: str) -> Spend:
    return Spend(**{p: spend_of(engine, [level_id], p)[level_id] for p in SPEND_PERIODS})


def _level(
    engine: Engine, kind: Literal["org", "group", "user"], id_: str, name: str, limits: Limits
) -> LevelOut:
    period = limits.budget_period if limits.budget_usd is not None else None
    counted = period or "total"
    return LevelOut(
        kind=kind,
        id=id_,
        name=name,
        models=list(limits.models) if limits.models is not None else None,
        rpm=limits.rpm,
        tpm=limits.tpm,
        budget_usd=limits.budget_usd,
        budget_period=period,  # type: ignore[arg-type]  # validated by the store
        spend_usd=spend_of(engine, [id_], counted)[id_],
        spend_period=current_period(counted),
    )


def budget_source(
    user: UserRow, mine: Sequence[GroupRow], org: OrgPolicy
) -> tuple[Decimal, str, Literal["user", "group", "org"], str, str] | None:
    """The per-person cap (store/people.py `personal_budget`) and where it comes from:
    the user, the group whose per-member budget is the tightest, or the organisation."""
    found = personal_budget(user, mine, org)
    if found is None:
        return None
    amount, period = found
    if user.limits.budget_usd is not None:
        return amount, period, "user", user.id, user.email
    for group in mine:
        if group.member_budget_usd == amount and group.limits.budget_period == period:
            return amount, period, "group", group.id, group.name
    return amount, period, "org", ORG_LEVEL, "organisation"


def user_detail(engine: Engine, user: UserRow) -> UserDetail:
    """A user with their groups, the levels that govern them and their spend (blocking)."""
    mine = effective_groups(user, list_groups(engine))
    org = get_org(engine)
    levels = [_level(engine, "org", ORG_LEVEL, "organisation", org.limits)]
    policy = mine[0] if mine else None
    if policy is not None:
        levels.append(_level(engine, "group", policy.id, policy.name, policy.limits))
    cap = budget_source(user, mine, org)
    own = Limits(
        models=user.limits.models,
        rpm=user.limits.rpm,
        tpm=user.limits.tpm,
        budget_usd=cap[0] if cap else None,
        budget_period=cap[1] if cap else None,
    )
    levels.append(_level(engine, "user", user.id, user.email, own))
    personal = None
    if cap is not None:
        amount, period, source, source_id, source_name = cap
        personal = PersonalBudget(
            budget_usd=amount,
            budget_period=period,  # type: ignore[arg-type]  # validated by the store
            source=source,
            source_id=source_id,
            source_name=source_name,
            spend_usd=spend_of(engine, [user.id], period)[user.id],
            spend_period=current_period(period),
        )
    effective = Effective(
        policy_group=(
            GroupRef(id=policy.id, name=policy.name, via=_via(user, policy)) if policy else None
        ),
        personal_budget=personal,
        levels=levels,
    )
    return UserDetail(
        **_user_fields(user, mine), effective=effective, spend=_spend(engine, user.id)
    )


def group_detail(engine: Engine, group: GroupRow) -> GroupDetail:
    members = [
        MemberOut(id=u.id, email=u.email, name=u.name, status=u.status, via=_via(u, group))  # type: ignore[arg-type]
        for u in list_users(engine, group=group.id)
    ]
    return GroupDetail(**group.public(), members=members, spend=_spend(engine, group.id))


def org_out(engine: Engine, org: OrgPolicy) -> OrgOut:
    fields = org.public()
    del fields["id"]
    return OrgOut(**fields, spend=_spend(engine, ORG_LEVEL))


def _no_user(ref: str) -> ApiError:
    return not_found(f"no user with id or email {ref!r}")


def _no_group(ref: str) -> ApiError:
    return not_found(f"no group with id or name {ref!r}")


# --------------------------------------------------------------------------- routes


def people_router(engine: Engine, refresh: Refresh) -> APIRouter:
    """`refresh`: re-read this process's people cache after a change."""
    router = APIRouter(responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]})

    async def shown_user(user: UserRow) -> UserDetail:
        return await db(user_detail, engine, user)

    async def changed_user(user: UserRow | None, ref: str) -> UserDetail:
        if user is None:
            raise _no_user(ref)
        await refresh()
        return await shown_user(user)

    # -------------------------------------------------------------------- users

    @router.get("/users", response_model=UserList, tags=["users"])
    async def users_list(
        group: Annotated[
            Text | None, Query(max_length=REF_MAX, description="Members of this group.")
        ] = None,
        status: Literal["active", "disabled"] | None = None,
    ) -> UserList:
        """Users by email, with their groups; `group` (name or id) for its members (local
        and through the IdP's groups)."""
        if group is not None and await db(get_group, engine, group) is None:
            raise bad_request(f"group: no group with id or name {group!r}")
        rows = await db(list_users, engine, group=group, status=status)
        all_groups = await db(list_groups, engine)
        return UserList(data=[user_out(u, all_groups) for u in rows])

    @router.post("/users", status_code=201, response_model=UserDetail, tags=["users"])
    async def users_create(body: UserCreate, who: Who) -> UserDetail:
        """Create a local user (before their first sign-in, or for keys only)."""
        limits = _limits(body)
        row = await store_change(
            create_user,
            engine,
            email=body.email,
            name=body.name,
            groups=body.groups,
            limits=limits,
            actor=who,
        )
        return await changed_user(row, body.email)

    @router.get("/users/{user}", response_model=UserDetail, tags=["users"])
    async def users_show(user: Ref) -> UserDetail:
        """A user (by id or email) with their groups, the levels that govern them (the
        policy group, the per-person budget and where it comes from) and their spend."""
        row = await db(get_user, engine, user)
        if row is None:
            raise _no_user(user)
        return await shown_user(row)

    @router.patch("/users/{user}", response_model=UserDetail, tags=["users"])
    async def users_update(user: Ref, body: UserUpdate, who: Who) -> UserDetail:
        """Change a user: only the fields sent change; null removes a limit."""
        changes = changes_of(body)
        if "email" in changes and changes["email"] is None:
            raise bad_request("email: a user needs an email address")
        if "groups" in changes and changes["groups"] is None:
            changes["groups"] = []
        drop_orphan_period(changes)
        row = await store_change(update_user, engine, user, actor=who, **changes)
        return await changed_user(row, user)

    @router.post("/users/{user}/disable", response_model=UserDetail, tags=["users"])
    async def users_disable(
        user: Ref, who: Who, body: Annotated[DisableBody | None, Body()] = None
    ) -> UserDetail:
        """Disable a user: their tokens and personal keys stop working at once (on other
        replicas within their next refresh); their keys are not revoked."""
        reason = body.reason if body is not None else None
        row = await store_change(disable_user, engine, user, actor=who, reason=reason)
        return await changed_user(row, user)

    @router.post("/users/{user}/enable", response_model=UserDetail, tags=["users"])
    async def users_enable(user: Ref, who: Who) -> UserDetail:
        """Enable a user again; tokens from before the disable stay invalid."""
        row = await store_change(enable_user, engine, user, actor=who)
        return await changed_user(row, user)

    @router.post("/users/{user}/revoke-tokens", response_model=UserDetail, tags=["users"])
    async def users_revoke_tokens(user: Ref, who: Who) -> UserDetail:
        """Sign a user out everywhere: every token and admin session minted before now is
        refused. Their keys are untouched."""
        row = await store_change(revoke_user_tokens, engine, user, actor=who)
        return await changed_user(row, user)

    # ------------------------------------------------------------------- groups

    async def changed_group(group: GroupRow | None, ref: str) -> GroupDetail:
        if group is None:
            raise _no_group(ref)
        await refresh()
        return await db(group_detail, engine, group)

    @router.get("/groups", response_model=GroupList, tags=["groups"])
    async def groups_list() -> GroupList:
        """Every group in policy order (priority, then name)."""
        rows = await db(list_groups, engine)
        return GroupList(data=[GroupOut(**g.public()) for g in rows])

    @router.post("/groups", status_code=201, response_model=GroupDetail, tags=["groups"])
    async def groups_create(body: GroupCreate, who: Who) -> GroupDetail:
        """Create a group. Its name is matched exactly to IdP group names."""
        row = await store_change(
            create_group,
            engine,
            name=body.name,
            description=body.description,
            priority=body.priority if body.priority is not None else 100,
            limits=_limits(body),
            member_budget_usd=body.member_budget_usd,
            actor=who,
        )
        return await changed_group(row, body.name)

    @router.get("/groups/{group}", response_model=GroupDetail, tags=["groups"])
    async def groups_show(group: Ref) -> GroupDetail:
        """A group (by id or name) with its members and its spend."""
        row = await db(get_group, engine, group)
        if row is None:
            raise _no_group(group)
        return await db(group_detail, engine, row)

    @router.patch("/groups/{group}", response_model=GroupDetail, tags=["groups"])
    async def groups_update(group: Ref, body: GroupUpdate, who: Who) -> GroupDetail:
        """Change a group: only the fields sent change; null removes a limit."""
        changes = changes_of(body)
        for required in ("name", "priority"):
            if required in changes and changes[required] is None:
                raise bad_request(f"{required}: cannot be null")
        current = await db(get_group, engine, group)
        if current is None:
            raise _no_group(group)
        drop_orphan_period(changes, current.limits.budget_usd, current.member_budget_usd)
        row = await store_change(update_group, engine, current.id, actor=who, **changes)
        return await changed_group(row, group)

    @router.delete("/groups/{group}", response_model=GroupDeleted, tags=["groups"])
    async def groups_delete(group: Ref, who: Who) -> GroupDeleted:
        """Delete a group: its local memberships go and its service keys are revoked."""
        row = await store_change(delete_group, engine, group, actor=who)
        if row is None:
            raise _no_group(group)
        await refresh()
        return GroupDeleted(id=row.id, name=row.name)

    # ---------------------------------------------------------------------- org

    @router.get("/org", response_model=OrgOut, tags=["org"])
    async def org_show() -> OrgOut:
        """The organisation's default policy and its spend."""
        org = await db(get_org, engine)
        return await db(org_out, engine, org)

    @router.patch("/org", response_model=OrgOut, tags=["org"])
    async def org_update(body: OrgUpdate, who: Who) -> OrgOut:
        """Change the organisation's policy: only the fields sent change."""
        changes = changes_of(body)
        current = await db(get_org, engine)
        drop_orphan_period(changes, current.limits.budget_usd, current.member_budget_usd)
        org = await store_change(update_org, engine, actor=who, **changes)
        await refresh()
        return await db(org_out, engine, org)

    # -------------------------------------------------------------------- audit

    @router.get("/audit", response_model=AuditList, tags=["audit"])
    async def audit(
        limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = 100,
        before_id: Annotated[
            Text | None, text_query("Older than this entry (the next page back).")
        ] = None,
        after_id: Annotated[
            Text | None, text_query("Newer than this entry, oldest first (to follow).")
        ] = None,
        target_type: Annotated[Text | None, text_query("user, group, key, org")] = None,
        target_id: Annotated[Text | None, text_query("A user, group or key id, or org.")] = None,
        action: Annotated[Text | None, text_query("e.g. user.disable, key.create")] = None,
    ) -> AuditList:
        """Who changed what, when, from what to what; newest first. Read-only: entries
        cannot be changed or deleted through any API."""
        filters = {
            "before_id": before_id,
            "after_id": after_id,
            "target_type": target_type,
            "target_id": target_id,
            "action": action,
        }
        rows: list[AuditRow] = await db(list_audit, engine, limit=limit, **filters)
        has_more = False
        if len(rows) == limit:
            last = rows[-1].id
            if after_id is not None and before_id is None:  # oldest first: newer ones?
                more = await db(list_audit, engine, limit=1, **{**filters, "after_id": last})
            else:
                more = await db(list_audit, engine, limit=1, **{**filters, "before_id": last})
            has_more = bool(more)
        return AuditList(data=[AuditEntry(**r.public()) for r in rows], has_more=has_more)

    @router.api_route(
        "/audit",
        methods=["POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    @router.api_route(
        "/audit/{rest:path}",
        methods=["POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def audit_write() -> None:
        """The audit log is never editable through the API."""
        raise ApiError(
            "invalid_request_error",
            "the audit log is read-only: it cannot be changed",
            405,
            headers={"allow": "GET"},
        )

    return router


def _limits(body: LimitFields) -> Limits:
    try:
        return Limits(
            models=tuple(body.models) if body.models is not None else None,
            rpm=body.rpm,
            tpm=body.tpm,
            budget_usd=body.budget_usd,
            budget_period=body.budget_period,
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
