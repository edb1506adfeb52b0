"""The admin API under /admin/api/: proxy keys, usage and the request log.

The proxy forwards every request under /admin/ here, unchanged, when
CLAUDE_PROXY_ADMIN_KEY is set. Every request must carry `Authorization: Bearer
<admin key>`, checked before anything else (routing, body parsing, the OpenAPI
schema), so nothing about the API is visible without it.

Every error is Anthropic-shaped, `{"type":"error","error":{"type","message"},
"request_id"}`, and every response has `request-id` and `cache-control: no-store`
(a created key's secret is in a response body). A value the database cannot take or
hold (a NUL character, which PostgreSQL refuses in text; a time outside the years 1 to
9999) is a 400 naming it, found before any query, never a 500 from the database.
Changes to keys go to the database and then straight into this process's key cache
(`KeyCache.apply`), so they hold for the very next request; other replicas see them at
their next refresh. Money is a decimal string with 8 places ("10.00000000"), never a float.
Documented in docs/admin-api.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)
from sqlalchemy import Engine
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException

from claude_proxy import __version__
from claude_proxy.formats.anthropic.errors import error_body, send_error
from claude_proxy.gateway.errors import STATUS_FOR_TYPE
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.http.asgi import Message, Receive, Scope, Send
from claude_proxy.store.columns import current_period, money_text
from claude_proxy.store.keys import (
    BUDGET_MAX,
    RPM_MAX,
    TPM_MAX,
    KeyRow,
    KeySpec,
    create_key,
    get_key,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
    with_spend,
)
from claude_proxy.store.queries import parse_duration, recent_logs, usage_summary
from claude_proxy.store.records import bounded, new_request_id

log = logging.getLogger("claude_proxy.admin")

PREFIX = "/admin/api"
# The request id of the request being served, set by AdminApp in its copy of the scope.
REQUEST_ID_SCOPE_KEY = "claude_proxy.request_id"
MAX_BODY_BYTES = 64 * 1024  # key bodies are a few hundred bytes
MAX_LOG_ROWS = 1000
# `since`/`until` are "7d" or an ISO date/time: a few dozen characters at most.
MAX_WHEN_CHARS = 64
_NUL = "\x00"


T = TypeVar("T")
Period = Literal["day", "month", "total"]


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: refused here as a 400, not by the database as a 500."""
    if _NUL in text:
        raise ValueError("must not contain a NUL character")
    return text


Text = Annotated[str, AfterValidator(_no_nul)]

# Money in: a JSON number or string. Money out: a decimal string with 8 places, exact.
MoneyIn = Annotated[Decimal, Field(ge=0, le=BUDGET_MAX, max_digits=18, decimal_places=8)]
MoneyOut = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]


# ------------------------------------------------------------------------- models


class ErrorDetail(BaseModel):
    type: str = Field(examples=["not_found_error"])
    message: str


