"""What crosses the proxy in each direction.

Requests: everything is forwarded unchanged (anthropic-*, x-stainless-*,
x-claude-code-*, user-agent, unknown headers...) except hop-by-hop headers,
`host`/`content-length` (recomputed for the upstream hop) and the client's
credentials, which are replaced by the real upstream key.
Responses: everything is forwarded except hop-by-hop headers.

This is one pass over raw ASGI header bytes per request on the hot path, so it
is written by hand rather than through a header-mapping class.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 9110 §7.6.1 hop-by-hop headers, plus proxy-only ones.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_FROM_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


@dataclass(slots=True)
class ClientHeaders:
    """The request headers, split into what goes upstream and what the proxy reads."""

    forward: list[tuple[bytes, bytes]]
    api_key: bytes | None = None
    bearer: bytes | None = None
    content_length: int | None = None
    user_agent: str | None = None
    anthropic_beta: str | None = None
    claude_code_session_id: str | None = None


def split_request_headers(raw: list[tuple[bytes, bytes]]) -> ClientHeaders:
    """Filter the client's headers for the upstream hop and pick out credentials and labels.

    The upstream client adds `host`, `content-length` and the real key itself.
    """
    out = ClientHeaders(forward=[])
    forward = out.forward
    extra_hop: set[bytes] = set()
    for name, value in raw:
        # ASGI servers lowercase names; lower() again in case one does not.
        name = name.lower()
        if name == b"x-api-key":
            out.api_key = value
            continue
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                out.bearer = value[7:].strip()
            continue
        if name in _DROP_FROM_REQUEST:
            if name == b"connection":
                extra_hop.update(t.strip().lower() for t in value.split(b","))
            elif name == b"content-length" and value.isdigit():
                out.content_length = int(value)
            continue
        if name == b"user-agent":
            out.user_agent = value.decode("latin-1")
        elif name == b"anthropic-beta":
            out.anthropic_beta = value.decode("latin-1")
        elif name == b"x-claude-code-session-id":
            out.claude_code_session_id = value.decode("latin-1")
        forward.append((name, value))
    if extra_hop:
        out.forward = [(n, v) for n, v in forward if n not in extra_hop]
    return out


def filter_response_headers(
    raw: list[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (names lowercased) minus hop-by-hop ones, plus our request id."""
    out = [(n, v) for n, v in raw if n not in HOP_BY_HOP]
    out.append((b"x-claude-proxy-request-id", request_id))
    return out
