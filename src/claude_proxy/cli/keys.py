"""`claude-proxy keys create | list | show | update | revoke | rotate`: proxy keys from the
command line, against the same DATABASE_URL as the server.

The secret is printed once, by `create` and `rotate`, and never again: the database
keeps only its SHA-256. Running proxies notice a change within
CLAUDE_PROXY_KEY_REFRESH_SECONDS (they re-read changed keys in the background).
A key may belong to a user (`--user`, a personal key) or a group (`--group`, a service
key). Every change is in the audit log, made by "cli:<os user>@<host>".

Exit codes: 0 done; 1 no such key, user or group, a revoked key cannot be rotated, a
disabled user gets no key, or the database failed; 2 bad arguments (nothing was changed).

The parsers, printers and the command runner here are shared by cli/people.py.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from claude_proxy.cli.logs import parse_duration_arg
from claude_proxy.store.columns import COST_PLACES, current_period, money_text
from claude_proxy.store.keys import (
    BUDGET_MAX,
    BUDGET_PERIODS,
    RPM_MAX,
    TPM_MAX,
    KeyRow,
    KeySpec,
    create_key,
    drop_orphan_period,
    get_key,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
    with_spend,
)
from claude_proxy.store.people import (
    GroupRow,
    UserRow,
    get_group,
    get_user,
    list_groups,
    list_users,
)

_UNSET: Any = object()  # `keys update`: an option that was not given


class _Failed(Exception):
    """A message for stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ argument types


def parse_limit(label: str, maximum: int, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{label} must be a whole number, not {text!r}"
            ) from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{label} must be between {minimum} and {maximum}")
        return value

    return parse


def parse_money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or value < 0 or value > BUDGET_MAX:
        raise argparse.ArgumentTypeError(f"a budget is between 0 and {BUDGET_MAX} USD")
    if value != value.quantize(COST_PLACES):
        raise argparse.ArgumentTypeError("a budget has at most 8 decimal places")
    return value


def parse_models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(","))
    if not any(models):
        raise argparse.ArgumentTypeError(
            "--models takes a comma-separated list (claude-sonnet-4-6,claude-haiku-*)"
        )
    if not all(models):
        raise argparse.ArgumentTypeError(f"an empty model name in {text!r}")
    return models


