"""The sign-in app: one ASGI app, built once by `build_signin_app`, and its route table.

What Claude Code's "Cloud gateway" `/login` speaks (discovery, RFC 8628 device
authorization, the verification page, the token and refresh grants, managed settings,
OTLP sinks), the IdP's callback shared with the admins' browser sign-in, and a
developer's own view (`/me`, personal keys). The OAuth endpoints are in `oauth.py`, the
bearer ones in `developer.py`, what they share in `common.py`.

Every response carries `request-id`, `cache-control: no-store` and headers that keep the
pages out of frames; a path or method the app does not serve, and an unexpected failure,
get an Anthropic-shaped error. Bodies are read up to a bound.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import TokenSigner
from claude_proxy.http.asgi import Message, Receive, Scope, Send
from claude_proxy.signin.common import REQUEST_ID_SCOPE_KEY, api_error
from claude_proxy.signin.developer import DeveloperEndpoints
from claude_proxy.signin.oauth import OAuthEndpoints
from claude_proxy.signin.oidc import OidcClient, OidcConfig
from claude_proxy.store.records import new_request_id

log = logging.getLogger("claude_proxy.signin")

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


class SigninApp:
    """The ASGI callable: security headers and a request id around the routes."""

    def __init__(self, router: Starlette, closers: list[Callable[[], Awaitable[None]]]) -> None:
        self._router = router
        self._closers = closers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        rid = new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = rid

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


# Every route: its path, the method that answers it (of `OAuthEndpoints`, then of
# `DeveloperEndpoints`), and its HTTP methods.
_OAUTH_ENDPOINTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/.well-known/oauth-authorization-server", "discovery", ("GET",)),
    ("/oauth/device_authorization", "device_authorization", ("POST",)),
    ("/device", "device_page", ("GET",)),
    ("/device", "device_submit", ("POST",)),
    ("/oauth/callback", "callback", ("GET",)),
    ("/oauth/token", "token", ("POST",)),
    ("/oauth/revoke", "revoke", ("POST",)),
    ("/oauth/login", "admin_login", ("GET",)),
    ("/oauth/logout", "admin_logout", ("GET", "POST")),
)
_DEVELOPER_ENDPOINTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/managed/settings", "managed_settings", ("GET",)),
    ("/v1/metrics", "otlp", ("POST",)),
    ("/v1/logs", "otlp", ("POST",)),
    ("/v1/traces", "otlp", ("POST",)),
    ("/me", "me", ("GET",)),
    ("/me/keys", "my_keys", ("GET",)),
    ("/me/keys", "create_my_key", ("POST",)),
)
# The paths the app serves.
PATHS = tuple(dict.fromkeys(path for path, _, _ in _OAUTH_ENDPOINTS + _DEVELOPER_ENDPOINTS))


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
    oauth = OAuthEndpoints(
        public=public,
        oidc=client,
        allowed_groups=allowed_groups,
        admin_groups=admin_groups,
        session_secret=session_secret,
        engine=engine,
        signer=signer,
        people=people,
    )
    developer = DeveloperEndpoints(
        engine=engine, signer=signer, people=people, limiter=limiter, keys=keys
    )
    router = Starlette(
        routes=[
            Route(path, getattr(answers, answer), methods=list(methods))
            for answers, endpoints in (
                (oauth, _OAUTH_ENDPOINTS),
                (developer, _DEVELOPER_ENDPOINTS),
            )
            for path, answer, methods in endpoints
        ],
        exception_handlers={404: _not_found, 405: _not_allowed, Exception: _failed},
    )
    return SigninApp(router, [client.close])


async def _not_found(request: Request, exc: Exception) -> Response:
    return api_error(request, "not_found_error", f"Not found: {request.url.path[:200]}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return api_error(request, "invalid_request_error", f"{request.method} is not allowed here")


async def _failed(request: Request, exc: Exception) -> Response:
    return api_error(request, "api_error", "internal error")