class ErrorResponse(BaseModel):
    """The Anthropic API's error envelope, for every error this API returns."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[Text] | None = Field(
        default=None,
        description="Allowed model ids or shell patterns (`claude-haiku-*`); null: any model.",
        examples=[["claude-sonnet-4-6", "claude-haiku-*"]],
    )
    rpm: int | None = Field(default=None, ge=1, le=RPM_MAX, description="Requests per minute.")
    tpm: int | None = Field(
        default=None,
        ge=1,
        le=TPM_MAX,
        description="Tokens per minute: input, cache writes and output (not cache reads).",
    )
    budget_usd: MoneyIn | None = Field(
        default=None, description="Spend cap per budget_period, in USD (a number or a string)."
    )
    budget_period: Period | None = None
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working (ISO 8601; UTC if no offset)."
    )

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("an empty list would allow no model; use null for any model")
        if not all(m.strip() for m in v):
            raise ValueError("model patterns cannot be empty")
        return [m.strip() for m in v]

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        v = _utc(v)
        if v <= datetime.now(UTC):
            raise ValueError("must be in the future (to stop a key now, revoke it)")
        return v


class KeyCreate(_KeyFields):
    """A new key; every limit is optional (absent or null: unlimited)."""

    name: Text = Field(min_length=1, description="Who or what the key is for.")


class KeyUpdate(_KeyFields):
    """Only the fields present change; null removes a limit. Setting budget_usd to null
    without budget_period removes the budget altogether."""

    name: Text | None = Field(default=None, min_length=1)


class KeyOut(BaseModel):
    id: str = Field(examples=["key_3f9a0c2b7d1e4a56"])
    name: str
    prefix: str = Field(
        description="The key's first characters, to tell keys apart; not usable as a key.",
        examples=["sk-proxy-Ab3dE9"],
    )
    status: Literal["active", "expired", "revoked"]
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None
    budget_period: Period | None
    spend_usd: MoneyOut | None = Field(description="Spend in spend_period.")
    spend_period: str | None = Field(
        description="The budget period counted now (`day:2026-11-27`, `month:2026-11`, "
        "`total`); `total` for a key without a budget."
    )
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(KeyOut):
    key: str = Field(
        description="The secret. Shown in this response only: only its SHA-256 is stored.",
        examples=["sk-proxy-Ab3dE9..."],
    )


class KeyList(BaseModel):
    data: list[KeyOut]


class UsageRow(BaseModel):
    bucket: str | None = Field(description="The key id, model, or UTC day (YYYY-MM-DD).")
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: MoneyOut = Field(description="Sum of the known costs.")
    unpriced: int = Field(description="Requests whose model has no known price.")
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None


class Usage(BaseModel):
    by: Literal["key", "model", "day"]
    since: datetime
    until: datetime | None
    data: list[UsageRow]


class LogEntry(BaseModel):
    """One `request_logs` row (docs/request-logs.md)."""

    id: str
    created_at: datetime
    logged_at: datetime
    key_id: str | None
    endpoint: str
    method: str
    model: str | None
    stream: bool
    status_code: int | None
    error_type: str | None
    error_message: str | None
    stop_reason: str | None
    message_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_creation_5m_input_tokens: int | None
    cache_creation_1h_input_tokens: int | None
    cache_read_input_tokens: int | None
    cost_usd: MoneyOut | None = Field(description="null: the model has no known price.")
    latency_ms: float | None
    ttft_ms: float | None
    upstream_request_id: str | None
    client_disconnected: bool
    upstream_attempts: int
    client_ip: str | None
    user_agent: str | None
    anthropic_beta: str | None
    metadata_user_id: str | None
    claude_code_session_id: str | None
    refusal: str | None
    request_body: str | None = Field(description="Only with include_bodies=true.")
    response_body: str | None = Field(description="Only with include_bodies=true.")


class Logs(BaseModel):
    data: list[LogEntry] = Field(description="Oldest first: the latest `limit` matching rows.")


# ------------------------------------------------------------------------ helpers


def _key_fields(row: KeyRow) -> dict[str, Any]:
    fields = row.public()  # everything but the hash
    fields["spend_period"] = (
        current_period(row.budget_period or "total") if row.spend_usd is not None else None
    )
    return fields


def key_out(row: KeyRow) -> KeyOut:
    return KeyOut(**_key_fields(row))


def created_out(row: KeyRow, secret: str) -> CreatedKey:
    return CreatedKey(key=secret, **_key_fields(row))


def _request_id(request: Request) -> str:
    rid = request.scope.get(REQUEST_ID_SCOPE_KEY)
    return rid if isinstance(rid, str) else new_request_id()


def _error(request: Request, error_type: str, message: str, status: int | None = None) -> Response:
    return Response(
        error_body(error_type, message, _request_id(request)),
        status_code=status or STATUS_FOR_TYPE[error_type],
        media_type="application/json",
    )


class ApiError(Exception):
    """Raised by a route: answered as an Anthropic-shaped error."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _not_found(key_id: str) -> ApiError:
    return ApiError("not_found_error", f"no key with id {key_id!r}")


_TYPE_FOR_STATUS = {status: t for t, status in STATUS_FOR_TYPE.items()}


