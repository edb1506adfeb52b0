"""Optional OpenTelemetry tracing (placeholder: being written)."""

from __future__ import annotations

from typing import Any, Protocol

from claude_proxy.records import RequestRecord


class Tracing(Protocol):
    """What the relay and the dispatcher call; absent (None) when tracing is off."""

    def start_request(self, record: RequestRecord, headers: list[tuple[bytes, bytes]]) -> Any: ...

    def finish_request(self, span: Any, record: RequestRecord) -> None: ...

    def start_attempt(self, parent: Any, attempt: int) -> Any: ...

    def finish_attempt(self, span: Any, status: int | None, error: str | None) -> None: ...

    def shutdown(self) -> None: ...


def build_tracing(settings: object) -> Tracing | None:
    return None
