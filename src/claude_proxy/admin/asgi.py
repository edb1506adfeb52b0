"""The ASGI front of the admin apps: credentials first, then the framework.

Credentials are checked before anything else (routing, body parsing, the OpenAPI
schema), so nothing about an admin API is visible without them. The wrapper also gives
every response a request id (`request-id`, `x-claude-proxy-request-id`) and
`cache-control: no-store` (a created key's secret is in a response body), reads bodies
with a size bound, refuses a NUL in the path or query before any lookup, and turns an
exception that escaped the framework into a logged 500 instead of a crash upward.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from claude_proxy.admin.auth import AdminAuth, Refusal
from claude_proxy.admin.common import (
    ACTOR_SCOPE_KEY,
    REQUEST_ID_SCOPE_KEY,
    hide_sql_parameters,
    query_problem,
)
from claude_proxy.formats.anthropic.errors import send_error
from claude_proxy.http.asgi import ASGIApp, Message, Receive, Scope, Send
from claude_proxy.store.records import new_request_id

log = logging.getLogger("claude_proxy.admin")

MAX_BODY_BYTES = 64 * 1024  # admin bodies are a few hundred bytes
_NO_STORE = (b"cache-control", b"no-store")
_MAX_NEXT_CHARS = 2000  # the page to come back to after signing in


class AdminApp:
    """Credentials, then the wrapped app with the actor in its scope.

    `cookie`: the admin session cookie counts (the admin API). `x_api_key`: the admin key
    may come in `x-api-key` (the spend-limit routes, as the Claude apps gateway's tooling
    sends it). `login_path`: where a browser without credentials is sent to sign in, when
    sign-in is on. `refusal_message`: one message for every refused request (the
    spend-limit routes answer exactly as the Claude apps gateway does).
    """

    def __init__(
        self,
        app: ASGIApp,
        auth: AdminAuth,
        *,
        cookie: bool = True,
        x_api_key: bool = False,
        login_path: str | None = None,
        refusal_message: str | None = None,
        realm: str = "claude-proxy admin",
    ) -> None:
        self.app = app
        self.auth = auth
        self._cookie = cookie
        self._x_api_key = x_api_key
        self._login_path = login_path
        self._refusal_message = refusal_message
        self._challenge = f'Bearer realm="{realm}"'.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = scope.get(REQUEST_ID_SCOPE_KEY)
        if not isinstance(rid, str):
            rid = new_request_id()
        who = self.auth.check(scope, cookie=self._cookie, x_api_key=self._x_api_key)
        if isinstance(who, Refusal):
            await self._refuse(scope, send, who, rid)
            return

        problem = query_problem(scope)
        if problem is not None:
            await send_error(send, "invalid_request_error", problem, rid, extra_headers=[_NO_STORE])
            return
        body = await self._read_body(scope, receive, send, rid)
        if body is None:
            return
        replayed = False

        async def receive_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, whenever it comes

        started = False
        rid_bytes = rid.encode()

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    *message.get("headers", ()),
                    (b"request-id", rid_bytes),
                    (b"x-claude-proxy-request-id", rid_bytes),
                    _NO_STORE,
                ]
                message = {**message, "headers": headers}
            await send(message)

        inner = {**scope, REQUEST_ID_SCOPE_KEY: rid, ACTOR_SCOPE_KEY: who}
        try:
            await self.app(inner, receive_body, send_with_headers)
        except Exception as exc:
            hide_sql_parameters(exc)  # they can hold a key's hash
            log.exception(
                "admin API error: %s %s (request_id %s)",
                scope.get("method"),
                scope.get("path"),
                rid,
            )
            if not started:
                await send_error(
                    send,
                    "api_error",
                    f"internal error in the admin API; the proxy's log has the details "
                    f"(request_id {rid})",
                    rid,
                    extra_headers=[_NO_STORE],
                )

    async def _refuse(self, scope: Scope, send: Send, why: Refusal, rid: str) -> None:
        if why.login and self._login_path and self.auth.sign_in and _wants_page(scope):
            await self._to_sign_in(scope, send, rid)
            return
        if self._refusal_message is not None:
            error_type, message = "authentication_error", self._refusal_message
        else:
            error_type, message = why.error_type, why.message
        extra = [_NO_STORE]
        if error_type == "authentication_error":
            extra.append((b"www-authenticate", self._challenge))
        await send_error(send, error_type, message, rid, extra_headers=extra)

    async def _to_sign_in(self, scope: Scope, send: Send, rid: str) -> None:
        """A browser with no (or an expired) admin session: to the sign-in page, and back
        here afterwards."""
        target = scope.get("path", "/admin/")
        query = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        if len(target) > _MAX_NEXT_CHARS:
            target = "/admin/"
        location = f"{self._login_path}?{urlencode({'next': target})}"
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", location.encode("latin-1", "replace")),
                    (b"content-length", b"0"),
                    (b"request-id", rid.encode()),
                    _NO_STORE,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, send: Send, rid: str) -> bytes | None:
        """The whole request body (they are small), or None once a 413 has been sent
        or the client has gone."""
        too_large = False
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                too_large = not value.isdigit() or int(value) > MAX_BODY_BYTES
        body = bytearray()
        while not too_large:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            too_large = len(body) > MAX_BODY_BYTES
            if not message.get("more_body", False):
                break
        if too_large:
            await send_error(
                send,
                "request_too_large",
                f"the admin API takes request bodies of at most {MAX_BODY_BYTES // 1024} KiB",
                rid,
                extra_headers=[_NO_STORE],
            )
            return None
        return bytes(body)


def _wants_page(scope: Scope) -> bool:
    """A browser navigating (GET, accepts HTML), not a script calling the API."""
    if scope.get("method") != "GET":
        return False
    for name, value in scope.get("headers", ()):
        if name.lower() == b"accept":
            return b"text/html" in bytes(value).lower()
    return False
