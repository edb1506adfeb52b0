"""Who a request is made as, and every policy level it must pass: org → group → user → key.

Users, groups, memberships and the organisation's policy are held in memory and
re-read in the background when anything changed (a cheap version query every
`refresh_interval` seconds), like the key cache: no database read per request. A
request's `Caller` (its levels, the user and the group it is charged to) is resolved
once per key or token and cached until the people or the key change.

A person in several groups is governed by one of them, the policy group: the first
by priority (lowest number), then by name. Its model allowlist, RPM, TPM and pool
budget apply and the request is charged to it. The per-person budget is the user's
own, else the tightest per-member budget among their groups, else the organisation's
per-person default.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from claude_proxy.gateway.errors import ProxyError, refusal
from claude_proxy.gateway.keys import KeyInfo
from claude_proxy.gateway.levels import Level
from claude_proxy.gateway.tokens import TokenClaims
from claude_proxy.store.columns import ORG_LEVEL
from claude_proxy.store.people import (
    GroupRow,
    Limits,
    OrgPolicy,
    PeopleSnapshot,
    effective_groups,
    people_snapshot,
    people_version,
    personal_budget,
)

log = logging.getLogger("claude_proxy.auth")

_CATCH_UP_EVERY = 0.5  # seconds between two reads for owners not known here


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What the request path and sign-in need to know about a person."""

    id: str
    email: str
    name: str | None
    subject: str | None
    active: bool
    groups: tuple[str, ...]  # names: local memberships and the IdP's groups
    policy_group_id: str | None
    tokens_valid_after: float | None  # unix time


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is made as: the key (None for a token), the user and group it is
    charged to, and every level it must pass, broadest first."""

    key_id: str | None
    user_id: str | None
    group_id: str | None
    levels: tuple[Level, ...]
    # Worked out once, from the levels, since every request asks.
    models_limited: bool = field(init=False)
    metered: bool = field(init=False)  # its usage must be counted: a TPM limit or a budget

    def __post_init__(self) -> None:
        levels = self.levels
        object.__setattr__(self, "models_limited", any(lv.models is not None for lv in levels))
        object.__setattr__(
            self, "metered", any(lv.tpm is not None or lv.budget_usd is not None for lv in levels)
        )


@dataclass(frozen=True, slots=True)
class _View:
    """One consistent picture of the people, rebuilt whenever anything changed."""

    users: dict[str, UserInfo]
    user_levels: dict[str, tuple[Level, ...]]  # org, group, user (only the active ones)
    group_levels: dict[str, tuple[Level, ...]]  # org, group
    org_levels: tuple[Level, ...]
    budget_levels: tuple[Level, ...]  # every level with a budget, once each
    group_names: dict[str, str]


_EMPTY = _View({}, {}, {}, (), (), {})


class People:
    """Users, groups and the organisation's policy in memory; built once by wiring.py."""

    def __init__(self, *, engine: Engine | None, refresh_interval: float = 2.0) -> None:
        self._engine = engine
        self._refresh_interval = refresh_interval
        self._view = _EMPTY
        self._version: Any = None
        self._generation = 0
        # key id -> (the KeyInfo it was resolved for, generation, the Caller or a refusal)
        # key id -> (the KeyInfo it was resolved for, generation, the Caller or a refusal)
        self._callers: dict[str, tuple[KeyInfo, int, Caller | ProxyError]] = {}
        self._user_callers: dict[str, tuple[int, Caller]] = {}  # user id -> for tokens
        self._healthy_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._catching_up: asyncio.Future[bool] | None = None
        self._caught_up_at = float("-inf")

    # ------------------------------------------------------------ request path

    def caller_for_key(self, key: KeyInfo) -> Caller | ProxyError | None:
        """The key's levels: its owner's (a user or a group) or the organisation's, then
        its own. A refusal when its owner is disabled; None when its owner is not known
        here yet (made a moment ago elsewhere): `catch_up`, then ask again."""
        # The generation before the view: a refresh thread that swaps both in between makes
        # this entry stale at once, never a stale entry that looks current.
        generation = self._generation
        cached = self._callers.get(key.key_id)
        if cached is not None and cached[0] is key and cached[1] == generation:
            return cached[2]
        resolved = self._resolve_key(key, self._view)
        if resolved is not None:
            self._callers[key.key_id] = (key, generation, resolved)
        return resolved

    def caller_for_token(self, claims: TokenClaims) -> Caller | ProxyError | None:
        """A minted access token's levels, or why it no longer counts; None when its user
        is not known here yet (signed in a moment ago through another replica)."""
        generation = self._generation  # before the view, as in caller_for_key
        view = self._view
        user = view.users.get(claims.user_id)
        if user is None:
            return None
        if not user.active:
            return _token_refused("This user is disabled; sign in again once re-enabled.")
        if user.tokens_valid_after is not None and claims.issued_at < user.tokens_valid_after:
            return _token_refused("This token was revoked; sign in again.")
        cached = self._user_callers.get(user.id)
        if cached is not None and cached[0] == generation:
            return cached[1]
        caller = Caller(None, user.id, user.policy_group_id, view.user_levels.get(user.id, ()))
        self._user_callers[user.id] = (generation, caller)
        return caller

    # --------------------------------------------------------- for sign-in, admin

    def user(self, user_id: str) -> UserInfo | None:
        return self._view.users.get(user_id)

    def levels_for_user(self, user_id: str) -> tuple[Level, ...]:
        return self._view.user_levels.get(user_id, ())

    def allowed_models(self, user_id: str) -> tuple[str, ...] | None:
        """The patterns of the narrowest level with a model allowlist; None: any model."""
        lists = [lv.models for lv in self.levels_for_user(user_id) if lv.models is not None]
        return min(lists, key=len) if lists else None

    def group_name(self, group_id: str) -> str | None:
        return self._view.group_names.get(group_id)

    def budgets(self) -> dict[str, str]:
        """{level id: budget period} of every user, group and org level with a budget."""
        return {lv.id: lv.budget_period or "total" for lv in self._view.budget_levels}

    def budget_levels(self) -> tuple[Level, ...]:
        """Every distinct user, group and org level with a budget (for budget alerts)."""
        return self._view.budget_levels

    # -------------------------------------------------------------- updates

    async def catch_up(self) -> None:
        """Re-read the people now, for an owner or a user not known here yet. Concurrent
        callers share one read, and a read at most every `_CATCH_UP_EVERY` seconds: a
        flood of requests for a deleted owner cannot become a flood of queries."""
        if self._engine is None:
            return
        task = self._catching_up
        if task is None:
            if time.monotonic() - self._caught_up_at < _CATCH_UP_EVERY:
                return
            task = self._catching_up = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.refresh)
            )
        try:
            await asyncio.shield(task)
        except Exception as exc:
            log.warning("people catch-up failed (%s)", type(exc).__name__)
        finally:
            if self._catching_up is task and task.done():
                self._catching_up = None
                self._caught_up_at = time.monotonic()

    def _resolve_key(self, key: KeyInfo, view: _View) -> Caller | ProxyError | None:
        own = key.level
        own_levels = (own,) if own.active else ()
        if key.user_id is not None:
            user = view.users.get(key.user_id)
            if user is None:
                return None
            if not user.active:
                return refusal(
                    "owner_disabled",
                    "authentication_error",
                    "This API key belongs to a user who is disabled.",
                )
            levels = view.user_levels.get(user.id, ()) + own_levels
            return Caller(key.key_id, user.id, user.policy_group_id, levels)
        if key.group_id is not None:
            if key.group_id not in view.group_levels:
                return None
            levels = view.group_levels[key.group_id] + own_levels
            return Caller(key.key_id, None, key.group_id, levels)
        return Caller(key.key_id, None, None, view.org_levels + own_levels)

    def load(self, snapshot: PeopleSnapshot) -> None:
        """Take a new picture of the people (from a refresh, or at once from a change)."""
        self._view = _build_view(snapshot)
        self._generation += 1  # after the view: see caller_for_key
        self._callers.clear()
        self._user_callers.clear()

    def refresh(self) -> bool:
        """Re-read everything if anything changed since the last read; blocking."""
        assert self._engine is not None
        version = people_version(self._engine)
        changed = bool(version != self._version)
        if changed:
            self.load(people_snapshot(self._engine))
            self._version = version
        self._healthy_at = time.monotonic()
        return changed

    async def start(self) -> None:
        """Load once (a database that is down does not stop the start), then keep refreshing."""
        if self._engine is None:
            return
        await self._refresh_logged()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        healthy = time.monotonic() - self._healthy_at < 3 * self._refresh_interval + 1.0
        try:
            await asyncio.to_thread(self.refresh)
        except Exception as exc:
            if healthy:
                log.warning(
                    "people refresh failed (%s); the last known users and groups stay in force",
                    type(exc).__name__,
                )


