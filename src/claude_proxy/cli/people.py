"""`claude-proxy groups | users | org | audit`: people and their policy from the command
line, against the same DATABASE_URL as the server.

A request passes every level that applies: the organisation, the user's policy group
(the first of their groups by priority, then name), the user, the key. `groups` and
`users` manage the middle two; `org` the first. Every change is in the audit log, made by
"cli:<os user>@<host>"; `claude-proxy audit` shows it. Running proxies see a change
within a few seconds. Every command takes `--json` (one JSON object; money as exact
decimal strings).

Exit codes: 0 done; 1 no such user or group, a name or email already taken, or the
database failed; 2 bad arguments or a limit that does not hold together (nothing changed).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from claude_proxy.cli.keys import (
    _UNSET,
    _Failed,
    _limit,
    _or_none,
    _print_json,
    _run,
    _when,
    budget_cell,
    budget_text,
    cell,
    changes_given,
    cli_actor,
    money,
    need_group,
    need_user,
    parse_limit,
    parse_models,
    parse_money,
    print_table,
)
from claude_proxy.store.audit import AUDIT_PAGE_MAX, AuditRow, list_audit
from claude_proxy.store.columns import current_period
from claude_proxy.store.keys import (
    BUDGET_PERIODS,
    RPM_MAX,
    TPM_MAX,
    drop_orphan_period,
    list_keys,
)
from claude_proxy.store.people import (
    ORG_ID,
    PRIORITY_MAX,
    USER_STATUSES,
    Conflict,
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
    get_org,
    list_groups,
    list_users,
    personal_budget,
    revoke_user_tokens,
    spend_of,
    update_group,
    update_org,
    update_user,
)

Command = Callable[[argparse.Namespace, Callable[[], Engine]], None]
_LIMIT_ARGS = ("models", "rpm", "tpm", "budget_usd", "budget_period")
AUDIT_TARGETS = ("user", "group", "key", "org", "budget")


# ------------------------------------------------------------------ arguments


def parse_groups(text: str) -> tuple[str, ...]:
    """`--groups eng,ops`; an empty value or `none` is no group at all."""
    if text.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))


parse_priority = parse_limit("--priority", PRIORITY_MAX, minimum=0)


def parse_target(text: str) -> tuple[str, str | None]:
    """`--target user`, `--target user:alice@example.com`, `--target group:eng`."""
    kind, _, ident = text.partition(":")
    if kind not in AUDIT_TARGETS:
        raise argparse.ArgumentTypeError(
            f"--target is TYPE or TYPE:ID, TYPE one of {', '.join(AUDIT_TARGETS)}"
        )
    return kind, ident.strip() or None


def parse_audit_limit(text: str) -> int:
    return parse_limit("--limit", AUDIT_PAGE_MAX)(text)


def _add_limit_flags(parser: argparse.ArgumentParser, *, update: bool, member: bool) -> None:
    """--models --rpm --tpm --budget-usd --budget-period [--member-budget-usd]; on update
    every one defaults to "not given" and takes `none` to remove the limit."""

    def kind(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        return _or_none(parse) if update else parse

    default = _UNSET if update else None
    hint = " ('none' removes it)" if update else ""
    parser.add_argument(
        "--models",
        type=kind(parse_models),
        default=default,
        help="allowed models, comma-separated; shell patterns work (claude-haiku-*)" + hint,
    )
    parser.add_argument(
        "--rpm", type=kind(parse_limit("--rpm", RPM_MAX)), default=default, help="requests/min"
    )
    parser.add_argument(
        "--tpm", type=kind(parse_limit("--tpm", TPM_MAX)), default=default, help="tokens/min"
    )
    budget_help = (
        "the POOL its members spend together, in USD" if member else "own spend cap, in USD"
    )
    parser.add_argument(
        "--budget-usd", type=kind(parse_money), default=default, help=budget_help + hint
    )
    parser.add_argument(
        "--budget-period",
        type=kind(str),
        choices=(*BUDGET_PERIODS, None) if update else BUDGET_PERIODS,
        metavar="{" + ",".join((*BUDGET_PERIODS, "none") if update else BUDGET_PERIODS) + "}",
        default=default,
        help="day, week (ISO, UTC), month or total",
    )
    if member:
        parser.add_argument(
            "--member-budget-usd",
            type=kind(parse_money),
            default=default,
            help="each member's default cap, in USD, same period (a user's own budget wins)" + hint,
        )


def _limits_from_args(args: argparse.Namespace) -> Limits:
    try:
        return Limits(**{name: getattr(args, name) for name in _LIMIT_ARGS})
    except ValueError as exc:
        raise _Failed(str(exc), 2) from None


def _store(call: Callable[[], Any]) -> Any:
    """A store call: a taken name is exit 1, any other refusal (validation) exit 2."""
    try:
        return call()
    except Conflict as exc:
        raise _Failed(str(exc), 1) from None
    except ValueError as exc:
        raise _Failed(str(exc), 2) from None


def _check_groups_exist(engine: Engine, names: Sequence[str]) -> None:
    for name in names:
        need_group(engine, name)


# ------------------------------------------------------------------- output


def _models(models: tuple[str, ...] | None) -> str:
    return ", ".join(models) if models is not None else "any"


def _period_of(limits: Limits) -> str:
    return limits.budget_period or "total"


def _spend_json(spend: Decimal, period: str) -> dict[str, Any]:
    return {"spend_usd": spend, "spend_period": current_period(period)}


def _spend_text(spend: Decimal, period: str) -> str:
    return f"${money(spend)} ({current_period(period)})"


def group_json(
    group: GroupRow, spend: Decimal, members: Sequence[UserRow] | None = None
) -> dict[str, Any]:
    out = group.public()
    out.update(_spend_json(spend, _period_of(group.limits)))
    if members is not None:
        out["members"] = [
            {
                "id": u.id,
                "email": u.email,
                "via": "local" if group.id in u.local_group_ids else "idp",
            }
            for u in members
        ]
    return out


def _group_details(
    group: GroupRow, spend: Decimal, members: Sequence[UserRow], key_ids: Sequence[str]
) -> list[str]:
    member_budget = (
        budget_text(group.member_budget_usd, group.limits.budget_period)
        if group.member_budget_usd is not None
        else "none"
    )
    shown = [f"{u.email}{'' if group.id in u.local_group_ids else ' (idp)'}" for u in members]
    return [
        f"  id:             {group.id}",
        f"  name:           {group.name}",
        f"  description:    {group.description or '-'}",
        f"  priority:       {group.priority}",
        f"  models:         {_models(group.limits.models)}",
        f"  rpm:            {_limit(group.limits.rpm)}",
        f"  tpm:            {_limit(group.limits.tpm)}",
        f"  pool budget:    {budget_text(group.limits.budget_usd, group.limits.budget_period)}",
        f"  member budget:  {member_budget}",
        f"  spend:          {_spend_text(spend, _period_of(group.limits))}",
        f"  members:        {len(members)}" + (f" ({', '.join(shown)})" if shown else ""),
        f"  service keys:   {', '.join(key_ids) if key_ids else 'none'}",
        f"  created:        {_when(group.created_at)}",
        f"  updated:        {_when(group.updated_at)}",
    ]


def _user_view(
    engine: Engine, user: UserRow, all_groups: Sequence[GroupRow], org: OrgPolicy
) -> tuple[list[GroupRow], tuple[Decimal, str] | None, Decimal, str]:
    """The user's groups in policy order, the per-person budget that applies, and their
    spend in its period (their own period, else total)."""
    mine = effective_groups(user, all_groups)
    cap = personal_budget(user, mine, org)
    period = cap[1] if cap is not None else _period_of(user.limits)
    spend = spend_of(engine, [user.id], period)[user.id]
    return mine, cap, spend, period


def user_json(
    user: UserRow,
    all_groups: Sequence[GroupRow],
    mine: Sequence[GroupRow],
    cap: tuple[Decimal, str] | None,
    spend: Decimal,
    period: str,
) -> dict[str, Any]:
    names = {g.id: g.name for g in all_groups}
    out = user.public()
    out["local_groups"] = [names.get(g, g) for g in user.local_group_ids]
    out["groups"] = [g.name for g in mine]
    out["policy_group"] = mine[0].name if mine else None
    out["personal_budget"] = (
        None if cap is None else {"budget_usd": cap[0], "budget_period": cap[1]}
    )
    out.update(_spend_json(spend, period))
    return out


def _user_details(
    user: UserRow,
    mine: Sequence[GroupRow],
    cap: tuple[Decimal, str] | None,
    spend: Decimal,
    period: str,
    key_ids: Sequence[str],
) -> list[str]:
    idp = set(user.idp_groups or ())
    shown = []
    for i, g in enumerate(mine):
        via = [
            v for v, on in (("local", g.id in user.local_group_ids), ("idp", g.name in idp)) if on
        ]
        shown.append(f"{g.name} ({'+'.join(via)}{', policy' if i == 0 else ''})")
    status = user.status + (f" ({user.status_reason})" if user.status_reason else "")
    return [
        f"  id:             {user.id}",
        f"  email:          {user.email}",
        f"  name:           {user.name or '-'}",
        f"  status:         {status}",
        f"  source:         {user.source}" + (f" (subject {user.subject})" if user.subject else ""),
        f"  groups:         {', '.join(shown) if shown else 'none'}",
        f"  idp groups:     {', '.join(user.idp_groups) if user.idp_groups else '-'}",
        f"  models:         {_models(user.limits.models)}",
        f"  rpm:            {_limit(user.limits.rpm)}",
        f"  tpm:            {_limit(user.limits.tpm)}",
        f"  own budget:     {budget_text(user.limits.budget_usd, user.limits.budget_period)}",
        f"  budget applied: {budget_text(*cap) if cap else 'none'}",
        f"  spend:          {_spend_text(spend, period)}",
        f"  keys:           {', '.join(key_ids) if key_ids else 'none'}",
        f"  tokens after:   {_when(user.tokens_valid_after, '-')}",
        f"  last sign-in:   {_when(user.last_login_at)}",
        f"  created:        {_when(user.created_at)}",
        f"  updated:        {_when(user.updated_at)}",
    ]


# ------------------------------------------------------------------- groups


def _group_spends(engine: Engine, rows: Sequence[GroupRow]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for period in {_period_of(g.limits) for g in rows}:
        ids = [g.id for g in rows if _period_of(g.limits) == period]
        out.update(spend_of(engine, ids, period))
    return out


def _show_group(engine: Engine, group: GroupRow, as_json: bool, verb: str | None = None) -> None:
    members = list_users(engine, group=group.id)
    spend = _group_spends(engine, [group])[group.id]
    if as_json:
        _print_json(group_json(group, spend, members))
        return
    keys = [k.id for k in list_keys(engine, include_revoked=False, group_id=group.id)]
    if verb:
        print(f"{verb} group {group.name} ({group.id}).")
    print("\n".join(_group_details(group, spend, members, keys)))


def cmd_groups_create(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    limits = _limits_from_args(args)
    engine = engine_factory()
    group = _store(
        lambda: create_group(
            engine,
            name=args.name,
            actor=cli_actor(),
            description=args.description,
            priority=args.priority,
            limits=limits,
            member_budget_usd=args.member_budget_usd,
        )
    )
    _show_group(engine, group, args.json, "Created")


def cmd_groups_list(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    rows = list_groups(engine)
    spends = _group_spends(engine, rows)
    users = list_users(engine)
    counts = {
        g.id: sum(1 for u in users if g.id in u.local_group_ids or g.name in (u.idp_groups or ()))
        for g in rows
    }
    if args.json:
        data = []
        for g in rows:
            item = group_json(g, spends[g.id])
            item["member_count"] = counts[g.id]
            data.append(item)
        _print_json({"data": data})
        return
    columns = (
        ("id", 20),
        ("name", 20),
        ("priority", 8),
        ("members", 7),
        ("rpm", 9),
        ("tpm", 10),
        ("pool budget", 20),
        ("member budget", 20),
        ("spend", 12),
    )
    print_table(
        columns,
        [
            (
                g.id,
                g.name,
                str(g.priority),
                str(counts[g.id]),
                cell(g.limits.rpm),
                cell(g.limits.tpm),
                budget_cell(g.limits.budget_usd, g.limits.budget_period),
                budget_cell(g.member_budget_usd, g.limits.budget_period),
                f"${money(spends[g.id])}",
            )
            for g in rows
        ],
    )
    if not rows:
        print("(no groups; `claude-proxy groups create NAME` makes one)")


def cmd_groups_show(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    _show_group(engine, need_group(engine, args.name), args.json)


def cmd_groups_update(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    changes = changes_given(
        args, ("name", "description", "priority", *_LIMIT_ARGS, "member_budget_usd")
    )
    engine = engine_factory()
    current = need_group(engine, args.group)
    drop_orphan_period(changes, current.limits.budget_usd, current.member_budget_usd)
    updated = _store(lambda: update_group(engine, current.id, actor=cli_actor(), **changes))
    if updated is None:  # deleted a moment ago
        raise _Failed(f"no group {args.group!r}", 1)
    _show_group(engine, updated, args.json, "Updated")


def cmd_groups_delete(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    current = need_group(engine, args.name)
    members = [
        u.id for u in list_users(engine, group=current.id) if current.id in u.local_group_ids
    ]
    keys = [k.id for k in list_keys(engine, include_revoked=False, group_id=current.id)]
    deleted = delete_group(engine, current.id, actor=cli_actor())
    if deleted is None:
        raise _Failed(f"no group {args.name!r}", 1)
    if args.json:
        out = deleted.public()
        out.update(deleted=True, removed_member_ids=members, revoked_key_ids=keys)
        _print_json(out)
        return
    print(f"Deleted group {deleted.name} ({deleted.id}).")
    print(f"  local memberships removed: {len(members)}")
    print(f"  service keys revoked:      {', '.join(keys) if keys else 'none'}")
    print("Users whose IdP groups name it now match no group of that name.")


# -------------------------------------------------------------------- users


def _show_user(
    engine: Engine, user: UserRow, as_json: bool, verb: str | None = None, note: str = ""
) -> None:
    all_groups = list_groups(engine)
    mine, cap, spend, period = _user_view(engine, user, all_groups, get_org(engine))
    keys = [k.id for k in list_keys(engine, include_revoked=False, user_id=user.id)]
    if as_json:
        out = user_json(user, all_groups, mine, cap, spend, period)
        out["key_ids"] = keys
        _print_json(out)
        return
    if verb:
        print(f"{verb} user {user.email} ({user.id}).")
    print("\n".join(_user_details(user, mine, cap, spend, period, keys)))
    if note:
        print(note)


def cmd_users_create(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    limits = _limits_from_args(args)
    engine = engine_factory()
    _check_groups_exist(engine, args.groups)
    user = _store(
        lambda: create_user(
            engine,
            email=args.email,
            actor=cli_actor(),
            name=args.name,
            groups=args.groups,
            limits=limits,
        )
    )
    _show_user(engine, user, args.json, "Created")


def cmd_users_list(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    group = need_group(engine, args.group).id if args.group else None
    rows = list_users(engine, group=group, status=args.status)
    all_groups = list_groups(engine)
    if args.json:
        data = []
        for u in rows:
            mine = effective_groups(u, all_groups)
            item = u.public()
            item["groups"] = [g.name for g in mine]
            item["policy_group"] = mine[0].name if mine else None
            data.append(item)
        _print_json({"data": data})
        return
    columns = (
        ("id", 20),
        ("email", 30),
        ("name", 20),
        ("status", 8),
        ("groups", 24),
        ("rpm", 9),
        ("budget", 20),
        ("last sign-in", 16),
    )
    print_table(
        columns,
        [
            (
                u.id,
                u.email,
                u.name or "-",
                u.status,
                ",".join(g.name for g in effective_groups(u, all_groups)) or "-",
                cell(u.limits.rpm),
                budget_cell(u.limits.budget_usd, u.limits.budget_period),
                u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "-",
            )
            for u in rows
        ],
    )
    if not rows:
        print("(no users)")


def cmd_users_show(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    _show_user(engine, need_user(engine, args.user), args.json)


def cmd_users_update(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    changes = changes_given(args, ("name", "email", "groups", *_LIMIT_ARGS))
    engine = engine_factory()
    current = need_user(engine, args.user)
    if "groups" in changes:
        _check_groups_exist(engine, changes["groups"])
    drop_orphan_period(changes, current.limits.budget_usd)
    updated = _store(lambda: update_user(engine, current.id, actor=cli_actor(), **changes))
    if updated is None:
        raise _Failed(f"no user {args.user!r}", 1)
    _show_user(engine, updated, args.json, "Updated")


def _status_command(
    change: Callable[..., UserRow | None], verb: str, note: str, *, with_reason: bool = False
) -> Command:
    """`users disable | enable | revoke-tokens`: one store call on one user, then show it."""

    def command(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
        engine = engine_factory()
        current = need_user(engine, args.user)
        extra = {"reason": args.reason} if with_reason else {}
        row = _store(lambda: change(engine, current.id, actor=cli_actor(), **extra))
        if row is None:  # deleted a moment ago
            raise _Failed(f"no user {args.user!r}", 1)
        _show_user(engine, row, args.json, verb, note)

    return command


cmd_users_disable = _status_command(
    disable_user,
    "Disabled",
    "Their tokens and personal keys stop working on every proxy within seconds.",
    with_reason=True,
)
cmd_users_enable = _status_command(
    enable_user,
    "Enabled",
    "Their personal keys work again; tokens from before the disable do not (sign in).",
)
cmd_users_revoke_tokens = _status_command(
    revoke_user_tokens,
    "Signed out",
    "Every token minted before now is refused; keys are untouched.",
)


# ---------------------------------------------------------------------- org


def _show_org(engine: Engine, org: OrgPolicy, as_json: bool, verb: str | None = None) -> None:
    period = _period_of(org.limits)
    spend = spend_of(engine, [ORG_ID], period)[ORG_ID]
    if as_json:
        out = org.public()
        out.update(_spend_json(spend, period))
        _print_json(out)
        return
    if verb:
        print(f"{verb} the organisation's policy.")
    member = (
        budget_text(org.member_budget_usd, org.limits.budget_period)
        if org.member_budget_usd is not None
        else "none"
    )
    print(
        "\n".join(
            [
                f"  models:         {_models(org.limits.models)}",
                f"  rpm:            {_limit(org.limits.rpm)}",
                f"  tpm:            {_limit(org.limits.tpm)}",
                f"  org budget:     {budget_text(org.limits.budget_usd, org.limits.budget_period)}",
                f"  person budget:  {member}",
                f"  spend:          {_spend_text(spend, period)}",
                f"  updated:        {_when(org.updated_at)}",
            ]
        )
    )


def cmd_org_show(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    _show_org(engine, get_org(engine), args.json)


def cmd_org_update(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    changes = changes_given(args, (*_LIMIT_ARGS, "member_budget_usd"))
    engine = engine_factory()
    current = get_org(engine)
    drop_orphan_period(changes, current.limits.budget_usd, current.member_budget_usd)
    org = _store(lambda: update_org(engine, actor=cli_actor(), **changes))
    _show_org(engine, org, args.json, "Updated")


# -------------------------------------------------------------------- audit


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    return str(value)


def audit_lines(row: AuditRow) -> list[str]:
    """One line for the entry, then one per field that changed: `field: before -> after`."""
    target = row.target_type + (f" {row.target_id}" if row.target_id else "")
    head = f"{_when(row.created_at)}  {row.actor}  {row.action}  {target}"
    if row.reason:
        head += f"  ({row.reason})"
    lines = [head]
    before, after = row.before or {}, row.after or {}
    if row.before is None and row.after is not None:
        shown = {k: v for k, v in after.items() if v not in (None, [], "") and k != "id"}
        lines += [f"    + {k}: {_value(v)}" for k, v in shown.items()]
    elif row.after is None:
        lines.append("    (deleted)")
    else:
        for name in dict.fromkeys([*before, *after]):
            if before.get(name) != after.get(name):
                lines.append(f"    {name}: {_value(before.get(name))} -> {_value(after.get(name))}")
    return lines


def cmd_audit(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    target_type, target_id = args.target or (None, None)
    if target_type == "user" and target_id and "@" in target_id:
        target_id = need_user(engine, target_id).id  # an email
    if target_type == "group" and target_id and not target_id.startswith("grp_"):
        target_id = need_group(engine, target_id).id  # a name
    rows = list_audit(
        engine,
        limit=args.limit,
        before_id=args.before,
        target_type=target_type,
        target_id=target_id,
        action=args.action,
    )
    if args.json:
        _print_json({"data": [r.public() for r in rows]})
        return
    for row in rows:
        print("\n".join(audit_lines(row)))
    if not rows:
        print("(no audit entries)")


# ---------------------------------------------------------------- registration


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, command: Command, **kw: Any
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, **kw)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(func=_run(command))
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    groups = sub.add_parser(
        "groups",
        help="groups: create, list, show, update, delete",
        description="Groups in DATABASE_URL. A group's name matches the IdP group of the "
        "same name exactly; a user in several is governed by the first by --priority.",
    )
    gsub = groups.add_subparsers(dest="groups_command", required=True)
    create = _command(gsub, "create", cmd_groups_create, help="a new group")
    create.add_argument("name", help="matched exactly (case-sensitive) to IdP group names")
    create.add_argument("--description", default=None)
    create.add_argument(
        "--priority",
        type=parse_priority,
        default=100,
        help="a user in several groups is governed by the lowest (then by name); default 100",
    )
    _add_limit_flags(create, update=False, member=True)
    _command(gsub, "list", cmd_groups_list, help="groups in policy order")
    show = _command(gsub, "show", cmd_groups_show, help="a group, its members and pool spend")
    show.add_argument("name", help="name or id")
    upd = _command(
        gsub, "update", cmd_groups_update, help="change a group ('none' removes a limit)"
    )
    upd.add_argument("group", metavar="name", help="name or id")
    upd.add_argument("--name", metavar="NEW_NAME", default=_UNSET, help="rename")
    upd.add_argument("--description", type=_or_none(str), default=_UNSET)
    upd.add_argument("--priority", type=parse_priority, default=_UNSET)
    _add_limit_flags(upd, update=True, member=True)
    delete = _command(
        gsub,
        "delete",
        cmd_groups_delete,
        help="delete a group: its local memberships go and its service keys are revoked",
    )
    delete.add_argument("name", help="name or id")

    users = sub.add_parser(
        "users",
        help="users: create, list, show, update, disable, enable, revoke-tokens",
        description="Users in DATABASE_URL. Users who sign in are created from the IdP; "
        "create one here to set limits or local groups before their first sign-in.",
    )
    usub = users.add_subparsers(dest="users_command", required=True)
    create = _command(usub, "create", cmd_users_create, help="a new user")
    create.add_argument("--email", required=True, help="their sign-in email")
    create.add_argument("--name", default=None, help="display name")
    create.add_argument(
        "--groups", type=parse_groups, default=(), help="local groups, comma-separated"
    )
    _add_limit_flags(create, update=False, member=False)
    lst = _command(usub, "list", cmd_users_list, help="users by email")
    lst.add_argument("--group", help="only this group's members (local or from the IdP)")
    lst.add_argument("--status", choices=USER_STATUSES)
    show = _command(usub, "show", cmd_users_show, help="a user, their groups, budget and spend")
    show.add_argument("user", metavar="EMAIL_OR_ID")
    upd = _command(usub, "update", cmd_users_update, help="change a user ('none' removes a limit)")
    upd.add_argument("user", metavar="EMAIL_OR_ID")
    upd.add_argument("--name", type=_or_none(str), default=_UNSET)
    upd.add_argument("--email", default=_UNSET)
    upd.add_argument(
        "--groups",
        type=parse_groups,
        default=_UNSET,
        help="REPLACES the local groups (comma-separated; 'none' for none); IdP groups stay",
    )
    _add_limit_flags(upd, update=True, member=False)
    dis = _command(
        usub, "disable", cmd_users_disable, help="stop their tokens and personal keys at once"
    )
    dis.add_argument("user", metavar="EMAIL_OR_ID")
    dis.add_argument("--reason", default=None, help="kept in the user and the audit log")
    ena = _command(usub, "enable", cmd_users_enable, help="let a disabled user in again")
    ena.add_argument("user", metavar="EMAIL_OR_ID")
    rev = _command(
        usub, "revoke-tokens", cmd_users_revoke_tokens, help="sign a user out everywhere"
    )
    rev.add_argument("user", metavar="EMAIL_OR_ID")

    org = sub.add_parser("org", help="the organisation's default policy: show, update")
    osub = org.add_subparsers(dest="org_command", required=True)
    _command(osub, "show", cmd_org_show, help="the policy and the organisation's spend")
    oupd = _command(
        osub,
        "update",
        cmd_org_update,
        help="change it: --budget-usd caps the whole organisation, --member-budget-usd is "
        "each person's default ('none' removes a limit)",
    )
    _add_limit_flags(oupd, update=True, member=True)

    audit = _command(
        sub, "audit", cmd_audit, help="who changed what, when, from what to what (newest first)"
    )
    audit.add_argument("--limit", type=parse_audit_limit, default=50)
    audit.add_argument(
        "--target",
        type=parse_target,
        default=None,
        metavar="TYPE[:ID]",
        help="user[:EMAIL_OR_ID], group[:NAME_OR_ID], key[:ID], org, budget",
    )
    audit.add_argument("--action", default=None, help="e.g. user.update, key.revoke")
    audit.add_argument("--before", default=None, metavar="AUDIT_ID", help="older than this entry")
