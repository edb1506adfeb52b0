"""Budgets per person and per team, end to end: two proxy replicas on one PostgreSQL,
users and groups made through the store as the CLI makes them, personal keys driven
concurrently over HTTP. A group's pool is not overshot by more than the stated bound
(measured and printed), a user's two keys share the user's budget, and a budget alert
goes to the webhook exactly once per threshold with two replicas watching."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from sqlalchemy import select

from claude_proxy.store.audit import list_audit
from claude_proxy.store.columns import current_period
from claude_proxy.store.people import Limits, create_group, create_user
from claude_proxy.store.schema import key_spend
from tests.conftest import Emulator, Proxy
from tests.e2e.test_access_control import HAIKU, HELLO, Cluster, cluster
from tests.helpers import make_key, wait_until

pytestmark = pytest.mark.e2e

BODY = {"model": HAIKU, "max_tokens": 8, "messages": HELLO}


def post(client: httpx2.Client, key: str) -> httpx2.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return client.post("/v1/messages", json=BODY, headers=headers)


def spent(c: Cluster, level_id: str, period: str = "day") -> Decimal:
    with c.engine.connect() as conn:
        found = conn.execute(
            select(key_spend.c.cost_usd).where(
                key_spend.c.key_id == level_id, key_spend.c.period == current_period(period)
            )
        ).scalar()
    return found if found is not None else Decimal(0)


def one_request_cost(c: Cluster, px: Proxy) -> Decimal:
    """What one request costs here (the emulator's usage at Haiku's price)."""
    kid, key = make_key(c.engine, "probe")
    with httpx2.Client(base_url=px.url, timeout=30) as client:
        assert post(client, key).status_code == 200
    wait_until(lambda: spent(c, kid) > 0, timeout=20, what="the probe's spend")
    return spent(c, kid)


def test_a_group_pool_shared_by_two_replicas_holds_within_the_stated_bound(
    emulator: Emulator,
) -> None:
    """Eight clients spend a team's daily pool through two replicas as fast as they can;
    the overshoot is at most what was in flight plus ~2 s of the other replica's spend."""
    with cluster(emulator) as c:
        a, b = c.start(), c.start()
        cost = one_request_cost(c, a)
        budget = cost * 40
        team = create_group(
            c.engine,
            name="platform",
            actor="test",
            limits=Limits(budget_usd=budget, budget_period="day"),
        )
        users = [
            create_user(c.engine, email=f"dev{i}@example.com", groups=["platform"], actor="test")
            for i in range(4)
        ]
        keys = [make_key(c.engine, f"k{i}", user_id=u.id)[1] for i, u in enumerate(users)]
        clients = [httpx2.Client(base_url=px.url, timeout=30) for px in (a, b)]
        statuses: list[int] = []
        refusals: list[dict[str, Any]] = []
        lock = threading.Lock()
        stop = threading.Event()
        started = time.monotonic()

        def worker(i: int) -> None:
            while not stop.is_set():
                r = post(clients[i % 2], keys[i % 4])
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 429:
                        refusals.append({"headers": dict(r.headers), "body": r.json()})
                        if len(refusals) >= 20:  # both replicas refuse for good
                            stop.set()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        took = time.monotonic() - started
        for cl in clients:
            cl.close()
        accepted = statuses.count(200)
        rate = accepted / took
        wait_until(
            lambda: spent(c, team.id) >= cost * accepted, timeout=20, what="every row's spend"
        )
        over = spent(c, team.id) - budget
        bound = cost * Decimal(8 + rate * 2.0).quantize(Decimal(1))  # in flight + ~2 s of spend
        print(
            f"group pool of {budget} over 2 replicas: {accepted} accepted at {rate:.0f}/s, "
            f"overshoot {over} = {over / cost:.1f} requests; stated bound {bound / cost:.1f}"
        )
        assert accepted >= 40 and over <= bound
        assert set(statuses) <= {200, 429}
        body = refusals[-1]["body"]
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert "Budget exhausted for group 'platform'" in body["error"]["message"]
        assert refusals[-1]["headers"]["x-should-retry"] == "false"

        # Every row names its user and the group it was charged to.
        def charged() -> list[dict[str, Any]]:
            return [r for r in c.rows() if r["user_id"] is not None]

        wait_until(lambda: len(charged()) == len(statuses), timeout=20, what="every row")
        assert {r["group_id"] for r in charged()} == {team.id}
        assert {r["user_id"] for r in charged()} == {u.id for u in users}


