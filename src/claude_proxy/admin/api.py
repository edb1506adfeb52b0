"""The admin API under /admin/api/: keys, people, the audit log, usage and the request log.

The proxy forwards every request under /admin/ here, unchanged, when an admin key
(CLAUDE_PROXY_ADMIN_KEY) or sign-in (CLAUDE_PROXY_SESSION_SECRET) is configured. Every
request must carry admin credentials (admin/auth.py), checked before anything else
(routing, body parsing, the OpenAPI schema), so nothing about the API is visible
without them. The routes live in one module per job: admin/keys.py, admin/people.py
(users, groups, org, audit), admin/usage.py (usage and the request log); the error
envelope and value checks they share in admin/common.py; the ASGI front in admin/asgi.py.

Every error is Anthropic-shaped, `{"type":"error","error":{"type","message"},
"request_id"}`, and every response has `request-id` and `cache-control: no-store`.
Money is a decimal string with 8 places ("10.00000000"), never a float. Documented in
docs/admin-api.md.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from claude_proxy import __version__
from claude_proxy.admin.asgi import MAX_BODY_BYTES, AdminApp
from claude_proxy.admin.auth import AdminAuth
from claude_proxy.admin.common import REQUEST_ID_SCOPE_KEY, install_error_handlers
from claude_proxy.admin.keys import CreatedKey, KeyOut, keys_router
from claude_proxy.admin.people import Refresh, people_refresher, people_router
from claude_proxy.admin.usage import LogEntry, usage_router
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, TokenSigner

log = logging.getLogger("claude_proxy.admin")

PREFIX = "/admin/api"
# Where a browser without an admin session is sent (the sign-in app serves it).
LOGIN_PATH = "/oauth/login"

__all__ = [
    "MAX_BODY_BYTES",
    "PREFIX",
    "REQUEST_ID_SCOPE_KEY",
    "AdminApp",
    "CreatedKey",
    "KeyOut",
    "LogEntry",
    "build_admin_app",
]


class _AdminFastAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        if "security" not in schema:  # freshly generated: say how to authenticate, and
            # drop FastAPI's 422 (validation errors are 400 invalid_request_error here)
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {}).update(
                {
                    "adminKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "CLAUDE_PROXY_ADMIN_KEY, or the access token of a "
                        "signed-in member of CLAUDE_PROXY_OIDC_ADMIN_GROUPS",
                    },
                    "adminSession": {
                        "type": "apiKey",
                        "in": "cookie",
                        "name": ADMIN_COOKIE,
                        "description": "The session an admin gets by signing in at "
                        f"{LOGIN_PATH} with a browser",
                    },
                }
            )
            schema["security"] = [{"adminKey": []}, {"adminSession": []}]
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
        return schema


async def _no_refresh() -> None:
    return None


def _build_fastapi(engine: Engine, keys: KeyCache, refresh: Refresh = _no_refresh) -> FastAPI:
    app = _AdminFastAPI(
        title="claude-proxy admin API",
        version=__version__,
        description="Proxy keys, people (users, groups, the organisation's policy), the "
        "audit log, usage and the request log. See docs/admin-api.md.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,  # the docs UI would load its assets from a CDN
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    app.include_router(keys_router(engine, keys), prefix=PREFIX)
    app.include_router(people_router(engine, refresh), prefix=PREFIX)
    app.include_router(usage_router(engine), prefix=PREFIX)
    return app


def build_admin_app(
    engine: Engine,
    keys: KeyCache,
    admin_key: str | None = None,
    *,
    signer: TokenSigner | None = None,
    people: People | None = None,
    admin_groups: frozenset[str] = frozenset(),
) -> AdminApp:
    """The admin API as an ASGI app, for the proxy to mount at /admin/.

    `keys` and `people` are the proxy's own caches, updated in place after a change.
    `admin_key`: CLAUDE_PROXY_ADMIN_KEY (None or empty: no admin key). `signer` (sign-in
    on) with `people` and `admin_groups`: signed-in members of those IdP groups may
    administer, with their access token or their admin session cookie. A ValueError
    when neither an admin key nor a signer is given: there would be no way in.
    """
    auth = AdminAuth(admin_key=admin_key, signer=signer, people=people, admin_groups=admin_groups)
    app = _build_fastapi(engine, keys, people_refresher(people))
    return AdminApp(app, auth, cookie=True, login_path=LOGIN_PATH)
