"""Getting a response from the upstream: through the circuit breaker, with retries.

Everything here happens before the first byte reaches the client, which is what
makes a retry safe. It returns either the response to relay (possibly an upstream
error, passed through unchanged) or a `ProxyError`: an answer the proxy makes itself.
"""

from __future__ import annotations

import asyncio
import logging

from claude_proxy.gateway.breaker import CircuitBreaker, is_failure_status
from claude_proxy.gateway.errors import ProxyError
from claude_proxy.gateway.retry import RetryPolicy
from claude_proxy.store.records import RequestRecord
from claude_proxy.telemetry.reporter import Telemetry
from claude_proxy.telemetry.spans import Span
from claude_proxy.upstream.pool import Buffer, ConnectError, UpstreamPool, UpstreamResponse

log = logging.getLogger("claude_proxy.upstream")


class Dispatcher:
    def __init__(
        self,
        *,
        pool: UpstreamPool,
        breaker: CircuitBreaker,
        retry: RetryPolicy,
        telemetry: Telemetry,
    ) -> None:
        self.pool = pool
        self.breaker = breaker
        self.retry = retry
        self.telemetry = telemetry

    async def send(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Buffer,
        record: RequestRecord,
        span: Span | None = None,
    ) -> UpstreamResponse | ProxyError:
        self.retry.note_request()
        telemetry, tracing = self.telemetry, self.telemetry.tracing
        attempt = 0
        while True:
            if not self.breaker.allow():
                telemetry.upstream_error("circuit_open")
                wait = self.breaker.retry_after()
                msg = (
                    "The upstream API is failing, so the proxy's circuit breaker is open; "
                    f"retry in {wait} seconds."
                )
                log.warning("circuit open: refused request_id=%s", record.id)
                return ProxyError(
                    "overloaded_error", msg, headers=((b"retry-after", b"%d" % wait),)
                )
            attempt += 1
            record.upstream_attempts = attempt
            attempt_span = tracing.start_attempt(span, attempt) if tracing is not None else None
            try:
                resp = await self.pool.request(method, target, headers, body)
            except ConnectError as exc:
                if tracing is not None and attempt_span is not None:
                    tracing.finish_attempt(attempt_span, None, str(exc))
                self.breaker.record(False)
                telemetry.upstream_error("timeout" if exc.timeout else "connect_error")
                delay = self.retry.after_connect_error(attempt, exc.sent)
                _log_attempt(str(exc), record.id, attempt, delay)
                if delay is None:
                    if exc.timeout:
                        return ProxyError("timeout_error", str(exc))
                    return ProxyError("api_error", f"Upstream error: {exc}", 502)
                telemetry.retried()
                await asyncio.sleep(delay)
                continue
            except BaseException:
                if tracing is not None and attempt_span is not None:
                    tracing.finish_attempt(attempt_span, None, "cancelled")
                self.breaker.forget()  # cancelled (client gone): no outcome to count
                raise
            status = resp.status
            if tracing is not None and attempt_span is not None:
                tracing.finish_attempt(attempt_span, status, None)
            self.breaker.record(not is_failure_status(status))
            if status >= 500:
                telemetry.upstream_error("overloaded" if status == 529 else "status_5xx")
            delay = self.retry.after_status(attempt, status, resp.header)
            if delay is None:
                return resp
            _log_attempt(f"upstream answered {status}", record.id, attempt, delay)
            telemetry.retried()
            resp.release()
            await asyncio.sleep(delay)


def _log_attempt(what: str, request_id: str, attempt: int, delay: float | None) -> None:
    if delay is None:
        log.error("%s (attempt %d) request_id=%s", what, attempt, request_id)
    else:
        log.warning(
            "%s (attempt %d); retrying in %.2fs request_id=%s", what, attempt, delay, request_id
        )
