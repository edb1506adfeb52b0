"""Input token estimates, and the block boundaries that prompt caching works on.

The estimate is deterministic: one token per 4 characters (rounded up), where text counts its
characters, images a fixed 1,600 tokens, and any other block its compact JSON. `count_tokens`
and `messages` use this one function, so their numbers agree.

Walk order is the API's cache order: tools, then system, then messages. When the body mentions
`cache_control`, the walk also keeps a running hash of the content and records, at every block
boundary, (characters so far, hash so far, breakpoint TTL or None). `cache_control` itself is left
out of the hash, so moving a breakpoint (as Claude Code does each turn) keeps earlier prefixes
addressable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from claude_proxy.emulator.wire import ApiError

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_CHARS = 12
IMAGE_CHARS = 6400
ROLES = ("user", "assistant", "system")


def tokens_for(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@dataclass(slots=True)
class Boundary:
    chars: int
    digest: bytes
    ttl: str | None  # "5m" / "1h" where a cache_control breakpoint ends this block


@dataclass(slots=True)
class InputShape:
    chars: int = 0
    boundaries: list[Boundary] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return max(1, tokens_for(self.chars))

    @property
    def has_breakpoints(self) -> bool:
        return any(b.ttl is not None for b in self.boundaries)


def _ttl(cache_control: Any) -> str:
    if isinstance(cache_control, dict) and cache_control.get("ttl") == "1h":
        return "1h"
    return "5m"


class _Walker:
    __slots__ = ("hasher", "shape")

    def __init__(self, hashing: bool) -> None:
        self.shape = InputShape()
        self.hasher = hashlib.blake2b(digest_size=16) if hashing else None

    def tag(self, data: bytes, chars: int) -> None:
        """Framing that is not a block of its own (a message's role)."""
        self.shape.chars += chars
        if self.hasher is not None:
            self.hasher.update(data)

    def text(self, text: str, cache_control: Any) -> None:
        self.shape.chars += len(text)
        if self.hasher is not None:
            self.hasher.update(b"\x00t")
            self.hasher.update(text.encode("utf-8", "surrogatepass"))
            self._boundary(cache_control)

    def block(self, block: dict[str, Any]) -> None:
        cache_control = block.get("cache_control")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            self.text(block["text"], cache_control)
            return
        if cache_control is not None:
            block = {k: v for k, v in block.items() if k != "cache_control"}
        if kind == "image":
            encoded = orjson.dumps(block) if self.hasher is not None else b""
            self.shape.chars += IMAGE_CHARS
        else:
            encoded = orjson.dumps(block)
            self.shape.chars += len(encoded)
        if self.hasher is not None:
            self.hasher.update(b"\x00b")
            self.hasher.update(encoded)
            self._boundary(cache_control)

    def _boundary(self, cache_control: Any) -> None:
        assert self.hasher is not None
        ttl = _ttl(cache_control) if cache_control is not None else None
        self.shape.boundaries.append(Boundary(self.shape.chars, self.hasher.digest(), ttl))


def _content(w: _Walker, content: Any, where: str) -> None:
    if isinstance(content, str):
        w.text(content, None)
        return
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: Input should be a valid string or list")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or "type" not in block:
            raise ApiError(400, f"{where}.{j}.type: Field required")
        w.block(block)


def fast_tokens(params: dict[str, Any]) -> int | None:
    """measure() for the common simple shape (string contents, no tools); None otherwise."""
    if "tools" in params:
        return None
    system = params.get("system")
    if system is None:
        chars = 0
    elif type(system) is str:
        chars = len(system)
    else:
        return None
    for message in params["messages"]:
        if type(message) is not dict:
            return None
        content = message.get("content")
        if type(content) is not str or message.get("role") not in ROLES:
            return None
        chars += len(content) + MESSAGE_OVERHEAD_CHARS
    return max(1, tokens_for(chars))


def measure(params: dict[str, Any], *, hashing: bool) -> InputShape:
    """Walk tools → system → messages, validating shapes on the way (raises ApiError 400)."""
    w = _Walker(hashing)
    tools = params.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ApiError(400, "tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise ApiError(400, f"tools.{i}: Input should be a valid dictionary")
            cache_control = tool.get("cache_control")
            if cache_control is not None:
                tool = {k: v for k, v in tool.items() if k != "cache_control"}
            encoded = orjson.dumps(tool)
            w.shape.chars += len(encoded)
            if w.hasher is not None:
                w.hasher.update(b"\x00T")
                w.hasher.update(encoded)
                w._boundary(cache_control)
    system = params.get("system")
    if system is not None:
        if isinstance(system, str | list):
            w.tag(b"\x00S", 0)
            _content(w, system, "system")
        else:
            raise ApiError(400, "system: Input should be a valid string or list")
    messages = params["messages"]
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ROLES:
            if role is None:
                raise ApiError(400, f"messages.{i}.role: Field required")
            raise ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise ApiError(400, f"messages.{i}.content: Field required")
        w.tag(b"\x00R" + role.encode(), MESSAGE_OVERHEAD_CHARS)
        _content(w, message["content"], f"messages.{i}.content")
    auto = params.get("cache_control")
    if auto is not None and w.shape.boundaries:
        # Top-level (automatic) caching: a breakpoint on the last block.
        last = w.shape.boundaries[-1]
        if last.ttl is None:
            last.ttl = _ttl(auto)
    return w.shape
