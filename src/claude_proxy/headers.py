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

    forward: list[tuple[str, str]]
    api_key: bytes | None = None
    bearer: bytes | None = None
    content_length: int | None = None
    user_agent: str | None = None
    anthropic_beta: str | None = None
    claude_code_session_id: str | None = None


def split_request_headers(raw: list[tuple[bytes, bytes]], upstream_key: str) -> ClientHeaders:
    """Filter the client's headers for the upstream hop and pick out credentials and labels."""
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
        sname = name.decode("latin-1")
        svalue = value.decode("latin-1")
        if name == b"user-agent":
            out.user_agent = svalue
        elif name == b"anthropic-beta":
            out.anthropic_beta = svalue
        elif name == b"x-claude-code-session-id":
            out.claude_code_session_id = svalue
        forward.append((sname, svalue))
    if extra_hop:
        out.forward = [(n, v) for n, v in forward if n.encode("latin-1") not in extra_hop]
    if upstream_key:
        out.forward.append(("x-api-key", upstream_key))
    return out


def filter_response_headers(
    raw: tuple[tuple[bytes, bytes], ...], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, plus the proxy's request id."""
    out = [(n.lower(), v) for n, v in raw if n.lower() not in HOP_BY_HOP]
    out.append((b"x-claude-proxy-request-id", request_id))
    return out
