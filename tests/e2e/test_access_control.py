"""Access control end to end: database keys, model allowlists, RPM/TPM, budgets, revocation
and the database going away, through real proxy processes sharing a real PostgreSQL,
driven by the official SDK. Every refusal must be Anthropic-shaped and leave a log row."""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from sqlalchemy import Engine, MetaData, select

from claude_proxy.store.engine import make_engine
from claude_proxy.store.keys import revoke_key
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.schema import key_spend, rate_usage
from tests.conftest import PROXY_KEY, Emulator, Proxy, start_proxy
from tests.helpers import SECRETS, log_row, log_rows, make_key, register_secret, wait_until
from tests.pg import PgBouncer, create_database, drop_database, free_port, pg_url

pytestmark = pytest.mark.e2e

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there"}]
ADMIN_KEY = register_secret("admin-" + secrets.token_urlsafe(24))
WAIT = 20.0  # for what several proxies share through the database


@dataclass
class Cluster:
    """Proxies sharing one database (PostgreSQL, optionally behind pgbouncer)."""

    emulator: Emulator
    url: str
    engine: Engine
    tmp: Path
    bouncer: PgBouncer | None = None
    proxies: list[Proxy] = field(default_factory=list)

    def start(self, **env: str) -> Proxy:
        full = {
            "DATABASE_URL": self.url,
            "CLAUDE_PROXY_ADMIN_KEY": ADMIN_KEY,
            "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
            **env,
        }
        px = start_proxy(self.emulator.url, full, self.tmp / f"proxy{len(self.proxies)}")
        self.proxies.append(px)
        return px

    def key(self, name: str = "test", **kw: Any) -> tuple[str, str]:
        return make_key(self.engine, name, **kw)

    def rows(self, key_id: str | None = None) -> list[dict[str, Any]]:
        where = {} if key_id is None else {"key_id": key_id}
        return log_rows(self.engine, order_by="created_at", **where)

    def row(self, request_id: str) -> dict[str, Any]:
        return log_row(self.engine, request_id, timeout=WAIT)


@contextmanager
def cluster(emulator: Emulator, bouncer: bool = False) -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="claude-proxy-access-"))
    dbname = create_database()
    direct = pg_url(dbname)
    pgb = None
    url = direct
    if bouncer:
        pgb = PgBouncer(tmp, free_port())
        pgb.start()
        url = pg_url(dbname, pgb.port)
    engine = make_engine(direct)  # the tests' own view, unaffected by a pgbouncer outage
    upgrade(engine)
    c = Cluster(emulator, url, engine, tmp, pgb)
    try:
        yield c
    finally:
        for px in c.proxies:
            px.process.stop()
        assert_no_secret_in_database(engine)
        engine.dispose()
        if pgb is not None:
            pgb.stop()
        drop_database(dbname)


def assert_no_secret_in_database(engine: Engine) -> None:
    """No key in any column of any table: only hashes, ids and short prefixes are stored."""
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                text = " ".join(str(v) for v in row)
                leaked = [s[-6:] for s in SECRETS if s in text]
                assert not leaked, f"a key is stored in {table.name}: ...{leaked}"


def sdk(px: Proxy, key: str, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=px.url, api_key=key, **kw)


def ask(px: Proxy, key: str, model: str = HAIKU, **kw: Any) -> Any:
    return sdk(px, key, **kw).messages.create(model=model, max_tokens=32, messages=HELLO)


def request_id(exc: anthropic.APIStatusError) -> str:
    rid = exc.response.headers["x-claude-proxy-request-id"]
    body = exc.response.json()
    assert body["type"] == "error" and body["request_id"] == rid  # Anthropic-shaped
    return rid