def _validation_message(errors: Sequence[Any]) -> str:
    """`rpm: Input should be greater than or equal to 1; name: Field required`."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
            loc = []
        elif err.get("type") == "model_attributes_type" and not loc:
            msg = "the body must be a JSON object, sent with content-type: application/json"
        elif err.get("type") == "missing" and not loc:
            msg = "a JSON body is required"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


# ------------------------------------------------------------------------- the app


class _AdminFastAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        if "security" not in schema:  # freshly generated: say how to authenticate, and
            # drop FastAPI's 422 (validation errors are 400 invalid_request_error here)
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["adminKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "CLAUDE_PROXY_ADMIN_KEY",
            }
            schema["security"] = [{"adminKey": []}]
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
        return schema


def _build_fastapi(engine: Engine, keys: KeyCache) -> FastAPI:
    app = _AdminFastAPI(
        title="claude-proxy admin API",
        version=__version__,
        description="Proxy keys, usage and the request log. See docs/admin-api.md.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,  # the docs UI would load its assets from a CDN
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )

    async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def shown(row: KeyRow) -> KeyRow:
        return (await db(with_spend, engine, [row]))[0]

    async def changed(row: KeyRow) -> KeyRow:
        keys.apply(row)  # on the event loop, where the request path reads the cache
        return await shown(row)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(request, exc.error_type, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error_type = _TYPE_FOR_STATUS.get(exc.status_code)
        if error_type is None:
            error_type = "api_error" if exc.status_code >= 500 else "invalid_request_error"
        if exc.status_code == 404:
            message = f"Not found: {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(request, error_type, message, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, "invalid_request_error", _validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Logged by AdminApp, which sees the exception again after this response.
        return _error(
            request,
            "api_error",
            f"internal error in the admin API; the proxy's log has the details "
            f"(request_id {_request_id(request)})",
        )

    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": description}
        for status, description in (
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (404, "not_found_error"),
            (500, "api_error"),
        )
    }
    router = APIRouter(prefix=PREFIX, responses=errors)

    # ------------------------------------------------------------------- keys

    @router.post("/keys", status_code=201, response_model=CreatedKey, tags=["keys"])
    async def create(body: KeyCreate) -> CreatedKey:
        """Create a key. The response holds the secret in `key`, this once."""
        spec = _spec(body.model_dump())
        row, secret = await db(create_key, engine, spec)
        return created_out(await changed(row), secret)

    @router.get("/keys", response_model=KeyList, tags=["keys"])
    async def list_(
        include_revoked: Annotated[bool, Query(description="Include revoked keys.")] = False,
    ) -> KeyList:
        """All keys (without revoked ones unless include_revoked), oldest first."""
        rows = await db(list_keys, engine, include_revoked=include_revoked)
        rows = await db(with_spend, engine, rows)
        return KeyList(data=[key_out(r) for r in rows])

    @router.get("/keys/{key_id}", response_model=KeyOut, tags=["keys"])
    async def show(key_id: str) -> KeyOut:
        """One key, with its spend in the current budget period."""
        row = await db(get_key, engine, key_id)
        if row is None:
            raise _not_found(key_id)
        return key_out(await shown(row))

    @router.patch("/keys/{key_id}", response_model=KeyOut, tags=["keys"])
    async def update(key_id: str, body: KeyUpdate) -> KeyOut:
        """Change a key's name or limits: only the fields sent change; null removes a limit."""
        changes = {f: getattr(body, f) for f in body.model_fields_set}
        if not changes:
            raise ApiError("invalid_request_error", "nothing to change: the body is empty")
        if "name" in changes and changes["name"] is None:
            raise ApiError("invalid_request_error", "name: a key needs a name")
        if "budget_usd" in changes and changes["budget_usd"] is None:
            changes.setdefault("budget_period", None)  # null budget: no budget at all
        if "models" in changes and changes["models"] is not None:
            changes["models"] = tuple(changes["models"])
        try:
            row = await db(update_key, engine, key_id, **changes)
        except ValueError as exc:  # KeySpec: the new combination is checked before writing
            raise ApiError("invalid_request_error", str(exc)) from None
        if row is None:
            raise _not_found(key_id)
        return key_out(await changed(row))

    async def _revoke(key_id: str) -> KeyOut:
        row = await db(revoke_key, engine, key_id)
        if row is None:
            raise _not_found(key_id)
        return key_out(await changed(row))

    @router.post("/keys/{key_id}/revoke", response_model=KeyOut, tags=["keys"])
    async def revoke(key_id: str) -> KeyOut:
        """Revoke a key, at once and for good (revoking twice keeps the first time)."""
        return await _revoke(key_id)

    @router.delete("/keys/{key_id}", response_model=KeyOut, tags=["keys"])
    async def delete(key_id: str) -> KeyOut:
        """The same as POST .../revoke: the row stays, for the request log's sake."""
        return await _revoke(key_id)

    @router.post("/keys/{key_id}/rotate", response_model=CreatedKey, tags=["keys"])
    async def rotate(key_id: str) -> CreatedKey:
        """A new secret for the key (shown this once); the old one stops working at once.
        Limits, spend and history stay."""
        rotated = await db(rotate_key, engine, key_id)
        if rotated is None:
            current = await db(get_key, engine, key_id)
            if current is None:
                raise _not_found(key_id)
            raise ApiError(
                "invalid_request_error", f"key {key_id} is revoked: it cannot be rotated"
            )
        row, secret = rotated
        return created_out(await changed(row), secret)

    # ------------------------------------------------------------ usage, logs

    @router.get("/usage", response_model=Usage, tags=["usage"])
    async def usage(
        by: Annotated[Literal["key", "model", "day"], Query()] = "model",
        since: Annotated[
            str, Query(description="7d, 12h, 30m ... ago, or an ISO date/time (UTC)")
        ] = "7d",
        until: Annotated[str | None, Query(description="Same forms; default: now")] = None,
    ) -> Usage:
        """Requests, errors, tokens, cost and latency per key, model or UTC day."""
        start = _when("since", since)
        end = _when("until", until) if until is not None else None
        rows = await db(usage_summary, engine, by, start, end)
        return Usage(by=by, since=start, until=end, data=[UsageRow(**r) for r in rows])

    @router.get("/logs", response_model=Logs, tags=["logs"])
    async def logs(
        key_id: str | None = None,
        model: str | None = None,
        status_code: Annotated[int | None, Query(ge=100, le=599)] = None,
        error_type: Annotated[
            str | None, Query(description="e.g. rate_limit_error, client_disconnected")
        ] = None,
        refusal: Annotated[
            str | None,
            Query(description="Why the proxy refused: rpm, tpm, budget, model_not_allowed, ..."),
        ] = None,
        errors: Annotated[
            bool, Query(description="Only errors: status >= 400 or an error type.")
        ] = False,
        limit: Annotated[int, Query(ge=1, le=MAX_LOG_ROWS)] = 100,
        include_bodies: Annotated[
            bool, Query(description="Include captured bodies (CLAUDE_PROXY_LOG_BODIES).")
        ] = False,
    ) -> Logs:
        """The latest matching requests, oldest first."""
        rows = await db(
            recent_logs,
            engine,
            key_id=key_id,
            model=model,
            status_code=status_code,
            error_type=error_type,
            refusal=refusal,
            errors_only=errors,
            limit=limit,
        )
        if not include_bodies:
            for r in rows:
                r["request_body"] = r["response_body"] = None
        return Logs(data=[LogEntry(**r) for r in rows])

    app.include_router(router)
    return app


