"""The tracing hooks the request path calls, typed without loading OpenTelemetry.

tracing.py implements them on OpenTelemetry's SDK and is imported only when tracing is
on; the relay and the dispatcher see only these protocols (and skip every call when the
`Tracing` is None).
"""

from __future__ import annotations

from typing import Protocol

from claude_proxy.store.records import RequestRecord


class Span(Protocol):
    """An open span: the request path only carries it back to `Tracing`."""

    def is_recording(self) -> bool: ...


class Tracing(Protocol):
    """What the relay and the dispatcher call; absent (None) when tracing is off."""

    def start_request(self, record: RequestRecord, headers: list[tuple[bytes, bytes]]) -> Span:
        """The request's span, continuing the client's `traceparent` if it sent one."""
        ...

    def finish_request(self, span: Span, record: RequestRecord) -> None: ...

    def start_attempt(self, parent: Span | None, attempt: int) -> Span: ...

    def finish_attempt(self, span: Span, status: int | None, error: str | None) -> None: ...

    def shutdown(self) -> None: ...