def unknown_owner() -> ProxyError:
    """A key whose owner, or a token whose user, the database does not know (deleted)."""
    return refusal(
        "owner_unknown",
        "authentication_error",
        "This credential belongs to a user or group that no longer exists.",
    )


def _token_refused(message: str) -> ProxyError:
    return refusal("token_revoked", "authentication_error", message)


def _money(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def _level(id_: str, kind: str, name: str, limits: Limits, budget: Decimal | None = None) -> Level:
    return Level(
        id=id_,
        kind=kind,
        name=name,
        models=limits.models,
        rpm=limits.rpm,
        tpm=limits.tpm,
        budget_usd=_money(budget),
        budget_period=limits.budget_period if budget is not None else None,
    )


def _org_level(org: OrgPolicy) -> Level:
    return _level(ORG_LEVEL, "org", "organisation", org.limits, org.limits.budget_usd)


def _group_level(group: GroupRow) -> Level:
    return _level(group.id, "group", group.name, group.limits, group.limits.budget_usd)


def _build_view(snap: PeopleSnapshot) -> _View:
    org = _org_level(snap.org)
    org_levels = (org,) if org.active else ()
    budgeted: dict[str, Level] = {}
    if org.budget_usd is not None:
        budgeted[org.id] = org
    group_levels: dict[str, tuple[Level, ...]] = {}
    for group in snap.groups:
        level = _group_level(group)
        group_levels[group.id] = org_levels + ((level,) if level.active else ())
        if level.budget_usd is not None:
            budgeted[level.id] = level
    users: dict[str, UserInfo] = {}
    user_levels: dict[str, tuple[Level, ...]] = {}
    for user in snap.users:
        mine = effective_groups(user, snap.groups)  # in policy order
        policy = mine[0] if mine else None
        names = sorted({g.name for g in mine} | set(user.idp_groups or ()))
        users[user.id] = UserInfo(
            id=user.id,
            email=user.email,
            name=user.name,
            subject=user.subject,
            active=user.status == "active",
            groups=tuple(names),
            policy_group_id=policy.id if policy is not None else None,
            tokens_valid_after=(
                user.tokens_valid_after.timestamp() if user.tokens_valid_after else None
            ),
        )
        budget, period = personal_budget(user, mine, snap.org) or (None, None)
        own = Level(
            id=user.id,
            kind="user",
            name=user.email,
            models=user.limits.models,
            rpm=user.limits.rpm,
            tpm=user.limits.tpm,
            budget_usd=_money(budget),
            budget_period=period,
        )
        base = group_levels[policy.id] if policy is not None else org_levels
        user_levels[user.id] = base + ((own,) if own.active else ())
        if own.budget_usd is not None:
            budgeted[own.id] = own
    return _View(
        users=users,
        user_levels=user_levels,
        group_levels=group_levels,
        org_levels=org_levels,
        budget_levels=tuple(budgeted.values()),
        group_names={g.id: g.name for g in snap.groups},
    )
