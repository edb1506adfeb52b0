"""Which /v1 request targets the proxy forwards, and under what name it governs them.

The proxy decides on the decoded path (what the upstream will read) and forwards only
that path's canonical spelling, so no spelling of a governed endpoint can slip past the
model allowlist or the usage accounting (`/v1//messages`, `/v1/%6Dessages`,
`/v1/messages;x`), and no dot segment can climb out of /v1 upstream
(`/v1/%2e%2e/admin`). Targets that need no decoding, the SDKs' and Claude Code's, take
one scan of a few bytes.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

# The API's OpenAI-compatible endpoint: OpenAI's shapes (formats/openai), the same key.
CHAT_COMPLETIONS = "/v1/chat/completions"
# Endpoints whose JSON body the proxy reads (model, stream), and the batches endpoint.
JSON_ENDPOINTS = frozenset({"/v1/messages", "/v1/messages/count_tokens", CHAT_COMPLETIONS})
BATCHES = "/v1/messages/batches"
_KNOWN_PATHS = frozenset(
    {
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        BATCHES,
        "/v1/files",
        CHAT_COMPLETIONS,
    }
)
# The methods each governed endpoint takes; other methods get a 405.
METHODS: dict[str, frozenset[str]] = {
    "/v1/messages": frozenset({"POST"}),
    "/v1/messages/count_tokens": frozenset({"POST"}),
    BATCHES: frozenset({"GET", "POST"}),
    "/v1/messages/batches/{id}": frozenset({"GET", "DELETE"}),
    "/v1/messages/batches/{id}/cancel": frozenset({"POST"}),
    "/v1/messages/batches/{id}/results": frozenset({"GET"}),
    "/v1/models": frozenset({"GET"}),
    "/v1/models/{id}": frozenset({"GET"}),
    CHAT_COMPLETIONS: frozenset({"POST"}),
}
# Kept as they are when a segment is spelled again (RFC 3986 pchar, less '%' and ';').
_SAFE = ":@!$&'()*+,=-._~"


def target_problem(raw_path: bytes, path: str) -> str | None:
    """Why this /v1 target is refused with a 400, or None when it may be forwarded.

    `path` is `raw_path` decoded: the same length unless it held an escape. The checks
    run on the str, since `bytes in bytes` first tries its operand as an integer and so
    formats and drops a TypeError each time (six of them were 3 % of a request)."""
    escaped = len(path) != len(raw_path) or "%" in path
    if escaped or ";" in path or "//" in path or "/." in path or "\\" in path or path.endswith("/"):
        for segment in path.split("/")[1:]:
            if segment in ("", ".", ".."):
                return (
                    "The request path has an empty or dot segment; "
                    "send it without '//', '/./' or '/../'."
                )
        if ";" in path:
            return "The request path has a path parameter (';'); it is not supported."
        if "%" in path or "\\" in path:
            return "The request path holds an encoded '%' or a backslash; it is not supported."
    return None


def canonical_target(raw_path: bytes, path: str) -> bytes:
    """What is sent upstream: the raw path when it holds no escape, else each segment
    spelled with only the escapes it needs (`/v1/%6Dessages` → `/v1/messages`; an encoded
    '/' inside a segment stays `%2F`)."""
    if len(path) == len(raw_path):  # nothing was decoded (see target_problem)
        return raw_path
    segments = raw_path.decode("ascii").split("/")
    return "/".join(quote(unquote(s), safe=_SAFE) for s in segments).encode("ascii")


def endpoint_label(path: str) -> str:
    """A low-cardinality name for records, metrics and spans: ids are folded to {id}
    (`/v1/models/{id}`, `/v1/messages/batches/{id}/results`, `/v1/files/{id}/content`),
    and paths deeper than /v1 plus four segments are cut."""
    if path in _KNOWN_PATHS:
        return path
    parts = path.split("/")[:6]  # "", "v1", and at most four more
    for i in range(2, len(parts)):
        p = parts[i]
        if len(p) > 24 or any(c.isdigit() for c in p) or not p.replace("_", "").isalpha():
            parts[i] = "{id}"
    return "/".join(parts)
