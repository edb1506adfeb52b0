"""The OAuth side of sign-in: the proxy as the authorization server Claude Code's "Cloud
gateway" `/login` speaks to, with the company's IdP behind it.

Discovery, RFC 8628 device authorization and its verification page (`/device`), the
IdP's callback shared with the admins' browser sign-in (`/oauth/login`, `/oauth/logout`),
the token endpoint (device-code and refresh grants) and RFC 7009 revocation. These
endpoints answer RFC 6749 errors (`{"error","error_description"}`) or, to a browser, a
page. Every client value has a length bound. No token, code or secret is logged: the
log names users by id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import InitVar, dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenSigner
from claude_proxy.signin import pages
from claude_proxy.signin.common import (
    MAX_FORM_BYTES,
    client_ip,
    html_response,
    json_response,
    know_user,
    oauth_error,
    read_body,
    read_form,
)
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
    in_allowed_groups,
    new_nonce,
    new_verifier,
)
from claude_proxy.signin.seal import RefreshTokens, StateCodec
from claude_proxy.signin.throttle import IpWindow
from claude_proxy.store.people import (
    Conflict,
    UserRow,
    effective_groups,
    get_user,
    list_groups,
    upsert_oidc_user,
)

log = logging.getLogger("claude_proxy.signin")

ADMIN_SESSION_SECONDS = 8 * 3600  # an admin signs in again after a working day
BINDING_SECONDS = 600  # the browser-binding cookie: as long as a device grant lives
PROTOCOL_VERSION = 1
MAX_REFRESH_TOKEN_CHARS = 16384  # a sealed IdP refresh token (most are under 2 KiB)
MAX_NEXT_CHARS = 512
MAX_CODE_CHARS = 4096  # the IdP's authorization code
MAX_STATE_CHARS = 4096
_BINDING = re.compile(r"[A-Za-z0-9_-]{40,64}")  # what _to_idp sets: 256 bits, base64url


@dataclass(kw_only=True, eq=False, repr=False)
class OAuthEndpoints:
    """The OAuth endpoints: what `build_signin_app` gave them, and the state they keep
    (derived from the session secret, which is not kept itself)."""

    public: str
    oidc: OidcClient
    allowed_groups: frozenset[str]
    admin_groups: frozenset[str]
    session_secret: InitVar[str]
    engine: Engine
    signer: TokenSigner
    people: People

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
        return json_response(
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
        if not self.grant_window.allow(client_ip(request), time.monotonic()):
            return oauth_error(429, "slow_down", "too many sign-ins from this address")
        if await read_body(request, MAX_FORM_BYTES) is None:  # Claude Code sends none
            return oauth_error(400, "invalid_request", "the body is too large")
        grant = await self.device.start()
        shown = display_code(grant.user_code)
        return json_response(
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
        return html_response(200, pages.device_confirm(display_code(code) if code else ""))

    async def device_submit(self, request: Request) -> Response:
        if not self._same_origin(request):
            return html_response(
                403,
                pages.message(
                    "Sign-in refused",
                    "This form must be sent from the sign-in page itself.",
                    "Open the link your terminal shows and press Continue there.",
                ),
            )
        # Wrong codes are what is counted (guessing), not sign-ins: a whole office behind
        # one address signs in freely, a guesser gets 10 tries per 10 minutes.
        ip, now = client_ip(request), time.monotonic()
        if self.code_window.over(ip, now):
            return html_response(
                429, pages.message("Too many attempts", "Wait ten minutes, then try again.")
            )
        form = await read_form(request)
        if form is None:
            return html_response(400, pages.device_confirm("", "That request was too large."))
        typed = form.get("user_code", "")[:32]
        code = normalise_user_code(typed)
        grant = await self.device.find(code) if code else None
        if grant is None:
            self.code_window.count(ip, now)
            return html_response(
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
        if not self.login_window.allow(client_ip(request), time.monotonic()):
            return html_response(
                429, pages.message("Too many attempts", "Wait ten minutes, then try again.")
            )
        target = _admin_next(request.query_params.get("next"))
        if target is None:
            return html_response(
                400, pages.message("Sign-in refused", "`next` must be a path under /admin.")
            )
        return await self._to_idp(request, {"k": "a", "x": target})

    async def admin_logout(self, request: Request) -> Response:
        response = html_response(
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
            return html_response(
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
            return html_response(
                400,
                pages.message(
                    "Sign-in expired",
                    "This sign-in link is not valid or is more than five minutes old.",
                    "Start again from your terminal (or from the admin page).",
                ),
            )
        binding = request.cookies.get(self.binding_cookie, "")
        if not binding or not hmac.compare_digest(_digest(binding), str(payload.get("b", ""))):
            return html_response(
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
        return html_response(400, pages.message("Sign-in refused", "Unknown sign-in."))

    async def _device_callback(self, request: Request, payload: dict[str, Any]) -> Response:
        digest = str(payload.get("g", ""))
        if not await self.device.pending(digest):
            return html_response(
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
            return html_response(
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
            return html_response(403, pages.message("Sign-in refused", refused))
        user = refused
        if not await self.device.approve(digest, user_id=user.id, refresh_token=refresh):
            return html_response(
                400,
                pages.message(
                    "Sign-in expired",
                    "This sign-in expired before it was finished.",
                    "Run /login in Claude Code (or claude-proxy login) again.",
                ),
            )
        log.info("sign-in: device grant approved for %s", user.id)
        return html_response(
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
            return html_response(403, pages.message("Sign-in failed", str(exc)))
        if not user.active:
            return html_response(403, pages.message("Sign-in refused", "Your account is disabled."))
        groups = await asyncio.to_thread(self._group_names, user)
        if self.admin_groups.isdisjoint(groups):
            log.info("admin sign-in refused for %s: not in an admin group", user.id)
            return html_response(
                403,
                pages.message(
                    "Not an administrator",
                    f"You are signed in as {user.email}, who is not in an admin group.",
                    "Ask for membership of one of the groups in CLAUDE_PROXY_OIDC_ADMIN_GROUPS.",
                ),
            )
        await know_user(self.people, user.id, force=True)
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
        await know_user(self.people, user.id, force=True)
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
        form = await read_form(request, max_bytes=MAX_FORM_BYTES)
        if form is None:
            return oauth_error(400, "invalid_request", "the body is too large or malformed")
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type == DEVICE_CODE_GRANT:
            device_code = form.get("device_code")
            if not device_code:
                return oauth_error(400, "invalid_request", "device_code is required")
            return await self._device_token(device_code)
        if grant_type == "refresh_token":
            refresh = form.get("refresh_token")
            if not refresh:
                return oauth_error(400, "invalid_request", "refresh_token is required")
            return await self._refresh_token(refresh)
        return oauth_error(400, "unsupported_grant_type", "device_code or refresh_token")

    async def _device_token(self, device_code: str) -> Response:
        poll = await self.device.poll(device_code)
        if poll.error is not None:
            status = 429 if poll.error == "slow_down" else 400
            return oauth_error(status, poll.error, _POLL_TEXT.get(poll.error))
        assert poll.user_id is not None
        user = await asyncio.to_thread(get_user, self.engine, poll.user_id)
        if user is None or not user.active:
            return oauth_error(400, "access_denied", "this user is disabled")
        await know_user(self.people, user.id)
        return self._token_response(user, poll.refresh_token)

    async def _refresh_token(self, refresh: str) -> Response:
        """Anthropic's design: the client holds the IdP's refresh token (sealed with the
        user and the time it was issued); each refresh re-runs the IdP's, re-reads the
        claims and re-checks the policy."""
        opened = self.refresh_tokens.open(refresh)
        if opened is None:
            return oauth_error(400, "invalid_grant", "unknown refresh token")
        idp_refresh, user_id, issued_at = opened
        holder = await asyncio.to_thread(get_user, self.engine, user_id)
        if holder is None or not holder.active:
            return oauth_error(400, "invalid_grant", "this user is disabled")
        valid_after = holder.tokens_valid_after
        if valid_after is not None and issued_at < valid_after.timestamp():
            return oauth_error(400, "invalid_grant", "signed out everywhere; sign in again")
        try:
            tokens = await self.oidc.refresh(idp_refresh)
            identity = await self.oidc.identity(tokens, nonce=None)
        except IdpInvalidGrant:
            return oauth_error(400, "invalid_grant", "the sign-in has ended; sign in again")
        except IdpUnavailable as exc:
            log.warning("refresh: identity provider unavailable (%s)", exc)
            return oauth_error(
                503, "temporarily_unavailable", "the identity provider is unreachable"
            )
        except IdpError as exc:
            log.warning("refresh: identity provider refused (%s)", exc)
            return oauth_error(503, "temporarily_unavailable", "the identity provider refused")
        refused = await self._refuse_developer(identity)
        if isinstance(refused, str):
            return oauth_error(400, "invalid_grant", refused)
        if refused.id != user_id:  # the IdP says this is someone else now
            return oauth_error(400, "invalid_grant", "the sign-in has ended; sign in again")
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
        return json_response(200, body, extra={"pragma": "no-cache"})

    async def revoke(self, request: Request) -> Response:
        """RFC 7009: always 200. An IdP refresh token is revoked at the IdP (best effort,
        in the background); the proxy's own access tokens end at their expiry."""
        form = await read_form(request)
        token = (form or {}).get("token", "")
        if (
            token
            and len(token) <= MAX_REFRESH_TOKEN_CHARS
            and self.signer.verify(token.encode()) is None  # ours end at their expiry
            and self.revoke_window.allow(client_ip(request), time.monotonic())
        ):
            task = asyncio.get_running_loop().create_task(self._revoke_at_idp(token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return json_response(200, {})

    async def _revoke_at_idp(self, token: str) -> None:
        opened = self.refresh_tokens.open(token)
        if opened is None:
            return  # not a refresh token of ours: nothing to revoke
        try:
            await self.oidc.revoke(opened[0])
        except IdpError as exc:
            log.info("revocation at the identity provider skipped (%s)", exc)

    # ---------------------------------------------------------------- helpers

    def _same_origin(self, request: Request) -> bool:
        """A browser says where a form comes from: Sec-Fetch-Site, or at least Origin."""
        site = request.headers.get("sec-fetch-site", "").lower()
        if site in ("same-origin", "none"):
            return True
        origin = request.headers.get("origin", "").lower().rstrip("/")
        return bool(origin) and origin == self.origin


_POLL_TEXT = {
    "authorization_pending": "the user has not finished signing in yet",
    "slow_down": "polled too often; wait longer between polls",
    "access_denied": "the sign-in was refused",
    "expired_token": "unknown or expired device code; start again",
}


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


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
