"""What every admin route shares: the error envelope, value checks, money and times.

Every error is Anthropic-shaped, `{"type":"error","error":{"type","message"},
"request_id"}`. A value the database cannot take or hold (a NUL character, which
PostgreSQL refuses in text; a time outside the years 1 to 9999) is a 400 naming it,
found before any query, never a 500 from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field, PlainSerializer
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException

from claude_proxy.formats.anthropic.errors import error_body
from claude_proxy.gateway.errors import STATUS_FOR_TYPE
from claude_proxy.http.asgi import Scope
from claude_proxy.store.columns import money_text
from claude_proxy.store.keys import BUDGET_MAX
from claude_proxy.store.people import Conflict
from claude_proxy.store.queries import parse_duration
from claude_proxy.store.records import bounded, new_request_id

# The request id of the request being served, and who makes it (for the audit log): set
# by AdminApp in its copy of the scope, after authentication.
REQUEST_ID_SCOPE_KEY = "claude_proxy.request_id"
ACTOR_SCOPE_KEY = "claude_proxy.admin_actor"
# `since`/`until` are "7d" or an ISO date/time: a few dozen characters at most.
MAX_WHEN_CHARS = 64
_NUL = "\x00"

T = TypeVar("T")
Period = Literal["day", "week", "month", "total"]


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: refused here as a 400, not by the database as a 500."""
    if _NUL in text:
        raise ValueError("must not contain a NUL character")
    return text


Text = Annotated[str, AfterValidator(_no_nul)]

# Money in: a JSON number or string. Money out: a decimal string with 8 places, exact.
MoneyIn = Annotated[Decimal, Field(ge=0, le=BUDGET_MAX, max_digits=18, decimal_places=8)]
MoneyOut = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]


class ErrorDetail(BaseModel):
    type: str = Field(examples=["not_found_error"])
    message: str


class ErrorResponse(BaseModel):
    """The Anthropic API's error envelope, for every error this API returns."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (500, "api_error"),
    )
}


class ApiError(Exception):
    """Raised by a route: answered as an Anthropic-shaped error (`status`: when not the
    error type's own, e.g. 409 for a name or email already taken)."""

    def __init__(
        self,
        error_type: str,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.headers = headers


def bad_request(message: str) -> ApiError:
    return ApiError("invalid_request_error", message)


def not_found(message: str) -> ApiError:
    return ApiError("not_found_error", message)


def conflict(message: str) -> ApiError:
    """A name or email already taken: 409, typed as the invalid request it is."""
    return ApiError("invalid_request_error", message, 409)


def request_id(request: Request) -> str:
    rid = request.scope.get(REQUEST_ID_SCOPE_KEY)
    return rid if isinstance(rid, str) else new_request_id()


def actor(request: Request) -> str:
    """Who makes this request, as the audit log names them ("admin-key", "oidc:<sub>
    <email>"): AdminApp put it in the scope once the credentials were checked."""
    who = request.scope.get(ACTOR_SCOPE_KEY)
    if not isinstance(who, str) or not who:  # never reached past AdminApp
        raise ApiError("authentication_error", "no admin credentials")
    return who


def error_response(
    request: Request,
    error_type: str,
    message: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        error_body(error_type, message, request_id(request)),
        status_code=status or STATUS_FOR_TYPE[error_type],
        media_type="application/json",
        headers=headers,
    )


_TYPE_FOR_STATUS = {status: t for t, status in STATUS_FOR_TYPE.items()}


def validation_message(errors: Sequence[Any]) -> str:
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


def install_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI or a route raises, answered in the Anthropic envelope."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.error_type, exc.message, exc.status, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error_type = _TYPE_FOR_STATUS.get(exc.status_code)
        if error_type is None:
            error_type = "api_error" if exc.status_code >= 500 else "invalid_request_error"
        if exc.status_code == 404:
            message = f"Not found: {bounded(request.url.path, 200)}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {bounded(request.url.path, 200)}"
        else:
            message = str(exc.detail)
        return error_response(request, error_type, message, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, "invalid_request_error", validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Logged by AdminApp, which sees the exception again after this response.
        return error_response(
            request,
            "api_error",
            f"internal error in the admin API; the proxy's log has the details "
            f"(request_id {request_id(request)})",
        )


def changes_of(body: BaseModel) -> dict[str, Any]:
    """A PATCH's changes: the fields its body sent (null included), a model list as a
    tuple; an empty body is a 400."""
    changes: dict[str, Any] = {f: getattr(body, f) for f in body.model_fields_set}
    if not changes:
        raise bad_request("nothing to change: the body is empty")
    if changes.get("models") is not None:
        changes["models"] = tuple(changes["models"])
    return changes


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking store call, off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def store_change(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A store change, off the event loop: its ValueError is the admin's mistake (a 400),
    a Conflict (a name or email already taken) a 409."""
    try:
        return await db(fn, *args, **kwargs)
    except Conflict as exc:
        raise conflict(str(exc)) from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def utc(at: datetime) -> datetime:
    """`at` in UTC (no offset: taken as UTC). ValueError when that is outside years
    1-9999 (`9999-12-31T23:00-05:00`), which no database column can hold."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range (years 1 to 9999, in UTC)") from None


def when(name: str, text: str) -> datetime:
    """`since`/`until`: a duration ago or an ISO date/time, bounded; else a 400."""
    usage = f"{name}: use 7d, 12h, 30m or an ISO date/time"
    if len(text) > MAX_WHEN_CHARS:
        raise bad_request(f"{usage} (at most {MAX_WHEN_CHARS} characters)")
    try:
        ago = parse_duration(text)
    except (OverflowError, ValueError):  # more days than a timedelta holds
        ago = timedelta.max
    if ago is not None:
        try:
            return datetime.now(UTC) - ago
        except OverflowError:
            raise bad_request(f"{name}: {text} ago is before year 1") from None
    try:
        return utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        detail = str(exc) if "out of range" in str(exc) else None
        raise bad_request(
            f"{name}: {text!r} {detail}" if detail else f"{usage}, not {text!r}"
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


def hide_sql_parameters(exc: BaseException | None) -> None:
    """SQLAlchemy puts a failed statement's parameters in the exception's text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StatementError):
            exc.hide_parameters = True
        exc = exc.__cause__ or exc.__context__
