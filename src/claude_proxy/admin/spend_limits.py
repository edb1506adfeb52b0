"""The Claude apps gateway's spend-limit routes, answered by the proxy itself.

`/v1/organizations/spend_limits` (and `/{id}`, `/effective`, `/audit`) with the shapes,
pagination, errors and credentials of Anthropic's Claude apps gateway, so its tooling
works against claude-proxy unchanged. These paths are never passed to Anthropic.

The gateway's spend limits are per-person caps; they map onto the proxy's model:

| gateway scope | the proxy's cap |
|---|---|
| `organization` | the org policy's per-person default (`member_budget_usd`) |
| `rbac_group` (an IdP group name) | that group's per-member budget (`member_budget_usd`) |
| `user` (the IdP subject, or a local user's id) | the user's own budget (`budget_usd`) |

`amount` is whole US cents as a string; `period` daily|weekly|monthly is day|week|month.
The proxy keeps ONE period per scope, so an upsert for another period replaces the cap
(the gateway would keep both), and `amount: null` removes the cap (the gateway stores
an explicit "unlimited"). Ids are derived from the scope: "spl_org", "spl_" + group id,
"spl_" + user id. Every change goes through store/people.py with the actor, so it is in
the audit log, which `/audit` reads back as the gateway's audit events.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import Engine

from claude_proxy.admin.asgi import AdminApp
from claude_proxy.admin.auth import AdminAuth
from claude_proxy.admin.common import (
    ERROR_RESPONSES,
    Text,
    actor,
    bad_request,
    db,
    install_error_handlers,
    not_found,
    store_change,
)
from claude_proxy.admin.people import Refresh, budget_source, people_refresher
from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.store.audit import AUDIT_PAGE_MAX, AuditRow, list_audit
from claude_proxy.store.keys import BUDGET_MAX, drop_orphan_period
from claude_proxy.store.people import (
    GROUP_NAME_MAX,
    SUBJECT_MAX,
    GroupRow,
    Limits,
    OrgPolicy,
    UserRow,
    create_group,
    effective_groups,
    get_group,
    get_org,
    get_user,
    list_groups,
    list_users,
    spend_of,
    update_group,
    update_org,
    update_user,
)

PREFIX = "/v1/organizations/spend_limits"
REFUSED = "missing or invalid admin credentials"
NOT_FOUND = "spend limit not found"
ORG_LIMIT_ID = "spl_org"
_ID_PREFIX = "spl_"
_CENTS = Decimal(100)
_MAX_CENTS = BUDGET_MAX * _CENTS
_MAX_EFFECTIVE_USERS = 100
_Q_MAX = 200
_CURSOR_MAX = 64
_AUDIT_SCAN_PAGE = AUDIT_PAGE_MAX

GatewayPeriod = Literal["daily", "weekly", "monthly"]
_OURS = {"daily": "day", "weekly": "week", "monthly": "month"}
_THEIRS = {v: k for k, v in _OURS.items()}


# --------------------------------------------------------------------------- shapes


class OrganizationScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["organization"]


class GroupScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["rbac_group"]
    rbac_group_id: Text = Field(min_length=1, max_length=GROUP_NAME_MAX)


class UserScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["user"]
    user_id: Text = Field(min_length=1, max_length=SUBJECT_MAX)


Scope = Annotated[OrganizationScope | GroupScope | UserScope, Field(discriminator="type")]


class SpendLimitIn(BaseModel):
    """An upsert: the cap of a scope. `amount` null removes it."""

    model_config = ConfigDict(extra="forbid")

    scope: Scope
    amount: Text | StrictInt | None = Field(
        description='Whole US cents as a string (`"50000"` = $500); null removes the cap.'
    )
    period: GatewayPeriod = "monthly"
    currency: Literal["USD"] = "USD"


class _Cap(BaseModel):
    """Where a cap lives and what it is (internal: one scope's per-person budget)."""

    id: str
    scope: dict[str, str]
    amount_usd: Decimal
    period: str
    created_at: datetime | None
    updated_at: datetime | None


# ------------------------------------------------------------------------ conversions


def cents_text(usd: Decimal) -> str:
    """Dollars as the gateway's cents string: whole cents as an integer ("50000"); a
    budget set finer than a cent keeps its fraction rather than being misstated."""
    cents = usd * _CENTS
    if cents == cents.to_integral_value():
        return str(int(cents))
    return format(cents.normalize(), "f")


def spend_cents(usd: Decimal) -> str:
    """Period-to-date spend in cents, at most 3 decimals ("1234.5", "0")."""
    cents = (usd * _CENTS).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)
    return format(cents.normalize(), "f") if cents else "0"