def test_database_keys_allowlists_rpm_and_every_refusal_leaves_a_row(emulator: Emulator) -> None:
    with cluster(emulator) as c:
        px = c.start()
        kid, key = c.key("ci-haiku", models=("claude-haiku-*",), rpm=3)
        refusals: dict[str, str] = {}

        # A key created a moment ago works at once (one lookup, then cached). The model is
        # known only from the body, which is read after the rate check: a request refused
        # for its model still counts as one of the three.
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            ask(px, key, model=SONNET)
        assert f"'{SONNET}'" in denied.value.message
        refusals[request_id(denied.value)] = "model_not_allowed"

        for _ in range(2):
            assert ask(px, key).content[0].text

        with pytest.raises(anthropic.RateLimitError) as limited:
            ask(px, key)
        retry_after = limited.value.response.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
        assert "3 requests per minute" in limited.value.message
        refusals[request_id(limited.value)] = "rpm"

        gone_id, revoked = c.key("gone")
        revoke_key(c.engine, gone_id, actor="test")
        _, expired = c.key("old", expires_at=datetime.now(UTC) - timedelta(minutes=1))
        for secret, reason, words in (
            (revoked, "revoked_key", "revoked"),
            (expired, "expired_key", "expired"),
            ("sk-proxy-" + "x" * 43, "invalid_key", "invalid x-api-key"),
        ):
            with pytest.raises(anthropic.AuthenticationError) as unauth:
                ask(px, register_secret(secret))
            assert words in unauth.value.message
            assert secret not in unauth.value.response.text  # never echoed back
            refusals[request_id(unauth.value)] = reason

        for rid, reason in refusals.items():
            row = c.row(rid)
            assert row["refusal"] == reason, row
            assert row["status_code"] in (401, 403, 429) and row["error_type"]
        assert c.row(next(iter(refusals)))["key_id"] == kid
        assert len([r for r in c.rows(kid) if r["status_code"] == 200]) == 2
        # Refused requests never reached the upstream: it saw the two that passed.
        assert sum(1 for r in c.rows(kid) if r["upstream_request_id"]) == 2


def test_tokens_per_minute(emulator: Emulator) -> None:
    with cluster(emulator) as c:
        px = c.start()
        _, key = c.key("tpm", tpm=20)
        first = ask(px, key)
        assert first.usage.input_tokens + first.usage.output_tokens >= 20
        with pytest.raises(anthropic.RateLimitError) as limited:
            ask(px, key)
        assert "20 tokens per minute" in limited.value.message
        assert limited.value.response.headers["retry-after"].isdigit()
        assert c.row(request_id(limited.value))["refusal"] == "tpm"


def test_budget_stops_spend_without_client_retries_and_survives_a_restart(
    emulator: Emulator,
) -> None:
    with cluster(emulator) as c:
        px = c.start()
        kid, key = c.key("tiny", budget_usd=Decimal("0.000001"), budget_period="day")
        ask(px, key)  # spent 0 so far: allowed, and it costs more than the budget
        # The SDK's own retries are on (2 by default): x-should-retry: false stops them.
        with pytest.raises(anthropic.RateLimitError) as over:
            ask(px, key, max_retries=2)
        msg = over.value.message
        assert "Budget exhausted" in msg and "this day" in msg and "resets at" in msg
        assert over.value.response.headers["x-should-retry"] == "false"
        assert c.row(request_id(over.value))["refusal"] == "budget"
        assert len(c.rows(kid)) == 2  # one success, one refusal: the SDK did not retry

        px.process.stop()  # the writer flushes; key_spend holds the day's spend
        with c.engine.connect() as conn:
            spent = conn.execute(
                select(key_spend.c.cost_usd).where(
                    key_spend.c.key_id == kid, key_spend.c.period.like("day:%")
                )
            ).scalar_one()
        assert spent > Decimal("0.000001")
        again = c.start()
        with pytest.raises(anthropic.RateLimitError) as still:
            ask(again, key)
        assert "Budget exhausted" in still.value.message


def test_two_replicas_share_one_rpm_limit(emulator: Emulator) -> None:
    """200 requests within a minute, spread over two proxies, for a key with rpm=60:
    at most 60 plus the stated slack, (N - 1) * ceil(60 / N) = 30, are accepted."""
    with cluster(emulator) as c:
        a, b = c.start(), c.start()
        _, key = c.key("shared", rpm=60)
        clients = [httpx2.Client(base_url=px.url, timeout=30) for px in (a, b)]
        body = {"model": HAIKU, "max_tokens": 8, "messages": HELLO}
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        statuses: list[int] = []
        lock = threading.Lock()
        start = time.monotonic()

        def one(i: int) -> None:
            delay = start + i * 0.1 - time.monotonic()  # 10 per second, for 20 s
            if delay > 0:
                time.sleep(delay)
            r = clients[i % 2].post("/v1/messages", json=body, headers=headers)
            with lock:
                statuses.append(r.status_code)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(200)))
        for cl in clients:
            cl.close()
        accepted, refused = statuses.count(200), statuses.count(429)
        print(f"rpm=60 over 2 replicas: {accepted} accepted, {refused} refused of 200")
        assert accepted + refused == 200
        assert 55 <= accepted <= 60 + 30


