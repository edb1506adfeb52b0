"""The admin API's read side of the request log: usage summaries and the log tail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from claude_proxy.admin.common import ERROR_RESPONSES, MoneyOut, db, when
from claude_proxy.store.queries import recent_logs, usage_summary

MAX_LOG_ROWS = 1000
UsageBy = Literal["key", "model", "day", "user", "group"]


class UsageRow(BaseModel):
    bucket: str | None = Field(
        description="The key id, model, UTC day (YYYY-MM-DD), user id or group id."
    )
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
    by: UsageBy
    since: datetime
    until: datetime | None
    data: list[UsageRow]


class LogEntry(BaseModel):
    """One `request_logs` row (docs/request-logs.md)."""

    id: str
    created_at: datetime
    logged_at: datetime
    key_id: str | None
    user_id: str | None = Field(description="The user the request was made as.")
    group_id: str | None = Field(description="The group the request was charged to.")
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


def usage_router(engine: Engine) -> APIRouter:
    router = APIRouter(responses=ERROR_RESPONSES)

    @router.get("/usage", response_model=Usage, tags=["usage"])
    async def usage(
        by: Annotated[UsageBy, Query()] = "model",
        since: Annotated[
            str, Query(description="7d, 12h, 30m ... ago, or an ISO date/time (UTC)")
        ] = "7d",
        until: Annotated[str | None, Query(description="Same forms; default: now")] = None,
    ) -> Usage:
        """Requests, errors, tokens, cost and latency per key, model, UTC day, user (who
        made the request) or group (the group it was charged to)."""
        start = when("since", since)
        end = when("until", until) if until is not None else None
        rows = await db(usage_summary, engine, by, start, end)
        return Usage(by=by, since=start, until=end, data=[UsageRow(**r) for r in rows])

    @router.get("/logs", response_model=Logs, tags=["logs"])
    async def logs(
        key_id: str | None = None,
        user_id: Annotated[str | None, Query(description="Only this user's requests.")] = None,
        group_id: Annotated[
            str | None, Query(description="Only requests charged to this group.")
        ] = None,
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
            user_id=user_id,
            group_id=group_id,
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

    return router