def _spec(fields: dict[str, Any]) -> KeySpec:
    if fields.get("models") is not None:
        fields["models"] = tuple(fields["models"])
    try:
        return KeySpec(**fields)
    except ValueError as exc:
        raise ApiError("invalid_request_error", str(exc)) from None


def _utc(at: datetime) -> datetime:
    """`at` in UTC (no offset: taken as UTC). ValueError when that is outside years
    1-9999 (`9999-12-31T23:00-05:00`), which no database column can hold."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range (years 1 to 9999, in UTC)") from None


def _when(name: str, text: str) -> datetime:
    """`since`/`until`: a duration ago or an ISO date/time, bounded; else a 400."""
    usage = f"{name}: use 7d, 12h, 30m or an ISO date/time"
    if len(text) > MAX_WHEN_CHARS:
        raise ApiError("invalid_request_error", f"{usage} (at most {MAX_WHEN_CHARS} characters)")
    try:
        ago = parse_duration(text)
    except (OverflowError, ValueError):  # more days than a timedelta holds
        ago = timedelta.max
    if ago is not None:
        try:
            return datetime.now(UTC) - ago
        except OverflowError:
            raise ApiError(
                "invalid_request_error", f"{name}: {text} ago is before year 1"
            ) from None
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        detail = str(exc) if "out of range" in str(exc) else None
        raise ApiError(
            "invalid_request_error",
            f"{name}: {text!r} {detail}" if detail else f"{usage}, not {text!r}",
        ) from None


def query_problem(scope: Scope) -> str | None:
    """Why the path or query cannot even be looked up (a NUL character), or None.

    One scan of the raw bytes for the common case; the slow path only names the culprit."""
    if _NUL in scope.get("path", ""):
        return "the path must not contain a NUL character"
    raw: bytes = scope.get("query_string", b"")
    if b"%00" not in raw and b"\x00" not in raw:
        return None
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if _NUL in name or _NUL in value:
            shown = bounded(name.replace(_NUL, "\\x00"), 64)
            return f"{shown}: must not contain a NUL character"
    return None


def _hide_sql_parameters(exc: BaseException | None) -> None:
    """SQLAlchemy puts a failed statement's parameters in the exception's text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StatementError):
            exc.hide_parameters = True
        exc = exc.__cause__ or exc.__context__


