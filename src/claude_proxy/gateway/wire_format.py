"""What a wire format tells the gateway: the seam between policy and protocol.

The gateway governs and accounts every request the same way (keys, allowlists, limits,
budgets, the record); only a wire format knows where a request names its model and how a
response reports its usage. Each format in `formats/` provides one `WireFormat`; the
relay picks it by endpoint. Requests and responses still pass through as bytes: a format
only reads.
"""

from __future__ import annotations

from typing import Any, Protocol

from claude_proxy.store.records import MAX_MODEL_CHARS, RequestRecord, Usage, bounded


class ResponseObserver(Protocol):
    """Reads a copy of one response as it passes: what the record needs from it."""

    model: str | None
    message_id: str | None
    stop_reason: str | None
    error_type: str | None
    error_message: str | None
    usage: Usage

    @property
    def stream_complete(self) -> bool:
        """True once the stream ended the way this format ends one (the relay sends an
        SSE `error` event for a stream that stops before)."""
        ...

    def feed_sse(self, chunk: bytes) -> None: ...

    def feed_json(self, chunk: bytes) -> None: ...

    def finish_json(self) -> None:
        """A plain JSON body is complete: read what it says."""
        ...


class WireFormat(Protocol):
    """One API's request and response shapes, as far as the gateway must read them."""

    def note_request(self, record: RequestRecord, body: dict[str, Any]) -> str | None:
        """Note on the record what it keeps of a parsed request body (model, stream, the
        caller's user id), bounded; returns the model, whole, for the allowlist."""
        ...

    def unmetered(self, body: dict[str, Any]) -> str | None:
        """Why the response to this request will not report its usage, or None when it
        will. A key with a token limit or a budget is refused such a request: what it
        spends could not be counted."""
        ...

    def observer(self, content_encoding: str | None) -> ResponseObserver:
        """A new observer for one response with this Content-Encoding."""
        ...


def note_model(record: RequestRecord, body: dict[str, Any]) -> str | None:
    """What every format notes alike: `model` (bounded on the record, returned whole) and
    `stream`."""
    model = body.get("model")
    if not isinstance(model, str):
        model = None
    else:
        record.model = bounded(model, MAX_MODEL_CHARS)
    record.stream = body.get("stream") is True
    return model
