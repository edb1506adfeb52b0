"""`claude-proxy groups | users | org | audit`, keys with owners and `usage --by user|group`.

Most commands run in this process through the CLI's own `main` (the parser, the command,
the database; only the interpreter start is skipped); the real entry point, a subprocess,
runs the main path once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select

from claude_proxy.cli.main import build_parser, main
from claude_proxy.store.columns import current_period
from claude_proxy.store.engine import make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.schema import api_keys, audit_log, request_logs
from tests.helpers import add_spend, cli_env, register_secret
from tests.pg import create_database, drop_database, pg_url


class Cli:
    """`claude-proxy ...` in this process against one database; exit code and output."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys
        self.engine = make_engine(url, pool_size=1, max_overflow=1)

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"{args}: exit {code}\n{out}\n{err}"
        return out

    def json(self, *args: str) -> Any:
        return orjson.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, code: int) -> str:
        """The command fails with `code`, saying why on stderr and printing nothing."""
        got, out, err = self.run(*args)
        assert got == code, f"{args}: exit {got}, wanted {code}\n{out}\n{err}"
        assert out == "" and err.strip()
        return err

    def audit_count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(audit_log.c.id)).all())


def cli_on(url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The CLI against `url` (migrated), seeing no setting of the developer's."""
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_PROXY_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", url)
    c = Cli(url, capsys)
    upgrade(c.engine)
    return c


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    c = cli_on(f"sqlite:///{tmp_path / 'people.db'}", monkeypatch, capsys)
    yield c
    c.engine.dispose()


# ---------------------------------------------------------------------------- groups


def test_groups_create_list_show_update_delete(cli: Cli) -> None:
    eng = cli.json(
        "groups",
        "create",
        "eng",
        "--models",
        "claude-sonnet-*,claude-haiku-*",
        "--rpm",
        "100",
        "--tpm",
        "50000",
        "--budget-usd",
        "500",
        "--budget-period",
        "week",
        "--member-budget-usd",
        "50",
        "--priority",
        "10",
        "--description",
        "Engineering",
    )
    assert eng["id"].startswith("grp_") and eng["name"] == "eng"
    assert eng["models"] == ["claude-sonnet-*", "claude-haiku-*"]
    assert (eng["rpm"], eng["tpm"], eng["priority"]) == (100, 50000, 10)
    assert (eng["budget_usd"], eng["budget_period"]) == ("500.00000000", "week")
    assert eng["member_budget_usd"] == "50.00000000"
    assert eng["spend_usd"] == "0.00000000" and eng["spend_period"] == current_period("week")
    assert eng["members"] == []
    text = cli.ok("groups", "create", "ops")
    assert "Created group ops" in text and "pool budget:    none" in text

    listed = cli.json("groups", "list")["data"]
    assert [g["name"] for g in listed] == ["eng", "ops"]  # policy order
    assert listed[0]["member_count"] == 0
    table = cli.ok("groups", "list")
    assert "$500.00/week" in table and "$50.00/week" in table

    # Pool spend in the current period.
    add_spend(cli.engine, eng["id"], "week", "12.5")
    shown = cli.json("groups", "show", "eng")
    assert shown["spend_usd"] == "12.50000000"
    assert "$12.50 (week:" in cli.ok("groups", "show", eng["id"])

    updated = cli.json(
        "groups", "update", "eng", "--name", "dev", "--rpm", "none", "--priority", "200"
    )
    assert (updated["name"], updated["rpm"], updated["priority"]) == ("dev", None, 200)
    assert updated["tpm"] == 50000  # what was not given stays
    cleared = cli.json("groups", "update", "dev", "--budget-usd", "none")
    assert cleared["budget_usd"] is None and cleared["budget_period"] == "week"  # member's
    cleared = cli.json("groups", "update", "dev", "--member-budget-usd", "none")
    assert cleared["member_budget_usd"] is None and cleared["budget_period"] is None
    assert [g["name"] for g in cli.json("groups", "list")["data"]] == ["ops", "dev"]


def test_group_errors_are_clear_and_change_nothing(cli: Cli) -> None:
    cli.ok("groups", "create", "eng")
    before = cli.audit_count()
    for args, code, message in (
        (("groups", "create", "eng"), 1, "already exists"),
        (("groups", "create", "g", "--budget-usd", "5"), 2, "needs both"),
        (("groups", "create", "g", "--budget-period", "day"), 2, "needs both"),
        (("groups", "create", "g", "--member-budget-usd", "5"), 2, "needs a budget period"),
        (("groups", "create", "g", "--budget-usd", "5", "--budget-period", "year"), 2, "choice"),
        (("groups", "create", "g", "--rpm", "0"), 2, "--rpm"),
        (("groups", "create", "g", "--priority", "-1"), 2, "--priority"),
        (("groups", "create", "x" * 129), 2, "at most 128"),
        (("groups", "create", "a\tb"), 2, "control characters"),
        (("groups", "show", "nope"), 1, "no group 'nope'"),
        (("groups", "update", "nope", "--rpm", "5"), 1, "no group 'nope'"),
        (("groups", "update", "eng"), 2, "nothing to change"),
        (("groups", "update", "eng", "--budget-period", "day"), 2, "needs both"),
        (("groups", "delete", "nope"), 1, "no group 'nope'"),
    ):
        err = cli.fails(*args, code=code)
        assert message in err, (args, err)
    assert cli.audit_count() == before
    assert [g["name"] for g in cli.json("groups", "list")["data"]] == ["eng"]


def test_deleting_a_group_removes_memberships_and_revokes_service_keys(cli: Cli) -> None:
    cli.ok("groups", "create", "eng")
    cli.ok("users", "create", "--email", "a@example.com", "--groups", "eng")
    key = cli.json("keys", "create", "--name", "ci", "--group", "eng")
    register_secret(key["key"])
    deleted = cli.json("groups", "delete", "eng")
    assert deleted["deleted"] is True and deleted["name"] == "eng"
    assert deleted["revoked_key_ids"] == [key["id"]]
    assert len(deleted["removed_member_ids"]) == 1
    assert cli.json("keys", "show", key["id"])["status"] == "revoked"
    assert cli.json("users", "show", "a@example.com")["local_groups"] == []
    cli.fails("groups", "show", "eng", code=1)


# ----------------------------------------------------------------------------- users


def test_users_create_list_show_update(cli: Cli) -> None:
    # A member budget with no period is refused, and nothing is made.
    cli.fails("groups", "create", "eng", "--member-budget-usd", "20", code=2)
    cli.fails("groups", "show", "eng", code=1)
    cli.ok(
        "groups",
        "create",
        "eng",
        "--priority",
        "5",
        "--member-budget-usd",
        "20",
        "--budget-period",
        "month",
    )
    cli.ok("groups", "create", "ops")
    alice = cli.json(
        "users",
        "create",
        "--email",
        "Alice@Example.com",
        "--name",
        "Alice",
        "--groups",
        "ops,eng",
        "--rpm",
        "30",
    )
    assert alice["id"].startswith("usr_") and alice["email"] == "alice@example.com"
    assert alice["name"] == "Alice" and alice["status"] == "active"
    assert alice["source"] == "local" and alice["rpm"] == 30
    assert set(alice["local_groups"]) == {"eng", "ops"}
    assert alice["groups"] == ["eng", "ops"] and alice["policy_group"] == "eng"
    assert alice["personal_budget"] == {"budget_usd": "20.00000000", "budget_period": "month"}
    assert alice["spend_period"] == current_period("month") and alice["key_ids"] == []
    cli.ok("users", "create", "--email", "bob@example.com")
    renamed = cli.json("users", "update", "bob@example.com", "--email", "Robert@Example.com")
    assert renamed["email"] == "robert@example.com"
    err = cli.fails("users", "update", "robert@example.com", "--email", "alice@example.com", code=1)
    assert "already exists" in err
    cli.ok("users", "update", "robert@example.com", "--email", "bob@example.com")

    text = cli.ok("users", "show", "ALICE@example.com")
    assert "eng (local, policy)" in text and "ops (local)" in text
    assert "budget applied: $20.00 per month" in text

    assert [u["email"] for u in cli.json("users", "list")["data"]] == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert [u["email"] for u in cli.json("users", "list", "--group", "ops")["data"]] == [
        "alice@example.com"
    ]
    assert "alice@example.com" in cli.ok("users", "list")

    moved = cli.json("users", "update", alice["id"], "--groups", "ops", "--rpm", "none")
    assert moved["local_groups"] == ["ops"] and moved["rpm"] is None
    assert moved["policy_group"] == "ops" and moved["personal_budget"] is None
    none = cli.json("users", "update", "alice@example.com", "--groups", "none")
    assert none["local_groups"] == [] and none["groups"] == []
    own = cli.json(
        "users", "update", "alice@example.com", "--budget-usd", "3", "--budget-period", "day"
    )
    assert own["personal_budget"] == {"budget_usd": "3.00000000", "budget_period": "day"}
    gone = cli.json("users", "update", "alice@example.com", "--budget-usd", "none")
    assert gone["budget_usd"] is None and gone["budget_period"] is None


def test_user_errors_are_clear_and_change_nothing(cli: Cli) -> None:
    cli.ok("users", "create", "--email", "a@example.com")
    before = cli.audit_count()
    for args, code, message in (
        (("users", "create", "--email", "A@EXAMPLE.com"), 1, "already exists"),
        (("users", "create", "--email", "b@example.com", "--groups", "nope"), 1, "no group"),
        (("users", "create", "--email", "not-an-email"), 2, "not an email"),
        (("users", "create", "--email", "b@example.com", "--name", "n" * 201), 2, "at most 200"),
        (("users", "create", "--email", "b@example.com", "--budget-usd", "1"), 2, "needs both"),
        (("users", "create", "--email", "b@example.com", "--tpm", "lots"), 2, "--tpm"),
        (("users", "show", "nobody@example.com"), 1, "no user 'nobody@example.com'"),
        (("users", "update", "a@example.com"), 2, "nothing to change"),
        (("users", "update", "a@example.com", "--groups", "nope"), 1, "no group 'nope'"),
        (("users", "update", "usr_nope", "--rpm", "1"), 1, "no user"),
        (("users", "disable", "usr_nope"), 1, "no user"),
        (("users", "enable", "nobody@example.com"), 1, "no user"),
        (("users", "revoke-tokens", "nobody@example.com"), 1, "no user"),
        (("users", "disable", "a@example.com", "--reason", "r" * 501), 2, "at most 500"),
        (("users", "list", "--group", "nope"), 1, "no group"),
        (("users", "list", "--status", "gone"), 2, "choice"),
    ):
        err = cli.fails(*args, code=code)
        assert message in err, (args, err)
    assert cli.audit_count() == before
    assert len(cli.json("users", "list")["data"]) == 1


def test_disable_enable_and_revoke_tokens(cli: Cli) -> None:
    user = cli.json("users", "create", "--email", "a@example.com")
    off = cli.json("users", "disable", "a@example.com", "--reason", "left the company")
    assert off["status"] == "disabled" and off["status_reason"] == "left the company"
    assert off["tokens_valid_after"] is not None
    assert "stop working" in cli.ok("users", "disable", user["id"])
    assert [u["id"] for u in cli.json("users", "list", "--status", "disabled")["data"]] == [
        user["id"]
    ]
    on = cli.json("users", "enable", user["id"])
    assert on["status"] == "active" and on["tokens_valid_after"] is not None
    out = cli.json("users", "revoke-tokens", "a@example.com")
    assert out["tokens_valid_after"] >= on["tokens_valid_after"]
    assert cli.json("users", "list", "--status", "disabled")["data"] == []


# ------------------------------------------------------------------------------- org


def test_org_show_and_update(cli: Cli) -> None:
    empty = cli.json("org", "show")
    assert empty["id"] == "org" and empty["budget_usd"] is None and empty["updated_at"] is None
    assert "org budget:     none" in cli.ok("org", "show")
    org = cli.json(
        "org",
        "update",
        "--budget-usd",
        "10000",
        "--budget-period",
        "month",
        "--member-budget-usd",
        "100",
        "--models",
        "claude-*",
    )
    assert (org["budget_usd"], org["member_budget_usd"]) == ("10000.00000000", "100.00000000")
    assert org["models"] == ["claude-*"] and org["spend_period"] == current_period("month")
    text = cli.ok("org", "show")
    assert "$10000.00 per month" in text and "person budget:  $100.00 per month" in text
    cli.fails("org", "update", code=2)
    err = cli.fails("org", "update", "--budget-period", "none", code=2)
    assert "needs both" in err
    assert cli.json("org", "update", "--models", "none")["models"] is None


# ------------------------------------------------------------------------------ keys


def test_keys_belong_to_a_user_or_a_group(cli: Cli) -> None:
    cli.ok("groups", "create", "ci")
    user = cli.json("users", "create", "--email", "dev@example.com")
    personal = cli.json("keys", "create", "--name", "laptop", "--user", "DEV@example.com")
    service = cli.json("keys", "create", "--name", "pipeline", "--group", "ci")
    loose = cli.json("keys", "create", "--name", "old")
    for made in (personal, service, loose):
        register_secret(made["key"])
    assert personal["user_id"] == user["id"] and personal["group_id"] is None
    assert personal["owner"] == {"type": "user", "id": user["id"], "email": "dev@example.com"}
    assert service["owner"]["type"] == "group" and service["owner"]["name"] == "ci"
    assert loose["owner"] is None and loose["user_id"] is None

    assert [k["id"] for k in cli.json("keys", "list", "--user", user["id"])["data"]] == [
        personal["id"]
    ]
    assert [k["id"] for k in cli.json("keys", "list", "--group", "ci")["data"]] == [service["id"]]
    assert len(cli.json("keys", "list")["data"]) == 3
    table = cli.ok("keys", "list")
    assert "dev@example.com" in table and "group:ci" in table
    assert f"owner:    user dev@example.com ({user['id']})" in cli.ok(
        "keys", "show", personal["id"]
    )
    assert "owner:    none (unowned)" in cli.ok("keys", "show", loose["id"])
    assert cli.json("users", "show", user["id"])["key_ids"] == [personal["id"]]

    err = cli.fails("keys", "create", "--name", "x", "--user", "nobody@example.com", code=1)
    assert "no user 'nobody@example.com'" in err
    err = cli.fails("keys", "create", "--name", "x", "--group", "nope", code=1)
    assert "no group 'nope'" in err
    err = cli.fails("keys", "create", "--name", "x", "--user", user["id"], "--group", "ci", code=2)
    assert "not allowed with" in err
    cli.fails("keys", "list", "--user", "nobody@example.com", code=1)
    cli.ok("users", "disable", user["id"])
    err = cli.fails("keys", "create", "--name", "x", "--user", user["id"], code=1)
    assert "disabled" in err
    assert len(cli.json("keys", "list")["data"]) == 3

    # The budget period a key may have now includes the ISO week.
    weekly = cli.json(
        "keys", "create", "--name", "w", "--budget-usd", "5", "--budget-period", "week"
    )
    register_secret(weekly["key"])
    assert weekly["spend_period"] == current_period("week")


# ----------------------------------------------------------------------------- audit


def test_every_change_is_in_the_audit_log_with_before_and_after(cli: Cli) -> None:
    cli.ok("groups", "create", "eng", "--rpm", "10")
    cli.ok("groups", "update", "eng", "--rpm", "20")
    user = cli.json("users", "create", "--email", "a@example.com", "--groups", "eng")
    cli.ok("users", "update", "a@example.com", "--name", "Alice")
    cli.ok("users", "disable", "a@example.com", "--reason", "on leave")
    cli.ok("users", "enable", "a@example.com")
    cli.ok("users", "revoke-tokens", "a@example.com")
    cli.ok("org", "update", "--rpm", "1000")
    key = cli.json("keys", "create", "--name", "k", "--user", "a@example.com")
    register_secret(key["key"])
    cli.ok("keys", "update", key["id"], "--rpm", "5")
    rotated = cli.json("keys", "rotate", key["id"])
    register_secret(rotated["key"])
    cli.ok("keys", "revoke", key["id"])
    cli.ok("groups", "delete", "eng")

    rows = cli.json("audit", "--limit", "100")["data"]
    assert [r["action"] for r in reversed(rows)] == [
        "group.create",
        "group.update",
        "user.create",
        "user.update",
        "user.disable",
        "user.enable",
        "user.revoke_tokens",
        "org.update",
        "key.create",
        "key.update",
        "key.rotate",
        "key.revoke",
        "group.delete",
    ]
    assert all(r["actor"].startswith("cli:") and "@" in r["actor"] for r in rows)
    by_action = {r["action"]: r for r in rows}
    upd = by_action["group.update"]
    assert (upd["before"]["rpm"], upd["after"]["rpm"]) == (10, 20)
    assert by_action["user.disable"]["reason"] == "on leave"
    assert by_action["org.update"]["after"]["rpm"] == 1000
    assert by_action["group.delete"]["after"] is None
    dumped = orjson.dumps(rows).decode()
    assert key["key"] not in dumped and rotated["key"] not in dumped  # never a secret
    with cli.engine.connect() as conn:
        digest = conn.execute(select(api_keys.c.key_hash)).scalar_one()
    assert digest not in dumped

    text = cli.ok("audit")
    assert "group.update  group" in text and "rpm: 10 -> 20" in text
    assert "(on leave)" in text and "status: active -> disabled" in text
    mine = cli.json("audit", "--target", "user:A@example.com")["data"]
    assert {r["target_id"] for r in mine} == {user["id"]} and len(mine) == 5
    assert len(cli.json("audit", "--target", "key")["data"]) == 4
    assert [r["action"] for r in cli.json("audit", "--action", "key.rotate")["data"]] == [
        "key.rotate"
    ]
    page = cli.json("audit", "--limit", "2")["data"]
    older = cli.json("audit", "--limit", "2", "--before", page[-1]["id"])["data"]
    assert [r["id"] for r in page + older] == [r["id"] for r in rows[:4]]
    for args, message in (
        (("audit", "--target", "planet"), "--target"),
        (("audit", "--limit", "0"), "--limit"),
        (("audit", "--limit", "1001"), "--limit"),
    ):
        assert message in cli.fails(*args, code=2)
    assert "no user" in cli.fails("audit", "--target", "user:nobody@example.com", code=1)


# ----------------------------------------------------------------------------- usage


def test_usage_by_user_and_group(cli: Cli) -> None:
    eng = cli.json("groups", "create", "eng")
    alice = cli.json("users", "create", "--email", "alice@example.com", "--groups", "eng")
    bob = cli.json("users", "create", "--email", "bob@example.com")
    now = datetime.now(UTC)
    rows = [
        (alice["id"], eng["id"], Decimal("1.25")),
        (alice["id"], eng["id"], Decimal("0.75")),
        (bob["id"], None, Decimal("0.5")),
        (None, None, Decimal("0.1")),  # an unowned key
    ]
    with cli.engine.begin() as conn:
        conn.execute(
            insert(request_logs),
            [
                {
                    "id": f"cpr_usage_{i}",
                    "created_at": now - timedelta(minutes=i),
                    "endpoint": "/v1/messages",
                    "method": "POST",
                    "model": "claude-sonnet-4-6",
                    "status_code": 200,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cost_usd": cost,
                    "user_id": user_id,
                    "group_id": group_id,
                    "latency_ms": 100.0,
                }
                for i, (user_id, group_id, cost) in enumerate(rows)
            ],
        )
    by_user = cli.json("usage", "--by", "user", "--since", "1h")
    assert by_user["by"] == "user"
    got = {r["bucket"]: (r["name"], r["requests"], r["cost_usd"]) for r in by_user["data"]}
    assert got == {
        alice["id"]: ("alice@example.com", 2, "2.00000000"),
        bob["id"]: ("bob@example.com", 1, "0.50000000"),
        None: (None, 1, "0.10000000"),
    }
    by_group = cli.json("usage", "--by", "group", "--since", "1h")["data"]
    assert {r["bucket"]: (r["name"], r["requests"]) for r in by_group} == {
        eng["id"]: ("eng", 2),
        None: (None, 2),
    }
    text = cli.ok("usage", "--by", "user", "--since", "1h")
    assert "alice@example.com" in text and alice["id"] in text and "name" in text
    assert "eng" in cli.ok("usage", "--by", "group", "--since", "1h")
    assert "alice" not in cli.ok("usage", "--by", "model", "--since", "1h")


# --------------------------------------------------------------------------- --json


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_commands(child, (*path, name))


def test_every_people_command_takes_json() -> None:
    leaves = dict(_leaf_commands(build_parser()))
    wanted = [p for p in leaves if p[0] in ("groups", "users", "org", "audit", "keys")]
    assert ("users", "revoke-tokens") in wanted and ("audit",) in wanted
    assert len(wanted) >= 20
    for path in wanted:
        options = {o for a in leaves[path]._actions for o in a.option_strings}
        assert "--json" in options, f"claude-proxy {' '.join(path)} has no --json"


# ----------------------------------------------------------------- the real entry point


def _entry(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_proxy", *args],
        capture_output=True,
        text=True,
        env=cli_env({"DATABASE_URL": url}),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_entry_point(tmp_path: Path) -> None:
    """groups create, users create, keys create --user, users show and audit as a user
    types them, each a process of its own."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def ok(*args: str) -> Any:
        done = _entry(url, tmp_path, *args, "--json")
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return orjson.loads(done.stdout)

    ok("groups", "create", "platform", "--budget-usd", "100", "--budget-period", "week")
    user = ok("users", "create", "--email", "Dev@Example.com", "--groups", "platform")
    key = ok("keys", "create", "--name", "laptop", "--user", "dev@example.com")
    register_secret(key["key"])
    assert key["owner"]["id"] == user["id"]
    shown = ok("users", "show", "dev@example.com")
    assert shown["policy_group"] == "platform" and shown["key_ids"] == [key["id"]]
    actions = [r["action"] for r in ok("audit")["data"]]
    assert actions == ["key.create", "user.create", "group.create"]
    bad = _entry(url, tmp_path, "users", "create", "--email", "nope", "--json")
    assert bad.returncode == 2 and "not an email" in bad.stderr and bad.stdout == ""
    assert "Traceback" not in bad.stderr


@pytest.fixture
def pg_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    name = create_database()
    c = cli_on(pg_url(name), monkeypatch, capsys)
    try:
        yield c
    finally:
        c.engine.dispose()
        drop_database(name)


def test_postgres_groups_users_keys_audit_and_usage(pg_cli: Cli) -> None:
    cli = pg_cli
    group = cli.json(
        "groups", "create", "platform", "--budget-usd", "100", "--budget-period", "week"
    )
    user = cli.json("users", "create", "--email", "Dev@Example.com", "--groups", "platform")
    key = cli.json("keys", "create", "--name", "laptop", "--user", "dev@example.com")
    register_secret(key["key"])
    cli.ok("users", "update", user["id"], "--groups", "none", "--rpm", "9")
    cli.ok("users", "disable", user["id"], "--reason", "left")
    assert "disabled" in cli.fails("keys", "create", "--name", "x", "--user", user["id"], code=1)
    assert "already exists" in cli.fails("groups", "create", "platform", code=1)
    cli.ok("org", "update", "--member-budget-usd", "5", "--budget-period", "day")
    with cli.engine.begin() as conn:
        conn.execute(
            insert(request_logs).values(
                id="cpr_pg_usage",
                created_at=datetime.now(UTC),
                endpoint="/v1/messages",
                method="POST",
                cost_usd=Decimal("0.25"),
                user_id=user["id"],
                group_id=group["id"],
            )
        )
    (row,) = cli.json("usage", "--by", "group", "--since", "1h")["data"]
    assert (row["name"], row["cost_usd"]) == ("platform", "0.25000000")
    (row,) = cli.json("usage", "--by", "user", "--since", "1h")["data"]
    assert row["name"] == "dev@example.com"
    actions = [r["action"] for r in cli.json("audit")["data"]]
    assert actions == [
        "org.update",
        "user.disable",
        "user.update",
        "key.create",
        "user.create",
        "group.create",
    ]
    assert cli.engine.dialect.name == "postgresql"