class AdminApp:
    """The ASGI app the proxy forwards /admin/ to: the admin key first, then FastAPI.

    Also gives every response a request id and `cache-control: no-store`, and turns
    an exception that escaped FastAPI into a logged 500 instead of a crash upward.
    """

    def __init__(self, app: FastAPI, admin_token: str) -> None:
        if not admin_token:
            raise ValueError("the admin API needs a non-empty admin token")
        self.app = app
        self._token = admin_token.encode()

    def authorized(self, scope: Scope) -> bool | None:
        """True: the admin key. False: a wrong one. None: no bearer token at all."""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                if scheme.lower() != b"bearer" or not token.strip():
                    return None
                return hmac.compare_digest(token.strip(), self._token)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = scope.get(REQUEST_ID_SCOPE_KEY)
        if not isinstance(rid, str):
            rid = new_request_id()
        ok = self.authorized(scope)
        if not ok:
            message = (
                "invalid admin key"
                if ok is False
                else "the admin API needs `Authorization: Bearer <CLAUDE_PROXY_ADMIN_KEY>`"
            )
            await send_error(
                send,
                "authentication_error",
                message,
                rid,
                extra_headers=[
                    (b"www-authenticate", b'Bearer realm="claude-proxy admin"'),
                    (b"cache-control", b"no-store"),
                ],
            )
            return

        problem = query_problem(scope)
        if problem is not None:
            await send_error(
                send,
                "invalid_request_error",
                problem,
                rid,
                extra_headers=[(b"cache-control", b"no-store")],
            )
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
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app({**scope, REQUEST_ID_SCOPE_KEY: rid}, receive_body, send_with_headers)
        except Exception as exc:
            _hide_sql_parameters(exc)  # they can hold a key's hash
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
                    extra_headers=[(b"cache-control", b"no-store")],
                )

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
                extra_headers=[(b"cache-control", b"no-store")],
            )
            return None
        return bytes(body)


def build_admin_app(engine: Engine, keys: KeyCache, admin_token: str) -> AdminApp:
    """The admin API as an ASGI app; `keys` is the proxy's own cache, updated in place."""
    return AdminApp(_build_fastapi(engine, keys), admin_token)