def _amount_usd(amount: str | int | None) -> Decimal | None:
    if amount is None:
        return None
    text = str(amount)
    if isinstance(amount, bool) or not re.fullmatch(r"[0-9]{1,16}", text):
        raise bad_request('amount: a string of whole US cents, such as "50000" for $500')
    cents = Decimal(text)
    if cents > _MAX_CENTS:
        raise bad_request(f"amount: at most {int(_MAX_CENTS)} cents")
    return cents / _CENTS


def _period_out(period: str) -> str:
    return _THEIRS.get(period, period)  # "total" has no gateway name: shown as is


def _user_key(user: UserRow) -> str:
    """The gateway's user id: the IdP subject, or the proxy's id before a first sign-in."""
    return user.subject or user.id


def _org_cap(org: OrgPolicy) -> _Cap | None:
    if org.member_budget_usd is None or org.limits.budget_period is None:
        return None
    return _Cap(
        id=ORG_LIMIT_ID,
        scope={"type": "organization"},
        amount_usd=org.member_budget_usd,
        period=org.limits.budget_period,
        created_at=org.updated_at,
        updated_at=org.updated_at,
    )


def _group_cap(group: GroupRow) -> _Cap | None:
    if group.member_budget_usd is None or group.limits.budget_period is None:
        return None
    return _Cap(
        id=_ID_PREFIX + group.id,
        scope={"type": "rbac_group", "rbac_group_id": group.name},
        amount_usd=group.member_budget_usd,
        period=group.limits.budget_period,
        created_at=group.created_at,
        updated_at=group.updated_at,
    )


