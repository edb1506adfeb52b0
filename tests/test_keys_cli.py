"""`claude-proxy keys ...` as a user runs it, against a real database (in this process:
a subprocess per command cost a second and a half each).

SQLite for the whole surface; PostgreSQL for the main path once. The secret must
appear only in what `create` and `rotate` print, and the database must hold only
its SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, insert, select

from claude_proxy.cli.main import main
from claude_proxy.store.columns import current_period
from claude_proxy.store.engine import make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.schema import api_keys, key_spend
from tests.pg import create_database, drop_database, pg_url

_SETTINGS = ("ANTHROPIC_", "CLAUDE_PROXY_", "DATABASE_URL")
SECRET_RE = re.compile(r"sk-proxy-[A-Za-z0-9_-]{43}")


class Cli:
    """Runs `python -m claude_proxy keys ...` with DATABASE_URL set, in a scratch cwd."""

    def __init__(self, database_url: str, cwd: Path) -> None:
        self.database_url = database_url
        self.cwd = cwd
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """A connection of the test's own, to look at what the CLI stored."""
        if self._engine is None:
            self._engine = make_engine(self.database_url, pool_size=1, max_overflow=1)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`claude-proxy keys ARGS` in this process (the entry point itself is run as a
        subprocess by tests/test_people_cli.py and tests/e2e/test_cli.py): its exit code
        and what it printed."""
        out, err = io.StringIO(), io.StringIO()
        saved = {k: v for k, v in os.environ.items() if k.startswith(_SETTINGS)}
        for name in saved:
            del os.environ[name]
        os.environ["DATABASE_URL"] = self.database_url
        here = os.getcwd()
        os.chdir(self.cwd)
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(["keys", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.chdir(here)
            os.environ.pop("DATABASE_URL", None)
            os.environ.update(saved)
        return subprocess.CompletedProcess(["keys", *args], code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        run = self.run(*args)
        assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
        return run.stdout

    def json(self, *args: str) -> Any:
        return orjson.loads(self.ok(*args, "--json"))

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(api_keys))]

    def row(self, key_id: str) -> dict[str, Any]:
        (found,) = [r for r in self.rows() if r["id"] == key_id]
        return found


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(f"sqlite:///{tmp_path / 'keys.db'}", tmp_path)
    upgrade(c.engine)
    yield c
    c.close()


@pytest.fixture
def pg_cli(tmp_path: Path) -> Iterator[Cli]:
    name = create_database()
    c = Cli(pg_url(name), tmp_path)
    try:
        yield c
    finally:
        c.close()
        drop_database(name)


def assert_stored_as_hash_only(cli: Cli, key_id: str, secret: str) -> None:
    row = cli.row(key_id)
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for column, value in row.items():
        assert secret not in str(value), f"the secret is stored in {column}"
    assert secret.startswith(row["prefix"]) and len(row["prefix"]) < 20


def assert_no_secret(output: str, secrets: list[str], hashes: list[str]) -> None:
    for s in secrets:
        assert s not in output
    for h in hashes:
        assert h not in output
    assert SECRET_RE.search(output) is None


# ------------------------------------------------------------------- SQLite


def test_create_prints_the_secret_once_and_stores_only_its_hash(cli: Cli) -> None:
    out = cli.ok(
        "create",
        "--name",
        "ci bot",
        "--models",
        "claude-sonnet-4-6, claude-haiku-*",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--budget-usd",
        "12.5",
        "--budget-period",
        "month",
        "--expires",
        "30d",
    )
    found = SECRET_RE.findall(out)
    assert len(found) == 1, out  # printed once, and only there
    secret = found[0]
    assert "never again" in out
    (row,) = cli.rows()
    assert row["id"] in out
    assert row["name"] == "ci bot"
    assert orjson.loads(row["models"]) == ["claude-sonnet-4-6", "claude-haiku-*"]
    assert (row["rpm"], row["tpm"], row["budget_period"]) == (60, 100000, "month")
    assert row["budget_usd"] == Decimal("12.5")
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs(row["expires_at"] - expected) < timedelta(minutes=1)
    assert_stored_as_hash_only(cli, row["id"], secret)
    assert row["key_hash"] not in out

    # --json: one object with the secret in "key" and the public fields, never the hash.
    data = cli.json("create", "--name", "script")
    secret2 = data["key"]
    assert secret2.startswith("sk-proxy-") and SECRET_RE.fullmatch(secret2)
    assert data["id"].startswith("key_") and data["name"] == "script"
    assert data["status"] == "active" and data["prefix"] == secret2[: len(data["prefix"])]
    assert data["rpm"] is None and data["budget_usd"] is None and data["models"] is None
    assert data["spend_usd"] == "0.00000000" and data["spend_period"] == "total"
    assert "key_hash" not in data
    assert_stored_as_hash_only(cli, data["id"], secret2)

    # list and show never print a secret or a hash, in either form.
    hashes = [r["key_hash"] for r in cli.rows()]
    for args in (
        ("list",),
        ("list", "--json"),
        ("list", "--all"),
        ("show", row["id"]),
        ("show", data["id"], "--json"),
    ):
        shown = cli.ok(*args)
        assert_no_secret(shown, [secret, secret2], hashes)
    listing = cli.json("list")["data"]
    assert [k["id"] for k in listing] == [row["id"], data["id"]]
    assert all("key" not in k and "key_hash" not in k for k in listing)
    assert listing[0]["budget_usd"] == "12.50000000"
    assert listing[0]["spend_period"] == current_period("month")


def test_validation_errors_exit_2_and_create_nothing(cli: Cli) -> None:
    cases: list[tuple[list[str], str]] = [
        (["--budget-usd", "5"], "needs both"),
        (["--budget-period", "day"], "needs both"),
        (["--rpm", "0"], "--rpm"),
        (["--tpm", "lots"], "--tpm"),
        (["--budget-usd", "-1", "--budget-period", "day"], "budget"),
        (["--budget-usd", "1.123456789", "--budget-period", "day"], "8 decimal places"),
        (["--budget-period", "year", "--budget-usd", "1"], "invalid choice"),
        (["--expires", "2001-01-01"], "not in the future"),
        (["--expires", "soon"], "--expires takes"),
        (["--models", ","], "--models"),
    ]
    for extra, message in cases:
        run = cli.run("create", "--name", "bad", *extra)
        assert run.returncode == 2, (extra, run.stdout, run.stderr)
        assert message in run.stderr, (extra, run.stderr)
        assert SECRET_RE.search(run.stdout + run.stderr) is None
    run = cli.run("create", "--name", "   ")
    assert run.returncode == 2 and "needs a name" in run.stderr
    assert cli.run("create").returncode == 2  # --name is required
    assert cli.rows() == []


def test_unknown_ids_exit_1_with_a_clear_message(cli: Cli) -> None:
    for args in (
        ("show", "key_nope"),
        ("revoke", "key_nope"),
        ("rotate", "key_nope"),
        ("update", "key_nope", "--rpm", "5"),
    ):
        run = cli.run(*args)
        assert run.returncode == 1, (args, run.stdout, run.stderr)
        assert "no key with id 'key_nope'" in run.stderr
        assert run.stdout == ""


def test_revoke_and_rotate(cli: Cli) -> None:
    first = cli.json("create", "--name", "a", "--rpm", "5")
    other = cli.json("create", "--name", "b")

    out = cli.ok("rotate", first["id"])
    found = SECRET_RE.findall(out)
    assert len(found) == 1, out
    new_secret = found[0]
    assert new_secret != first["key"]
    assert_stored_as_hash_only(cli, first["id"], new_secret)
    assert hashlib.sha256(first["key"].encode()).hexdigest() not in {
        r["key_hash"] for r in cli.rows()
    }
    assert cli.row(first["id"])["rpm"] == 5  # limits stay

    rotated = cli.json("rotate", first["id"])
    assert rotated["id"] == first["id"] and rotated["key"] != new_secret
    assert_stored_as_hash_only(cli, first["id"], rotated["key"])

    out = cli.ok("revoke", first["id"])
    assert "Revoked" in out
    revoked_at = cli.row(first["id"])["revoked_at"]
    assert revoked_at is not None
    assert "already revoked" in cli.ok("revoke", first["id"])
    assert cli.row(first["id"])["revoked_at"] == revoked_at  # the first time stays

    run = cli.run("rotate", first["id"])
    assert run.returncode == 1 and "revoked" in run.stderr
    assert SECRET_RE.search(run.stdout) is None

    # list hides revoked keys unless --all; status says which is which.
    assert [k["id"] for k in cli.json("list")["data"]] == [other["id"]]
    listed = {k["id"]: k["status"] for k in cli.json("list", "--all")["data"]}
    assert listed == {first["id"]: "revoked", other["id"]: "active"}
    assert "revoked" in cli.ok("list", "--all")
    assert cli.json("show", first["id"])["status"] == "revoked"


def test_update_changes_and_clears_limits(cli: Cli) -> None:
    key = cli.json("create", "--name", "a")
    updated = cli.json(
        "update",
        key["id"],
        "--rpm",
        "100",
        "--tpm",
        "5000",
        "--budget-usd",
        "3",
        "--budget-period",
        "day",
        "--models",
        "claude-haiku-*",
        "--name",
        "renamed",
    )
    assert (updated["rpm"], updated["tpm"], updated["name"]) == (100, 5000, "renamed")
    assert (updated["budget_usd"], updated["budget_period"]) == ("3.00000000", "day")
    assert updated["models"] == ["claude-haiku-*"]
    assert updated["spend_period"] == current_period("day")

    cleared = cli.json(
        "update", key["id"], "--rpm", "none", "--budget-usd", "none", "--models", "none"
    )
    assert cleared["rpm"] is None and cleared["tpm"] == 5000
    assert cleared["budget_usd"] is None and cleared["budget_period"] is None
    assert cleared["models"] is None
    row = cli.row(key["id"])
    assert (row["rpm"], row["budget_usd"], row["budget_period"], row["models"]) == (
        None,
        None,
        None,
        None,
    )

    before = cli.row(key["id"])
    for args, message in (
        ((), "nothing to change"),
        (("--budget-period", "month"), "needs both"),
        (("--rpm", "0"), "--rpm"),
        (("--name", " "), "needs a name"),
    ):
        run = cli.run("update", key["id"], *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert message in run.stderr
    assert cli.row(key["id"]) == before


def test_show_has_the_spend_of_the_current_period(cli: Cli) -> None:
    key = cli.json("create", "--name", "a", "--budget-usd", "10", "--budget-period", "month")
    with cli.engine.begin() as conn:
        conn.execute(
            insert(key_spend),
            [
                {
                    "key_id": key["id"],
                    "period": current_period("month"),
                    "cost_usd": Decimal("1.25"),
                    "requests": 3,
                },
                {
                    "key_id": key["id"],
                    "period": "month:2000-01",
                    "cost_usd": Decimal("7"),
                    "requests": 1,
                },
            ],
        )
    shown = cli.json("show", key["id"])
    assert shown["spend_usd"] == "1.25000000"
    assert shown["spend_period"] == current_period("month")
    text = cli.ok("show", key["id"])
    assert "$1.25" in text and "$10.00 per month" in text


def test_a_bad_database_url_is_a_clear_error(tmp_path: Path) -> None:
    cli = Cli("postgresql://postgres@127.0.0.1:1/nothing", tmp_path)
    run = cli.run("list")
    assert run.returncode == 1
    assert "database error" in run.stderr and "Traceback" not in run.stderr
    run = Cli("mysql://x/y", tmp_path).run("list")
    assert run.returncode == 2 and "DATABASE_URL" in run.stderr


# --------------------------------------------------------------- PostgreSQL


def test_postgres_create_list_show_revoke_rotate(pg_cli: Cli) -> None:
    created = pg_cli.json(
        "create", "--name", "pg", "--rpm", "7", "--budget-usd", "2.5", "--budget-period", "day"
    )
    secret = created["key"]
    assert secret.startswith("sk-proxy-")
    assert_stored_as_hash_only(pg_cli, created["id"], secret)
    hashes = [r["key_hash"] for r in pg_cli.rows()]

    listed = pg_cli.json("list")["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert listed[0]["budget_usd"] == "2.50000000"
    shown = pg_cli.json("show", created["id"])
    assert shown["rpm"] == 7 and shown["spend_usd"] == "0.00000000"
    for args in (
        ("list",),
        ("list", "--json"),
        ("show", created["id"]),
        ("show", created["id"], "--json"),
    ):
        assert_no_secret(pg_cli.ok(*args), [secret], hashes)

    rotated = pg_cli.json("rotate", created["id"])
    assert rotated["key"] != secret
    assert_stored_as_hash_only(pg_cli, created["id"], rotated["key"])

    assert "Revoked" in pg_cli.ok("revoke", created["id"])
    assert pg_cli.json("show", created["id"])["status"] == "revoked"
    assert pg_cli.json("list")["data"] == []
    run = pg_cli.run("rotate", created["id"])
    assert run.returncode == 1 and "revoked" in run.stderr
    run = pg_cli.run("create", "--name", "x", "--rpm", "0")
    assert run.returncode == 2
    assert len(pg_cli.rows()) == 1
    engine: Engine = pg_cli.engine
    assert engine.dialect.name == "postgresql"
