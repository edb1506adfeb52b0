"""Anthropic-shaped errors, as JSON responses and as SSE `error` events.

Every error the proxy itself produces looks exactly like one from the API, so
the SDKs map it to the right exception class and Claude Code's recovery logic
keeps working. Upstream errors are never rewritten: they pass through as bytes.
"""

from __future__ import annotations

import orjson

from claude_proxy.gateway.errors import STATUS_FOR_TYPE
from claude_proxy.http.asgi import Send


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    """The API's error envelope: `{"type":"error","error":{...},"request_id":...}`."""
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


def sse_error_event(error_type: str, message: str, request_id: str) -> bytes:
    """A mid-stream `error` event; the SDKs raise on it instead of returning a truncated message."""
    return b"event: error\ndata: " + error_body(error_type, message, request_id) + b"\n\n"


def error_headers(body: bytes, request_id: str) -> list[tuple[bytes, bytes]]:
    """The headers of every error response the proxy makes itself."""
    rid = request_id.encode()
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"request-id", rid),
        (b"x-claude-proxy-request-id", rid),
    ]


def error_answer(
    error_type: str, message: str, request_id: str
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of an error answered below the app (http/protocol.py)."""
    body = error_body(error_type, message, request_id)
    return error_headers(body, request_id), body


async def send_error(
    send: Send,
    error_type: str,
    message: str,
    request_id: str,
    *,
    status: int | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with a complete Anthropic-shaped JSON error response."""
    body = error_body(error_type, message, request_id)
    headers = error_headers(body, request_id)
    if extra_headers:
        headers.extend(extra_headers)
    await send(
        {
            "type": "http.response.start",
            "status": status if status is not None else STATUS_FOR_TYPE[error_type],
            "headers": headers,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
