"""`claude-proxy db upgrade | logs tail | logs quarantine | usage`: the request log from the
command line (`usage --by user|group` names each person and group).

These run outside the server, against the same DATABASE_URL, so an operator can
answer "who spent what, how fast, what failed" with nothing but the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine

from claude_proxy.settings import Settings
from claude_proxy.store.engine import make_engine, redacted_url
from claude_proxy.store.migrate import current_revision, upgrade
from claude_proxy.store.queries import LogFollower, parse_duration, recent_logs, usage_summary
from claude_proxy.store.spill import quarantined_rows


def parse_duration_arg(text: str) -> timedelta | None:
    """`parse_duration` for a command-line value: a usage error, not a traceback."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_since(text: str) -> datetime:
    """`7d`, `12h`, `30m` ... or an ISO date/time; returns an aware UTC datetime."""
    ago = parse_duration_arg(text)
    if ago is not None:
        return datetime.now(UTC) - ago
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes 7d, 12h, 30m or an ISO date, not {text!r}"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    settings = Settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    print(f"{redacted_url(settings.database_url)}: schema at revision {current_revision(engine)}")
    engine.dispose()


_LOG_COLUMNS = (
    ("created_at", 19),
    ("id", 36),
    ("key_id", 19),
    ("model", 22),
    ("status_code", 6),
    ("stream", 6),
    ("error_type", 20),
    ("input_tokens", 7),
    ("output_tokens", 7),
    ("cost_usd", 11),
    ("latency_ms", 9),
    ("ttft_ms", 8),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, Decimal):
        return f"{value:.6f}"
    return str(value)


def _print_logs(rows: Sequence[dict[str, Any]]) -> None:
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in _LOG_COLUMNS))
    sys.stdout.flush()


def cmd_logs_tail(args: argparse.Namespace) -> None:
    engine = make_engine(Settings().database_url)
    print("  ".join(c.ljust(w) for c, w in _LOG_COLUMNS))
    if not args.follow:
        _print_logs(recent_logs(engine, key_id=args.key, model=args.model, limit=args.limit))
        return
    follower = LogFollower(engine, key_id=args.key, model=args.model)
    try:
        while True:
            _print_logs(follower.poll())
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass


_QUARANTINE_COLUMNS = (
    ("created_at", 32),
    ("id", 36),
    ("key_id", 24),
    ("file", 26),
    ("reason", 0),
)


def cmd_logs_quarantine(args: argparse.Namespace) -> None:
    """Rows the database refused even in reduced form, from the spill directory's
    quarantine files: no database needed, so it works during the outage it may explain."""
    directory = args.dir or Settings().spill_dir
    rows, unreadable = quarantined_rows(directory)
    if args.json:
        sys.stdout.write(
            orjson.dumps([dataclasses.asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode()
            + "\n"
        )
    else:
        print("  ".join(c.ljust(w) for c, w in _QUARANTINE_COLUMNS).rstrip())
        for r in rows:
            print("  ".join(_fmt(getattr(r, c)).ljust(w) for c, w in _QUARANTINE_COLUMNS))
        if not rows:
            print(f"(no quarantined rows in {directory})")
    if unreadable:
        print(f"{unreadable} unreadable lines skipped", file=sys.stderr)


_USAGE_COLUMNS = (
    ("bucket", 24),
    ("requests", 9),
    ("errors", 7),
    ("input_tokens", 13),
    ("output_tokens", 13),
    ("cache_creation_5m_input_tokens", 10),
    ("cache_creation_1h_input_tokens", 10),
    ("cache_read_input_tokens", 13),
    ("cost_usd", 13),
    ("latency_ms_p50", 9),
    ("latency_ms_p95", 9),
    ("ttft_ms_p50", 9),
    ("ttft_ms_p95", 9),
)
_USAGE_HEADERS = {
    "cache_creation_5m_input_tokens": "cache_5m",
    "cache_creation_1h_input_tokens": "cache_1h",
    "cache_read_input_tokens": "cache_read",
    "input_tokens": "input",
    "output_tokens": "output",
    "latency_ms_p50": "lat_p50",
    "latency_ms_p95": "lat_p95",
    "ttft_ms_p50": "ttft_p50",
    "ttft_ms_p95": "ttft_p95",
}


def _usage_names(engine: Engine, by: str) -> dict[str, str]:
    """For `--by user|group`: each id's email or group name, to show next to it."""
    from claude_proxy.store.people import list_groups, list_users

    if by == "user":
        return {u.id: u.email for u in list_users(engine)}
    if by == "group":
        return {g.id: g.name for g in list_groups(engine)}
    return {}


def cmd_usage(args: argparse.Namespace) -> None:
    engine = make_engine(Settings().database_url)
    rows = usage_summary(engine, args.by, args.since)
    names = _usage_names(engine, args.by)
    if names or args.by in ("user", "group"):
        for row in rows:
            # None: requests of no user (unowned keys) or charged to no group.
            row["name"] = names.get(row["bucket"]) if row["bucket"] is not None else None
    if args.json:
        from claude_proxy.cli.keys import _print_json

        _print_json({"by": args.by, "since": args.since, "data": rows})
        return
    columns: tuple[tuple[str, int], ...] = _USAGE_COLUMNS
    if args.by in ("user", "group"):
        columns = (_USAGE_COLUMNS[0], ("name", 28), *_USAGE_COLUMNS[1:])
    print("  ".join(_USAGE_HEADERS.get(c, c).rjust(w) for c, w in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).rjust(w) for c, w in columns))
    if not rows:
        print(f"(no requests since {args.since.isoformat(timespec='seconds')})")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="migrate DATABASE_URL to the latest schema").set_defaults(
        func=cmd_db_upgrade
    )

    logs = sub.add_parser("logs", help="the request log")
    logsub = logs.add_subparsers(dest="logs_command", required=True)
    tail = logsub.add_parser("tail", help="recent requests, or new ones as they land")
    tail.add_argument("--follow", "-f", action="store_true")
    tail.add_argument("--key", help="only this key id")
    tail.add_argument("--model", help="only this model")
    tail.add_argument("--limit", type=int, default=20)
    tail.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    tail.set_defaults(func=cmd_logs_tail)
    quarantine = logsub.add_parser(
        "quarantine", help="rows the database refused even reduced (from the spill directory)"
    )
    quarantine.add_argument("--json", action="store_true", help="a JSON array")
    quarantine.add_argument("--dir", help="the spill directory (default: CLAUDE_PROXY_SPILL_DIR)")
    quarantine.set_defaults(func=cmd_logs_quarantine)

    usage = sub.add_parser("usage", help="requests, tokens, cost and latency per bucket")
    usage.add_argument(
        "--by",
        choices=("key", "model", "day", "user", "group"),
        default="model",
        help="group the requests by key, model, UTC day, user, or the group charged",
    )
    usage.add_argument("--since", type=parse_since, default=parse_since("7d"))
    usage.add_argument("--json", action="store_true", help="one JSON object, rows in 'data'")
    usage.set_defaults(func=cmd_usage)
