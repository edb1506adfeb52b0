"""Sign-in end to end: a real OpenID provider (oidc-provider-mock) over HTTP, the proxy as a
process on PostgreSQL, the emulator upstream, and the real `claude` binary.

The levels of the gateway sign-in protocol, in order: the pure-HTTP protocol (discovery,
device authorization, the verification page, the IdP, the callback, polling, the bearer on
/v1/messages, refresh, revocation at the IdP, managed settings); then Claude Code headless
from a stored gateway credential; then Claude Code with `apiKeyHelper = claude-proxy token`
after `claude-proxy login`. Admin sign-in (code + PKCE) ends in a session cookie; a
non-admin, a user outside the allowed groups and a disabled user are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import oidc_provider_mock
import pexpect
import pytest
from sqlalchemy import Engine

from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenSigner
from claude_proxy.signin.developer import available_models, settings_checksum, within_models
from claude_proxy.signin.device import new_user_code, normalise_user_code
from claude_proxy.signin.seal import StateCodec
from claude_proxy.store.people import (
    Limits,
    create_group,
    disable_user,
    revoke_user_tokens,
    update_user,
)
from tests.conftest import UPSTREAM_KEY, Emulator, Process, spawn
from tests.e2e.test_claude_code import QUIET_ENV, Run, find_claude, pinned_version
from tests.e2e.test_claude_code import run_claude as claude_p
from tests.helpers import cli_env, database, log_row, log_rows, register_secret, wait_until
from tests.pg import create_database, drop_database, free_port, pg_url

pytestmark = pytest.mark.e2e

SESSION_SECRET = register_secret("session-" + secrets.token_urlsafe(32))
CLIENT_SECRET = register_secret("idp-client-" + secrets.token_urlsafe(24))
ADMIN_KEY = register_secret("admin-" + secrets.token_urlsafe(24))
CLIENT_ID = "claude-proxy-test"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SONNET = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello there"}]
USER_CODE = re.compile(r"^[BCDFGHJKMNPQRSTVWXYZ]{4}-[BCDFGHJKMNPQRSTVWXYZ]{4}$")
ADMINS, ENGINEERING, HAIKU_ONLY = "proxy-admins", "engineering", "haiku-only"


# ------------------------------------------------------------------------ fixtures


@dataclass
class Idp:
    """oidc-provider-mock in a thread: any client id and secret, users set by PUT."""

    url: str

    def user(self, sub: str, *groups: str, email: str | None = None) -> str:
        claims = {
            "email": email or f"{sub}@example.com",
            "name": sub.title(),
            "groups": list(groups),
        }
        r = httpx.put(f"{self.url}/users/{sub}", json=claims)
        assert r.status_code == 204, r.text
        return sub

    def revoke(self, sub: str) -> None:
        r = httpx.post(f"{self.url}/users/{sub}/revoke-tokens")
        assert r.status_code == 204, r.text


@dataclass
class Gateway:
    """The proxy with sign-in on, its database, and what the test knows of its secrets."""

    process: Process
    url: str
    engine: Engine
    signer: TokenSigner

    def output(self) -> str:
        return self.process.output()


@dataclass
class Tokens:
    access: str
    refresh: str | None
    expires_in: int
    user_id: str


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    # `localhost` everywhere: the mock names itself after the Host it is asked on.
    with oidc_provider_mock.run_server_in_thread() as server:
        yield Idp(url=f"http://localhost:{server.server_port}")


@pytest.fixture(scope="module")
def gateway(idp: Idp, emulator: Emulator) -> Iterator[Gateway]:
    name = create_database()
    url = pg_url(name)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="claude-proxy-signin-"))
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": emulator.url,
        "DATABASE_URL": url,
        "CLAUDE_PROXY_SPILL_DIR": str(tmp / "spill"),
        "CLAUDE_PROXY_ADMIN_KEY": ADMIN_KEY,
        "CLAUDE_PROXY_LOG_FLUSH_INTERVAL_SECONDS": "0.2",
        "CLAUDE_PROXY_OIDC_ISSUER": idp.url,
        "CLAUDE_PROXY_OIDC_CLIENT_ID": CLIENT_ID,
        "CLAUDE_PROXY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "CLAUDE_PROXY_OIDC_ADMIN_GROUPS": ADMINS,
        "CLAUDE_PROXY_OIDC_ALLOWED_GROUPS": f"{ENGINEERING},{HAIKU_ONLY},{ADMINS}",
        "CLAUDE_PROXY_PUBLIC_URL": public,
        "CLAUDE_PROXY_SESSION_SECRET": SESSION_SECRET,
    }
    process = spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        process.wait_for(r"claude-proxy ready on (http://[^\s\"]+)")
        with database(url) as engine:
            create_group(engine, name=ENGINEERING, actor="test")
            create_group(
                engine, name=HAIKU_ONLY, actor="test", limits=Limits(models=("claude-haiku-*",))
            )
            yield Gateway(
                process=process,
                url=public,
                engine=engine,
                signer=TokenSigner(secret=SESSION_SECRET, issuer=public),
            )
    finally:
        process.stop()
        drop_database(name)
    out = process.output()
    for secret in (SESSION_SECRET, CLIENT_SECRET, ADMIN_KEY):
        assert secret not in out, "a secret leaked into the proxy's output"


# ------------------------------------------------------------------------ the flows


def start_device(client: httpx.Client, gw: Gateway) -> dict[str, Any]:
    """What Claude Code does first: discovery, then an empty device-authorization POST."""
    meta = client.get(f"{gw.url}/.well-known/oauth-authorization-server")
    assert meta.status_code == 200, meta.text
    found = meta.json()
    r = client.post(
        found["device_authorization_endpoint"],
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    grant: dict[str, Any] = r.json()
    return grant


def browser_leg(gw: Gateway, verification_uri_complete: str, sub: str) -> httpx.Response:
    """A person's browser: the verification page, Continue, the IdP's form (as `sub`),
    back to the proxy's callback. Returns the callback's page."""
    with httpx.Client(timeout=10) as browser:  # its own cookie jar
        page = browser.get(verification_uri_complete)
        assert page.status_code == 200, page.text
        code = parse_qs(urlsplit(verification_uri_complete).query)["user_code"][0]
        assert f'value="{code}"' in page.text
        assert "<script" not in page.text.lower()  # never submits itself
        r = browser.post(f"{gw.url}/device", data={"user_code": code}, headers={"origin": gw.url})
        assert r.status_code == 302, r.text
        to_idp = r.headers["location"]
        assert "/oauth2/authorize?" in to_idp
        query = parse_qs(urlsplit(to_idp).query)
        assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
        assert query["redirect_uri"] == [f"{gw.url}/oauth/callback"]
        r = browser.post(to_idp, data={"sub": sub})  # the IdP's "Authorize" button
        assert r.status_code == 302, r.text
        back = r.headers["location"]
        assert back.startswith(f"{gw.url}/oauth/callback?")
        return browser.get(back)


def poll(client: httpx.Client, gw: Gateway, device_code: str) -> httpx.Response:
    return client.post(
        f"{gw.url}/oauth/token", data={"grant_type": DEVICE_GRANT, "device_code": device_code}
    )


def tokens_from(gw: Gateway, body: dict[str, Any]) -> Tokens:
    assert isinstance(body["access_token"], str) and isinstance(body["expires_in"], int), body
    claims = gw.signer.verify(body["access_token"].encode())
    assert claims is not None
    register_secret(body["access_token"])
    if body.get("refresh_token"):
        register_secret(body["refresh_token"])
    return Tokens(
        body["access_token"], body.get("refresh_token"), body["expires_in"], claims.user_id
    )


def sign_in(gw: Gateway, sub: str) -> Tokens:
    """The whole device flow for a user the IdP knows, polling only once it is done."""
    with httpx.Client(timeout=10) as client:
        grant = start_device(client, gw)
        page = browser_leg(gw, grant["verification_uri_complete"], sub)
        assert page.status_code == 200, page.text
        r = poll(client, gw, grant["device_code"])
        assert r.status_code == 200, r.text
        return tokens_from(gw, r.json())


def refresh(gw: Gateway, refresh_token: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def message(gw: Gateway, credential: str, *, header: str = "authorization") -> httpx.Response:
    value = f"Bearer {credential}" if header == "authorization" else credential
    return httpx.post(
        f"{gw.url}/v1/messages",
        headers={header: value, "anthropic-version": "2023-06-01"},
        json={"model": SONNET, "max_tokens": 16, "messages": HELLO},
        timeout=30,
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# ------------------------------------------------------------- level 1: the protocol


def test_device_flow_protocol_end_to_end(gateway: Gateway, idp: Idp) -> None:
    """Discovery → device authorization → browser → IdP → callback → pending, slow_down,
    success → /v1/messages as the user → refresh → IdP revocation → invalid_grant."""
    gw = gateway
    sub = idp.user("ada", ENGINEERING)
    with httpx.Client(timeout=10) as client:
        meta = client.get(f"{gw.url}/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == gw.url
        assert meta["device_authorization_endpoint"] == f"{gw.url}/oauth/device_authorization"
        assert meta["token_endpoint"] == f"{gw.url}/oauth/token"
        assert meta["gateway_protocol_version"] == 1
        assert DEVICE_GRANT in meta["grant_types_supported"]
        assert "refresh_token" in meta["grant_types_supported"]
        assert meta["response_types_supported"] == []
        assert "authorization_endpoint" not in meta

        grant = start_device(client, gw)
        assert USER_CODE.match(grant["user_code"]), grant
        assert len(grant["device_code"]) >= 43  # 256 bits, base64url
        assert grant["verification_uri"] == f"{gw.url}/device"
        assert (
            grant["verification_uri_complete"] == f"{gw.url}/device?user_code={grant['user_code']}"
        )
        assert grant["expires_in"] == 600 and grant["interval"] == 5

        # Not signed in yet; then polled again at once: too fast.
        r = poll(client, gw, grant["device_code"])
        assert (r.status_code, r.json()["error"]) == (400, "authorization_pending")
        r = poll(client, gw, grant["device_code"])
        assert (r.status_code, r.json()["error"]) == (429, "slow_down")

        page = browser_leg(gw, grant["verification_uri_complete"], sub)
        assert page.status_code == 200 and "ada@example.com" in page.text, page.text

        # Polls closer than 4 s apart keep hearing slow_down; the first one after, the token.
        done = wait_until(
            lambda: (r := poll(client, gw, grant["device_code"])).status_code == 200 and r,
            timeout=10,
            what="the token after the browser leg",
        )
        assert done.headers["cache-control"] == "no-store"
        tokens = tokens_from(gw, done.json())
        assert done.json()["token_type"] == "Bearer"
        assert tokens.refresh and tokens.expires_in == 3600
        # Single use: the device code is spent.
        r = poll(client, gw, grant["device_code"])
        assert r.status_code == 400 and r.json()["error"] == "expired_token"

    # The bearer works on /v1/messages, and the row says who.
    r = message(gw, tokens.access)
    assert r.status_code == 200, r.text
    row = log_row(gw.engine, r.headers["x-claude-proxy-request-id"])
    assert row["user_id"] == tokens.user_id and row["key_id"] is None

    # Refresh: a new token, which works too.
    r = refresh(gw, tokens.refresh)
    assert r.status_code == 200, r.text
    renewed = tokens_from(gw, r.json())
    assert renewed.user_id == tokens.user_id and renewed.access != tokens.access
    assert message(gw, renewed.access).status_code == 200

    # Deprovisioned at the IdP: the next refresh is invalid_grant (the client then drops it).
    idp.revoke(sub)
    r = refresh(gw, tokens.refresh)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text

    # RFC 7009 revocation answers 200 {} whatever the token.
    r = httpx.post(f"{gw.url}/oauth/revoke", data={"token": tokens.refresh})
    assert r.status_code == 200 and r.json() == {}


def test_token_endpoint_errors(gateway: Gateway) -> None:
    url = f"{gateway.url}/oauth/token"
    cases = [
        ({"grant_type": "password", "username": "x"}, 400, "unsupported_grant_type"),
        ({}, 400, "invalid_request"),
        ({"grant_type": DEVICE_GRANT}, 400, "invalid_request"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"grant_type": DEVICE_GRANT, "device_code": "nope"}, 400, "expired_token"),
        ({"grant_type": "refresh_token", "refresh_token": "not-a-token"}, 400, "invalid_grant"),
    ]
    for form, status, error in cases:
        r = httpx.post(url, data=form)
        assert (r.status_code, r.json()["error"]) == (status, error), (form, r.text)
    r = httpx.post(url, data={"grant_type": "refresh_token", "refresh_token": "x" * 100_000})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_verification_page_checks(gateway: Gateway) -> None:
    gw = gateway
    with httpx.Client(timeout=10) as client:
        grant = start_device(client, gw)
        code = grant["user_code"]
        # A form posted from another site (no same-origin signal) is refused.
        r = client.post(f"{gw.url}/device", data={"user_code": code})
        assert r.status_code == 403
        r = client.post(
            f"{gw.url}/device",
            data={"user_code": code},
            headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        )
        assert r.status_code == 403
        # An unknown code shows the form again with a message, and no redirect.
        r = client.post(
            f"{gw.url}/device", data={"user_code": "BBBB-BBBB"}, headers={"origin": gw.url}
        )
        assert r.status_code == 400 and "not valid" in r.text
        # Typed in lower case with a space: still the same code.
        r = client.post(
            f"{gw.url}/device",
            data={"user_code": code.lower().replace("-", " ")},
            headers={"sec-fetch-site": "same-origin"},
        )
        assert r.status_code == 302 and "/oauth2/authorize?" in r.headers["location"]
        assert "claude_proxy_signin=" in r.headers["set-cookie"]
        assert "httponly" in r.headers["set-cookie"].lower()
        # The IdP's callback in another browser (no binding cookie) is refused.
        to_idp = r.headers["location"]
        back = httpx.post(to_idp, data={"sub": "mallory"}).headers["location"]
        r = httpx.get(back)
        assert r.status_code == 400 and "same browser" in r.text
        # A forged state is refused.
        r = client.get(f"{gw.url}/oauth/callback?state=forged&code=x")
        assert r.status_code == 400
        page = client.get(f"{gw.url}/device")
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


# --------------------------------------------------------------- managed settings


def test_managed_settings_checksum_etag_and_404(gateway: Gateway, idp: Idp) -> None:
    gw = gateway
    limited = sign_in(gw, idp.user("hana", HAIKU_ONLY))
    r = httpx.get(f"{gw.url}/managed/settings", headers=bearer(limited.access))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["settings"] == {"availableModels": ["claude-haiku"]}
    # The client's algorithm: sha256 of JSON.stringify with sorted keys.
    text = json.dumps(body["settings"], sort_keys=True, separators=(",", ":"))
    expected = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert body["checksum"] == expected == settings_checksum(body["settings"])
    assert body["uuid"] == body["checksum"]
    assert r.headers["etag"] == f'"{expected}"'
    r = httpx.get(
        f"{gw.url}/managed/settings",
        headers={**bearer(limited.access), "if-none-match": f'"{expected}"'},
    )
    assert r.status_code == 304 and r.headers["etag"] == f'"{expected}"'
    # A user whom no policy restricts: 404 (no policy), not an error.
    free = sign_in(gw, idp.user("finn", ENGINEERING))
    r = httpx.get(f"{gw.url}/managed/settings", headers=bearer(free.access))
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    # A bad bearer: Anthropic-shaped 401.
    r = httpx.get(f"{gw.url}/managed/settings", headers=bearer("eyJnot.a.token"))
    assert r.status_code == 401
    err = r.json()
    assert err["type"] == "error" and err["error"] == {
        "type": "authentication_error",
        "message": "invalid token",
    }
    assert err["request_id"]
    # OTLP: 200 with a bearer, 401 without.
    for signal in ("metrics", "logs", "traces"):
        r = httpx.post(
            f"{gw.url}/v1/{signal}",
            headers={**bearer(free.access), "content-type": "application/x-protobuf"},
            content=b"\x0a\x00",
        )
        assert (r.status_code, r.json()) == (200, {}), signal
    assert httpx.post(f"{gw.url}/v1/metrics", content=b"x").status_code == 401


# ------------------------------------------------------------------ admin sign-in


def admin_sign_in(browser: httpx.Client, gw: Gateway, sub: str, next_path: str) -> httpx.Response:
    """A browser's admin sign-in: /oauth/login, the IdP's form (as `sub`), the callback."""
    r = browser.get(f"{gw.url}/oauth/login", params={"next": next_path})
    assert r.status_code == 302, r.text
    r = browser.post(r.headers["location"], data={"sub": sub})
    assert r.status_code == 302
    return browser.get(r.headers["location"])


def test_admin_sign_in_with_code_and_pkce(gateway: Gateway, idp: Idp) -> None:
    gw = gateway
    with httpx.Client(timeout=10) as browser:
        r = admin_sign_in(browser, gw, idp.user("root", ADMINS), "/admin/api/users")
        assert r.status_code == 302 and r.headers["location"] == "/admin/api/users", r.text
        cookie = r.cookies[ADMIN_COOKIE]
        register_secret(cookie)
        header = r.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=lax" in header and "path=/" in header
        claims = gw.signer.verify_admin_session(cookie)
        assert claims is not None and claims.subject == "root"
        assert 8 * 3600 - 60 <= claims.expires_at - claims.issued_at <= 8 * 3600
        # The admin API takes the session (a safe method: no origin needed).
        r = browser.get(f"{gw.url}/admin/api/users")
        assert r.status_code == 200, r.text
        # Sign-out clears it.
        r = browser.post(f"{gw.url}/oauth/logout", headers={"origin": gw.url})
        assert r.status_code == 200
        assert ADMIN_COOKIE not in browser.cookies

    # Not an admin: refused, no session.
    with httpx.Client(timeout=10) as browser:
        r = admin_sign_in(browser, gw, idp.user("dev", ENGINEERING), "/admin/")
        assert r.status_code == 403 and "not in an admin group" in r.text
        assert ADMIN_COOKIE not in r.cookies

    # Only same-origin paths under /admin.
    for bad in ("https://evil.example/admin", "//evil.example/admin", "/administrator", "/x"):
        r = httpx.get(f"{gw.url}/oauth/login", params={"next": bad})
        assert r.status_code == 400, bad


def test_a_user_outside_the_allowed_groups_is_refused(gateway: Gateway, idp: Idp) -> None:
    gw = gateway
    sub = idp.user("mark", "marketing")
    with httpx.Client(timeout=10) as client:
        grant = start_device(client, gw)
        page = browser_leg(gw, grant["verification_uri_complete"], sub)
        assert page.status_code == 403 and "not in a group allowed" in page.text
        r = poll(client, gw, grant["device_code"])
        assert (r.status_code, r.json()["error"]) == (400, "access_denied")

        # A person who presses "Deny" at the IdP: the client hears access_denied too. (The
        # mock's deny redirect leaves out `state`, which RFC 6749 requires and real IdPs
        # send: the conforming redirect is made here from the state the proxy sent.)
        grant = start_device(client, gw)
        with httpx.Client(timeout=10) as browser:
            r = browser.post(
                f"{gw.url}/device",
                data={"user_code": grant["user_code"]},
                headers={"origin": gw.url},
            )
            state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
            page = browser.get(
                f"{gw.url}/oauth/callback",
                params={"error": "access_denied", "state": state},
            )
            assert page.status_code == 403 and "Sign-in failed" in page.text, page.text
        r = poll(client, gw, grant["device_code"])
        assert (r.status_code, r.json()["error"]) == (400, "access_denied")


# ------------------------------------------------------------------- offboarding


def test_me_personal_keys_and_offboarding(gateway: Gateway, idp: Idp) -> None:
    gw = gateway
    sub = idp.user("otto", ENGINEERING)
    tokens = sign_in(gw, sub)

    r = httpx.get(f"{gw.url}/me", headers=bearer(tokens.access))
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["user"]["id"] == tokens.user_id and me["user"]["email"] == "otto@example.com"
    assert ENGINEERING in me["user"]["groups"]
    assert me["user"]["policy_group"]["name"] == ENGINEERING
    assert me["tightest"] is None and me["allowed_models"] is None

    # A personal key, shown once, that works at once.
    r = httpx.post(f"{gw.url}/me/keys", headers=bearer(tokens.access), json={"name": "laptop"})
    assert r.status_code == 201, r.text
    key = register_secret(r.json()["key"])
    assert r.json()["user_id"] == tokens.user_id
    listed = httpx.get(f"{gw.url}/me/keys", headers=bearer(tokens.access)).json()["data"]
    assert [k["name"] for k in listed] == ["laptop"] and "key" not in listed[0]
    r = message(gw, key, header="x-api-key")
    assert r.status_code == 200, r.text
    assert log_row(gw.engine, r.headers["x-claude-proxy-request-id"])["user_id"] == tokens.user_id
    assert message(gw, tokens.access).status_code == 200

    # With a budget of their own, /me says what is spent and left (once the spend of the
    # requests above reached the database and this replica).
    update_user(gw.engine, tokens.user_id, actor="test", budget_usd=Decimal(5), budget_period="day")

    def my_budget() -> dict[str, Any] | None:
        me = httpx.get(f"{gw.url}/me", headers=bearer(tokens.access)).json()
        mine = [lv for lv in me["levels"] if lv["kind"] == "user"]
        return me if mine and mine[0]["spent_usd"] and float(mine[0]["spent_usd"]) > 0 else None

    me = wait_until(my_budget, what="the user's budget and spend in /me")
    mine = next(lv for lv in me["levels"] if lv["kind"] == "user")
    assert mine["budget_usd"] == "5.00000000" and mine["budget_period"] == "day"
    spent, left = Decimal(mine["spent_usd"]), Decimal(mine["remaining_usd"])
    assert spent + left == 5
    assert me["tightest"] == {
        "id": tokens.user_id,
        "kind": "user",
        "name": "otto@example.com",
        "budget_period": "day",
        "remaining_usd": mine["remaining_usd"],
    }

    # A personal key cannot ask for models outside the user's policy.
    haiku = sign_in(gw, idp.user("hugo", HAIKU_ONLY))
    r = httpx.post(
        f"{gw.url}/me/keys", headers=bearer(haiku.access), json={"models": ["claude-opus-4-1"]}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        f"{gw.url}/me/keys", headers=bearer(haiku.access), json={"models": ["claude-haiku-4-5"]}
    )
    assert r.status_code == 201, r.text
    register_secret(r.json()["key"])

    # Signed out everywhere: the token stops at once, and so does its refresh token, even
    # though the IdP would still honour it; a new sign-in works.
    revoke_user_tokens(gw.engine, tokens.user_id, actor="test")
    wait_until(
        lambda: message(gw, tokens.access).status_code == 401, what="the revoked token refused"
    )
    r = refresh(gw, tokens.refresh or "")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    tokens = sign_in(gw, sub)
    assert message(gw, tokens.access).status_code == 200

    # Disabled: the token and the personal key stop working, and refresh is invalid_grant.
    disable_user(gw.engine, tokens.user_id, actor="test", reason="left the company")
    wait_until(
        lambda: message(gw, tokens.access).status_code == 401,
        what="the disabled user's token refused",
    )
    assert message(gw, key, header="x-api-key").status_code == 401
    assert httpx.get(f"{gw.url}/me", headers=bearer(tokens.access)).status_code == 401
    r = refresh(gw, tokens.refresh or "")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


# ---------------------------------------------------- level 2: Claude Code, headless


@pytest.fixture(scope="module")
def claude() -> Path:
    path = find_claude()
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith(pinned_version()), out
    return path


def run_claude(claude: Path, workdir: Path, env: dict[str, str], session_id: str) -> Run:
    """`claude -p` with no key of its own: its sign-in comes from `env`'s config dir."""
    return claude_p(claude, None, None, workdir, session_id, extra_env=env)


