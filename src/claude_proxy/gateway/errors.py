"""ProxyError: every answer the proxy makes itself instead of the upstream's.

One value says it all (status, error type, message, extra headers, and why, for the
row), and the relay answers it in one place: Anthropic-shaped JSON before the response
started, an SSE `error` event after. It is returned, not raised, on the request path:
a refusal is ordinary traffic there (a key over its limit), not an exceptional path.

The error types are the Anthropic API's: the SDKs map them to their exception classes,
and the OpenAI-compatible endpoint answers errors in the same envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

# HTTP status for each error type the proxy emits itself.
STATUS_FOR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class ProxyError:
    """An error the proxy answers itself.

    `reason` is set when the proxy refused the request on purpose (a bad key, a limit, a
    malformed target): it is stored as the row's `refusal` (docs/request-logs.md lists
    them). A failure to get an answer (the upstream unreachable, a timeout) has none."""

    error_type: str
    message: str
    status: int = 0  # 0: the error type's own (STATUS_FOR_TYPE)
    headers: Headers = ()
    reason: str | None = None

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", STATUS_FOR_TYPE[self.error_type])


def refusal(
    reason: str, error_type: str, message: str, *, status: int = 0, headers: Headers = ()
) -> ProxyError:
    """A request refused on purpose, before anything was sent upstream."""
    return ProxyError(error_type, message, status, headers, reason)
