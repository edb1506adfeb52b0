"""`claude-proxy login | token | me`: a developer's machine, signed in through the proxy.

`login` runs the same device flow as Claude Code's `/login` (discovery, device
authorization, the browser, polling) and keeps the result in a credentials file, mode
0600: `$CLAUDE_PROXY_CREDENTIALS`, else ~/.config/claude-proxy/credentials.json.
`token` prints a valid access token for Claude Code's `apiKeyHelper`, refreshing it when
less than five minutes remain; `me` shows who you are and what you have left to spend.
Nothing here prints a refresh token.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx


DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TIMEOUT = 10.0  # what Claude Code allows each sign-in call
REFRESH_MARGIN = 300.0  # refresh when fewer than five minutes remain, as Claude Code does
_MAX_LOGIN_SECONDS = 900.0


class _Failed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def credentials_path() -> Path:
    explicit = os.environ.get("CLAUDE_PROXY_CREDENTIALS")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "claude-proxy" / "credentials.json"


def load_credentials(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _Failed(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def save_credentials(path: Path, data: dict[str, Any]) -> None:
    """Written whole to a 0600 file beside it, then renamed over: never half a file,
    never readable by others, even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One refresh at a time across terminals: the second waits and reuses the first's."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Failed(f"not a proxy URL: {url!r}", 2)
    return url


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def _client(**options: Any) -> httpx.Client:
    """An HTTP client; httpx is imported here so that every other command starts faster."""
    import httpx

    return httpx.Client(timeout=TIMEOUT, **options)


def _call(client: httpx.Client, method: str, url: str, **options: Any) -> httpx.Response:
    """One request; an unreachable proxy is a clear failure, not a traceback."""
    import httpx

    try:
        return client.request(method, url, **options)
    except httpx.HTTPError as exc:
        raise _Failed(f"cannot reach {url}: {type(exc).__name__}") from exc


def _post_form(client: httpx.Client, url: str, form: dict[str, str]) -> httpx.Response:
    return _call(client, "POST", url, data=form)


