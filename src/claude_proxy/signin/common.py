"""What every sign-in endpoint shares: bounded request bodies, the client's address,
the responses and both error shapes, and the catch-up of this replica's people cache.

The OAuth endpoints answer RFC 6749 errors (`{"error","error_description"}`, `oauth_error`);
the bearer endpoints and the router answer Anthropic-shaped ones (`api_error`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from claude_proxy.formats.anthropic.errors import error_body
from claude_proxy.gateway.errors import STATUS_FOR_TYPE
from claude_proxy.gateway.people import People
from claude_proxy.store.records import new_request_id

log = logging.getLogger("claude_proxy.signin")

MAX_FORM_BYTES = 16 * 1024
# The request id of the request being served: set by SigninApp in the scope.
REQUEST_ID_SCOPE_KEY = "claude_proxy.signin.request_id"


async def know_user(people: People, user_id: str, *, force: bool = False) -> None:
    """Make this replica's people cache know a user who just signed in (at once,
    `force`), or a token's user it has not seen yet (a shared, rate-limited re-read),
    instead of waiting for its next refresh."""
    if not force:
        if people.user(user_id) is None:
            await people.catch_up()
        return
    try:
        await asyncio.to_thread(people.refresh)
    except Exception as exc:
        log.warning("people refresh after sign-in failed (%s)", type(exc).__name__)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, cap: int, *, keep: bool = True) -> bytes | None:
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


async def read_form(request: Request, *, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body as {name: first value}; None when it is
    too large or not a form."""
    raw = await read_body(request, max_bytes)
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


def json_response(
    status: int, body: dict[str, Any], *, extra: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=extra
    )


def html_response(status: int, text: str) -> HTMLResponse:
    return HTMLResponse(text, status_code=status)


def oauth_error(status: int, error: str, description: str | None = None) -> Response:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return json_response(status, body, extra={"pragma": "no-cache"})


def api_error(request: Request, error_type: str, message: str) -> Response:
    rid = request.scope.get(REQUEST_ID_SCOPE_KEY) or new_request_id()
    return Response(
        error_body(error_type, message, rid),
        status_code=STATUS_FOR_TYPE[error_type],
        media_type="application/json",
        headers={"x-claude-proxy-request-id": rid},
    )