def parse_expires(text: str) -> datetime:
    """`30d`, `12h`, `90m`, `2w` from now, or an ISO date/time (UTC unless it says)."""
    ahead = parse_duration_arg(text)
    if ahead is not None:
        at = datetime.now(UTC) + ahead
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--expires takes 30d, 12h, 90m, 2w or an ISO date/time, not {text!r}"
            ) from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"--expires {text} is not in the future")
    return at


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """For `update` commands: `none` clears the limit."""

    def wrapped(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    return wrapped


def changes_given(
    args: argparse.Namespace, options: Sequence[str], fields: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An `update` command's changes: the `options` (argparse dests, each the flag's name)
    that were given, by the store's field name (`fields` maps the dests that differ).
    None given: exit 2, naming every flag that would do."""
    renamed = fields or {}
    changes = {
        renamed.get(o, o): getattr(args, o)
        for o in options
        if getattr(args, o, _UNSET) is not _UNSET
    }
    if not changes:
        flags = ["--" + o.replace("_", "-") for o in options]
        raise _Failed(f"nothing to change: give {', '.join(flags[:-1])} or {flags[-1]}", 2)
    return changes


# ------------------------------------------------------------------------ output


def cli_actor() -> str:
    """Who the audit log says made a change from the command line."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password file
        user = f"uid {os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


def key_json(
    row: KeyRow, secret: str | None = None, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `--json` prints (the admin API's key object, and `owner`: the user's id and
    email or the group's id and name, None for an unowned key): never the hash."""
    out = row.public()
    out["owner"] = owner
    out["spend_period"] = (
        current_period(row.budget_period or "total") if row.spend_usd is not None else None
    )
    if secret is not None:
        out["key"] = secret  # last, as in the admin API's answer
    return out


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return money_text(value)  # money as a string: exact
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _print_json(value: object) -> None:
    sys.stdout.write(
        orjson.dumps(
            value, default=_json_default, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
        ).decode()
    )


def money(value: Decimal) -> str:
    """`10.00`, `0.012345`: at least the cents, and every digit that is there."""
    text = money_text(value).rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _when(value: datetime | None, none: str = "never") -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else none


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def budget_text(amount: Decimal | None, period: str | None) -> str:
    """`$10.00 per month`, `$5.00 in total`, or `none`."""
    if amount is None:
        return "none"
    return f"${money(amount)} per {period}".replace("per total", "in total")


def _budget(row: KeyRow) -> str:
    return budget_text(row.budget_usd, row.budget_period)


def _spend(row: KeyRow) -> str:
    if row.spend_usd is None:
        return "-"
    return f"${money(row.spend_usd)} ({current_period(row.budget_period or 'total')})"


def _owner_label(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "none (unowned)"
    if owner["type"] == "user":
        return f"user {owner['email']} ({owner['id']})"
    return f"group {owner['name']} ({owner['id']})"


def _details(row: KeyRow, owner: dict[str, Any] | None = None) -> list[str]:
    return [
        f"  id:       {row.id}",
        f"  name:     {row.name}",
        f"  owner:    {_owner_label(owner)}",
        f"  prefix:   {row.prefix}",
        f"  status:   {row.status}",
        f"  models:   {', '.join(row.models) if row.models is not None else 'any'}",
        f"  rpm:      {_limit(row.rpm)}",
        f"  tpm:      {_limit(row.tpm)}",
        f"  budget:   {_budget(row)}",
        f"  spend:    {_spend(row)}",
        f"  expires:  {_when(row.expires_at)}",
        f"  created:  {_when(row.created_at)}",
        f"  updated:  {_when(row.updated_at)}",
        f"  revoked:  {_when(row.revoked_at, 'no')}",
    ]


def _print_secret(row: KeyRow, secret: str, verb: str, owner: dict[str, Any] | None = None) -> None:
    print(f"{verb} key {row.id} ({row.name}). The key, shown this once and never again:")
    print()
    print(f"  {secret}")
    print()
    print("Store it now: only its SHA-256 is kept, so it cannot be shown or recovered later.")
    print()
    print("\n".join(_details(row, owner)))


_LIST_COLUMNS = (
    ("id", 20),
    ("name", 20),
    ("owner", 24),
    ("prefix", 15),
    ("status", 7),
    ("rpm", 9),
    ("tpm", 10),
    ("budget", 22),
    ("spend", 12),
    ("expires", 19),
)


def cell(value: int | None) -> str:
    """A limit in a table: the number, or `-` for none."""
    return "-" if value is None else str(value)


def budget_cell(amount: Decimal | None, period: str | None) -> str:
    """A budget in a table: `$10.00/month`, or `-` for none."""
    return "-" if amount is None else f"${money(amount)}/{period}"


def print_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]]) -> None:
    """A header of `columns` (name, width) and a line per row, each cell padded to its width."""
    print("  ".join(c.ljust(w) for c, w in columns).rstrip())
    for cells in rows:
        print("  ".join(v.ljust(w) for v, (_, w) in zip(cells, columns, strict=True)).rstrip())


def _list_cells(row: KeyRow, owner: dict[str, Any] | None) -> tuple[str, ...]:
    budget = budget_cell(row.budget_usd, row.budget_period)
    spend = "-" if row.spend_usd is None else f"${money(row.spend_usd)}"
    expires = row.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if row.expires_at else "-"
    owner_cell = "-" if owner is None else owner.get("email") or f"group:{owner['name']}"
    return (
        row.id,
        row.name,
        owner_cell,
        row.prefix,
        row.status,
        cell(row.rpm),
        cell(row.tpm),
        budget,
        spend,
        expires,
    )


# ---------------------------------------------------------------------- commands


def _engine() -> Engine:
    from pydantic import ValidationError

    from claude_proxy.settings import Settings
    from claude_proxy.store.engine import make_engine
    from claude_proxy.store.migrate import upgrade

    try:
        settings = Settings()
    except ValidationError as exc:
        raise _Failed(f"invalid configuration:\n{exc}", 2) from None
    engine = make_engine(settings.database_url)
    upgrade(engine)  # idempotent; a fresh SQLite file gets its tables
    return engine


def _spec_from_args(args: argparse.Namespace) -> KeySpec:
    try:
        return KeySpec(
            name=args.name,
            models=args.models,
            rpm=args.rpm,
            tpm=args.tpm,
            budget_usd=args.budget_usd,
            budget_period=args.budget_period,
            expires_at=args.expires,
        )
    except ValueError as exc:
        raise _Failed(str(exc), 2) from None


def owners(engine: Engine, rows: list[KeyRow]) -> dict[str, dict[str, Any]]:
    """{key id: owner} for the owned keys among `rows` (the owner as `key_json` shows it);
    an owner deleted since shows its id alone."""
    user_ids = {r.user_id for r in rows if r.user_id}
    group_ids = {r.group_id for r in rows if r.group_id}
    emails = {u.id: u.email for u in list_users(engine)} if user_ids else {}
    names = {g.id: g.name for g in list_groups(engine)} if group_ids else {}
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.user_id:
            out[r.id] = {"type": "user", "id": r.user_id, "email": emails.get(r.user_id)}
        elif r.group_id:
            out[r.id] = {"type": "group", "id": r.group_id, "name": names.get(r.group_id)}
    return out


def _resolve_owner(
    engine: Engine, user: str | None, group: str | None, *, for_new_key: bool = False
) -> tuple[str | None, str | None]:
    """(user id, group id) for `--user EMAIL_OR_ID` / `--group NAME`; exit 1 if unknown."""
    if user is not None:
        found = need_user(engine, user)
        if for_new_key and not found.active:
            raise _Failed(f"user {found.email} is disabled: a disabled user gets no new key", 1)
        return found.id, None
    if group is not None:
        return None, need_group(engine, group).id
    return None, None


def need_user(engine: Engine, ident: str) -> UserRow:
    """The user with this email or id; exit 1 if there is none."""
    found = get_user(engine, ident)
    if found is None:
        raise _Failed(f"no user {ident!r} (see `claude-proxy users list`)", 1)
    return found


def need_group(engine: Engine, name: str) -> GroupRow:
    """The group with this name or id; exit 1 if there is none."""
    found = get_group(engine, name)
    if found is None:
        raise _Failed(f"no group {name!r} (see `claude-proxy groups list`)", 1)
    return found


def _found(row: KeyRow | None, key_id: str) -> KeyRow:
    if row is None:
        raise _Failed(f"no key with id {key_id!r} (see `claude-proxy keys list --all`)", 1)
    return row


def cmd_create(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    spec = _spec_from_args(args)  # before touching the database: a bad spec creates nothing
    engine = engine_factory()
    user_id, group_id = _resolve_owner(engine, args.user, args.group, for_new_key=True)
    try:
        row, secret = create_key(
            engine, spec, actor=cli_actor(), user_id=user_id, group_id=group_id
        )
    except ValueError as exc:  # the owner went away or was disabled a moment ago
        raise _Failed(str(exc), 1) from None
    row = with_spend(engine, [row])[0]
    owner = owners(engine, [row]).get(row.id)
    if args.json:
        _print_json(key_json(row, secret, owner))
    else:
        _print_secret(row, secret, "Created", owner)


def cmd_list(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    user_id, group_id = _resolve_owner(engine, args.user, args.group)
    rows = with_spend(
        engine,
        list_keys(engine, include_revoked=args.all, user_id=user_id, group_id=group_id),
    )
    owned = owners(engine, rows)
    if args.json:
        _print_json({"data": [key_json(r, owner=owned.get(r.id)) for r in rows]})
        return
    print_table(_LIST_COLUMNS, (_list_cells(row, owned.get(row.id)) for row in rows))
    if not rows:
        print("(no keys" + ("" if args.all else " that are not revoked; --all shows those") + ")")


def cmd_show(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    row = with_spend(engine, [_found(get_key(engine, args.id), args.id)])[0]
    owner = owners(engine, [row]).get(row.id)
    if args.json:
        _print_json(key_json(row, owner=owner))
    else:
        print("\n".join(_details(row, owner)))


def cmd_update(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    changes = changes_given(
        args,
        ("name", "models", "rpm", "tpm", "budget_usd", "budget_period", "expires"),
        {"expires": "expires_at"},
    )
    drop_orphan_period(changes)  # `--budget-usd none` removes the budget
    engine = engine_factory()
    try:
        updated = update_key(engine, args.id, actor=cli_actor(), **changes)
    except ValueError as exc:  # the new combination is checked before anything is written
        raise _Failed(str(exc), 2) from None
    row = _found(updated, args.id)
    row = with_spend(engine, [row])[0]
    owner = owners(engine, [row]).get(row.id)
    if args.json:
        _print_json(key_json(row, owner=owner))
    else:
        print(f"Updated key {row.id}.")
        print("\n".join(_details(row, owner)))


def cmd_revoke(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    before = _found(get_key(engine, args.id), args.id)
    revoked = revoke_key(engine, args.id, actor=cli_actor())
    row = with_spend(engine, [_found(revoked, args.id)])[0]
    if args.json:
        _print_json(key_json(row, owner=owners(engine, [row]).get(row.id)))
    elif before.revoked_at is not None:
        print(f"Key {row.id} ({row.name}) was already revoked at {_when(row.revoked_at)}.")
    else:
        print(f"Revoked key {row.id} ({row.name}) at {_when(row.revoked_at)}.")
        print("Running proxies refuse it from their next key refresh (within a few seconds).")


def cmd_rotate(args: argparse.Namespace, engine_factory: Callable[[], Engine]) -> None:
    engine = engine_factory()
    current = _found(get_key(engine, args.id), args.id)
    if current.revoked_at is not None:
        raise _Failed(f"key {args.id} is revoked; a revoked key cannot be rotated", 1)
    rotated = rotate_key(engine, args.id, actor=cli_actor())
    if rotated is None:  # revoked between the two statements
        raise _Failed(f"key {args.id} is revoked; a revoked key cannot be rotated", 1)
    row, secret = rotated
    row = with_spend(engine, [row])[0]
    owner = owners(engine, [row]).get(row.id)
    if args.json:
        _print_json(key_json(row, secret, owner))
    else:
        _print_secret(row, secret, "Rotated", owner)
        print()
        print("The old key stops working as soon as running proxies refresh their keys.")


def _run(
    command: Callable[[argparse.Namespace, Callable[[], Engine]], None],
) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        engines: list[Engine] = []

        def engine_factory() -> Engine:
            engines.append(_engine())
            return engines[-1]

        try:
            command(args, engine_factory)
        except _Failed as exc:
            _exit(str(exc), exc.code)
        except SQLAlchemyError as exc:
            # The driver's first line says what failed (connection refused, no such
            # database ...); it never holds the password.
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            _exit(f"database error ({type(exc).__name__}): {first[0] if first else ''}", 1)
        finally:
            for engine in engines:
                engine.dispose()

    return run


def _exit(message: str, code: int) -> NoReturn:
    sys.stdout.flush()
    print(f"claude-proxy: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="proxy keys: create, list, show, update, revoke, rotate",
        description="Proxy keys in DATABASE_URL. Secrets are shown once, by create and rotate.",
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    rpm = parse_limit("--rpm", RPM_MAX)
    tpm = parse_limit("--tpm", TPM_MAX)

    create = ksub.add_parser("create", help="a new key; prints its secret once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--models",
        type=parse_models,
        default=None,
        help="allowed models, comma-separated; shell patterns work (claude-haiku-*). "
        "Default: any model",
    )
    create.add_argument("--rpm", type=rpm, default=None, help="requests per minute")
    create.add_argument("--tpm", type=tpm, default=None, help="input+output tokens per minute")
    create.add_argument("--budget-usd", type=parse_money, default=None, help="spend cap in USD")
    create.add_argument("--budget-period", choices=BUDGET_PERIODS, default=None)
    create.add_argument(
        "--expires",
        type=parse_expires,
        default=None,
        help="30d, 12h, 90m, 2w from now, or an ISO date/time (UTC unless it says)",
    )
    owner = create.add_mutually_exclusive_group()
    owner.add_argument(
        "--user", metavar="EMAIL_OR_ID", help="a personal key of this user (who must be active)"
    )
    owner.add_argument("--group", metavar="NAME", help="a service key of this group")
    create.add_argument("--json", action="store_true", help="one JSON object, secret in 'key'")
    create.set_defaults(func=_run(cmd_create))

    lst = ksub.add_parser("list", help="keys, without revoked ones unless --all")
    lst.add_argument("--all", action="store_true", help="include revoked keys")
    lst_owner = lst.add_mutually_exclusive_group()
    lst_owner.add_argument("--user", metavar="EMAIL_OR_ID", help="only this user's keys")
    lst_owner.add_argument("--group", metavar="NAME", help="only this group's service keys")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_run(cmd_list))

    show = ksub.add_parser("show", help="one key, with its spend in the current budget period")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_run(cmd_show))

    upd = ksub.add_parser("update", help="change a key's name or limits ('none' removes a limit)")
    upd.add_argument("id")
    upd.add_argument("--name", default=_UNSET)
    upd.add_argument("--models", type=_or_none(parse_models), default=_UNSET)
    upd.add_argument("--rpm", type=_or_none(rpm), default=_UNSET)
    upd.add_argument("--tpm", type=_or_none(tpm), default=_UNSET)
    upd.add_argument("--budget-usd", type=_or_none(parse_money), default=_UNSET)
    upd.add_argument("--budget-period", choices=BUDGET_PERIODS, default=_UNSET)
    upd.add_argument("--expires", type=_or_none(parse_expires), default=_UNSET)
    upd.add_argument("--json", action="store_true")
    upd.set_defaults(func=_run(cmd_update))

    revoke = ksub.add_parser("revoke", help="stop a key working, for good")
    revoke.add_argument("id")
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(func=_run(cmd_revoke))

    rotate = ksub.add_parser("rotate", help="a new secret for a key (limits and spend stay)")
    rotate.add_argument("id")
    rotate.add_argument("--json", action="store_true", help="one JSON object, secret in 'key'")
    rotate.set_defaults(func=_run(cmd_rotate))
