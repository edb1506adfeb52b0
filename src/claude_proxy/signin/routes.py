"""The sign-in endpoints: one ASGI app, built once by `build_signin_app`.

What Claude Code's "Cloud gateway" `/login` speaks (discovery, RFC 8628 device
authorization, the verification page, the token and refresh grants, managed settings,
OTLP sinks), the IdP's callback shared with the admins' browser sign-in, and a
developer's own view (`/me`, personal keys).

The OAuth endpoints answer RFC 6749 errors (`{"error","error_description"}`); the
bearer endpoints answer Anthropic-shaped ones. Every response carries `request-id`,
`cache-control: no-store` and headers that keep the pages out of frames. Bodies are
read up to a bound; every client value has a length bound. No token, code or secret is
logged: the log names users by id.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import InitVar, dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from claude_proxy.formats.anthropic.errors import error_body
from claude_proxy.gateway.errors import STATUS_FOR_TYPE, ProxyError
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import Caller, People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenClaims, TokenSigner
from claude_proxy.http.asgi import Message, Receive, Scope, Send
from claude_proxy.signin import pages
from claude_proxy.signin.device import (
    DEVICE_CODE_GRANT,
    DeviceFlow,
    display_code,
    normalise_user_code,
)
from claude_proxy.signin.oidc import (
    Identity,
    IdpError,
    IdpInvalidGrant,
    IdpUnavailable,
    OidcClient,
    OidcConfig,
    in_allowed_groups,
    new_nonce,
    new_verifier,
)
from claude_proxy.signin.seal import RefreshTokens, StateCodec
from claude_proxy.signin.throttle import IpWindow
from claude_proxy.store.columns import money_text
from claude_proxy.store.keys import KeySpec, create_key, list_keys
from claude_proxy.store.people import (
    Conflict,
    UserRow,
    effective_groups,
    get_user,
    list_groups,
    upsert_oidc_user,
)
from claude_proxy.store.records import new_request_id

log = logging.getLogger("claude_proxy.signin")

ADMIN_SESSION_SECONDS = 8 * 3600  # an admin signs in again after a working day
BINDING_SECONDS = 600  # the browser-binding cookie: as long as a device grant lives
PROTOCOL_VERSION = 1
MAX_FORM_BYTES = 16 * 1024
MAX_JSON_BYTES = 16 * 1024
MAX_OTLP_BYTES = 16 * 1024 * 1024
MAX_REFRESH_TOKEN_CHARS = 16384  # a sealed IdP refresh token (most are under 2 KiB)
MAX_BEARER_CHARS = 4096
MAX_NEXT_CHARS = 512
MAX_CODE_CHARS = 4096  # the IdP's authorization code
MAX_STATE_CHARS = 4096
MAX_PERSONAL_KEYS = 20  # active personal keys per user
MAX_KEY_NAME_CHARS = 100
_REQUEST_ID = "claude_proxy.signin.request_id"
_BINDING = re.compile(r"[A-Za-z0-9_-]{40,64}")  # what _to_idp sets: 256 bits, base64url
_SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    ),
)


@dataclass(frozen=True, slots=True)
class _Bearer:
    claims: TokenClaims
    caller: Caller


class SigninApp:
    """The ASGI callable: security headers and a request id around the routes."""

    def __init__(self, router: Starlette, closers: list[Callable[[], Awaitable[None]]]) -> None:
        self._router = router
        self._closers = closers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        rid = new_request_id()
        scope[_REQUEST_ID] = rid

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {bytes(k).lower() for k, _ in headers}
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in names)
                if b"request-id" not in names:
                    headers.append((b"request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._router(scope, receive, send_with_headers)
        except Exception as exc:
            # Already answered (a 500) by the router's handler, which re-raises: logged
            # here by type only, as its message or traceback could carry a value.
            log.error("sign-in: unexpected %s", type(exc).__name__)

    async def close(self) -> None:
        """Close the IdP client's connections (the app's shutdown)."""
        for close in self._closers:
            await close()


# Every route: its path, the `_Routes` method that answers it, and its HTTP methods.
_ENDPOINTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/.well-known/oauth-authorization-server", "discovery", ("GET",)),
    ("/oauth/device_authorization", "device_authorization", ("POST",)),
    ("/device", "device_page", ("GET",)),
    ("/device", "device_submit", ("POST",)),
    ("/oauth/callback", "callback", ("GET",)),
    ("/oauth/token", "token", ("POST",)),
    ("/oauth/revoke", "revoke", ("POST",)),
    ("/oauth/login", "admin_login", ("GET",)),
    ("/oauth/logout", "admin_logout", ("GET", "POST")),
    ("/managed/settings", "managed_settings", ("GET",)),
    ("/v1/metrics", "otlp", ("POST",)),
    ("/v1/logs", "otlp", ("POST",)),
    ("/v1/traces", "otlp", ("POST",)),
    ("/me", "me", ("GET",)),
    ("/me/keys", "my_keys", ("GET",)),
    ("/me/keys", "create_my_key", ("POST",)),
)
# The paths the app serves.
PATHS = tuple(dict.fromkeys(path for path, _, _ in _ENDPOINTS))


def build_signin_app(
    *,
    public_url: str,
    oidc_issuer: str,
    oidc_client_id: str,
    oidc_client_secret: str,
    oidc_scopes: str,
    oidc_groups_claim: str,
    allowed_groups: frozenset[str],
    admin_groups: frozenset[str],
    session_secret: str,
    engine: Engine,
    signer: TokenSigner,
    people: People,
    limiter: Limiter,
    keys: KeyCache,
    oidc: OidcClient | None = None,
) -> SigninApp:
    """The sign-in app. `oidc` is injected by tests; otherwise built from the settings."""
    public = public_url.rstrip("/")
    client = oidc or OidcClient(
        OidcConfig(
            issuer=oidc_issuer.rstrip("/"),
            client_id=oidc_client_id,
            client_secret=oidc_client_secret,
            scopes=oidc_scopes,
            groups_claim=oidc_groups_claim,
            redirect_uri=f"{public}/oauth/callback",
        )
    )
    routes = _Routes(
        public=public,
        oidc=client,
        allowed_groups=allowed_groups,
        admin_groups=admin_groups,
        session_secret=session_secret,
        engine=engine,
        signer=signer,
        people=people,
        limiter=limiter,
        keys=keys,
    )
    router = Starlette(
        routes=[
            Route(path, getattr(routes, answer), methods=list(methods))
            for path, answer, methods in _ENDPOINTS
        ],
        exception_handlers={404: _not_found, 405: _not_allowed, Exception: _failed},
    )
    return SigninApp(router, [client.close])


@dataclass(kw_only=True, eq=False, repr=False)
class _Routes:
    """The endpoints: what `build_signin_app` was given, and the state they keep (derived
    from the session secret, which is not kept itself)."""

    public: str
    oidc: OidcClient
    allowed_groups: frozenset[str]
    admin_groups: frozenset[str]
    session_secret: InitVar[str]
    engine: Engine
    signer: TokenSigner
    people: People
    limiter: Limiter
    keys: KeyCache

    def __post_init__(self, session_secret: str) -> None:
        parts = urlsplit(self.public)
        self.origin = f"{parts.scheme}://{parts.netloc}".lower()
        self.secure = parts.scheme == "https"
        # A __Host- cookie is bound to this exact origin; browsers take it only over HTTPS.
        self.binding_cookie = ("__Host-" if self.secure else "") + "claude_proxy_signin"
        self.state = StateCodec(session_secret)
        self.refresh_tokens = RefreshTokens(session_secret, max_chars=MAX_REFRESH_TOKEN_CHARS)
        self.device = DeviceFlow(engine=self.engine, secret=session_secret)
        self.grant_window = IpWindow(limit=30, window=600.0)
        self.code_window = IpWindow(limit=10, window=600.0)
        self.login_window = IpWindow(limit=30, window=600.0)
        self.revoke_window = IpWindow(limit=30, window=600.0)  # calls to the IdP it causes
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- discovery

    async def discovery(self, request: Request) -> Response:
        p = self.public
        return _json(
            200,
            {
                "issuer": p,
                "device_authorization_endpoint": f"{p}/oauth/device_authorization",
                "token_endpoint": f"{p}/oauth/token",
                "revocation_endpoint": f"{p}/oauth/revoke",
                "grant_types_supported": [DEVICE_CODE_GRANT, "refresh_token"],
                "response_types_supported": [],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": self.oidc.config.scopes.split(),
                "gateway_protocol_version": PROTOCOL_VERSION,
            },
        )

    # ------------------------------------------------------------ device flow

    async def device_authorization(self, request: Request) -> Response:
        if not self.grant_window.allow(_client_ip(request), time.monotonic()):
            return _oauth_error(429, "slow_down", "too many sign-ins from this address")
        if await _read_body(request, MAX_FORM_BYTES) is None:  # Claude Code sends none
            return _oauth_error(400, "invalid_request", "the body is too large")
        grant = await self.device.start()
        shown = display_code(grant.user_code)
        return _json(
            200,
            {
                "device_code": grant.device_code,
                "user_code": shown,
                "verification_uri": f"{self.public}/device",
                "verification_uri_complete": f"{self.public}/device?user_code={shown}",
                "expires_in": grant.expires_in,
                "interval": grant.interval,
            },
        )

    async def device_page(self, request: Request) -> Response:
        raw = request.query_params.get("user_code", "")
        code = normalise_user_code(raw)
        return _html(200, pages.device_confirm(display_code(code) if code else ""))

    async def device_submit(self, request: Request) -> Response:
        if not self._same_origin(request):
            return _html(
                403,
                pages.message(
                    "Sign-in refused",
                    "This form must be sent from the sign-in page itself.",
                    "Open the link your terminal shows and press Continue there.",
                ),
            )
        # Wrong codes are what is counted (guessing), not sign-ins: a whole office behind
        # one address signs in freely, a guesser gets 10 tries per 10 minutes.
        ip, now = _client_ip(request), time.monotonic()
        if self.code_window.over(ip, now):
            return _html(
                429, pages.message("Too many attempts", "Wait ten minutes, then try again.")
            )
        form = await _read_form(request)
        if form is None:
            return _html(400, pages.device_confirm("", "That request was too large."))
        typed = form.get("user_code", "")[:32]
        code = normalise_user_code(typed)
        grant = await self.device.find(code) if code else None
        if grant is None:
            self.code_window.count(ip, now)
            return _html(
                400,
                pages.device_confirm(
                    typed,
                    "That code is not valid or has expired. Check it, or start again "
                    "with /login in Claude Code.",
                ),
            )
        return await self._to_idp(request, {"k": "d", "g": grant.device_code_hash})

    # ------------------------------------------------------------ admin sign-in

    async def admin_login(self, request: Request) -> Response:
        if not self.login_window.allow(_client_ip(request), time.monotonic()):
            return _html(
                429, pages.message("Too many attempts", "Wait ten minutes, then try again.")
            )
        target = _admin_next(request.query_params.get("next"))
        if target is None:
            return _html(
                400, pages.message("Sign-in refused", "`next` must be a path under /admin.")
            )
        return await self._to_idp(request, {"k": "a", "x": target})

    async def admin_logout(self, request: Request) -> Response:
        response = _html(
            200,
            pages.message(
                "Signed out", "You are signed out of the claude-proxy admin pages on this browser."
            ),
        )
        response.delete_cookie(ADMIN_COOKIE, path="/", secure=self.secure, httponly=True)
        return response

    # ------------------------------------------------------------ the IdP leg

    async def _to_idp(self, request: Request, payload: dict[str, Any]) -> Response:
        """302 to the IdP with a sealed state bound to this browser by a cookie."""
        binding = request.cookies.get(self.binding_cookie, "")
        if not _BINDING.fullmatch(binding):
            binding = secrets.token_urlsafe(32)
        verifier, nonce = new_verifier(), new_nonce()
        state = self.state.encode({**payload, "v": verifier, "n": nonce, "b": _digest(binding)})
        try:
            url = await self.oidc.authorization_url(state=state, verifier=verifier, nonce=nonce)
        except IdpError as exc:
            log.warning("sign-in: the identity provider is unusable: %s", exc)
            return _html(
                502,
                pages.message(
                    "Identity provider unavailable",
                    "The proxy cannot reach your company's sign-in right now. "
                    "Try again in a minute.",
                ),
            )
        response = RedirectResponse(url, status_code=302)
        self._set_cookie(response, self.binding_cookie, binding, BINDING_SECONDS)
        return response

    def _set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        """A cookie for the whole origin, kept from scripts, and sent on the IdP's
        redirect back (a top-level navigation: samesite lax)."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    async def callback(self, request: Request) -> Response:
        q = request.query_params
        state = q.get("state", "")
        payload = self.state.decode(state) if state and len(state) <= MAX_STATE_CHARS else None
        if payload is None:
            return _html(
                400,
                pages.message(
                    "Sign-in expired",
                    "This sign-in link is not valid or is more than five minutes old.",
                    "Start again from your terminal (or from the admin page).",
                ),
            )
        binding = request.cookies.get(self.binding_cookie, "")
        if not binding or not hmac.compare_digest(_digest(binding), str(payload.get("b", ""))):
            return _html(
                400,
                pages.message(
                    "Sign-in refused",
                    "Finish the sign-in in the same browser you started it in.",
                ),
            )
        kind = payload.get("k")
        if kind == "d":
            return await self._device_callback(request, payload)
        if kind == "a":
            return await self._admin_callback(request, payload)
        return _html(400, pages.message("Sign-in refused", "Unknown sign-in."))

    async def _device_callback(self, request: Request, payload: dict[str, Any]) -> Response:
        digest = str(payload.get("g", ""))
        if not await self.device.pending(digest):
            return _html(
                400,
                pages.message(
                    "Sign-in expired",
                    "This sign-in has expired or was already finished.",
                    "Run /login in Claude Code (or claude-proxy login) again.",
                ),
            )
        try:
            identity, refresh = await self._exchange(request, payload)
        except IdpError as exc:
            await self.device.deny(digest)
            log.info("sign-in: device grant denied (%s)", exc)
            transient = isinstance(exc, IdpUnavailable)
            return _html(
                502 if transient else 403,
                pages.message(
                    "Sign-in failed",
                    str(exc) if not transient else "The identity provider could not be reached.",
                    "Start again from your terminal.",
                ),
            )
        refused = await self._refuse_developer(identity)
        if isinstance(refused, str):
            await self.device.deny(digest)
            return _html(403, pages.message("Sign-in refused", refused))
        user = refused
        if not await self.device.approve(digest, user_id=user.id, refresh_token=refresh):
            return _html(
                400,
                pages.message(
                    "Sign-in expired",
                    "This sign-in expired before it was finished.",
                    "Run /login in Claude Code (or claude-proxy login) again.",
                ),
            )
        log.info("sign-in: device grant approved for %s", user.id)
        return _html(
            200,
            pages.message(
                "You are signed in",
                f"Signed in as {user.email}. You can close this page and return to your terminal.",
            ),
        )

    async def _admin_callback(self, request: Request, payload: dict[str, Any]) -> Response:
        target = _admin_next(str(payload.get("x", ""))) or "/admin/"
        try:
            identity, _ = await self._exchange(request, payload)
            user = await asyncio.to_thread(self._upsert, identity)
        except IdpError as exc:
            log.info("admin sign-in failed (%s)", exc)
            return _html(403, pages.message("Sign-in failed", str(exc)))
        if not user.active:
            return _html(403, pages.message("Sign-in refused", "Your account is disabled."))
        groups = await asyncio.to_thread(self._group_names, user)
        if self.admin_groups.isdisjoint(groups):
            log.info("admin sign-in refused for %s: not in an admin group", user.id)
            return _html(
                403,
                pages.message(
                    "Not an administrator",
                    f"You are signed in as {user.email}, who is not in an admin group.",
                    "Ask for membership of one of the groups in CLAUDE_PROXY_OIDC_ADMIN_GROUPS.",
                ),
            )
        await self._know(user.id, force=True)
        session = self.signer.mint_admin_session(
            user_id=user.id,
            subject=identity.subject,
            email=user.email,
            ttl=ADMIN_SESSION_SECONDS,
        )
        log.info("admin sign-in for %s", user.id)
        response = RedirectResponse(target, status_code=302)
        self._set_cookie(response, ADMIN_COOKIE, session, ADMIN_SESSION_SECONDS)
        return response

    async def _exchange(
        self, request: Request, payload: dict[str, Any]
    ) -> tuple[Identity, str | None]:
        q = request.query_params
        error = q.get("error")
        if error is not None:
            raise IdpError(f"the identity provider said {error[:64]!r}")
        iss = q.get("iss")  # RFC 9207: when present, it must be our IdP
        if iss is not None and iss.rstrip("/") != self.oidc.config.issuer.rstrip("/"):
            raise IdpError("the answer came from another identity provider")
        code = q.get("code", "")
        if not code or len(code) > MAX_CODE_CHARS:
            raise IdpError("the identity provider sent no authorization code")
        tokens = await self.oidc.exchange_code(code, str(payload.get("v", "")))
        identity = await self.oidc.identity(tokens, nonce=str(payload.get("n", "")))
        return identity, tokens.refresh_token

    async def _refuse_developer(self, identity: Identity) -> UserRow | str:
        """The user row of a developer who may sign in, or why they may not."""
        if not in_allowed_groups(identity.groups, self.allowed_groups):
            log.info("sign-in refused: not in an allowed group")
            return (
                f"{identity.email} is not in a group allowed to use Claude through this "
                "proxy. Ask your administrator for access."
            )
        try:
            user = await asyncio.to_thread(self._upsert, identity)
        except IdpError as exc:
            return str(exc)
        if not user.active:
            log.info("sign-in refused for %s: disabled", user.id)
            return "Your account is disabled. Ask your administrator."
        await self._know(user.id, force=True)
        return user

    def _upsert(self, identity: Identity) -> UserRow:
        try:
            return upsert_oidc_user(
                self.engine,
                subject=identity.subject,
                email=identity.email,
                name=identity.name,
                idp_groups=list(identity.groups),
            )
        except Conflict as exc:
            raise IdpError(str(exc)) from exc
        except ValueError as exc:
            raise IdpError(f"the identity provider's claims are not usable: {exc}") from exc

    def _group_names(self, user: UserRow) -> set[str]:
        """The IdP's groups and the proxy groups the user is in, by name."""
        mine = effective_groups(user, list_groups(self.engine))
        return set(user.idp_groups or ()) | {g.name for g in mine}

    # -------------------------------------------------------------- the token

    async def token(self, request: Request) -> Response:
        form = await _read_form(request, max_bytes=MAX_FORM_BYTES)
        if form is None:
            return _oauth_error(400, "invalid_request", "the body is too large or malformed")
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type == DEVICE_CODE_GRANT:
            device_code = form.get("device_code")
            if not device_code:
                return _oauth_error(400, "invalid_request", "device_code is required")
            return await self._device_token(device_code)
        if grant_type == "refresh_token":
            refresh = form.get("refresh_token")
            if not refresh:
                return _oauth_error(400, "invalid_request", "refresh_token is required")
            return await self._refresh_token(refresh)
        return _oauth_error(400, "unsupported_grant_type", "device_code or refresh_token")

    async def _device_token(self, device_code: str) -> Response:
        poll = await self.device.poll(device_code)
        if poll.error is not None:
            status = 429 if poll.error == "slow_down" else 400
            return _oauth_error(status, poll.error, _POLL_TEXT.get(poll.error))
        assert poll.user_id is not None
        user = await asyncio.to_thread(get_user, self.engine, poll.user_id)
        if user is None or not user.active:
            return _oauth_error(400, "access_denied", "this user is disabled")
        await self._know(user.id)
        return self._token_response(user, poll.refresh_token)

    async def _refresh_token(self, refresh: str) -> Response:
        """Anthropic's design: the client holds the IdP's refresh token (sealed with the
        user and the time it was issued); each refresh re-runs the IdP's, re-reads the
        claims and re-checks the policy."""
        opened = self.refresh_tokens.open(refresh)
        if opened is None:
            return _oauth_error(400, "invalid_grant", "unknown refresh token")
        idp_refresh, user_id, issued_at = opened
        holder = await asyncio.to_thread(get_user, self.engine, user_id)
        if holder is None or not holder.active:
            return _oauth_error(400, "invalid_grant", "this user is disabled")
        valid_after = holder.tokens_valid_after
        if valid_after is not None and issued_at < valid_after.timestamp():
            return _oauth_error(400, "invalid_grant", "signed out everywhere; sign in again")
        try:
            tokens = await self.oidc.refresh(idp_refresh)
            identity = await self.oidc.identity(tokens, nonce=None)
        except IdpInvalidGrant:
            return _oauth_error(400, "invalid_grant", "the sign-in has ended; sign in again")
        except IdpUnavailable as exc:
            log.warning("refresh: identity provider unavailable (%s)", exc)
            return _oauth_error(
                503, "temporarily_unavailable", "the identity provider is unreachable"
            )
        except IdpError as exc:
            log.warning("refresh: identity provider refused (%s)", exc)
            return _oauth_error(503, "temporarily_unavailable", "the identity provider refused")
        refused = await self._refuse_developer(identity)
        if isinstance(refused, str):
            return _oauth_error(400, "invalid_grant", refused)
        if refused.id != user_id:  # the IdP says this is someone else now
            return _oauth_error(400, "invalid_grant", "the sign-in has ended; sign in again")
        return self._token_response(refused, tokens.refresh_token or idp_refresh)

    def _token_response(self, user: UserRow, refresh: str | None) -> Response:
        token, ttl = self.signer.mint(
            user_id=user.id,
            subject=user.subject or user.id,
            email=user.email,
            name=user.name,
            groups=list(user.idp_groups or ()),
        )
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
        if refresh:
            body["refresh_token"] = self.refresh_tokens.seal(refresh, user.id)
        return _json(200, body, extra={"pragma": "no-cache"})

    async def revoke(self, request: Request) -> Response:
        """RFC 7009: always 200. An IdP refresh token is revoked at the IdP (best effort,
        in the background); the proxy's own access tokens end at their expiry."""
        form = await _read_form(request)
        token = (form or {}).get("token", "")
        if (
            token
            and len(token) <= MAX_REFRESH_TOKEN_CHARS
            and self.signer.verify(token.encode()) is None  # ours end at their expiry
            and self.revoke_window.allow(_client_ip(request), time.monotonic())
        ):
            task = asyncio.get_running_loop().create_task(self._revoke_at_idp(token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return _json(200, {})

    async def _revoke_at_idp(self, token: str) -> None:
        opened = self.refresh_tokens.open(token)
        if opened is None:
            return  # not a refresh token of ours: nothing to revoke
        try:
            await self.oidc.revoke(opened[0])
        except IdpError as exc:
            log.info("revocation at the identity provider skipped (%s)", exc)

    # ------------------------------------------------------ bearer endpoints

    async def _bearer(self, request: Request) -> _Bearer | Response:
        """The caller of a bearer endpoint, or the Anthropic-shaped 401."""
        raw = request.headers.get("authorization", "")
        scheme, _, token = raw.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            token = request.headers.get("x-api-key", "").strip()
        if not token or len(token) > MAX_BEARER_CHARS:
            return _error(request, "authentication_error", "invalid token")
        claims = self.signer.verify(token.encode())
        if claims is None:
            return _error(request, "authentication_error", "invalid token")
        caller = self.people.caller_for_token(claims)
        if caller is None:  # signed in a moment ago through another replica
            await self._know(claims.user_id)
            caller = self.people.caller_for_token(claims)
        if caller is None:
            return _error(request, "authentication_error", "invalid token")
        if isinstance(caller, ProxyError):
            return _error(request, caller.error_type, caller.message)
        return _Bearer(claims, caller)

    async def managed_settings(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        models = available_models(self.people.allowed_models(found.claims.user_id))
        if models is None:
            return _error(request, "not_found_error", "no managed settings apply to this user")
        settings = {"availableModels": models}
        digest = settings_checksum(settings)
        etag = f'"{digest}"'
        if _etag_matches(request.headers.get("if-none-match", ""), digest):
            return Response(status_code=304, headers={"etag": etag})
        return _json(
            200, {"uuid": digest, "checksum": digest, "settings": settings}, extra={"etag": etag}
        )

    async def otlp(self, request: Request) -> Response:
        """Claude Code's telemetry, when it is on: accepted and dropped (a 404 would make
        its exporter log every flush)."""
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        if await _read_body(request, MAX_OTLP_BYTES, keep=False) is None:
            return _error(request, "request_too_large", "telemetry batch too large")
        return _json(200, {})

    async def me(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        uid = found.claims.user_id
        info = self.people.user(uid)
        if info is None:  # removed since the token was checked
            return _error(request, "authentication_error", "invalid token")
        now = time.time()
        levels = []
        tightest: dict[str, Any] | None = None
        for level in self.people.levels_for_user(uid):
            entry: dict[str, Any] = {
                "id": level.id,
                "kind": level.kind,
                "name": level.name,
                "models": list(level.models) if level.models is not None else None,
                "rpm": level.rpm,
                "tpm": level.tpm,
                "budget_usd": _money(level.budget_usd),
                "budget_period": level.budget_period,
                "spent_usd": None,
                "remaining_usd": None,
            }
            if level.budget_usd is not None:
                period = level.budget_period or "total"
                spent = self.limiter.spent(level.id, period, now)
                left = max(0.0, level.budget_usd - spent)
                entry["spent_usd"] = _money(spent)
                entry["remaining_usd"] = _money(left)
                if tightest is None or left < tightest["_left"]:
                    tightest = {
                        "id": level.id,
                        "kind": level.kind,
                        "name": level.name,
                        "budget_period": period,
                        "_left": left,
                    }
            levels.append(entry)
        if tightest is not None:
            tightest["remaining_usd"] = _money(tightest.pop("_left"))
        group = info.policy_group_id
        return _json(
            200,
            {
                "user": {
                    "id": info.id,
                    "email": info.email,
                    "name": info.name,
                    "subject": info.subject,
                    "groups": list(info.groups),
                    "policy_group": (
                        {"id": group, "name": self.people.group_name(group)} if group else None
                    ),
                },
                "allowed_models": _list_or_none(self.people.allowed_models(uid)),
                "levels": levels,
                "tightest": tightest,
                "token_expires_at": int(found.claims.expires_at),
            },
        )

    async def my_keys(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        rows = await asyncio.to_thread(
            list_keys, self.engine, include_revoked=False, user_id=found.claims.user_id
        )
        return _json(200, {"data": [_key_json(r.public()) for r in rows]})

    async def create_my_key(self, request: Request) -> Response:
        """A personal key: within the user's own policy (a request with it passes the
        user's levels too, so it cannot widen them)."""
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        uid = found.claims.user_id
        raw = await _read_body(request, MAX_JSON_BYTES)
        if raw is None:
            return _error(request, "request_too_large", f"the body is over {MAX_JSON_BYTES} bytes")
        try:
            spec = self._key_spec(raw, self.people.allowed_models(uid))
        except ValueError as exc:
            return _error(request, "invalid_request_error", str(exc))
        info = self.people.user(uid)
        actor = f"oidc:{found.claims.subject} {info.email if info else found.claims.email}"

        def create() -> tuple[Any, str] | None:
            mine = list_keys(self.engine, include_revoked=False, user_id=uid)
            if sum(1 for r in mine if r.status == "active") >= MAX_PERSONAL_KEYS:
                return None
            return create_key(self.engine, spec, actor=actor, user_id=uid)

        try:
            made = await asyncio.to_thread(create)
        except ValueError as exc:
            return _error(request, "invalid_request_error", str(exc))
        if made is None:
            return _error(
                request,
                "invalid_request_error",
                f"you have {MAX_PERSONAL_KEYS} active personal keys; revoke one first",
            )
        row, secret = made
        self.keys.apply(row)  # usable at once on this replica; others within a refresh
        log.info("personal key %s created for %s", row.id, uid)
        return _json(201, {**_key_json(row.public()), "key": secret})

    @staticmethod
    def _key_spec(raw: bytes, allowed: tuple[str, ...] | None) -> KeySpec:
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            raise ValueError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - {"name", "models", "budget_usd", "budget_period", "rpm", "tpm"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
        name = body.get("name", "personal")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_KEY_NAME_CHARS:
            raise ValueError(f"name is 1 to {MAX_KEY_NAME_CHARS} characters")
        models = body.get("models")
        if models is not None:
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ValueError("models is a list of model ids or patterns")
            outside = [m for m in models if not within_models(m, allowed)]
            if outside:
                raise ValueError(f"not within your allowed models: {', '.join(outside)[:300]}")
        budget = body.get("budget_usd")
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
                raise ValueError("budget_usd is an amount in USD")
            try:
                budget = Decimal(str(budget))
            except ArithmeticError:
                raise ValueError("budget_usd is an amount in USD") from None
        for field in ("rpm", "tpm"):
            value = body.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{field} is a whole number")
        period = body.get("budget_period")
        if period is not None and not isinstance(period, str):
            raise ValueError("budget_period is day, week, month or total")
        return KeySpec(
            name=name.strip(),
            models=tuple(models) if models is not None else None,
            rpm=body.get("rpm"),
            tpm=body.get("tpm"),
            budget_usd=budget,
            budget_period=period,
        )

    # ---------------------------------------------------------------- helpers

    def _same_origin(self, request: Request) -> bool:
        """A browser says where a form comes from: Sec-Fetch-Site, or at least Origin."""
        site = request.headers.get("sec-fetch-site", "").lower()
        if site in ("same-origin", "none"):
            return True
        origin = request.headers.get("origin", "").lower().rstrip("/")
        return bool(origin) and origin == self.origin

    async def _know(self, user_id: str, *, force: bool = False) -> None:
        """Make this replica's people cache know a user who just signed in (at once,
        `force`), or a token's user it has not seen yet (a shared, rate-limited re-read),
        instead of waiting for its next refresh."""
        if not force:
            if self.people.user(user_id) is None:
                await self.people.catch_up()
            return
        try:
            await asyncio.to_thread(self.people.refresh)
        except Exception as exc:
            log.warning("people refresh after sign-in failed (%s)", type(exc).__name__)


_POLL_TEXT = {
    "authorization_pending": "the user has not finished signing in yet",
    "slow_down": "polled too often; wait longer between polls",
    "access_denied": "the sign-in was refused",
    "expired_token": "unknown or expired device code; start again",
}


# --------------------------------------------------------------- pure functions


def available_models(allowed: tuple[str, ...] | None) -> list[str] | None:
    """Claude Code's `availableModels` for an allowlist of ids and shell patterns; None
    when nothing is restricted. A pattern becomes the prefix before its first wildcard
    ("claude-haiku-*" → "claude-haiku", which the client reads as the family's models);
    a pattern that starts with a wildcard restricts nothing the client can express."""
    if allowed is None:
        return None
    out: list[str] = []
    for pattern in allowed:
        cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
        prefix = pattern[:cut].rstrip("-")
        if not prefix:
            return None
        if prefix not in out:
            out.append(prefix)
    return out


def settings_checksum(settings: dict[str, Any]) -> str:
    """ "sha256:" + hex SHA-256 of the settings as JSON.stringify writes them with object
    keys sorted: the client hashes its cached copy the same way for If-None-Match."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def within_models(requested: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether a personal key's model pattern asks for nothing outside the allowlist:
    an exact id an allowed pattern matches, an allowed pattern itself, or a narrower
    pattern under an allowed "prefix*"."""
    if not requested.strip() or len(requested) > 200:
        return False
    if allowed is None:
        return True
    wild = any(ch in requested for ch in "*?[")
    for pattern in allowed:
        if requested == pattern:
            return True
        if not wild and fnmatch.fnmatchcase(requested, pattern):
            return True
        head = pattern[:-1]
        if (
            pattern.endswith("*")
            and not any(ch in head for ch in "*?[")
            and requested.startswith(head)
        ):
            return True
    return False


def _admin_next(value: str | None) -> str | None:
    """Where to send an admin after sign-in: a path on this origin under /admin."""
    if value is None or value == "":
        return "/admin/"
    if len(value) > MAX_NEXT_CHARS or not value.startswith("/admin"):
        return None
    if (
        value.startswith("//")
        or "\\" in value
        or any(ord(ch) < 33 or ord(ch) == 127 for ch in value)
    ):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    rest = value[len("/admin") :]
    if rest and rest[0] not in "/?#":
        return None  # "/administrator.example" is not under /admin
    return quote(value, safe="/?#&=%:@!$'()*+,;~-._")


def _etag_matches(header: str, digest: str) -> bool:
    if not header or len(header) > 1024:
        return False
    if header.strip() == "*":
        return True
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == digest:
            return True
    return False


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _money(value: float | None) -> str | None:
    if value is None:
        return None
    return money_text(Decimal(repr(value)))


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _key_json(public: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in public.items():
        if isinstance(v, Decimal):
            out[k] = money_text(v)
        elif hasattr(v, "isoformat"):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return out


async def _read_body(request: Request, cap: int, *, keep: bool = True) -> bytes | None:
    """The body, or None when it is over `cap` bytes (counted as it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        if keep:
            chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: Request, *, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body as {name: first value}; None when it is
    too large or not a form."""
    raw = await _read_body(request, max_bytes)
    if raw is None:
        return None
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=32
        )
    except (UnicodeDecodeError, ValueError):
        return None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def _json(status: int, body: dict[str, Any], *, extra: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=extra
    )


def _html(status: int, text: str) -> HTMLResponse:
    return HTMLResponse(text, status_code=status)


def _oauth_error(status: int, error: str, description: str | None = None) -> Response:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return _json(status, body, extra={"pragma": "no-cache"})


def _error(request: Request, error_type: str, message: str) -> Response:
    rid = request.scope.get(_REQUEST_ID) or new_request_id()
    return Response(
        error_body(error_type, message, rid),
        status_code=STATUS_FOR_TYPE[error_type],
        media_type="application/json",
        headers={"x-claude-proxy-request-id": rid},
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, "not_found_error", f"Not found: {request.url.path[:200]}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(request, "invalid_request_error", f"{request.method} is not allowed here")


async def _failed(request: Request, exc: Exception) -> Response:
    return _error(request, "api_error", "internal error")
