"""The pooled HTTP client towards the Anthropic API.

aiohttp's client was measured as an order of magnitude cheaper than httpx or
httpcore at concurrency (docs/benchmarks.md), so it carries the hot path. It is
set up to change nothing on the wire: no automatic decompression, no default
User-Agent/Accept headers, no cookies, no redirects, no URL re-quoting.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from claude_proxy.config import Settings

# Headers aiohttp would otherwise invent; the client's own values go through instead.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class Upstream:
    """One keep-alive connection pool per process, built in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.anthropic_base_url
        self.api_key = settings.upstream_key()
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections,
            limit_per_host=0,
            keepalive_timeout=60,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.connect_timeout_seconds,
                sock_read=settings.read_timeout_seconds,
            ),
            read_bufsize=2**16,
        )

    def url(self, raw_path: bytes, query: bytes) -> URL:
        path = raw_path.decode("latin-1")
        if query:
            path += "?" + query.decode("latin-1")
        return URL(self.base_url + path, encoded=True)

    async def request(
        self, method: str, url: URL, headers: list[tuple[str, str]], body: bytes
    ) -> aiohttp.ClientResponse:
        return await self.session.request(
            method,
            url,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )

    async def close(self) -> None:
        await self.session.close()