def write_gateway_credentials(
    config: Path, gw: Gateway, tokens: Tokens, expires_at_ms: int
) -> Path:
    config.mkdir(parents=True, exist_ok=True)
    path = config / ".credentials.json"
    path.write_text(
        json.dumps(
            {
                "enterpriseGateway": {
                    "url": gw.url,
                    "jwt": tokens.access,
                    "expiresAt": expires_at_ms,
                    "tokenEndpoint": f"{gw.url}/oauth/token",
                    "idpRefreshToken": tokens.refresh,
                },
                "gatewayTrust": {"127.0.0.1": "http-loopback"},
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("near_expiry", [False, True], ids=["fresh", "refreshed"])
def test_claude_code_with_a_stored_gateway_credential(
    gateway: Gateway, idp: Idp, claude: Path, tmp_path: Path, near_expiry: bool
) -> None:
    gw = gateway
    tokens = sign_in(gw, idp.user(f"cc-{'r' if near_expiry else 'f'}", ENGINEERING))
    # Under five minutes left: Claude Code refreshes before its first call.
    expires_at = time.time() + (120 if near_expiry else tokens.expires_in)
    config = tmp_path / "config"
    creds = write_gateway_credentials(config, gw, tokens, int(expires_at * 1000))
    session_id = str(uuid.uuid4())
    run = run_claude(claude, tmp_path, {"CLAUDE_CONFIG_DIR": str(config)}, session_id)
    context = f"{run.stdout}\n{run.stderr}\nproxy:\n{gw.output()[-4000:]}"
    assert run.returncode == 0 and run.result.get("is_error") is False, context
    assert run.result["result"].strip(), context
    rows = wait_until(
        lambda: log_rows(gw.engine, claude_code_session_id=session_id),
        what="Claude Code's row",
    )
    assert {r["user_id"] for r in rows} == {tokens.user_id}, rows
    if near_expiry:
        stored = json.loads(creds.read_text())["enterpriseGateway"]
        assert stored["jwt"] != tokens.access, "Claude Code did not refresh its token"
        register_secret(stored["jwt"])
        assert stored["expiresAt"] > expires_at * 1000


# ------------------------------------------- level 3: apiKeyHelper = claude-proxy token


def test_claude_code_with_api_key_helper_after_claude_proxy_login(
    gateway: Gateway, idp: Idp, claude: Path, tmp_path: Path
) -> None:
    gw = gateway
    sub = idp.user("helper", ENGINEERING)
    creds = tmp_path / "creds" / "credentials.json"
    env = cli_env({"CLAUDE_PROXY_CREDENTIALS": str(creds), "HOME": str(tmp_path / "home")})
    login = subprocess.Popen(
        [sys.executable, "-m", "claude_proxy", "login", "--url", gw.url, "--no-browser", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert login.stdout is not None
        link = None
        for line in login.stdout:
            found = re.search(r"(http://\S+/device\?user_code=\S+)", line)
            if found:
                link = found.group(1)
                break
        assert link, "claude-proxy login printed no sign-in link"
        page = browser_leg(gw, link, sub)
        assert page.status_code == 200, page.text
        rest, _ = login.communicate(timeout=30)
    finally:
        if login.poll() is None:
            login.kill()
    assert login.returncode == 0, rest
    assert json.loads(rest.strip().splitlines()[-1])["url"] == gw.url  # the JSON result
    assert creds.stat().st_mode & 0o777 == 0o600
    stored = json.loads(creds.read_text())
    register_secret(stored["access_token"])
    assert stored["url"] == gw.url and stored["refresh_token"]
    register_secret(stored["refresh_token"])

    out = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "token"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == stored["access_token"], out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "token", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    shown = json.loads(out.stdout)
    assert shown == {"access_token": stored["access_token"], "expires_at": stored["expires_at"]}
    me = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "me", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert me.returncode == 0, me.stderr
    user_id = json.loads(me.stdout)["user"]["id"]

    # Near expiry, `token` refreshes (and keeps the file private).
    stored["expires_at"] = int(time.time()) + 60
    creds.write_text(json.dumps(stored))
    out = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "token"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    renewed = register_secret(out.stdout.strip())
    assert renewed != stored["access_token"]
    assert json.loads(creds.read_text())["expires_at"] > time.time() + 3000

    config = tmp_path / "config"
    config.mkdir()
    helper = f"{sys.executable} -m claude_proxy token"
    (config / "settings.json").write_text(json.dumps({"apiKeyHelper": helper}))
    session_id = str(uuid.uuid4())
    run = run_claude(
        claude,
        tmp_path,
        {
            "CLAUDE_CONFIG_DIR": str(config),
            "ANTHROPIC_BASE_URL": gw.url,
            "CLAUDE_PROXY_CREDENTIALS": str(creds),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        },
        session_id,
    )
    context = f"{run.stdout}\n{run.stderr}\nproxy:\n{gw.output()[-4000:]}"
    assert run.returncode == 0 and run.result.get("is_error") is False, context
    rows = wait_until(
        lambda: log_rows(gw.engine, claude_code_session_id=session_id),
        what="Claude Code's row",
    )
    assert {r["user_id"] for r in rows} == {user_id}, rows

    # Signed out at the IdP: the next refresh fails, and `token` says so (exit 1).
    idp.revoke(sub)
    stored = json.loads(creds.read_text())
    stored["expires_at"] = int(time.time()) - 1
    creds.write_text(json.dumps(stored))
    out = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "token"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 1 and "claude-proxy login" in out.stderr, out
    assert not out.stdout.strip()


# -------------------------------------------- level 4: /login on the official screen

_ESCAPES = re.compile(
    r"\x1b\[[0-9;?<>=]*[a-zA-Z~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>()][0-9A-Za-z]?"
)


class Screen:
    """What Claude Code drew in its terminal, searched without escapes or blanks (the
    TUI moves the cursor instead of printing spaces)."""

    def __init__(self, child: pexpect.spawn) -> None:  # type: ignore[type-arg]
        self.child = child
        self.seen = ""

    def text(self) -> str:
        return re.sub(r"\s+", "", _ESCAPES.sub("", self.seen))

    def wait(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.search(self.text())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout}s for {pattern!r}; screen:\n{self.text()[-2000:]}"
                )
            with contextlib.suppress(pexpect.TIMEOUT):
                self.seen += self.child.read_nonblocking(65536, timeout=0.2)

    def send(self, keys: str) -> None:
        self.seen = ""  # later waits look only at what comes after
        self.child.send(keys)


def test_claude_code_login_screen(gateway: Gateway, idp: Idp, claude: Path, tmp_path: Path) -> None:
    """`/login` in a terminal: the Cloud gateway screen (URL pre-filled by forceLoginMethod
    and forceLoginGatewayUrl), trust, the code on screen, the browser leg over HTTP, then
    a prompt answered through the proxy as the signed-in user.

    The two keys go in the isolated config dir's settings.json: on a machine without
    managed settings Claude Code honours them there (it says so on the screen), and the
    test changes nothing machine-wide (/etc/claude-code/managed-settings.json would
    affect every other `claude` running on the machine). The screen is the same."""
    gw = gateway
    sub = idp.user("tty", ENGINEERING)
    home, config, cwd = tmp_path / "home", tmp_path / "config", tmp_path / "cwd"
    for d in (home, config, cwd):
        d.mkdir()
    (config / "settings.json").write_text(
        json.dumps({"forceLoginMethod": "gateway", "forceLoginGatewayUrl": gw.url})
    )
    # Onboarding and the folder-trust dialog done, as on a developer's machine.
    (config / ".claude.json").write_text(
        json.dumps(
            {
                "hasCompletedOnboarding": True,
                "theme": "dark",
                "projects": {str(cwd): {"hasTrustDialogAccepted": True}},
            }
        )
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "xterm-256color",
        "BROWSER": "/bin/true",  # the browser is this test, over HTTP
        "CLAUDE_CONFIG_DIR": str(config),
        **QUIET_ENV,
    }
    session_id = str(uuid.uuid4())
    child = pexpect.spawn(
        str(claude),
        ["--session-id", session_id],
        env=env,
        cwd=str(cwd),
        dimensions=(50, 160),
        encoding="utf-8",
        codec_errors="replace",
    )
    screen = Screen(child)
    try:
        screen.wait(r"ClaudeCode")
        screen.send("/login")
        screen.wait(r"/login")
        screen.send("\r")
        screen.wait(re.escape(f"Gateway:{gw.url}") + r".*Entertoconnect")
        screen.send("\r")
        screen.wait(r"Yes,trustthisgateway")
        screen.send("\x1b[A")  # up to "Yes" (the default is "No")
        screen.wait("\u276fYes,trustthisgateway")  # the selection marker on "Yes"
        screen.send("\r")
        code = screen.wait(r"Code:([BCDFGHJKMNPQRSTVWXYZ]{4}-[BCDFGHJKMNPQRSTVWXYZ]{4})").group(1)
        page = browser_leg(gw, f"{gw.url}/device?user_code={code}", sub)
        assert page.status_code == 200, page.text
        screen.wait(r"ConnectedtoCloudgateway")
        screen.send("\r")
        screen.wait(r"Loginsuccessful")
        stored = json.loads((config / ".credentials.json").read_text())["enterpriseGateway"]
        register_secret(stored["jwt"])
        if stored.get("idpRefreshToken"):
            register_secret(stored["idpRefreshToken"])
        claims = gw.signer.verify(stored["jwt"].encode())
        assert stored["url"] == gw.url and claims is not None
        screen.send("Say hello")
        screen.wait(r"Sayhello")
        screen.send("\r")
        screen.wait(r"claude-proxyemulator")
    finally:
        child.terminate(force=True)
    rows = wait_until(
        lambda: log_rows(gw.engine, claude_code_session_id=session_id), what="Claude Code's row"
    )
    assert {r["user_id"] for r in rows} == {claims.user_id}, rows
    assert all(r["status_code"] == 200 for r in rows), rows


# ----------------------------------------------------------- single use, and the rules


def test_an_approved_grant_is_taken_by_one_poll_only(gateway: Gateway, idp: Idp) -> None:
    gw = gateway
    sub = idp.user("twin", ENGINEERING)
    with httpx.Client(timeout=10) as client:
        grant = start_device(client, gw)
        assert browser_leg(gw, grant["verification_uri_complete"], sub).status_code == 200
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: poll(client, gw, grant["device_code"]), range(8)))
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1, [a.text for a in answers]
    register_secret(ok[0].json()["access_token"])
    register_secret(ok[0].json()["refresh_token"])
    assert {a.json()["error"] for a in answers if a.status_code != 200} <= {
        "slow_down",
        "expired_token",
    }


def test_codes_models_and_state_rules() -> None:
    assert normalise_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalise_user_code(" BCDF GHJK ") == "BCDFGHJK"
    for bad in ("BCDF-GHJA", "BCDF-GHJ", "BCDF-GHJKL", "X" * 100, ""):
        assert normalise_user_code(bad) is None, bad
    codes = {new_user_code() for _ in range(200)}
    assert len(codes) == 200 and all(len(c) == 8 for c in codes)

    assert available_models(None) is None
    assert available_models(("claude-haiku-*", "claude-sonnet-4-6")) == [
        "claude-haiku",
        "claude-sonnet-4-6",
    ]
    assert available_models(("claude-*", "claude-opus-4-1")) == ["claude", "claude-opus-4-1"]
    assert available_models(("*",)) is None

    allowed = ("claude-haiku-*", "claude-sonnet-4-6")
    assert within_models("claude-haiku-4-5", allowed)
    assert within_models("claude-haiku-4*", allowed)
    assert within_models("claude-sonnet-4-6", allowed)
    assert not within_models("claude-opus-4-1", allowed)
    assert not within_models("claude-*", allowed)
    assert not within_models("a*c", ("a?c",))
    assert within_models("anything", None)

    codec = StateCodec(SESSION_SECRET)
    state = codec.encode({"k": "d"}, now=1000.0)
    assert codec.decode(state, now=1100.0) == {"k": "d", "exp": 1300}
    assert codec.decode(state, now=1301.0) is None  # five minutes
    assert (
        codec.decode(state[:-2] + ("A" if state[-2] != "A" else "B") + state[-1], now=1100.0)
        is None
    )
    assert StateCodec("another-secret-" + "x" * 32).decode(state, now=1100.0) is None
