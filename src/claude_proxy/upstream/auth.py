"""How the proxy proves itself to an upstream: the credential seam.

The pool asks its `UpstreamAuth` for the credential header lines of each request last,
once the head and body are final, so a signature (AWS SigV4 for Bedrock, say) can cover
the whole request and nothing changes it afterwards. Today's upstream takes an API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from claude_proxy.upstream.pool import Buffer


class UpstreamAuth(Protocol):
    def header_lines(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: Buffer
    ) -> bytes:
        """Credential header lines (`name: value\\r\\n` each) for one request."""
        ...


class ApiKey:
    """`x-api-key`, as the Anthropic API takes it; none at all when the key is empty."""

    __slots__ = ("_line",)

    def __init__(self, key: str) -> None:
        self._line = b"x-api-key: " + key.encode() + b"\r\n" if key else b""

    def header_lines(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: Buffer
    ) -> bytes:
        return self._line