def test_revocation_takes_effect_at_once_here_and_within_5s_elsewhere(
    emulator: Emulator,
) -> None:
    with cluster(emulator) as c:
        a, b = c.start(), c.start()
        admin = httpx2.Client(base_url=a.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        created = admin.post("/admin/api/keys", json={"name": "via-admin", "rpm": 100})
        assert created.status_code == 201, created.text
        kid, key = created.json()["id"], register_secret(created.json()["key"])
        assert ask(a, key).content and ask(b, key).content

        # The admin key is not a proxy key, and a proxy key is not an admin key.
        with pytest.raises(anthropic.AuthenticationError):
            ask(a, ADMIN_KEY)
        as_proxy_key = httpx2.get(
            f"{a.url}/admin/api/keys", headers={"authorization": f"Bearer {key}"}
        )
        assert as_proxy_key.status_code == 401
        assert as_proxy_key.json()["error"]["type"] == "authentication_error"
        assert key not in admin.get("/admin/api/keys").text  # listed without the secret

        assert admin.post(f"/admin/api/keys/{kid}/revoke").status_code == 200
        with pytest.raises(anthropic.AuthenticationError):
            ask(a, key)  # the replica that revoked: at once

        def refused_on_b() -> bool:
            try:
                ask(b, key)
            except anthropic.AuthenticationError:
                return True
            return False

        revoked_at = time.monotonic()
        wait_until(refused_on_b, timeout=10, what="the other replica to refuse the key")
        took = time.monotonic() - revoked_at
        print(f"revocation reached the other replica in {took:.2f}s")
        assert took <= 5.0
        admin.close()


def test_database_down_known_keys_keep_working_new_keys_get_a_retryable_error(
    emulator: Emulator,
) -> None:
    with cluster(emulator, bouncer=True) as c:
        px = c.start()
        known_id, known = c.key("known", rpm=4)
        ask(px, known)  # now cached
        assert c.bouncer is not None
        c.bouncer.stop()
        try:
            _, new = c.key("created-during-outage")  # straight into PostgreSQL
            with pytest.raises(anthropic.InternalServerError) as down:
                ask(px, new)
            assert down.value.status_code == 503
            assert down.value.response.headers["x-should-retry"] == "true"
            assert down.value.response.headers["retry-after"].isdigit()
            assert "key database is unreachable" in down.value.message
            # The known key works from the cache, and its limit is still counted.
            for _ in range(3):
                ask(px, known)
            with pytest.raises(anthropic.RateLimitError):
                ask(px, known)
            assert ask(px, PROXY_KEY).content  # static keys never needed the database
        finally:
            c.bouncer.start()
        assert ask(px, new).content  # the new key resolves once the database is back

        def reconciled() -> bool:
            with c.engine.connect() as conn:
                n = conn.execute(
                    select(rate_usage.c.requests).where(rate_usage.c.key_id == known_id)
                ).scalars()
                return sum(n) == 4

        wait_until(reconciled, timeout=WAIT, what="the outage's counts to reach the database")
        # Every request of the outage, refusals included, was recorded (via the spill file).
        wait_until(lambda: len(c.rows(known_id)) == 5, timeout=WAIT, what="the spilled rows")


def test_repeated_bad_keys_from_one_address_are_slowed_but_good_keys_are_not(
    emulator: Emulator, tmp_path: Path
) -> None:
    px = start_proxy(
        emulator.url,
        {"CLAUDE_PROXY_BAD_KEY_BURST": "5", "CLAUDE_PROXY_BAD_KEY_PER_MINUTE": "6"},
        tmp_path,
    )
    try:
        codes = []
        for _ in range(8):
            bad = register_secret("sk-proxy-guess-" + secrets.token_urlsafe(16))
            r = httpx2.post(
                f"{px.url}/v1/messages",
                headers={"x-api-key": bad, "anthropic-version": "2023-06-01"},
                json={"model": HAIKU, "max_tokens": 8, "messages": HELLO},
            )
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["type"] == "rate_limit_error"
                assert "invalid API keys" in r.json()["error"]["message"]
                assert 1 <= int(r.headers["retry-after"]) <= 10
        assert codes == [401] * 5 + [429] * 3
        assert ask(px, PROXY_KEY).content  # the same address with a good key: served
    finally:
        px.process.stop()