def _user_cap(user: UserRow) -> _Cap | None:
    if user.limits.budget_usd is None or user.limits.budget_period is None:
        return None
    return _Cap(
        id=_ID_PREFIX + user.id,
        scope={"type": "user", "user_id": _user_key(user)},
        amount_usd=user.limits.budget_usd,
        period=user.limits.budget_period,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


def _iso(at: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, as the Admin API writes times."""
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def spend_limit(cap: _Cap) -> dict[str, Any]:
    return {
        "type": "spend_limit",
        "id": cap.id,
        "created_at": _iso(cap.created_at),
        "updated_at": _iso(cap.updated_at),
        "scope": cap.scope,
        "amount": cents_text(cap.amount_usd),
        "currency": "USD",
        "period": _period_out(cap.period),
    }


def all_caps(engine: Engine) -> list[_Cap]:
    """Every per-person cap there is, by id (blocking)."""
    caps = [_org_cap(get_org(engine))]
    caps += [_group_cap(g) for g in list_groups(engine)]
    caps += [_user_cap(u) for u in list_users(engine)]
    return sorted((c for c in caps if c is not None), key=lambda c: c.id)


def find_user(engine: Engine, user_key: str) -> UserRow | None:
    """A user by the gateway's user id: the IdP subject, or the proxy's own id."""
    if user_key.startswith("usr_"):
        found = get_user(engine, user_key)
        if found is not None:
            return found
    for user in list_users(engine):
        if user.subject == user_key:
            return user
    return None


def cap_by_id(engine: Engine, limit_id: str) -> _Cap | None:
    if limit_id == ORG_LIMIT_ID:
        return _org_cap(get_org(engine))
    if limit_id.startswith(_ID_PREFIX + "grp_"):
        group = get_group(engine, limit_id.removeprefix(_ID_PREFIX))
        return _group_cap(group) if group is not None else None
    if limit_id.startswith(_ID_PREFIX + "usr_"):
        user = get_user(engine, limit_id.removeprefix(_ID_PREFIX))
        return _user_cap(user) if user is not None else None
    return None


def _pool_clash(what: str, pool: Decimal | None, pool_period: str | None, period: str) -> None:
    """A group's or the org's per-member cap counts in the period of its pool budget."""
    if pool is not None and pool_period is not None and pool_period != period:
        raise bad_request(
            f"{what} has a budget per {pool_period}, and its per-person cap counts in the "
            f"same period: send period {_period_out(pool_period)!r}, or change that budget "
            "first (admin API or CLI)"
        )


def _cap_removal(pool: Decimal | None, member: Decimal | None) -> dict[str, Any] | None:
    """The change that removes a level's per-person cap (and the period, unless its pool
    budget keeps it); None when it has no cap."""
    if member is None:
        return None
    changes: dict[str, Any] = {"member_budget_usd": None}
    drop_orphan_period(changes, pool, member)
    return changes


def _set_org(engine: Engine, who: str, usd: Decimal | None, period: str) -> _Cap | None:
    org = get_org(engine)
    if usd is None:
        removal = _cap_removal(org.limits.budget_usd, org.member_budget_usd)
        if removal is not None:
            update_org(engine, actor=who, **removal)
        return None
    _pool_clash("the organisation", org.limits.budget_usd, org.limits.budget_period, period)
    return _org_cap(update_org(engine, actor=who, member_budget_usd=usd, budget_period=period))


def _set_group(
    engine: Engine, who: str, name: str, usd: Decimal | None, period: str
) -> _Cap | None:
    group = get_group(engine, name)
    if group is None or group.name != name:  # the IdP group's name, not a proxy id
        if usd is None:
            raise not_found(NOT_FOUND)
        # The cap applies to the IdP group's members once a proxy group has its name.
        created = create_group(
            engine,
            name=name,
            actor=who,
            description="created for a spend limit",
            limits=Limits(budget_period=period),
            member_budget_usd=usd,
        )
        return _group_cap(created)
    if usd is None:
        removal = _cap_removal(group.limits.budget_usd, group.member_budget_usd)
        if removal is not None:
            update_group(engine, group.id, actor=who, **removal)
        return None
    _pool_clash(f"group {name!r}", group.limits.budget_usd, group.limits.budget_period, period)
    row = update_group(engine, group.id, actor=who, member_budget_usd=usd, budget_period=period)
    return _group_cap(row) if row is not None else None


def _set_user(engine: Engine, who: str, key: str, usd: Decimal | None, period: str) -> _Cap | None:
    user = find_user(engine, key)
    if user is None:
        raise not_found(f"no user with id {key!r}")
    if usd is None and user.limits.budget_usd is None:
        return None
    row = update_user(
        engine,
        user.id,
        actor=who,
        budget_usd=usd,
        budget_period=period if usd is not None else None,
    )
    return _user_cap(row) if row is not None else None


def _upsert(engine: Engine, who: str, body: SpendLimitIn) -> tuple[str, _Cap | None]:
    """Apply an upsert (blocking): the id of the scope's cap and the cap now."""
    usd = _amount_usd(body.amount)
    period = _OURS[body.period]
    scope = body.scope
    if isinstance(scope, OrganizationScope):
        return ORG_LIMIT_ID, _set_org(engine, who, usd, period)
    if isinstance(scope, GroupScope):
        cap = _set_group(engine, who, scope.rbac_group_id, usd, period)
        group = get_group(engine, scope.rbac_group_id)
        return (_ID_PREFIX + group.id if group else ""), cap
    cap = _set_user(engine, who, scope.user_id, usd, period)
    user = find_user(engine, scope.user_id)
    return (_ID_PREFIX + user.id if user else ""), cap


def _remove(engine: Engine, who: str, limit_id: str) -> bool:
    """Remove the cap with this id (blocking); False if there is none."""
    cap = cap_by_id(engine, limit_id)
    if cap is None:
        return False
    if limit_id == ORG_LIMIT_ID:
        _set_org(engine, who, None, cap.period)
    elif cap.scope["type"] == "rbac_group":
        _set_group(engine, who, cap.scope["rbac_group_id"], None, cap.period)
    else:
        _set_user(engine, who, limit_id.removeprefix(_ID_PREFIX), None, cap.period)
    return True


# ------------------------------------------------------------------------- effective


def _scope_of(source: str, source_name: str, user: UserRow) -> dict[str, str]:
    """The gateway's scope of the cap that governs a user."""
    if source == "user":
        return {"type": "user", "user_id": _user_key(user)}
    if source == "group":
        return {"type": "rbac_group", "rbac_group_id": source_name}
    return {"type": "organization"}


def _limit_id_of(source: str, source_id: str) -> str:
    return ORG_LIMIT_ID if source == "org" else _ID_PREFIX + source_id


def effective_rows(
    engine: Engine,
    *,
    user_keys: Sequence[str],
    periods: Sequence[str],
    q: str | None,
    sort: str | None,
) -> list[dict[str, Any]]:
    """One row per user (and per asked period): the cap that governs them, where it comes
    from, and their spend so far in that period (blocking)."""
    users = list_users(engine)
    if user_keys:
        wanted = set(user_keys)
        users = [u for u in users if u.id in wanted or (u.subject or "") in wanted]
    if q:
        needle = q.lower()
        users = [
            u
            for u in users
            if needle in u.email or needle in (u.name or "").lower() or needle in (u.subject or "")
        ]
    groups = list_groups(engine)
    org = get_org(engine)
    caps: dict[str, tuple[list[GroupRow], Any]] = {}
    for user in users:
        mine = effective_groups(user, groups)
        caps[user.id] = (mine, budget_source(user, mine, org))
    wanted_periods = list(dict.fromkeys(periods))
    counted = {"month", *wanted_periods, *(c[1][1] for c in caps.values() if c[1] is not None)}
    spent = {p: spend_of(engine, [u.id for u in users], p) for p in counted}
    rows: list[tuple[Decimal, dict[str, Any]]] = []
    for user in users:
        mine, cap = caps[user.id]
        names = sorted({g.name for g in mine} | set(user.idp_groups or ()))
        actor_out = {
            "type": "user_actor",
            "user_id": _user_key(user),
            "name": user.name,
            "email_address": user.email,
            "deleted": False,
        }
        for period in wanted_periods or [cap[1] if cap is not None else "month"]:
            applies = cap is not None and cap[1] == period
            spend = spent[period].get(user.id, Decimal(0))
            row = {
                "scope": {"type": "user", "user_id": _user_key(user)},
                "groups": names,
                "actor": actor_out,
                "amount": cents_text(cap[0]) if cap is not None and applies else None,
                "currency": "USD",
                "period": _period_out(period),
                "source": _scope_of(cap[2], cap[4], user) if cap and applies else None,
                "spend_limit_id": _limit_id_of(cap[2], cap[3]) if cap and applies else None,
                "period_to_date_spend": spend_cents(spend),
            }
            rows.append((spend, row))
    if sort == "spend_desc":
        rows.sort(key=lambda r: r[0], reverse=True)
    return [r for _, r in rows]


# ----------------------------------------------------------------------------- audit


def _cap_view(target_type: str, snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spend limit an audit snapshot of an org, group or user holds, if any."""
    if snapshot is None:
        return None
    field = "budget_usd" if target_type == "user" else "member_budget_usd"
    amount, period = snapshot.get(field), snapshot.get("budget_period")
    if amount is None or period is None:
        return None
    if target_type == "org":
        scope = {"type": "organization"}
    elif target_type == "group":
        scope = {"type": "rbac_group", "rbac_group_id": str(snapshot.get("name"))}
    else:
        scope = {"type": "user", "user_id": str(snapshot.get("subject") or snapshot.get("id"))}
    return {
        "scope": scope,
        "amount": cents_text(Decimal(str(amount))),
        "currency": "USD",
        "period": _period_out(str(period)),
    }


def audit_event(row: AuditRow) -> dict[str, Any] | None:
    """An audit row as the gateway's audit event, if it changed a spend limit."""
    if row.target_type not in ("org", "group", "user"):
        return None
    before = _cap_view(row.target_type, row.before)
    after = _cap_view(row.target_type, row.after)
    if before == after:
        return None
    action = (
        "spend_limit.create"
        if before is None
        else "spend_limit.delete"
        if after is None
        else "spend_limit.update"
    )
    target = ORG_LIMIT_ID if row.target_type == "org" else _ID_PREFIX + str(row.target_id)
    return {
        "type": "audit_event",
        "id": row.id,
        "created_at": _iso(row.created_at),
        "actor": row.actor,
        "action": action,
        "target_id": target,
        "before": before,
        "after": after,
        "reason": row.reason,
    }


def audit_events(engine: Engine, limit: int, after_id: str | None) -> tuple[list[Any], bool]:
    """Spend-limit changes, newest first, after (older than) `after_id` (blocking)."""
    events: list[dict[str, Any]] = []
    cursor = after_id
    while len(events) <= limit:
        rows = list_audit(engine, limit=_AUDIT_SCAN_PAGE, before_id=cursor)
        for row in rows:
            event = audit_event(row)
            if event is not None:
                events.append(event)
        if len(rows) < _AUDIT_SCAN_PAGE:
            break
        cursor = rows[-1].id
    return events[:limit], len(events) > limit


# ---------------------------------------------------------------------------- routes


def _bounded_id(value: str | None, name: str) -> str | None:
    if value is not None and len(value) > _CURSOR_MAX:
        raise bad_request(f"{name}: at most {_CURSOR_MAX} characters")
    return value


def _page(
    caps: list[_Cap], limit: int, after_id: str | None, before_id: str | None
) -> dict[str, Any]:
    if after_id is not None and before_id is not None:
        raise bad_request("give after_id or before_id, not both")
    if after_id is not None:
        rest = [c for c in caps if c.id > after_id]
        data, has_more = rest[:limit], len(rest) > limit
    elif before_id is not None:
        rest = [c for c in caps if c.id < before_id]
        data, has_more = rest[-limit:], len(rest) > limit
    else:
        data, has_more = caps[:limit], len(caps) > limit
    out = [spend_limit(c) for c in data]
    return {
        "data": out,
        "has_more": has_more,
        "first_id": out[0]["id"] if out else None,
        "last_id": out[-1]["id"] if out else None,
    }


def _router(engine: Engine, refresh: Refresh) -> APIRouter:
    router = APIRouter(prefix=PREFIX, responses=ERROR_RESPONSES)

    @router.post("")
    async def upsert(body: SpendLimitIn, who: Annotated[str, Depends(actor)]) -> Any:
        """Set (or with `amount: null` remove) the cap of a scope."""
        limit_id, cap = await store_change(_upsert, engine, who, body)
        await refresh()
        if cap is None:  # removed: the gateway's "unlimited" at that scope
            return {
                "type": "spend_limit",
                "id": limit_id,
                "created_at": None,
                "updated_at": None,
                "scope": body.scope.model_dump(),
                "amount": None,
                "currency": "USD",
                "period": body.period,
            }
        return spend_limit(cap)

    @router.get("")
    async def list_(
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        after_id: str | None = None,
        before_id: str | None = None,
        scope_type: Literal["organization", "rbac_group", "user"] | None = None,
    ) -> Any:
        """Every cap, by id, a page at a time."""
        caps = await db(all_caps, engine)
        if scope_type is not None:
            caps = [c for c in caps if c.scope["type"] == scope_type]
        return _page(
            caps,
            limit,
            _bounded_id(after_id, "after_id"),
            _bounded_id(before_id, "before_id"),
        )

    @router.get("/effective")
    async def effective(
        request: Request,
        q: Annotated[Text | None, Query(max_length=_Q_MAX)] = None,
        sort: Literal["spend_desc"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        page: Annotated[str | None, Query(max_length=_CURSOR_MAX)] = None,
    ) -> Any:
        """Per user: the cap that governs them, where it comes from, and their spend so
        far in its period."""
        params = request.query_params
        user_keys = params.getlist("user_ids[]") + params.getlist("user_ids")
        if len(user_keys) > _MAX_EFFECTIVE_USERS:
            raise bad_request(f"user_ids[]: at most {_MAX_EFFECTIVE_USERS}")
        if any(len(k) > SUBJECT_MAX for k in user_keys):
            raise bad_request(f"user_ids[]: each at most {SUBJECT_MAX} characters")
        periods = []
        for name in params.getlist("period[]") + params.getlist("period"):
            if name not in _OURS:
                raise bad_request("period[]: daily, weekly or monthly")
            periods.append(_OURS[name])
        if page is not None and not page.isdigit():
            raise bad_request("page: pass back the next_page of the previous answer")
        start = int(page) if page else 0
        rows = await db(
            effective_rows, engine, user_keys=user_keys, periods=periods, q=q, sort=sort
        )
        data = rows[start : start + limit]
        more = start + limit < len(rows)
        return {"data": data, "next_page": str(start + limit) if more else None}

    @router.get("/audit")
    async def audit(
        limit: Annotated[int, Query(ge=1, le=1000)] = 20, after_id: str | None = None
    ) -> Any:
        """Changes of spend limits, newest first; `after_id` pages back from an event."""
        data, has_more = await db(audit_events, engine, limit, _bounded_id(after_id, "after_id"))
        return {"data": data, "has_more": has_more}

    @router.get("/{limit_id}")
    async def show(limit_id: str) -> Any:
        cap = await db(cap_by_id, engine, _bounded_id(limit_id, "id") or "")
        if cap is None:
            raise not_found(NOT_FOUND)
        return spend_limit(cap)

    @router.delete("/{limit_id}")
    async def delete(limit_id: str, who: Annotated[str, Depends(actor)]) -> Any:
        if not await store_change(_remove, engine, who, _bounded_id(limit_id, "id") or ""):
            raise not_found(NOT_FOUND)
        await refresh()
        return {"type": "spend_limit_deleted", "id": limit_id}

    return router


def build_spend_limits_app(
    engine: Engine,
    admin_key: str | None = None,
    *,
    signer: TokenSigner | None = None,
    people: People | None = None,
    admin_groups: frozenset[str] = frozenset(),
) -> AdminApp:
    """The spend-limit routes as an ASGI app, for the proxy to mount at
    /v1/organizations/spend_limits (the whole path stays in the scope).

    Credentials as the Claude apps gateway takes them: `x-api-key` (or a bearer) with
    the admin key, or the access token of a signed-in member of `admin_groups`; anything
    else is a 401 "missing or invalid admin credentials". A ValueError when neither an
    admin key nor a signer is given.
    """
    auth = AdminAuth(admin_key=admin_key, signer=signer, people=people, admin_groups=admin_groups)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(_router(engine, people_refresher(people)))
    return AdminApp(
        app,
        auth,
        cookie=False,
        x_api_key=True,
        refusal_message=REFUSED,
        realm="claude-proxy spend limits",
    )
