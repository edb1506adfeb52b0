"""Users, groups, local memberships and the organisation's policy: the tables behind
`claude-proxy users|groups|org`, the admin API, sign-in and the proxy's people cache.

Every change writes one audit row (store/audit.py) in its own transaction, with the
public fields before and after, and stamps `updated_at` with the database's clock. A
membership change stamps the user's `updated_at`, so a cache that refreshes by users
sees it. `people_version` is what the proxy's replicas poll to learn that anything here
changed; `people_snapshot` is what they load when it did.

Validation is here, not in the callers: a ValueError says what is wrong (in words fit for
an operator) and nothing is written; `Conflict`, a ValueError, is a name or email that is
taken. Ids: "usr_" / "grp_" + 16 hex digits.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Select,
    cast,
    delete,
    extract,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from claude_proxy.store.audit import REASON_MAX, record
from claude_proxy.store.columns import ORG_LEVEL, current_period
from claude_proxy.store.keys import (
    BUDGET_PERIODS,
    check_limits,
    check_money,
    revoke_in,
)
from claude_proxy.store.schema import (
    DatabaseNow,
    api_keys,
    groups,
    key_spend,
    org_policy,
    user_groups,
    users,
)

EMAIL_MAX = 254  # RFC 5321's limit on a forward path
USER_NAME_MAX = 200
GROUP_NAME_MAX = 128
DESCRIPTION_MAX = 1000
SUBJECT_MAX = 255  # OIDC Core: `sub` is at most 255 ASCII characters
PRIORITY_MAX = 1_000_000
# At most this many groups in one user's local memberships or IdP claim.
GROUPS_PER_USER_MAX = 1000
USER_STATUSES = ("active", "disabled")
ORG_ID = ORG_LEVEL  # the one org_policy row; also its level id in key_spend

_LIMIT_FIELDS = ("models", "rpm", "tpm", "budget_usd", "budget_period")


class Conflict(ValueError):
    """A unique name or email already taken (the admin API's 409)."""


class _AuditedRow:
    """The audit log keeps a row's public fields but the clocks that move on every change."""

    def public(self) -> dict[str, Any]:
        raise NotImplementedError

    def audited(self) -> dict[str, Any]:
        return {k: v for k, v in self.public().items() if k not in ("updated_at", "last_login_at")}


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Limits:
    """A level's policy: model allowlist, RPM, TPM and a budget; None = no limit.

    Validated like a key's (store/keys.py `check_limits`): the same bounds and periods
    (day, week, month, total), and an amount needs its period. A list of models is
    taken as a tuple.
    """

    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None

    def __post_init__(self) -> None:
        if self.models is not None and not isinstance(self.models, tuple):
            object.__setattr__(self, "models", tuple(self.models))
        check_limits(self.models, self.rpm, self.tpm, self.budget_usd, self.budget_period)

    def public(self) -> dict[str, Any]:
        return {
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget_usd,
            "budget_period": self.budget_period,
        }


@dataclass(frozen=True)
class UserRow(_AuditedRow):
    """A person: their own policy (`limits`; budget_usd is their own per-person cap),
    their local memberships, and the IdP's groups as of their last sign-in."""

    id: str
    email: str
    name: str | None
    subject: str | None
    status: str
    status_reason: str | None
    source: str
    idp_groups: tuple[str, ...] | None
    limits: Limits
    local_group_ids: tuple[str, ...]
    tokens_valid_after: datetime | None
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.status == "active"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "subject": self.subject,
            "status": self.status,
            "status_reason": self.status_reason,
            "source": self.source,
            "idp_groups": list(self.idp_groups) if self.idp_groups is not None else None,
            "local_group_ids": list(self.local_group_ids),
            **self.limits.public(),
            "tokens_valid_after": self.tokens_valid_after,
            "last_login_at": self.last_login_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class GroupRow(_AuditedRow):
    """A group: its policy (`limits`; budget_usd is the POOL its members spend together)
    and the per-member default cap, counted in the same period as the pool."""

    id: str
    name: str
    description: str | None
    priority: int
    limits: Limits
    member_budget_usd: Decimal | None
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "priority": self.priority,
            **self.limits.public(),
            "member_budget_usd": self.member_budget_usd,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class OrgPolicy(_AuditedRow):
    """The organisation's default policy: budget_usd caps the whole organisation,
    member_budget_usd is each person's default cap. updated_at None: never set."""

    limits: Limits = field(default_factory=Limits)
    member_budget_usd: Decimal | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": ORG_ID,
            **self.limits.public(),
            "member_budget_usd": self.member_budget_usd,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class PeopleSnapshot:
    """Everything the proxy's people cache holds, read in one transaction."""

    users: list[UserRow]
    groups: list[GroupRow]
    memberships: list[tuple[str, str]]  # local (user_id, group_id)
    org: OrgPolicy


# ---------------------------------------------------------------------- validation


def _no_controls(label: str, text: str) -> None:
    if any(ch < " " or ch == "\x7f" for ch in text):
        raise ValueError(f"{label} must not contain control characters")


def normalize_email(email: str) -> str:
    """Lower-cased and stripped; refused unless it looks like one address."""
    if not isinstance(email, str):
        raise ValueError("an email address is text")
    text = email.strip().lower()
    if len(text) > EMAIL_MAX:
        raise ValueError(f"an email address is at most {EMAIL_MAX} characters")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() for ch in text):
        raise ValueError(f"not an email address: {text[:EMAIL_MAX]!r}")
    _no_controls("an email address", text)
    return text


