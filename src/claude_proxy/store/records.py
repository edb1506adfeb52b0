"""RequestRecord: what one request leaves behind, and where it is handed over.

The relay fills a record as the request moves along and hands it to a
`RecordSink` exactly once, when the response has ended however it ended.
The sink must not block: the request log pipeline plugs its writer in here.
"""

from __future__ import annotations

import hashlib
import operator
import random
import time
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, Protocol, overload

import orjson

# Caps on every client-controlled or upstream-echoed text that is stored or logged
# (docs/request-logs.md). A longer value keeps its head and the SHA-256 prefix of the whole
# value, so two long values that differ only at the end still differ, and every row stays
# far under PostgreSQL's limit for an index entry (~2,700 bytes: `model` is indexed).
MAX_MODEL_CHARS = 256
MAX_USER_AGENT_CHARS = 512
MAX_METADATA_USER_ID_CHARS = 256
MAX_SESSION_ID_CHARS = 128
MAX_BETA_CHARS = 1024
MAX_ERROR_MESSAGE_CHARS = 4096
MAX_ENDPOINT_CHARS = 512  # pass-through paths are the client's
MAX_SHORT_TEXT_CHARS = 256  # ids and labels echoed from the upstream or the client
# ASCII, so a capped value fits a database in any encoding (LATIN1, SQL_ASCII) and greps.
_HASH_MARK = "...sha256:"
_HASH_HEX = 16


@overload
def bounded(value: str, cap: int) -> str: ...
@overload
def bounded(value: None, cap: int) -> None: ...
@overload
def bounded(value: str | None, cap: int) -> str | None: ...
def bounded(value: str | None, cap: int) -> str | None:
    """`value` if it fits in `cap` characters, else its head plus "...sha256:<16 hex>" of the
    whole value, `cap` characters in all. Cheap when it fits (one len())."""
    if value is None or len(value) <= cap:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return value[: max(0, cap - len(_HASH_MARK) - _HASH_HEX)] + _HASH_MARK + digest


def new_request_id() -> str:
    """A time-ordered id (48-bit ms clock + 80 random bits) so database inserts stay local.

    The bits come from `random`, seeded from os.urandom at import and again in a forked
    child: an id names a request and grants nothing, and os.urandom here was a getrandom()
    system call per request (about 2 µs in the worker's profile)."""
    return f"cpr_{int(time.time() * 1000):012x}{random.getrandbits(80):020x}"


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def merge(self, usage: dict[str, Any]) -> None:
        """Overwrite with every non-null cumulative field present in an API usage object."""
        v = usage.get("input_tokens")
        if v is not None:
            self.input_tokens = v
        v = usage.get("output_tokens")
        if v is not None:
            self.output_tokens = v
        v = usage.get("cache_creation_input_tokens")
        if v is not None:
            self.cache_creation_input_tokens = v
        v = usage.get("cache_read_input_tokens")
        if v is not None:
            self.cache_read_input_tokens = v
        cc = usage.get("cache_creation")
        if isinstance(cc, dict):
            v = cc.get("ephemeral_5m_input_tokens")
            if v is not None:
                self.cache_creation_5m_input_tokens = v
            v = cc.get("ephemeral_1h_input_tokens")
            if v is not None:
                self.cache_creation_1h_input_tokens = v


@dataclass(slots=True)
class RequestRecord:
    id: str
    created_at: float
    method: str
    endpoint: str
    key_id: str | None = None
    model: str | None = None
    stream: bool = False
    status_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    stop_reason: str | None = None
    message_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    upstream_request_id: str | None = None
    client_disconnected: bool = False
    upstream_attempts: int = 0
    client_ip: str | None = None
    user_agent: str | None = None
    anthropic_beta: str | None = None
    metadata_user_id: str | None = None
    claude_code_session_id: str | None = None
    # Set when the proxy itself refused the request: why (gateway/errors.py: ProxyError.reason).
    refusal: str | None = None
    # Only with CLAUDE_PROXY_LOG_BODIES=true, capped; never headers (credentials).
    request_body: str | None = None
    response_body: str | None = None
    # A cost the proxy decided itself, in USD as a decimal string, instead of pricing model
    # and usage: a message batch's reservation at submission and its settlement
    # (formats/anthropic/batches.py).
    cost_usd: str | None = None
    # Who the request was made as (a user id), and the group it was charged to.
    user_id: str | None = None
    group_id: str | None = None


# How records travel to the writer process: one JSON array per line, the fields in
# declaration order and `usage` as an array too. Positional, because the worker encodes
# every record on its event loop: 0.9 µs and 240 bytes against 2.6 µs and 750 bytes as
# an object (decoding: 1.2 µs against 6.5). Both ends are the same install, so the
# order always agrees; the spill file, which outlives a process, stores named rows.
_FIELDS = operator.attrgetter(*(f.name for f in fields(RequestRecord)))
_USAGE_FIELDS = operator.attrgetter(*(f.name for f in fields(Usage)))
_USAGE_AT = [f.name for f in fields(RequestRecord)].index("usage")


def encode_record(record: RequestRecord) -> bytes:
    """One JSON line: how records travel to the writer process."""
    values = list(_FIELDS(record))
    values[_USAGE_AT] = _USAGE_FIELDS(values[_USAGE_AT])
    return orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE)


def decode_record(line: bytes) -> RequestRecord:
    values: list[Any] = orjson.loads(line)
    values[_USAGE_AT] = Usage(*values[_USAGE_AT])
    return RequestRecord(*values)


class Pricer(Protocol):
    """Prices a request's usage (formats/anthropic/pricing.py's PriceTable is one)."""

    def cost(self, model: str | None, usage: Usage, *, batch: bool = False) -> Decimal | None: ...


class RecordSink(Protocol):
    """Takes finished records. `submit` is called on the event loop and must return at once."""

    def submit(self, record: RequestRecord) -> None: ...