def _json_body(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ------------------------------------------------------------------------- login


def login(
    url: str,
    *,
    path: Path,
    open_browser: bool,
    out: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The device flow against the proxy at `url`; returns the saved credentials."""
    base = normalise_url(url)
    with _client(follow_redirects=False) as client:
        device_endpoint, token_endpoint = (
            f"{base}/oauth/device_authorization",
            f"{base}/oauth/token",
        )
        r = _call(client, "GET", f"{base}/.well-known/oauth-authorization-server")
        if r.status_code != 200:
            raise _Failed(f"{base} does not offer sign-in (discovery answered {r.status_code})")
        meta = _json_body(r)
        # Only same-origin endpoints are followed, as Claude Code does.
        for name in ("device_authorization_endpoint", "token_endpoint"):
            value = meta.get(name)
            if isinstance(value, str) and _same_origin(value, base):
                if name == "token_endpoint":
                    token_endpoint = value
                else:
                    device_endpoint = value
        r = _post_form(client, device_endpoint, {})
        grant = _json_body(r)
        if r.status_code != 200 or not isinstance(grant.get("device_code"), str):
            raise _Failed(
                f"the proxy refused to start a sign-in: {grant.get('error', r.status_code)}"
            )
        verify = grant.get("verification_uri_complete") or grant.get("verification_uri")
        out(f"To sign in, open this page in your browser:\n\n    {verify}\n")
        out(f"and check that it shows the code  {grant.get('user_code')}\n")
        if open_browser and isinstance(verify, str):
            with contextlib.suppress(Exception):
                webbrowser.open(verify)
        interval = max(1.0, float(grant.get("interval") or 5))
        deadline = time.monotonic() + min(float(grant.get("expires_in") or 600), _MAX_LOGIN_SECONDS)
        while True:
            sleep(interval)
            if time.monotonic() > deadline:
                raise _Failed("the sign-in expired; run `claude-proxy login` again")
            r = _post_form(
                client,
                token_endpoint,
                {"grant_type": DEVICE_CODE_GRANT, "device_code": grant["device_code"]},
            )
            body = _json_body(r)
            error = body.get("error")
            if r.status_code == 200 and isinstance(body.get("access_token"), str):
                break
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5
                continue
            if error == "access_denied":
                raise _Failed("the sign-in was refused (see the browser page for why)")
            if error == "expired_token":
                raise _Failed("the sign-in expired; run `claude-proxy login` again")
            raise _Failed(f"sign-in failed: {error or r.status_code}")
    creds = {
        "url": base,
        "token_endpoint": token_endpoint,
        "access_token": body["access_token"],
        "expires_at": int(time.time() + float(body.get("expires_in") or 0)),
        "refresh_token": body.get("refresh_token"),
    }
    save_credentials(path, creds)
    return creds


# ------------------------------------------------------------------------- token


def valid_token(path: Path, *, now: float | None = None) -> dict[str, Any]:
    """Credentials whose access token has five minutes or more left, refreshed if need
    be; _Failed (signed out) otherwise."""
    with _locked(path):
        creds = load_credentials(path)
        if not creds or not isinstance(creds.get("access_token"), str):
            raise _Failed("not signed in: run `claude-proxy login --url https://<your proxy>`")
        now = time.time() if now is None else now
        if float(creds.get("expires_at") or 0) - now >= REFRESH_MARGIN:
            return creds
        refresh = creds.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            raise _Failed("the sign-in has expired: run `claude-proxy login` again")
        endpoint = creds.get("token_endpoint") or f"{creds['url']}/oauth/token"
        with _client(follow_redirects=False) as client:
            r = _post_form(
                client, endpoint, {"grant_type": "refresh_token", "refresh_token": refresh}
            )
        body = _json_body(r)
        if r.status_code == 200 and isinstance(body.get("access_token"), str):
            creds.update(
                access_token=body["access_token"],
                expires_at=int(time.time() + float(body.get("expires_in") or 0)),
                refresh_token=body.get("refresh_token") or refresh,
            )
            save_credentials(path, creds)
            return creds
        error = body.get("error")
        if error == "invalid_grant":
            # The proxy or the IdP ended the sign-in (offboarding, revoked): forget it.
            creds["refresh_token"] = None
            save_credentials(path, creds)
            raise _Failed("the sign-in has ended: run `claude-proxy login` again")
        if float(creds.get("expires_at") or 0) > now:
            return creds  # a transient failure: the current token still works a while
        raise _Failed(f"could not refresh the sign-in ({error or r.status_code}); try again")


# ---------------------------------------------------------------------- commands


def _fail(message: str, code: int) -> NoReturn:
    sys.stdout.flush()
    print(f"claude-proxy: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _run(command: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        try:
            command(args)
        except _Failed as exc:
            _fail(str(exc), exc.code)

    return run


def cmd_login(args: argparse.Namespace) -> None:
    path = credentials_path()
    url = args.url or os.environ.get("CLAUDE_PROXY_URL")
    if not url:
        old = load_credentials(path)
        url = old.get("url") if old else None
    if not url:
        raise _Failed("which proxy? pass --url https://<your proxy>", 2)

    def out(text: str) -> None:
        # With --json the link and the code are for the person: stdout is the result.
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    open_browser = not args.no_browser and sys.stdout.isatty()
    creds = login(url, path=path, open_browser=open_browser, out=out)
    if args.json:
        shown = {"url": creds["url"], "expires_at": creds["expires_at"], "credentials": str(path)}
        print(json.dumps(shown), flush=True)
        return
    print(f"Signed in to {creds['url']}. Credentials saved in {path}.", flush=True)


def cmd_token(args: argparse.Namespace) -> None:
    creds = valid_token(credentials_path())
    if args.json:
        shown = {"access_token": creds["access_token"], "expires_at": creds["expires_at"]}
        print(json.dumps(shown), flush=True)
        return
    print(creds["access_token"], flush=True)


def cmd_me(args: argparse.Namespace) -> None:
    creds = valid_token(credentials_path())
    with _client() as client:
        auth = {"authorization": f"Bearer {creds['access_token']}"}
        r = _call(client, "GET", f"{creds['url']}/me", headers=auth)
    body = _json_body(r)
    if r.status_code != 200:
        message = (body.get("error") or {}).get("message") if body else None
        raise _Failed(f"the proxy answered {r.status_code}: {message or r.text[:200]}")
    if args.json:
        print(json.dumps(body, indent=2), flush=True)
        return
    user = body.get("user") or {}
    print(f"{user.get('name') or ''} <{user.get('email')}>  ({user.get('id')})".strip())
    groups = user.get("groups") or []
    policy = (user.get("policy_group") or {}).get("name")
    print(f"groups: {', '.join(groups) or '-'}" + (f"  (policy: {policy})" if policy else ""))
    models = body.get("allowed_models")
    print(f"models: {', '.join(models) if models else 'any'}")
    for level in body.get("levels") or []:
        if level.get("budget_usd") is None:
            continue
        print(
            f"{level['kind']:>6} {level['name']}: ${float(level['spent_usd']):.2f} of "
            f"${float(level['budget_usd']):.2f} this {level['budget_period']}, "
            f"${float(level['remaining_usd']):.2f} left"
        )
    if not any(lv.get("budget_usd") is not None for lv in body.get("levels") or []):
        print("budget: none set")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login_p = sub.add_parser(
        "login",
        help="sign in to a proxy with your company account (for `claude-proxy token`)",
        description="Sign in to a claude-proxy with your identity provider (device flow). "
        "Credentials go to $CLAUDE_PROXY_CREDENTIALS or ~/.config/claude-proxy/credentials.json.",
    )
    login_p.add_argument(
        "--url", default=None, help="the proxy's URL (default: $CLAUDE_PROXY_URL or the last one)"
    )
    login_p.add_argument("--no-browser", action="store_true", help="only print the sign-in link")
    login_p.add_argument(
        "--json", action="store_true", help="the result as JSON (the link and code on stderr)"
    )
    login_p.set_defaults(func=_run(cmd_login))

    token_p = sub.add_parser(
        "token",
        help="print a valid access token (Claude Code's apiKeyHelper)",
        description="Print the signed-in access token, refreshed when less than five minutes "
        "remain. Exits 1 when signed out.",
    )
    token_p.add_argument(
        "--json", action="store_true", help="the token and its expiry (unix seconds) as JSON"
    )
    token_p.set_defaults(func=_run(cmd_token))

    me_p = sub.add_parser("me", help="who you are signed in as, your groups and budget left")
    me_p.add_argument("--json", action="store_true")
    me_p.set_defaults(func=_run(cmd_me))
