"""Which headers cross the proxy in each direction."""

from __future__ import annotations

from claude_proxy.formats.anthropic.headers import filter_response_headers, split_request_headers


def test_request_headers_forwarded_except_hop_by_hop_and_credentials() -> None:
    raw = [
        (b"host", b"proxy.local"),
        (b"x-api-key", b"client-key"),
        (b"authorization", b"Bearer client-key"),
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"drop me"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"anthropic-version", b"2023-06-01"),
        (b"anthropic-beta", b"a-2025,b-2026"),
        (b"x-stainless-retry-count", b"0"),
        (b"x-claude-code-session-id", b"sess-1"),
        (b"user-agent", b"claude-cli/2.1.332"),
        (b"x-new-thing", b"v"),
    ]
    h = split_request_headers(raw)
    assert h.forward == [
        (b"anthropic-version", b"2023-06-01"),
        (b"anthropic-beta", b"a-2025,b-2026"),
        (b"x-stainless-retry-count", b"0"),
        (b"x-claude-code-session-id", b"sess-1"),
        (b"user-agent", b"claude-cli/2.1.332"),
        (b"x-new-thing", b"v"),
    ]
    assert h.api_key == b"client-key" and h.bearer == b"client-key"
    assert h.content_length == 12
    assert (h.anthropic_beta, h.claude_code_session_id) == ("a-2025,b-2026", "sess-1")


def test_response_headers_drop_hop_by_hop_only() -> None:
    raw = [
        (b"request-id", b"req_1"),
        (b"anthropic-ratelimit-requests-remaining", b"9"),
        (b"retry-after", b"3"),
        (b"retry-after-ms", b"3000"),
        (b"x-should-retry", b"false"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
    ]
    out = filter_response_headers(raw, b"cpr_1")
    assert out == [
        (b"request-id", b"req_1"),
        (b"anthropic-ratelimit-requests-remaining", b"9"),
        (b"retry-after", b"3"),
        (b"retry-after-ms", b"3000"),
        (b"x-should-retry", b"false"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-claude-proxy-request-id", b"cpr_1"),
    ]