def test_a_users_keys_share_the_users_budget_across_replicas_and_a_cap_is_per_person(
    emulator: Emulator,
) -> None:
    """Ann's two keys, each used through another replica, spend one per-member cap; Bob,
    in the same group, keeps his own."""
    with cluster(emulator) as c:
        a, b = c.start(), c.start()
        cost = one_request_cost(c, a)
        create_group(
            c.engine,
            name="interns",
            actor="test",
            limits=Limits(budget_period="week"),
            member_budget_usd=cost * 3,
        )
        ann = create_user(c.engine, email="ann@example.com", groups=["interns"], actor="test")
        bob = create_user(c.engine, email="bob@example.com", groups=["interns"], actor="test")
        _, laptop = make_key(c.engine, "ann-laptop", user_id=ann.id)
        _, ci = make_key(c.engine, "ann-ci", user_id=ann.id)
        _, bobs = make_key(c.engine, "bob-laptop", user_id=bob.id)
        with (
            httpx2.Client(base_url=a.url, timeout=30) as on_a,
            httpx2.Client(base_url=b.url, timeout=30) as on_b,
        ):
            first = post(on_a, laptop)
            assert first.status_code == 200
            left = Decimal(first.headers["x-claude-proxy-budget-remaining-usd"])
            assert left == pytest.approx(cost * 3, abs=Decimal("0.0001"))
            assert first.headers["x-claude-proxy-budget-level"] == "user"
            assert post(on_b, ci).status_code == 200
            assert post(on_a, laptop).status_code == 200
            # Three requests on two keys through two replicas crossed Ann's cap: each
            # replica refuses both of her keys once it has seen the other's spend.
            for client, key in ((on_b, ci), (on_a, laptop), (on_b, laptop), (on_a, ci)):
                wait_until(
                    lambda client=client, key=key: post(client, key).status_code == 429,
                    timeout=20,
                    what="ann's cap to be seen",
                )
            r = post(on_b, ci)
            assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
            assert f"user '{ann.email}'" in r.json()["error"]["message"]
            assert "this week" in r.json()["error"]["message"]
            assert post(on_b, bobs).status_code == 200  # Bob's cap is his own
        wait_until(
            lambda: spent(c, ann.id, "week") >= cost * 3, timeout=20, what="ann's week spend"
        )


@contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Slack-style incoming webhook that records what it is sent."""
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append(json.loads(body))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/secret", got
    finally:
        server.shutdown()
        server.server_close()


def alert_outcomes(px: Proxy) -> float:
    """How many crossings this replica has dealt with (claimed or found taken)."""
    text = httpx2.get(px.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("claude_proxy_budget_alerts_total{") and (
            'outcome="claimed"' in line or 'outcome="taken"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_budget_alerts_go_out_once_per_threshold_with_two_replicas(emulator: Emulator) -> None:
    with webhook() as (url, got), cluster(emulator) as c:
        env = {"CLAUDE_PROXY_ALERT_WEBHOOK_URL": url, "CLAUDE_PROXY_ALERT_CHECK_SECONDS": "0.2"}
        a, b = c.start(**env), c.start(**env)
        cost = one_request_cost(c, a)  # an unowned key: no alert, it has no budget
        group = create_group(
            c.engine,
            name="data",
            actor="test",
            limits=Limits(budget_usd=cost * 4, budget_period="month"),
        )
        user = create_user(c.engine, email="eve@example.com", groups=["data"], actor="test")
        _, key = make_key(c.engine, "eve", user_id=user.id)
        clients = [httpx2.Client(base_url=px.url, timeout=30) for px in (a, b)]
        for i in range(5):  # 125 % of the pool, alternating replicas
            assert post(clients[i % 2], key).status_code in (200, 429)
        for cl in clients:
            cl.close()
        wait_until(lambda: len(got) >= 3, timeout=30, what="three alerts")
        # Both replicas have seen all three crossings (claimed them, or found them taken):
        # any duplicate would have been sent by now.
        wait_until(
            lambda: alert_outcomes(a) >= 3 and alert_outcomes(b) >= 3,
            timeout=30,
            what="both replicas to deal with every crossing",
        )
        texts = sorted(m["text"] for m in got)
        assert len(got) == 3, texts
        assert any("used 50%" in t for t in texts) and any("used 80%" in t for t in texts)
        assert any("used all of" in t for t in texts)
        assert all("Group data" in t for t in texts)
        audit = [e for e in list_audit(c.engine, action="budget.alert") if e.target_id == group.id]
        assert sorted(e.after["threshold"] for e in audit) == [50, 80, 100]
        # The webhook's secret path is in no log line.
        for px in (a, b):
            assert "B000/secret" not in px.output()