def _user_name(name: str | None) -> str | None:
    if name is None:
        return None
    text = name.strip()
    if len(text) > USER_NAME_MAX:
        raise ValueError(f"a name is at most {USER_NAME_MAX} characters")
    _no_controls("a name", text)
    return text or None


def _group_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a group needs a name")
    text = name.strip()
    if len(text) > GROUP_NAME_MAX:
        raise ValueError(f"a group name is at most {GROUP_NAME_MAX} characters")
    _no_controls("a group name", text)
    return text


def _description(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > DESCRIPTION_MAX:
        raise ValueError(f"a description is at most {DESCRIPTION_MAX} characters")
    if "\x00" in text:
        raise ValueError("a description must not contain a NUL character")
    return text.strip() or None


def _priority(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= PRIORITY_MAX:
        raise ValueError(f"priority must be a whole number between 0 and {PRIORITY_MAX}")
    return value


def _reason(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > REASON_MAX:
        raise ValueError(f"a reason is at most {REASON_MAX} characters")
    _no_controls("a reason", text)
    return text.strip() or None


def _check_level_budget(limits: Limits, member_budget_usd: Decimal | None, *, what: str) -> None:
    """A group's or the org's budget: the pool and the per-member cap share one period,
    which neither may lack, and which may not stand alone."""
    if member_budget_usd is not None:
        check_money("a per-member budget", member_budget_usd)
        if limits.budget_period is None:
            raise ValueError(
                f"{what}'s per-member budget needs a budget period (day, week, month or total)"
            )
    if limits.budget_period is not None and limits.budget_usd is None and member_budget_usd is None:
        raise ValueError("a budget needs both an amount and a period (day, week, month or total)")


def _check_user_budget(limits: Limits) -> None:
    if limits.budget_period is not None and limits.budget_usd is None:
        raise ValueError("a budget needs both an amount and a period (day, week, month or total)")


def _limit_changes(current: Limits, changes: dict[str, Any]) -> Limits:
    """The limits with `changes`' limit fields applied (popped from it); validated."""
    picked = {k: changes.pop(k) for k in _LIMIT_FIELDS if k in changes}
    if "limits" in changes:
        whole = changes.pop("limits")
        if not isinstance(whole, Limits):
            raise ValueError("limits must be a Limits")
        current = whole
    return replace(current, **picked) if picked else current


def _unknown(changes: Mapping[str, Any]) -> None:
    if changes:
        raise ValueError(f"cannot change {', '.join(sorted(changes))}")


# ---------------------------------------------------------------------- conversions


def _models_text(models: tuple[str, ...] | None) -> str | None:
    return orjson.dumps([m.strip() for m in models]).decode() if models is not None else None


def _limit_values(limits: Limits) -> dict[str, Any]:
    return {
        "models": _models_text(limits.models),
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "budget_usd": limits.budget_usd,
        "budget_period": limits.budget_period,
    }


def _limits_of(r: RowMapping) -> Limits:
    models = r["models"]
    return Limits(
        models=tuple(orjson.loads(models)) if models is not None else None,
        rpm=r["rpm"],
        tpm=r["tpm"],
        budget_usd=r["budget_usd"],
        budget_period=r["budget_period"],
    )


def _user_of(r: RowMapping, group_ids: Sequence[str]) -> UserRow:
    idp = r["idp_groups"]
    return UserRow(
        id=r["id"],
        email=r["email"],
        name=r["name"],
        subject=r["subject"],
        status=r["status"],
        status_reason=r["status_reason"],
        source=r["source"],
        idp_groups=tuple(orjson.loads(idp)) if idp is not None else None,
        limits=_limits_of(r),
        local_group_ids=tuple(sorted(group_ids)),
        tokens_valid_after=r["tokens_valid_after"],
        last_login_at=r["last_login_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _group_of(r: RowMapping) -> GroupRow:
    return GroupRow(
        id=r["id"],
        name=r["name"],
        description=r["description"],
        priority=r["priority"],
        limits=_limits_of(r),
        member_budget_usd=r["member_budget_usd"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


# --------------------------------------------------------------------------- groups


def _find_group(conn: Connection, id_or_name: str, *, for_update: bool = False) -> GroupRow | None:
    for column in (
        (groups.c.id, groups.c.name) if id_or_name.startswith("grp_") else (groups.c.name,)
    ):
        stmt = select(groups).where(column == id_or_name)
        if for_update:
            stmt = stmt.with_for_update()
        found = conn.execute(stmt).mappings().first()
        if found is not None:
            return _group_of(found)
    return None


def create_group(
    engine: Engine,
    *,
    name: str,
    actor: str,
    description: str | None = None,
    priority: int = 100,
    limits: Limits = Limits(),
    member_budget_usd: Decimal | None = None,
) -> GroupRow:
    """A new group. Its name is matched exactly (case-sensitively) to IdP group names."""
    values = {
        "name": _group_name(name),
        "description": _description(description),
        "priority": _priority(priority),
        "member_budget_usd": member_budget_usd,
        **_limit_values(limits),
    }
    _check_level_budget(limits, member_budget_usd, what="a group")
    group_id = "grp_" + secrets.token_hex(8)
    try:
        with engine.begin() as conn:
            if _find_group(conn, values["name"]) is not None:
                raise Conflict(f"a group named {values['name']!r} already exists")
            conn.execute(insert(groups).values(id=group_id, **values))
            row = _find_group(conn, group_id)
            assert row is not None
            record(conn, actor, "group.create", group_id, None, row)
    except IntegrityError:  # the same name, inserted concurrently
        raise Conflict(f"a group named {values['name']!r} already exists") from None
    return row


def get_group(engine: Engine, id_or_name: str) -> GroupRow | None:
    """By id ("grp_...") or by exact name."""
    with engine.connect() as conn:
        return _find_group(conn, id_or_name)


def list_groups(engine: Engine) -> list[GroupRow]:
    """Every group, in policy order: by priority (lowest first), then name."""
    with engine.connect() as conn:
        return _all_groups(conn)


def _all_groups(conn: Connection) -> list[GroupRow]:
    stmt = select(groups).order_by(groups.c.priority, groups.c.name)
    return [_group_of(r) for r in conn.execute(stmt).mappings()]


def update_group(engine: Engine, id_or_name: str, *, actor: str, **changes: Any) -> GroupRow | None:
    """Change a group: name, description, priority, member_budget_usd and the limit fields
    (models, rpm, tpm, budget_usd, budget_period; or `limits=` a whole Limits). None if
    there is no such group. Renaming changes which IdP group it matches."""
    changes = dict(changes)
    wanted_name = changes.get("name")
    try:
        with engine.begin() as conn:
            current = _find_group(conn, id_or_name, for_update=True)
            if current is None:
                return None
            limits = _limit_changes(current.limits, changes)
            name = _group_name(changes.pop("name")) if "name" in changes else current.name
            description = (
                _description(changes.pop("description"))
                if "description" in changes
                else current.description
            )
            priority = (
                _priority(changes.pop("priority")) if "priority" in changes else current.priority
            )
            member = changes.pop("member_budget_usd", current.member_budget_usd)
            _unknown(changes)
            _check_level_budget(limits, member, what="a group")
            if name != current.name and _find_group(conn, name) is not None:
                raise Conflict(f"a group named {name!r} already exists")
            conn.execute(
                update(groups)
                .where(groups.c.id == current.id)
                .values(
                    name=name,
                    description=description,
                    priority=priority,
                    member_budget_usd=member,
                    updated_at=DatabaseNow(),
                    **_limit_values(limits),
                )
            )
            row = _find_group(conn, current.id)
            assert row is not None
            record(conn, actor, "group.update", current.id, current, row)
    except IntegrityError:
        raise Conflict(f"a group named {wanted_name!r} already exists") from None
    return row


def delete_group(engine: Engine, id_or_name: str, *, actor: str) -> GroupRow | None:
    """Delete a group; returns it as it was, or None if there is no such group.

    In the same transaction: its local memberships are removed (each member's updated_at
    is stamped, so caches see it) and its service keys (api_keys.group_id) are revoked,
    each with an audit row of its own ("key.revoke", reason "group deleted"). A user whose
    IdP groups name it simply matches no group any more. Spend rows and request logs
    keep its id.
    """
    with engine.begin() as conn:
        current = _find_group(conn, id_or_name, for_update=True)
        if current is None:
            return None
        member_ids = sorted(
            conn.execute(
                select(user_groups.c.user_id).where(user_groups.c.group_id == current.id)
            ).scalars()
        )
        key_ids = list(
            conn.execute(
                select(api_keys.c.id).where(
                    api_keys.c.group_id == current.id, api_keys.c.revoked_at.is_(None)
                )
            ).scalars()
        )
        conn.execute(delete(user_groups).where(user_groups.c.group_id == current.id))
        if member_ids:
            conn.execute(
                update(users).where(users.c.id.in_(member_ids)).values(updated_at=DatabaseNow())
            )
        conn.execute(delete(groups).where(groups.c.id == current.id))
        before = current.audited()
        before["local_member_ids"] = member_ids
        record(conn, actor, "group.delete", current.id, before, None)
        for key_id in key_ids:
            revoke_in(conn, key_id, actor=actor, reason=f"group {current.name} deleted")
    return current


# ---------------------------------------------------------------------------- users


def _group_ids_of(conn: Connection, user_ids: Sequence[str] | None) -> dict[str, list[str]]:
    stmt = select(user_groups.c.user_id, user_groups.c.group_id)
    if user_ids is not None:
        stmt = stmt.where(user_groups.c.user_id.in_(user_ids))
    out: dict[str, list[str]] = {}
    for user_id, group_id in conn.execute(stmt):
        out.setdefault(user_id, []).append(group_id)
    return out


def _find_user(conn: Connection, id_or_email: str, *, for_update: bool = False) -> UserRow | None:
    if "@" not in id_or_email:  # an id ("usr_..."); every email has an @
        where: ColumnElement[bool] = users.c.id == id_or_email
    else:
        where = users.c.email == id_or_email.strip().lower()
    return _user_where(conn, where, for_update=for_update)


def _user_where(
    conn: Connection, where: ColumnElement[bool], *, for_update: bool = False
) -> UserRow | None:
    stmt = select(users).where(where)
    if for_update:
        stmt = stmt.with_for_update()
    found = conn.execute(stmt).mappings().first()
    if found is None:
        return None
    return _user_of(found, _group_ids_of(conn, [found["id"]]).get(found["id"], []))


def _resolve_groups(conn: Connection, names_or_ids: Iterable[str]) -> list[str]:
    """Group ids for names or ids; a ValueError names the first that is not a group."""
    wanted = list(dict.fromkeys(names_or_ids))
    if len(wanted) > GROUPS_PER_USER_MAX:
        raise ValueError(f"a user is in at most {GROUPS_PER_USER_MAX} groups")
    ids: list[str] = []
    for item in wanted:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("an empty group name")
        found = _find_group(conn, item.strip())
        if found is None:
            raise ValueError(f"no group named {item.strip()[:GROUP_NAME_MAX]!r}")
        ids.append(found.id)
    return sorted(set(ids))


def create_user(
    engine: Engine,
    *,
    email: str,
    actor: str,
    name: str | None = None,
    groups: Sequence[str] = (),
    limits: Limits = Limits(),
) -> UserRow:
    """A local user (source "local"), before they ever sign in: their first sign-in with
    the same email links their IdP identity to this row. `groups`: names or ids of local
    memberships, each of which must exist."""
    if isinstance(groups, str):
        raise ValueError("groups is a list of group names")
    address = normalize_email(email)
    display = _user_name(name)
    _check_user_budget(limits)
    user_id = "usr_" + secrets.token_hex(8)
    try:
        with engine.begin() as conn:
            if _find_user(conn, address) is not None:
                raise Conflict(f"a user with email {address!r} already exists")
            group_ids = _resolve_groups(conn, groups)
            conn.execute(
                insert(users).values(
                    id=user_id, email=address, name=display, source="local", **_limit_values(limits)
                )
            )
            if group_ids:
                conn.execute(
                    insert(user_groups), [{"user_id": user_id, "group_id": g} for g in group_ids]
                )
            row = _find_user(conn, user_id)
            assert row is not None
            record(conn, actor, "user.create", user_id, None, row)
    except IntegrityError:
        raise Conflict(f"a user with email {address!r} already exists") from None
    return row


def get_user(engine: Engine, id_or_email: str) -> UserRow | None:
    """By email (any case; anything with an @) or by id ("usr_...")."""
    with engine.connect() as conn:
        return _find_user(conn, id_or_email)


def list_users(
    engine: Engine, *, group: str | None = None, status: str | None = None
) -> list[UserRow]:
    """Users by email; with `group` (id or name), its members: local memberships and users
    whose IdP groups name it. An unknown group has no members."""
    if status is not None and status not in USER_STATUSES:
        raise ValueError(f"status is {' or '.join(USER_STATUSES)}")
    with engine.connect() as conn:
        stmt = select(users).order_by(users.c.email)
        if status is not None:
            stmt = stmt.where(users.c.status == status)
        found = list(conn.execute(stmt).mappings())
        memberships = _group_ids_of(conn, None)
        rows = [_user_of(r, memberships.get(r["id"], [])) for r in found]
        if group is None:
            return rows
        wanted = _find_group(conn, group)
    if wanted is None:
        return []
    return [
        u for u in rows if wanted.id in u.local_group_ids or wanted.name in (u.idp_groups or ())
    ]


def update_user(engine: Engine, id_or_email: str, *, actor: str, **changes: Any) -> UserRow | None:
    """Change a user: name, email, groups (names or ids; REPLACES the local memberships,
    IdP memberships are the IdP's), and the limit fields (models, rpm, tpm, budget_usd,
    budget_period; or `limits=` a whole Limits). None if there is no such user."""
    changes = dict(changes)
    with engine.begin() as conn:
        current = _find_user(conn, id_or_email, for_update=True)
        if current is None:
            return None
        limits = _limit_changes(current.limits, changes)
        _check_user_budget(limits)
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = _user_name(changes.pop("name"))
        if "email" in changes:
            address = normalize_email(changes.pop("email"))
            taken = _find_user(conn, address)
            if taken is not None and taken.id != current.id:
                raise Conflict(f"a user with email {address!r} already exists")
            values["email"] = address
        new_groups: list[str] | None = None
        if "groups" in changes:
            wanted = changes.pop("groups")
            if isinstance(wanted, str):
                raise ValueError("groups is a list of group names")
            new_groups = _resolve_groups(conn, wanted or ())
        _unknown(changes)
        if new_groups is not None and new_groups != list(current.local_group_ids):
            _set_memberships(conn, current.id, current.local_group_ids, new_groups)
        conn.execute(
            update(users)
            .where(users.c.id == current.id)
            .values(**values, **_limit_values(limits), updated_at=DatabaseNow())
        )
        row = _find_user(conn, current.id)
        assert row is not None
        record(conn, actor, "user.update", current.id, current, row)
    return row


def _set_memberships(
    conn: Connection, user_id: str, old: Sequence[str], new: Sequence[str]
) -> None:
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    if gone:
        conn.execute(
            delete(user_groups).where(
                user_groups.c.user_id == user_id, user_groups.c.group_id.in_(gone)
            )
        )
    if added:
        conn.execute(insert(user_groups), [{"user_id": user_id, "group_id": g} for g in added])


def _status_change(
    engine: Engine,
    id_or_email: str,
    *,
    actor: str,
    action: str,
    values: dict[str, Any],
    reason: str | None = None,
) -> UserRow | None:
    with engine.begin() as conn:
        current = _find_user(conn, id_or_email, for_update=True)
        if current is None:
            return None
        conn.execute(
            update(users).where(users.c.id == current.id).values(**values, updated_at=DatabaseNow())
        )
        row = _find_user(conn, current.id)
        assert row is not None
        record(conn, actor, action, current.id, current, row, reason)
    return row


def disable_user(
    engine: Engine, id_or_email: str, *, actor: str, reason: str | None = None
) -> UserRow | None:
    """Disable: the user's tokens (tokens_valid_after is stamped too, so they stay dead
    after an enable) and personal keys stop working; their keys are not revoked and work
    again if the user is enabled. None if there is no such user."""
    why = _reason(reason)
    return _status_change(
        engine,
        id_or_email,
        actor=actor,
        action="user.disable",
        values={"status": "disabled", "status_reason": why, "tokens_valid_after": DatabaseNow()},
        reason=why,
    )


def enable_user(engine: Engine, id_or_email: str, *, actor: str) -> UserRow | None:
    """Enable again; tokens minted before the disable stay invalid (sign in again)."""
    return _status_change(
        engine,
        id_or_email,
        actor=actor,
        action="user.enable",
        values={"status": "active", "status_reason": None},
    )


def revoke_user_tokens(engine: Engine, id_or_email: str, *, actor: str) -> UserRow | None:
    """Sign out everywhere: every token minted before now is refused (keys are untouched)."""
    return _status_change(
        engine,
        id_or_email,
        actor=actor,
        action="user.revoke_tokens",
        values={"tokens_valid_after": DatabaseNow()},
    )


def _idp_group_names(names: Iterable[str]) -> tuple[str, ...]:
    """The IdP's group names as kept: those a proxy group could be named (at most 128
    characters, no control characters), in order, without repeats, at most 1000."""
    kept: list[str] = []
    for name in names:
        if (
            isinstance(name, str)
            and name
            and len(name) <= GROUP_NAME_MAX
            and not any(ch < " " or ch == "\x7f" for ch in name)
            and name not in kept
        ):
            kept.append(name)
        if len(kept) == GROUPS_PER_USER_MAX:
            break
    return tuple(kept)


def upsert_oidc_user(
    engine: Engine,
    *,
    subject: str,
    email: str,
    name: str | None,
    idp_groups: Sequence[str],
    actor: str = "system",
) -> UserRow:
    """The user a sign-in (or token refresh) is for, brought up to date from the claims.

    Matched by IdP subject; else by email where the row has no subject yet (a user an
    admin created before their first sign-in: the identity is linked to it); else
    created. Sets subject, email (if it changed and is free), name (when given),
    idp_groups, source "oidc" and last_login_at. An email that belongs to a user linked
    to ANOTHER subject is a Conflict: the proxy does not hand one person's row to another
    identity (an admin deletes or renames the old row's email first).

    The status is not touched: a disabled user stays disabled (the caller refuses them).
    Audited on create and when groups, name or email change, not on every sign-in.
    """
    if not isinstance(subject, str) or not subject or len(subject) > SUBJECT_MAX:
        raise ValueError(f"an IdP subject is 1 to {SUBJECT_MAX} characters")
    _no_controls("an IdP subject", subject)
    address = normalize_email(email)
    display = _user_name(name)
    claimed = _idp_group_names(idp_groups)
    for attempt in range(2):
        try:
            return _upsert_oidc(engine, subject, address, display, claimed, actor)
        except IntegrityError:
            if attempt:  # a second race, or a real clash: say so
                raise Conflict(f"cannot sign in {address!r}: email or subject taken") from None
    raise AssertionError("unreachable")


def _upsert_oidc(
    engine: Engine,
    subject: str,
    email: str,
    name: str | None,
    claimed: tuple[str, ...],
    actor: str,
) -> UserRow:
    groups_json = orjson.dumps(list(claimed)).decode()
    with engine.begin() as conn:
        current = _user_where(conn, users.c.subject == subject, for_update=True)
        if current is None:
            by_email = _user_where(conn, users.c.email == email, for_update=True)
            if by_email is not None and by_email.subject not in (None, subject):
                raise Conflict(
                    f"{email!r} belongs to a user linked to another identity: an admin "
                    "must change that user's email first"
                )
            current = by_email
        if current is None:
            user_id = "usr_" + secrets.token_hex(8)
            conn.execute(
                insert(users).values(
                    id=user_id,
                    email=email,
                    name=name,
                    subject=subject,
                    source="oidc",
                    idp_groups=groups_json,
                    last_login_at=DatabaseNow(),
                )
            )
            row = _find_user(conn, user_id)
            assert row is not None
            record(conn, actor, "user.create", user_id, None, row, "first sign-in")
            return row
        values: dict[str, Any] = {"last_login_at": DatabaseNow()}
        if current.email != email:
            taken = _user_where(conn, users.c.email == email)
            if taken is None:
                values["email"] = email
        if name is not None and current.name != name:
            values["name"] = name
        if current.idp_groups != claimed:
            values["idp_groups"] = groups_json
        if current.subject != subject:
            values["subject"] = subject
        if current.source != "oidc":
            values["source"] = "oidc"
        seen = set(values) - {"last_login_at"}
        if seen:  # what the people cache holds changed: let the replicas notice
            values["updated_at"] = DatabaseNow()
        conn.execute(update(users).where(users.c.id == current.id).values(**values))
        row = _find_user(conn, current.id)
        assert row is not None
        if seen & {"email", "name", "idp_groups"}:
            record(conn, actor, "user.sync", current.id, current, row, "sign-in")
        return row


# ------------------------------------------------------------------------------ org


def _read_org(conn: Connection, *, for_update: bool = False) -> OrgPolicy:
    stmt = select(org_policy).where(org_policy.c.id == ORG_ID)
    if for_update:
        stmt = stmt.with_for_update()
    found = conn.execute(stmt).mappings().first()
    if found is None:
        return OrgPolicy()
    return OrgPolicy(
        limits=_limits_of(found),
        member_budget_usd=found["member_budget_usd"],
        updated_at=found["updated_at"],
    )


def get_org(engine: Engine) -> OrgPolicy:
    """The organisation's policy; no limits at all until an admin sets one."""
    with engine.connect() as conn:
        return _read_org(conn)


def update_org(engine: Engine, *, actor: str, **changes: Any) -> OrgPolicy:
    """Change the organisation's policy: member_budget_usd and the limit fields (models,
    rpm, tpm, budget_usd = the whole organisation's cap, budget_period; or `limits=`)."""
    changes = dict(changes)
    with engine.begin() as conn:
        _ensure_org_row(conn)
        current = _read_org(conn, for_update=True)
        limits = _limit_changes(current.limits, changes)
        member = changes.pop("member_budget_usd", current.member_budget_usd)
        _unknown(changes)
        _check_level_budget(limits, member, what="the organisation")
        conn.execute(
            update(org_policy)
            .where(org_policy.c.id == ORG_ID)
            .values(member_budget_usd=member, updated_at=DatabaseNow(), **_limit_values(limits))
        )
        row = _read_org(conn)
        record(conn, actor, "org.update", ORG_ID, current, row)
    return row


def _ensure_org_row(conn: Connection) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(org_policy).values(id=ORG_ID).on_conflict_do_nothing())


# ------------------------------------------------------------------- cache and reads


def people_snapshot(engine: Engine) -> PeopleSnapshot:
    """Users, groups, local memberships and the org policy, read together.

    On PostgreSQL in one REPEATABLE READ transaction, so the four reads agree; SQLite
    serialises writers, so one transaction is enough there.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            memberships = _group_ids_of(conn, None)
            user_rows = [
                _user_of(r, memberships.get(r["id"], []))
                for r in conn.execute(select(users).order_by(users.c.email)).mappings()
            ]
            group_rows = _all_groups(conn)
            org = _read_org(conn)
    pairs = sorted((u, g) for u, gs in memberships.items() for g in gs)
    return PeopleSnapshot(users=user_rows, groups=group_rows, memberships=pairs, org=org)


def _stamp_sum(stamp: ColumnElement[Any]) -> ColumnElement[Any]:
    """An exact sum of a timestamp column (PostgreSQL: epoch as NUMERIC)."""
    return func.coalesce(func.sum(extract("epoch", stamp)), 0)


def _stamp_sum_sqlite(stamp: ColumnElement[Any]) -> ColumnElement[Any]:
    """Milliseconds since 1970 as integers (a float sum would round small changes away).
    SQLite serialises writers, so max() alone already moves; this is belt and braces."""
    millis = cast((func.julianday(stamp) - 2440587.5) * 86400000, BigInteger)
    return func.coalesce(func.sum(millis), 0)


def _version_statement(epoch: Callable[[ColumnElement[Any]], ColumnElement[Any]]) -> Select[Any]:
    """Per table, the row count, the newest stamp and the sum of the stamps, as one row."""
    columns: list[Any] = []
    for table, column in (
        (users, "updated_at"),
        (groups, "updated_at"),
        (user_groups, "created_at"),
        (org_policy, "updated_at"),
    ):
        stamp = table.c[column]
        for aggregate in (func.count(), func.max(stamp), epoch(stamp)):
            columns.append(select(aggregate).select_from(table).scalar_subquery())
    return select(*columns)


# Built once: building the statement cost ten times what running it does, every poll.
_VERSION_STATEMENTS = {
    "postgresql": _version_statement(_stamp_sum),
    "sqlite": _version_statement(_stamp_sum_sqlite),
}


def people_version(engine: Engine) -> tuple[Any, ...]:
    """A value that changes whenever a user, group, membership or the org policy is
    inserted, updated or deleted: per table, the row count, the newest stamp and the sum
    of the stamps, in one statement; the proxy polls it and reloads on a change.

    The sum is what catches a change committed after a later one (PostgreSQL's now() is
    the transaction's start, so its stamp may be older than the newest): max alone would
    miss it, the sum moves whenever any row's stamp does.
    """
    with engine.connect() as conn:
        return tuple(conn.execute(_VERSION_STATEMENTS[engine.dialect.name]).one())


def spend_of(
    engine: Engine, level_ids: Sequence[str], period: str, now: datetime | None = None
) -> dict[str, Decimal]:
    """What each level (user, group, key id, or "org") has spent in the CURRENT `period`
    (day, week, month or total; key_spend's running sums); 0 for a level with none."""
    if period not in BUDGET_PERIODS:
        raise ValueError("period is day, week, month or total")
    name = current_period(period, now)
    ids = list(dict.fromkeys(level_ids))
    out = dict.fromkeys(ids, Decimal(0))
    if not ids:
        return out
    stmt = select(key_spend.c.key_id, key_spend.c.cost_usd).where(
        key_spend.c.period == name, key_spend.c.key_id.in_(ids)
    )
    with engine.connect() as conn:
        for level_id, cost in conn.execute(stmt):
            out[level_id] = cost
    return out


def effective_groups(user: UserRow, all_groups: Sequence[GroupRow]) -> list[GroupRow]:
    """The user's groups (local memberships and proxy groups named in their IdP groups),
    in policy order: the first is the policy group that governs them (lowest priority
    number, then name)."""
    idp = set(user.idp_groups or ())
    mine = [g for g in all_groups if g.id in user.local_group_ids or g.name in idp]
    return sorted(mine, key=lambda g: (g.priority, g.name))


def personal_budget(
    user: UserRow, user_groups_in_order: Sequence[GroupRow], org: OrgPolicy
) -> tuple[Decimal, str] | None:
    """The per-person cap that applies to the user and its period: their own budget; else
    the lowest member_budget_usd among their groups; else the org's per-person default;
    else None."""
    if user.limits.budget_usd is not None and user.limits.budget_period is not None:
        return user.limits.budget_usd, user.limits.budget_period
    capped = [
        (g.member_budget_usd, g.limits.budget_period)
        for g in user_groups_in_order
        if g.member_budget_usd is not None and g.limits.budget_period is not None
    ]
    if capped:
        amount, period = min(capped, key=lambda c: c[0])
        return amount, period
    if org.member_budget_usd is not None and org.limits.budget_period is not None:
        return org.member_budget_usd, org.limits.budget_period
    return None


__all__ = [
    "Conflict",
    "GroupRow",
    "Limits",
    "OrgPolicy",
    "PeopleSnapshot",
    "UserRow",
    "create_group",
    "create_user",
    "delete_group",
    "disable_user",
    "effective_groups",
    "enable_user",
    "get_group",
    "get_org",
    "get_user",
    "list_groups",
    "list_users",
    "normalize_email",
    "people_snapshot",
    "people_version",
    "personal_budget",
    "revoke_user_tokens",
    "spend_of",
    "update_group",
    "update_org",
    "update_user",
    "upsert_oidc_user",
]
