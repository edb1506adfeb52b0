"""Bytes on the wire that every endpoint shares: status lines, header blocks, ids, error bodies.

Constant pieces are encoded once at import time. The header block that carries the date and the
rate-limit reset times changes once per second, so it is rebuilt at most once per second and
shared by every response in that second; per response only `request-id` and the length vary.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from http import HTTPStatus
from typing import Any

import orjson

# --- status lines -------------------------------------------------------------------------------

_EXTRA_PHRASES = {529: "Site Overloaded", 499: "Client Closed Request"}


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = _EXTRA_PHRASES.get(code, "Unknown")
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("latin-1")


_STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}


def status_line(code: int) -> bytes:
    """`HTTP/1.1 <code> <phrase>\\r\\n` for any code 100-599."""
    return _STATUS_LINES.get(code) or _status_line(code)


# --- constant header lines ----------------------------------------------------------------------

CT_JSON = b"content-type: application/json\r\n"
CT_SSE = b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
CT_OCTETS = b"content-type: application/octet-stream\r\n"
CT_JSONL = b"content-type: application/x-jsonl\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
CHUNK_END = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """Frame `data` as one HTTP/1.1 chunk (it must not be empty: that is the terminator)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# --- ids ----------------------------------------------------------------------------------------

BASE62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Random bytes mapped onto base62 by one translate(): 20 chars of (near-uniform) randomness make
# collisions practically impossible, at a fraction of the cost of divmod-based encoding.
_TO_BASE62 = bytes(BASE62[i % 62] for i in range(256))
_RANDOM = random.Random(secrets.randbits(128))


def new_id(prefix: str) -> str:
    """`<prefix>011C` + 20 random base62 chars, shaped like the real API's ids."""
    return prefix + "011C" + _RANDOM.randbytes(20).translate(_TO_BASE62).decode()


def rfc3339(ts: float, *, micros: bool = False) -> str:
    """UTC timestamp as RFC 3339 (`2026-11-27T10:00:00Z`, optionally with microseconds)."""
    if micros:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
        return f"{base}.{int((ts % 1) * 1_000_000):06d}Z"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- errors -------------------------------------------------------------------------------------

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

ERROR_MESSAGES: dict[int, str] = {
    400: "Invalid request",
    401: "invalid x-api-key",
    402: (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    ),
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: (
        "Number of request tokens has exceeded your per-minute rate limit "
        "(https://docs.claude.com/en/api/rate-limits); see the response headers for current "
        "usage. Please reduce the prompt length or the maximum tokens requested, or try again "
        "later. You may also contact sales at https://www.anthropic.com/contact-sales to "
        "discuss your options for a rate limit increase."
    ),
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "The request timed out while processing",
    529: "Overloaded",
}


def error_type_for(status: int) -> str:
    """The Anthropic `error.type` the real API uses for an HTTP status."""
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_message_for(status: int) -> str:
    """A message in the real API's wording where known, else the HTTP reason phrase."""
    found = ERROR_MESSAGES.get(status)
    if found is not None:
        return found
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    """`{"type":"error","error":{"type":...,"message":...},"request_id":...}` exactly."""
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


class ApiError(Exception):
    """An Anthropic-shaped error response, raised from anywhere inside a handler."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)


# --- shared header blocks -----------------------------------------------------------------------

REQUESTS_LIMIT = 4000
INPUT_TOKENS_LIMIT = 2_000_000
OUTPUT_TOKENS_LIMIT = 400_000


class CommonHeaders:
    """The header lines every response shares, rebuilt at most once per second.

    `success()` is the full set for 2xx (and 429) answers, including every
    `anthropic-ratelimit-*` header; `basic()` is just date + organization id for errors.
    """

    __slots__ = ("_basic", "_org", "_second", "_success")

    def __init__(self, organization_id: str | None = None) -> None:
        org = organization_id or str(uuid.uuid4())
        self._org = f"anthropic-organization-id: {org}\r\n".encode()
        self._second = -1
        self._basic = b""
        self._success = b""

    def _refresh(self, now: int) -> None:
        self._second = now
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        r1 = rfc3339(now + 1)
        r2 = rfc3339(now + 2)
        tokens = INPUT_TOKENS_LIMIT + OUTPUT_TOKENS_LIMIT
        self._basic = f"date: {date}\r\n".encode() + self._org
        self._success = (
            self._basic
            + (
                f"anthropic-ratelimit-requests-limit: {REQUESTS_LIMIT}\r\n"
                f"anthropic-ratelimit-requests-remaining: {REQUESTS_LIMIT - 1}\r\n"
                f"anthropic-ratelimit-requests-reset: {r1}\r\n"
                f"anthropic-ratelimit-tokens-limit: {tokens}\r\n"
                f"anthropic-ratelimit-tokens-remaining: {tokens}\r\n"
                f"anthropic-ratelimit-tokens-reset: {r2}\r\n"
                f"anthropic-ratelimit-input-tokens-limit: {INPUT_TOKENS_LIMIT}\r\n"
                f"anthropic-ratelimit-input-tokens-remaining: {INPUT_TOKENS_LIMIT}\r\n"
                f"anthropic-ratelimit-input-tokens-reset: {r2}\r\n"
                f"anthropic-ratelimit-output-tokens-limit: {OUTPUT_TOKENS_LIMIT}\r\n"
                f"anthropic-ratelimit-output-tokens-remaining: {OUTPUT_TOKENS_LIMIT}\r\n"
                f"anthropic-ratelimit-output-tokens-reset: {r2}\r\n"
            ).encode()
        )

    def success(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._refresh(now)
        return self._success

    def basic(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._refresh(now)
        return self._basic


def request_id_line(request_id: str) -> bytes:
    return b"request-id: " + request_id.encode() + b"\r\n"


def check_messages_and_stream(params: dict[str, Any]) -> list[Any]:
    """`messages` and `stream` as both the Messages and the Chat Completions endpoints
    validate them, with the API's wording; returns the messages."""
    messages = params.get("messages")
    if messages is None:
        raise ApiError(400, "messages: Field required")
    if not isinstance(messages, list):
        raise ApiError(400, "messages: Input should be a valid list")
    if not messages:
        raise ApiError(400, "messages: at least one message is required")
    stream = params.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "stream: Input should be a valid boolean")
    return messages
