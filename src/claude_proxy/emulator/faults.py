"""Fault specs: what a request asks the emulator to do wrong, and when.

A spec comes from the `x-emulator-fault` header or from a `<<emulator: SPEC>>` marker in the text
of the messages (Claude Code cannot easily set headers). It is a space-separated list of tokens,
`key=value` or bare `key`:

    status=NNN [retry-after=S] [retry-after-ms=MS] [should-retry=true|false]
    times=N key=K          only the first N requests carrying this exact spec fail
    first-byte-ms=MS       delay before the response headers
    event-ms=MS            delay before each SSE event after message_start
    events=N               number of text deltas (default 10)
    text-bytes=N           bytes per text delta (default 12)
    midstream=error|reset|eof|stall [after=N]   (after N SSE events, default 3)
    close-before-headers   close the connection without any response
    tool                   include a tool_use block

Parsing is cached per distinct spec string, since load tests repeat the same spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MIDSTREAM_MODES = ("error", "reset", "eof", "stall")
MAX_EVENTS = 1_000_000
MAX_TEXT_BYTES = 1 << 20
MAX_TEXT = 1 << 30  # characters of reply text, all deltas together
MAX_DELAY_MS = 3_600_000
MARKER = b"<<emulator:"
_MARKER_RX = re.compile(r"<<emulator:\s*(.*?)\s*>>", re.DOTALL)


class FaultSpecError(ValueError):
    """The spec is malformed; the emulator answers 400 with this message."""


@dataclass(frozen=True, slots=True)
class Fault:
    spec: str
    status: int | None = None
    retry_after: int | None = None
    retry_after_ms: int | None = None
    should_retry: str | None = None
    times: int | None = None
    key: str | None = None
    first_byte_ms: int = 0
    event_ms: int = 0
    events: int | None = None
    text_bytes: int | None = None
    midstream: str | None = None
    after: int = 3
    close_before_headers: bool = False
    tool: bool = False
    batch_ms: int = 0  # a message batch stays `in_progress` this long after its creation

    @property
    def fails(self) -> bool:
        """Whether the spec asks for a failure (the part that `times=` limits)."""
        return self.status is not None or self.midstream is not None or self.close_before_headers


def _int(key: str, value: str | None, lo: int, hi: int) -> int:
    if value is None:
        raise FaultSpecError(f"x-emulator-fault: {key} needs a value ({key}=N)")
    try:
        n = int(value)
    except ValueError:
        raise FaultSpecError(f"x-emulator-fault: {key}={value} is not an integer") from None
    if not lo <= n <= hi:
        raise FaultSpecError(f"x-emulator-fault: {key}={value} is out of range {lo}..{hi}")
    return n


@lru_cache(maxsize=4096)
def parse_fault(spec: str) -> Fault:
    """Parse a spec string; raises FaultSpecError on unknown tokens or bad values."""
    fields: dict[str, Any] = {}
    for token in spec.split():
        key, sep, raw = token.partition("=")
        value: str | None = raw if sep else None
        key = key.lower()
        if key == "status":
            fields["status"] = _int(key, value, 400, 599)
        elif key == "retry-after":
            fields["retry_after"] = _int(key, value, 0, 86_400)
        elif key == "retry-after-ms":
            fields["retry_after_ms"] = _int(key, value, 0, 86_400_000)
        elif key == "should-retry":
            if value not in ("true", "false"):
                raise FaultSpecError("x-emulator-fault: should-retry must be true or false")
            fields["should_retry"] = value
        elif key == "times":
            fields["times"] = _int(key, value, 0, 1 << 30)
        elif key == "key":
            if not value:
                raise FaultSpecError("x-emulator-fault: key needs a value (key=K)")
            fields["key"] = value
        elif key == "first-byte-ms":
            fields["first_byte_ms"] = _int(key, value, 0, MAX_DELAY_MS)
        elif key == "event-ms":
            fields["event_ms"] = _int(key, value, 0, MAX_DELAY_MS)
        elif key == "events":
            fields["events"] = _int(key, value, 0, MAX_EVENTS)
        elif key == "text-bytes":
            fields["text_bytes"] = _int(key, value, 1, MAX_TEXT_BYTES)
        elif key == "midstream":
            if value not in MIDSTREAM_MODES:
                raise FaultSpecError(
                    "x-emulator-fault: midstream must be one of " + "|".join(MIDSTREAM_MODES)
                )
            fields["midstream"] = value
        elif key == "after":
            fields["after"] = _int(key, value, 0, MAX_EVENTS)
        elif key == "close-before-headers" and value is None:
            fields["close_before_headers"] = True
        elif key == "tool" and value is None:
            fields["tool"] = True
        elif key == "batch-ms":
            fields["batch_ms"] = _int(key, value, 0, MAX_DELAY_MS)
        else:
            raise FaultSpecError(f"x-emulator-fault: unknown token {token!r}")
    if fields.get("events", 10) * fields.get("text_bytes", 12) > MAX_TEXT:
        raise FaultSpecError(f"x-emulator-fault: events * text-bytes must be at most {MAX_TEXT}")
    return Fault(spec=" ".join(spec.split()), **fields)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str):
                    out.append(text)
    return out


def marker_spec(params: dict[str, Any]) -> str | None:
    """The spec of the last `<<emulator: ...>>` marker in the messages' text, if any.

    Only text (string content and text blocks) counts, not tool results, so a file that merely
    contains a marker and is read by a tool does not inject faults.
    """
    found: str | None = None
    messages = params.get("messages")
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict):
            continue
        for text in _texts(message.get("content")):
            if "<<emulator:" in text:
                for m in _MARKER_RX.finditer(text):
                    found = m.group(1)
    return found


class FaultCounters:
    """How many requests have carried each `times=`-limited spec (keyed by the whole spec)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def should_fail(self, fault: Fault) -> bool:
        """Whether this request fails; counts it when the spec has `times=`."""
        if not fault.fails:
            return False
        if fault.times is None:
            return True
        n = self._seen.get(fault.spec, 0) + 1
        self._seen[fault.spec] = n
        return n <= fault.times

    def clear(self) -> None:
        self._seen.clear()
